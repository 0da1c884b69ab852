//! `--hold-connections N`: opens N controllers (each an admin queue plus `--queues` I/O queues,
//! as a Linux host's `nvme connect` would), keeps them idle, and reports what that costs the
//! target: RSS before and after, and its CPU while they sit idle (keep-alives included).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tessera::initiator::{Controller, ControllerOptions, DEFAULT_IO_SQSIZE, Queue};

use super::report::HoldRecord;
use super::stats;

/// Controllers connected at once while building up the set (bounds the connect burst the
/// target sees, like a host bringing up its paths).
const CONNECT_PARALLEL: usize = 16;

/// Time for the target to settle (allocations after the last Connect, first keep-alives)
/// before its RSS is read.
const SETTLE: Duration = Duration::from_secs(1);

pub struct HoldOpts {
    pub addr: SocketAddr,
    pub nqn: String,
    pub hostnqn: String,
    pub controllers: u32,
    pub queues: u16,
    pub time: Duration,
    pub target_pid: u32,
}

async fn connect_one(
    o: &HoldOpts,
    i: u32,
    sqsize: u16,
) -> Result<(Controller, Vec<Queue>), String> {
    let copts = ControllerOptions::default();
    // One host NQN per controller, as many hosts (or `nvme connect` runs) would have.
    let hostnqn = format!("{}-{i}", o.hostnqn);
    let c = Controller::connect(o.addr, &o.nqn, &hostnqn, &copts)
        .await
        .map_err(|e| format!("controller {i}: connect: {e}"))?;
    c.enable()
        .await
        .map_err(|e| format!("controller {i}: enable: {e}"))?;
    let granted = c
        .set_num_queues(o.queues)
        .await
        .map_err(|e| format!("controller {i}: number of queues: {e}"))?;
    let mut qs = Vec::new();
    for qid in 1..=o.queues.min(granted) {
        qs.push(
            c.connect_io_queue(qid, sqsize)
                .await
                .map_err(|e| format!("controller {i}: I/O queue {qid}: {e}"))?,
        );
    }
    Ok((c, qs))
}

pub async fn run(o: &HoldOpts) -> Result<HoldRecord, String> {
    let rss = |what: &str| {
        stats::proc_rss_kib(o.target_pid)
            .map_err(|e| format!("target RSS {what}: /proc/{}: {e}", o.target_pid))
    };
    let rss_before_kib = rss("before")?;
    let sqsize = DEFAULT_IO_SQSIZE;
    let mut held = Vec::new();
    let mut next = 0u32;
    while next < o.controllers {
        let batch = (next..o.controllers).take(CONNECT_PARALLEL);
        let got = futures::future::try_join_all(batch.map(|i| connect_one(o, i, sqsize))).await?;
        next += u32::try_from(got.len()).unwrap_or(u32::MAX);
        held.extend(got);
    }
    tokio::time::sleep(SETTLE).await;
    let rss_after_kib = rss("after")?;
    let cpu0 = stats::proc_cpu_ns(o.target_pid).map_err(|e| format!("target CPU: {e}"))?;
    let t0 = Instant::now();
    tokio::time::sleep(o.time).await;
    let cpu1 = stats::proc_cpu_ns(o.target_pid).map_err(|e| format!("target CPU: {e}"))?;
    let wall = t0.elapsed();
    // Every connection must still be up: an idle one the target dropped measures nothing.
    for (c, qs) in &held {
        if c.admin().is_closed() || qs.iter().any(Queue::is_closed) {
            return Err(format!(
                "the target closed controller {}'s connections while idle",
                c.cntlid()
            ));
        }
    }
    let tcp_connections: usize = held.iter().map(|(_, qs)| 1 + qs.len()).sum();
    let io_queues = held.first().map_or(0, |(_, qs)| qs.len());
    for (c, qs) in held {
        for q in qs {
            q.close().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), c.disconnect()).await;
    }
    Ok(HoldRecord {
        controllers: o.controllers,
        io_queues: u16::try_from(io_queues).unwrap_or(u16::MAX),
        queue_size: u32::from(sqsize) + 1,
        tcp_connections: u32::try_from(tcp_connections).unwrap_or(u32::MAX),
        rss_before_kib,
        rss_after_kib,
        seconds: wall.as_secs_f64(),
        target_cpu_pct: 100.0 * cpu1.saturating_sub(cpu0) as f64 / wall.as_nanos() as f64,
    })
}
