//! Prometheus metrics: `GET /metrics` on a loopback HTTP port (127.0.0.1:9420 by default),
//! in the Prometheus text exposition format, encoded by `prometheus-client`.
//!
//! Nothing here touches the data path: a scrape reads the counters the target keeps anyway
//! (each controller's SMART counters, the generation state's mismatch counters, the reactors'
//! connection counts), all relaxed atomics. Metric names follow Prometheus conventions:
//! `tessera_` prefix, base units (bytes), `_total` on counters.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `tessera_connections` | gauge | |
//! | `tessera_subsystems`, `tessera_namespaces` | gauge | |
//! | `tessera_controllers` | gauge | `subnqn` |
//! | `tessera_controller_read_commands_total`, `..._write_commands_total` | counter | `subnqn`, `cntlid`, `hostnqn` |
//! | `tessera_controller_read_bytes_total`, `..._written_bytes_total` | counter | same |
//! | `tessera_controller_io_errors_total` | counter | same |
//! | `tessera_generation` | gauge | |
//! | `tessera_generation_mismatches_total` | counter | `kind` (stale, behind, unstamped) |
//! | `tessera_generation_checks_total` | counter | |
//! | `tessera_mismatch_reports_total` | counter | `outcome` (sent, dropped) |
//! | `tessera_discovery_genctr` | gauge | |
//! | `tessera_keep_alive_expiries_total` | counter | |
//! | `tessera_c2h_term_reqs_total` | counter | `reason` (the FES, e.g. `pdu_sequence_error`) |
//! | `tessera_nvme_error_statuses_total` | counter | `sct`, `sc` (hex, e.g. `0x0`, `0x0b`) |
//!
//! The last three count events: the transport and the controllers call [`count_term_req`],
//! [`count_error_status`] and [`count_keep_alive_expiry`] on those (rare) paths only; a
//! successful command costs nothing.
//!
//! A controller's counters live as long as the controller: its series end when the host
//! disconnects (Prometheus treats a series that reappears with lower values as a reset).
//!
//! The HTTP side is a few lines on tokio rather than an HTTP framework: one request per
//! connection, `GET /metrics` or 404, request head bounded in size and time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::subsystem::Registry;

/// Event counters of the whole process (the daemon runs one target).
struct Events {
    keep_alive_expiries: AtomicU64,
    /// By FES value; the last slot for values the spec does not define.
    term_reqs: [AtomicU64; 8],
    /// By (SCT << 8) | SC.
    statuses: [AtomicU64; 8 * 256],
}

static EVENTS: Events = Events {
    keep_alive_expiries: AtomicU64::new(0),
    term_reqs: [const { AtomicU64::new(0) }; 8],
    statuses: [const { AtomicU64::new(0) }; 8 * 256],
};

/// A controller was torn down because its keep-alive timer expired.
pub fn count_keep_alive_expiry() {
    EVENTS.keep_alive_expiries.fetch_add(1, Ordering::Relaxed);
}

/// A C2HTermReq with this FES was sent.
pub fn count_term_req(fes: codec::pdu::Fes) {
    let i = usize::from(fes.0).min(7);
    EVENTS.term_reqs[i].fetch_add(1, Ordering::Relaxed);
}

/// A command completed with this (non-success) status.
pub fn count_error_status(status: codec::nvme::Status) {
    let i = (usize::from(status.sct() & 7) << 8) | usize::from(status.sc());
    EVENTS.statuses[i].fetch_add(1, Ordering::Relaxed);
}

/// The target's default metrics address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9420";

/// A request head larger than this is refused.
const HEAD_MAX: usize = 8192;
/// A client has this long to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// What a scrape reads: the registry, and the live connection count.
pub struct Source {
    pub registry: Arc<Registry>,
    pub connections: Box<dyn Fn() -> usize + Send + Sync>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("metrics::Source").finish_non_exhaustive()
    }
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

/// One counter family: `rows` are (labels, value).
fn counters<L: prometheus_client::encoding::EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(L, u64)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        m.encode_family(labels)?
            .encode_counter::<NoLabelSet, u64, u64>(v, None)?;
    }
    Ok(())
}

impl prometheus_client::collector::Collector for Source {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let r = &self.registry;
        let subsystems = r.subsystems();
        let conns = (self.connections)();
        gauge(
            &mut enc,
            "tessera_connections",
            "NVMe/TCP connections being served",
            conns as u64,
        )?;
        gauge(
            &mut enc,
            "tessera_subsystems",
            "NVM subsystems served (discovery not counted)",
            subsystems.len() as u64,
        )?;
        let namespaces: usize = subsystems.values().map(|s| s.namespaces().len()).sum();
        gauge(
            &mut enc,
            "tessera_namespaces",
            "Namespaces served, all subsystems",
            namespaces as u64,
        )?;

        let mut m = enc.encode_descriptor(
            "tessera_controllers",
            "Live controllers per subsystem",
            None,
            MetricType::Gauge,
        )?;
        for s in subsystems.values() {
            let labels = [("subnqn", s.nqn.as_str())];
            ConstGauge::new(s.controllers().len() as u64).encode(m.encode_family(&labels)?)?;
        }

        // Per controller: (labels, counters).
        let ctrls: Vec<_> = subsystems
            .values()
            .flat_map(|s| s.controllers())
            .map(|c| {
                let nqn = c.subsys.as_ref().map(|s| s.nqn.clone()).unwrap_or_default();
                let labels = vec![
                    ("subnqn".to_string(), nqn),
                    ("cntlid".to_string(), c.cntlid.to_string()),
                    ("hostnqn".to_string(), c.hostnqn.clone()),
                ];
                (labels, c)
            })
            .collect();
        type Field = fn(&crate::controller::ctrl::Counters) -> u64;
        let families: [(&str, &str, Field); 5] = [
            (
                "tessera_controller_read_commands",
                "Read commands completed successfully",
                |c| c.read_cmds.load(Ordering::Relaxed),
            ),
            (
                "tessera_controller_write_commands",
                "Write commands completed successfully",
                |c| c.write_cmds.load(Ordering::Relaxed),
            ),
            (
                "tessera_controller_read_bytes",
                "Bytes read by successful Read commands",
                |c| c.bytes_read.load(Ordering::Relaxed),
            ),
            (
                "tessera_controller_written_bytes",
                "Bytes written by successful Write commands",
                |c| c.bytes_written.load(Ordering::Relaxed),
            ),
            (
                "tessera_controller_io_errors",
                "Read and Write commands the backend failed",
                |c| c.errors.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, field) in families {
            let rows: Vec<_> = ctrls
                .iter()
                .map(|(l, c)| (l.clone(), field(&c.counters)))
                .collect();
            counters(&mut enc, name, help, &rows)?;
        }

        let g = &r.generation;
        gauge(
            &mut enc,
            "tessera_generation",
            "Cluster map generation this server serves (standalone: fixed)",
            g.current(),
        )?;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        counters(
            &mut enc,
            "tessera_generation_mismatches",
            "Commands refused for their generation stamp, by kind",
            &[
                ([("kind", "stale")], load(&g.stale_seen)),
                ([("kind", "behind")], load(&g.behind_seen)),
                ([("kind", "unstamped")], load(&g.unstamped_rejected)),
            ],
        )?;
        counters(
            &mut enc,
            "tessera_generation_checks",
            "Commands checked against the generation",
            &[(NoLabels, load(&g.checked))],
        )?;
        counters(
            &mut enc,
            "tessera_mismatch_reports",
            "Mismatch reports to the manager, by outcome",
            &[
                ([("outcome", "sent")], load(&g.reports_sent)),
                ([("outcome", "dropped")], load(&g.reports_dropped)),
            ],
        )?;
        gauge(
            &mut enc,
            "tessera_discovery_genctr",
            "Discovery log generation counter (moves when subsystems or portals change)",
            r.genctr(),
        )?;

        counters(
            &mut enc,
            "tessera_keep_alive_expiries",
            "Controllers torn down because their keep-alive timer expired",
            &[(NoLabels, EVENTS.keep_alive_expiries.load(Ordering::Relaxed))],
        )?;
        let reasons: Vec<_> = EVENTS
            .term_reqs
            .iter()
            .enumerate()
            .map(|(fes, n)| {
                let fes = codec::pdu::Fes(u16::try_from(fes).unwrap_or(u16::MAX));
                let reason = fes.name().map_or_else(
                    || "other".to_string(),
                    |n| n.to_ascii_lowercase().replace(' ', "_"),
                );
                ([("reason", reason)], n.load(Ordering::Relaxed))
            })
            .filter(|(l, n)| *n > 0 || l[0].1 != "other")
            .collect();
        counters(
            &mut enc,
            "tessera_c2h_term_reqs",
            "C2HTermReq PDUs sent (the connection is then closed), by fatal error status",
            &reasons,
        )?;
        let statuses: Vec<_> = EVENTS
            .statuses
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let n = n.load(Ordering::Relaxed);
                (n > 0).then(|| {
                    let labels = [
                        ("sct", format!("{:#x}", i >> 8)),
                        ("sc", format!("{:#04x}", i & 0xff)),
                    ];
                    (labels, n)
                })
            })
            .collect();
        counters(
            &mut enc,
            "tessera_nvme_error_statuses",
            "Commands completed with an error status, by status code type and status code",
            &statuses,
        )
    }
}

/// An empty label set (a family with one unlabelled series).
#[derive(Debug, Clone, Copy)]
struct NoLabels;

impl prometheus_client::encoding::EncodeLabelSet for NoLabels {
    fn encode(
        &self,
        _: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        Ok(())
    }
}

/// The metrics of `source` in the Prometheus text format.
pub fn render(source: Arc<Source>) -> String {
    let mut reg = prometheus_client::registry::Registry::default();
    reg.register_collector(Box::new(source));
    let mut out = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug of ours: say so.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &reg) {
        out = format!("# encoding failed: {e}\n");
    }
    out
}

/// Binds `addr` for [`serve`].
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen for metrics on {addr}: {e}"),
        )
    })
}

/// Serves `GET /metrics` on `listener` until dropped.
pub async fn serve(listener: TcpListener, source: Arc<Source>) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                tokio::spawn(answer(s, Arc::clone(&source)));
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut s: TcpStream, source: Arc<Source>) {
    let mut head = Vec::with_capacity(512);
    let read = tokio::time::timeout(HEAD_TIMEOUT, async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.ok()?;
            if n == 0 || head.len() + n > HEAD_MAX {
                return None;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Some(())
    })
    .await;
    if !matches!(read, Ok(Some(()))) {
        return;
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next(), parts.next());
    let path = path.map(|p| p.split(|&b| b == b'?').next().unwrap_or_default());
    let (status, ctype, body) = match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(source),
        ),
        (Some(b"GET"), _) => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}
