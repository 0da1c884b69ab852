//! The real `tessera-target`'s Prometheus endpoint (`--metrics ADDR`): a scrape parsed with a
//! Prometheus text-format parser agrees with the I/O a host just did, and with the layout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use codec::nvme::Status;
use codec::pdu::{H2CData, Pdu};
use tessera_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEADLINE: Duration = Duration::from_secs(30);

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts the target with its NVMe/TCP listener and its metrics on two fresh ports; retries
/// when one was taken meanwhile. Returns the daemon, the NVMe/TCP address and the metrics one.
async fn start(dir: &std::path::Path) -> (Daemon, SocketAddr, SocketAddr) {
    for attempt in 0..5 {
        let (port, mport) = (daemon_port(), daemon_port());
        let layout = dir.join(format!("layout{attempt}.yaml"));
        std::fs::write(
            &layout,
            STD_YAML.replace("port: 4420", &format!("port: {port}")),
        )
        .unwrap();
        let log = dir.join(format!("target{attempt}.stderr"));
        let child = Command::new(target_bin())
            .arg("--config")
            .arg(&layout)
            .arg("--metrics")
            .arg(format!("127.0.0.1:{mport}"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn tessera-target");
        let mut d = Daemon(child);
        let t0 = Instant::now();
        loop {
            if d.0.try_wait().unwrap().is_some() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                assert!(text.contains("in use"), "daemon exited at start:\n{text}");
                break;
            }
            if std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("serving Prometheus metrics")
            {
                return (
                    d,
                    SocketAddr::from(([127, 0, 0, 1], port)),
                    SocketAddr::from(([127, 0, 0, 1], mport)),
                );
            }
            assert!(t0.elapsed() < DEADLINE, "daemon did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("no free ports after 5 tries");
}

/// One HTTP/1.1 request; returns the status line and the body.
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    within("HTTP GET", async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: tessera\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
        (head.lines().next().unwrap().to_string(), body.to_string())
    })
    .await
}

fn scrape(body: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{body}"))
}

/// The value of the one sample named `name` whose labels include `labels`.
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = s
        .samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(v)))
        .map(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: unexpected {other:?}"),
        })
        .collect();
    assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_counts_the_io_a_host_did() {
    let dir = TestDir::new();
    let (_d, addr, maddr) = start(dir.path()).await;

    // Before any host: the layout, no connection.
    let (status, body) = get(maddr, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    let s = scrape(&body);
    assert_eq!(value(&s, "tessera_subsystems", &[]), 1.0);
    assert_eq!(value(&s, "tessera_namespaces", &[]), 3.0);
    assert_eq!(value(&s, "tessera_connections", &[]), 0.0);
    assert_eq!(
        value(&s, "tessera_generation", &[]),
        STANDALONE_GENERATION as f64
    );
    assert_eq!(value(&s, "tessera_controllers", &[("subnqn", SUBNQN)]), 0.0);

    // Known I/O: 3 writes and 5 reads of 8 blocks of 512 bytes.
    let (c, q) = connect_with_io(addr, SUBNQN).await;
    let data = blocks(7, 0, 8, 512);
    for i in 0..3 {
        within("write", q.write(NS_RAM512, i * 8, 512, data.clone(), false))
            .await
            .unwrap();
    }
    for i in 0..5 {
        within("read", q.read(NS_RAM512, (i % 3) * 8, 8, 512))
            .await
            .unwrap();
    }
    let (_, body) = get(maddr, "/metrics").await;
    let s = scrape(&body);
    let me = [("subnqn", SUBNQN), ("hostnqn", HOSTNQN)];
    assert_eq!(
        value(&s, "tessera_controller_write_commands_total", &me),
        3.0
    );
    assert_eq!(
        value(&s, "tessera_controller_read_commands_total", &me),
        5.0
    );
    assert_eq!(
        value(&s, "tessera_controller_written_bytes_total", &me),
        3.0 * 4096.0
    );
    assert_eq!(
        value(&s, "tessera_controller_read_bytes_total", &me),
        5.0 * 4096.0
    );
    assert_eq!(value(&s, "tessera_controller_io_errors_total", &me), 0.0);
    // The same per namespace (nsid 1), with a sampled latency histogram.
    let ns = |op| [("subnqn", SUBNQN), ("nsid", "1"), ("op", op)];
    assert_eq!(
        value(&s, "tessera_namespace_commands_total", &ns("write")),
        3.0
    );
    assert_eq!(
        value(&s, "tessera_namespace_commands_total", &ns("read")),
        5.0
    );
    assert_eq!(
        value(&s, "tessera_namespace_bytes_total", &ns("write")),
        3.0 * 4096.0
    );
    assert_eq!(
        value(&s, "tessera_namespace_bytes_total", &ns("read")),
        5.0 * 4096.0
    );
    let nsid2 = [("subnqn", SUBNQN), ("nsid", "2"), ("op", "read")];
    assert_eq!(value(&s, "tessera_namespace_commands_total", &nsid2), 0.0);
    let hist: Vec<_> = s
        .samples
        .iter()
        .filter(|x| {
            x.metric == "tessera_namespace_latency_seconds"
                && ns("read").iter().all(|(k, v)| x.labels.get(k) == Some(v))
        })
        .collect();
    assert_eq!(hist.len(), 1, "{hist:?}");
    let prometheus_parse::Value::Histogram(buckets) = &hist[0].value else {
        panic!("not a histogram: {:?}", hist[0]);
    };
    let inf = buckets
        .iter()
        .find(|b| b.less_than.is_infinite())
        .expect("a +Inf bucket");
    // The first read of a shard is timed; at most all five are.
    assert!((1.0..=5.0).contains(&inf.count), "{buckets:?}");
    assert!(
        buckets.windows(2).all(|w| w[0].count <= w[1].count),
        "cumulative buckets: {buckets:?}"
    );
    // The admin queue and one I/O queue.
    assert_eq!(value(&s, "tessera_connections", &[]), 2.0);
    assert_eq!(value(&s, "tessera_controllers", &[("subnqn", SUBNQN)]), 1.0);
    assert_eq!(
        value(
            &s,
            "tessera_generation_mismatches_total",
            &[("kind", "stale")]
        ),
        0.0
    );
    assert_eq!(value(&s, "tessera_keep_alive_expiries_total", &[]), 0.0);

    // Errors, counted by kind: a read past the end (LBA Out of Range, SCT 0h SC 80h) and a
    // PDU before ICReq (C2HTermReq, PDU Sequence Error).
    let r = within("read past the end", q.read(NS_RAM512, 1 << 40, 8, 512)).await;
    assert_status(status_of(r), Status::LBA_RANGE, None);
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    let h2c = Pdu::H2CData(H2CData {
        cccid: 1,
        ttag: 5,
        datao: 0,
        last: true,
        data: Bytes::from(vec![0u8; 8]),
    });
    raw.write_all(&encode_host(&h2c, digests(false, false)))
        .await
        .unwrap();
    let mut sink = Vec::new();
    within(
        "the target closes the connection",
        raw.read_to_end(&mut sink),
    )
    .await
    .unwrap();
    let (_, body) = get(maddr, "/metrics").await;
    let s2 = scrape(&body);
    assert_eq!(
        value(
            &s2,
            "tessera_nvme_error_statuses_total",
            &[("sct", "0x0"), ("sc", "0x80")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s2,
            "tessera_c2h_term_reqs_total",
            &[("reason", "pdu_sequence_error")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s2,
            "tessera_c2h_term_reqs_total",
            &[("reason", "header_digest_error")]
        ),
        0.0
    );
    // Every metric the Grafana dashboard queries exists (after the errors above, so that every family has a series).
    let dash = std::fs::read_to_string(workspace_dir().join("dist/grafana/tessera-target.json"))
        .expect("dist/grafana/tessera-target.json");
    let names: std::collections::BTreeSet<String> = dash
        .match_indices("tessera_")
        .map(|(i, _)| {
            dash[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect();
    assert!(names.len() >= 5, "{names:?}");
    for n in &names {
        // The parser folds a histogram's _bucket/_sum/_count series into one sample.
        let base = n.strip_suffix("_bucket").unwrap_or(n);
        assert!(
            s2.samples.iter().any(|x| x.metric == base),
            "the dashboard queries {n}, which the target does not export"
        );
    }

    q.close().await;
    within("disconnect", c.disconnect()).await.unwrap();

    // Anything but /metrics: 404.
    let (status, _) = get(maddr, "/").await;
    assert!(status.contains("404"), "{status}");
}
