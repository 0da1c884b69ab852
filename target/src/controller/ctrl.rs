//! A controller: the state one host's association holds (NVMe-oF 1.1, section 3.3: a controller is
//! created by the admin queue's Connect and found again by CNTLID from I/O queue Connects).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use crate::subsystem::{Registry, Subsystem, lock};

/// Controller type (Identify Controller CNTRLTYPE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtrlKind {
    /// NVM (I/O) controller of an NVM subsystem.
    Io,
    /// Discovery controller.
    Discovery,
}

/// Maximum number of I/O queues a host may ask for (Set Features Number of Queues is answered
/// with at most this; a Connect to a higher QID is refused). Each queue is one TCP connection.
pub const IO_QUEUES_MAX: u16 = 64;

/// Outstanding Asynchronous Event Requests a controller accepts (Identify AERL is this minus 1).
/// Linux keeps one outstanding.
pub const AER_OUTSTANDING_MAX: u32 = 4;

/// Events queued for the host while no AER is outstanding; older ones are dropped past this (the
/// host re-reads the log pages anyway).
pub const EVENTS_QUEUED_MAX: usize = 16;

/// Asynchronous event "Notice" (NVMe Base 2.0, Figure 146): type 2h in DW0 bits 2:0, information
/// in bits 15:8, log page in bits 23:16.
pub mod aen {
    const fn notice(info: u32, lid: u32) -> u32 {
        2 | (info << 8) | (lid << 16)
    }
    /// Namespace Attribute Changed (log page 04h).
    pub const NS_ATTR_CHANGED: u32 = notice(0x00, 0x04);
    /// Asymmetric Namespace Access Change (log page 0Ch).
    pub const ANA_CHANGE: u32 = notice(0x03, 0x0C);
    /// Discovery Log Page Change (log page 70h).
    pub const DISCOVERY_CHANGE: u32 = notice(0xF0, 0x70);
}

/// Asynchronous Event Configuration (feature 0Bh) bits that enable each notice.
pub mod aec {
    pub const NS_ATTR: u32 = 1 << 8;
    pub const ANA_CHANGE: u32 = 1 << 11;
    pub const DISCOVERY_CHANGE: u32 = 1 << 31;
}

/// Controller registers reachable with Property Get/Set.
#[derive(Debug, Default, Clone, Copy)]
pub struct Regs {
    pub cc: u32,
    pub csts: u32,
}

/// Settable features.
#[derive(Debug, Clone, Copy)]
pub struct Features {
    /// I/O queues granted by Set Features Number of Queues (count, not 0-based).
    pub io_queues: u16,
    pub async_event_config: u32,
    pub volatile_write_cache: bool,
    /// Host Behavior Support (feature 16h) byte 0: ACRE.
    pub acre: bool,
}

/// Pending asynchronous events.
#[derive(Debug, Default)]
struct Events {
    queued: VecDeque<u32>,
    outstanding_aers: u32,
}

/// SMART counters (NVMe Base 2.0, Figure 207: data units are thousands of 512-byte units).
#[derive(Debug, Default)]
pub struct Counters {
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    pub read_cmds: AtomicU64,
    pub write_cmds: AtomicU64,
    pub errors: AtomicU64,
}

/// One controller (an association of one host with one subsystem, or with discovery).
pub struct Controller {
    pub cntlid: u16,
    pub kind: CtrlKind,
    /// The NVM subsystem; `None` for a discovery controller.
    pub subsys: Option<Arc<Subsystem>>,
    pub registry: Arc<Registry>,
    pub hostnqn: String,
    pub hostid: [u8; 16],
    /// Keep Alive Timeout in ms; 0 disables it.
    kato_ms: AtomicU32,
    started: Instant,
    /// Milliseconds since `started` of the last command that resets the keep-alive timer.
    last_keep_alive_ms: AtomicU64,
    /// CC and CSTS for Property Get/Set. Change them through [`Controller::set_regs`], which
    /// keeps `ready` in step.
    pub regs: Mutex<Regs>,
    /// CC.EN && CSTS.RDY, for the command path to read without taking `regs`' lock.
    ready: AtomicBool,
    pub features: Mutex<Features>,
    events: Mutex<Events>,
    event_notify: Notify,
    /// I/O queue IDs connected to this controller.
    pub io_queues: Mutex<HashSet<u16>>,
    /// Becomes true when the controller is torn down; every queue's connection watches it.
    dead: watch::Sender<bool>,
    /// NSIDs whose attributes changed since the host last read log page 04h.
    changed_ns: Mutex<Vec<u32>>,
    pub counters: Counters,
}

impl Controller {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cntlid: u16,
        kind: CtrlKind,
        subsys: Option<Arc<Subsystem>>,
        registry: Arc<Registry>,
        hostnqn: String,
        hostid: [u8; 16],
        kato_ms: u32,
        volatile_write_cache: bool,
    ) -> Self {
        let (dead, _) = watch::channel(false);
        Self {
            cntlid,
            kind,
            subsys,
            registry,
            hostnqn,
            hostid,
            kato_ms: AtomicU32::new(kato_ms),
            started: Instant::now(),
            last_keep_alive_ms: AtomicU64::new(0),
            regs: Mutex::new(Regs::default()),
            ready: AtomicBool::new(false),
            features: Mutex::new(Features {
                // Until Set Features Number of Queues asks for fewer, every queue we allow is
                // allocated (Get Features reports it, and Connect accepts it).
                io_queues: IO_QUEUES_MAX,
                async_event_config: 0,
                volatile_write_cache,
                acre: false,
            }),
            events: Mutex::new(Events::default()),
            event_notify: Notify::new(),
            io_queues: Mutex::new(HashSet::new()),
            dead,
            changed_ns: Mutex::new(Vec::new()),
            counters: Counters::default(),
        }
    }

    /// Whether the controller is enabled and ready (CC.EN = 1 and CSTS.RDY = 1): admin and
    /// I/O commands run only then. Lock-free: read on every command.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Stores new register values into `regs` (the caller holds its lock, so concurrent
    /// Property Sets publish in the order they changed the registers) and publishes
    /// CC.EN && CSTS.RDY for [`Controller::is_ready`].
    pub fn set_regs(&self, regs: &mut Regs, new: Regs) {
        use codec::nvme::fabrics::{Cc, Csts};
        *regs = new;
        let ready = Cc::from_u32(new.cc).en && Csts::from_u32(new.csts).rdy;
        self.ready.store(ready, Ordering::Release);
    }

    pub fn kato_ms(&self) -> u32 {
        self.kato_ms.load(Ordering::Relaxed)
    }

    pub fn set_kato_ms(&self, v: u32) {
        self.kato_ms.store(v, Ordering::Relaxed);
        self.keep_alive();
    }

    /// Resets the keep-alive timer (Keep Alive, or any admin command).
    pub fn keep_alive(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_keep_alive_ms.store(now, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let last = self.last_keep_alive_ms.load(Ordering::Relaxed);
        self.started
            .elapsed()
            .saturating_sub(Duration::from_millis(last))
    }

    /// A receiver that turns true when the controller is torn down.
    pub fn watch_dead(&self) -> watch::Receiver<bool> {
        self.dead.subscribe()
    }

    pub fn is_dead(&self) -> bool {
        *self.dead.borrow()
    }

    /// Tears the controller down: frees its CNTLID and closes every queue's connection.
    pub fn teardown(&self, why: &str) {
        if self.dead.send_replace(true) {
            return;
        }
        tracing::info!(cntlid = self.cntlid, hostnqn = %self.hostnqn, why, "controller torn down");
        match &self.subsys {
            Some(s) => s.remove_controller(self.cntlid),
            None => self.registry.discovery.remove_controller(self.cntlid),
        }
        self.event_notify.notify_waiters();
    }

    /// Starts the keep-alive watchdog: a controller silent for longer than KATO is torn down
    /// (NVMe Base 2.0, section 3.9.4) and its CNTLID freed.
    pub fn spawn_keep_alive_watchdog(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let wait = {
                    let Some(c) = weak.upgrade() else { return };
                    let kato = c.kato_ms();
                    if c.is_dead() {
                        return;
                    }
                    if kato == 0 {
                        // Disabled for now; check again later in case Set Features enables it.
                        Duration::from_secs(1)
                    } else {
                        let kato = Duration::from_millis(u64::from(kato));
                        let silent = c.silent_for();
                        if silent >= kato {
                            tracing::warn!(
                                cntlid = c.cntlid,
                                hostnqn = %c.hostnqn,
                                silent_ms = u64::try_from(silent.as_millis()).unwrap_or(u64::MAX),
                                "keep alive timeout expired"
                            );
                            crate::metrics::count_keep_alive_expiry();
                            c.teardown("keep alive timeout");
                            return;
                        }
                        kato - silent
                    }
                };
                tokio::time::sleep(wait).await;
            }
        });
    }

    /// Queues an asynchronous event if the host enabled it (`enable_bit` of feature 0Bh).
    pub fn post_event(&self, event: u32, enable_bit: u32) {
        let enabled = lock(&self.features).async_event_config & enable_bit != 0;
        if !enabled {
            return;
        }
        let mut ev = lock(&self.events);
        if ev.queued.len() >= EVENTS_QUEUED_MAX {
            ev.queued.pop_front();
        }
        ev.queued.push_back(event);
        drop(ev);
        self.event_notify.notify_one();
    }

    /// Namespaces were added, removed or resized: remember them for log page 04h and send a
    /// Namespace Attribute Changed notice.
    pub fn namespaces_changed(&self, nsids: &[u32]) {
        {
            let mut l = lock(&self.changed_ns);
            for n in nsids {
                if !l.contains(n) {
                    l.push(*n);
                }
            }
            // NVMe Base 2.0, Figure 208: more than 1024 changes are reported as FFFFFFFFh.
            if l.len() > 1024 {
                l.clear();
                l.push(u32::MAX);
            }
        }
        self.post_event(aen::NS_ATTR_CHANGED, aec::NS_ATTR);
    }

    /// Takes the changed-namespace list (reading log page 04h clears it).
    pub fn take_changed_namespaces(&self) -> Vec<u32> {
        std::mem::take(&mut *lock(&self.changed_ns))
    }

    pub fn notify_discovery_change(&self) {
        self.post_event(aen::DISCOVERY_CHANGE, aec::DISCOVERY_CHANGE);
    }

    /// Registers one more outstanding AER; false when the limit is reached.
    pub fn aer_begin(&self) -> bool {
        let mut ev = lock(&self.events);
        if ev.outstanding_aers >= AER_OUTSTANDING_MAX {
            return false;
        }
        ev.outstanding_aers += 1;
        true
    }

    /// Waits for the next event for an outstanding AER; `None` if the controller died.
    pub async fn aer_wait(&self) -> Option<u32> {
        let mut dead = self.watch_dead();
        loop {
            let notified = self.event_notify.notified();
            {
                let mut ev = lock(&self.events);
                if let Some(e) = ev.queued.pop_front() {
                    ev.outstanding_aers = ev.outstanding_aers.saturating_sub(1);
                    return Some(e);
                }
            }
            if self.is_dead() {
                return None;
            }
            tokio::select! {
                () = notified => {}
                _ = dead.changed() => {}
            }
        }
    }

    /// Forgets an outstanding AER whose connection went away.
    pub fn aer_abandon(&self) {
        let mut ev = lock(&self.events);
        ev.outstanding_aers = ev.outstanding_aers.saturating_sub(1);
    }

    pub fn is_discovery(&self) -> bool {
        self.kind == CtrlKind::Discovery
    }
}
