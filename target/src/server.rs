//! Listeners and the target's life: bind every portal, accept connections, stop cleanly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::subsys::Registry;
use crate::transport::{TransportConfig, conn};

/// Connections served at once per target; further ones wait in the kernel's accept backlog.
/// 64 I/O queues + admin per host, a handful of hosts.
pub const CONNECTIONS_MAX: usize = 4096;

/// A running target: its registry, bound portals and a shutdown switch.
pub struct Target {
    pub registry: Arc<Registry>,
    pub addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Target {
    /// Binds every address in `listen` and starts serving. An address with port 0 gets an
    /// ephemeral port (tests); `addrs` holds what was bound.
    pub async fn start(
        registry: Arc<Registry>,
        listen: &[SocketAddr],
        cfg: TransportConfig,
    ) -> std::io::Result<Self> {
        let mut listeners = Vec::new();
        for a in listen {
            let l = TcpListener::bind(a)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {a}: {e}")))?;
            listeners.push(l);
        }
        let (shutdown, _) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut addrs = Vec::new();
        for l in listeners {
            let addr = l.local_addr()?;
            registry.add_listener(addr);
            addrs.push(addr);
            tasks.spawn(accept_loop(
                l,
                Arc::clone(&registry),
                cfg,
                shutdown.subscribe(),
            ));
            tracing::info!(%addr, "listening for NVMe/TCP");
        }
        Ok(Self {
            registry,
            addrs,
            shutdown,
            tasks,
        })
    }

    /// Stops accepting, lets every connection drain its in-flight commands (bounded), then
    /// flushes every volume with a volatile write cache.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        for s in self.registry.subsystems.values() {
            for ns in s.namespaces.values() {
                if let Err(e) = ns.volume.flush().await {
                    tracing::error!(subnqn = %s.nqn, nsid = ns.nsid, error = %e, "flush at exit failed");
                }
            }
        }
    }
}

async fn accept_loop(
    l: TcpListener,
    registry: Arc<Registry>,
    cfg: TransportConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            r = l.accept(), if conns.len() < CONNECTIONS_MAX => match r {
                Ok((stream, peer)) => {
                    conns.spawn(conn::serve(Arc::clone(&registry), stream, peer, cfg, shutdown.clone()));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    drop(l);
    while conns.join_next().await.is_some() {}
}
