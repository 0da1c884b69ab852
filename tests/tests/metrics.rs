//! The real `tessera-target`'s Prometheus endpoint (`--metrics ADDR`): a scrape parsed with a
//! Prometheus text-format parser agrees with the I/O a host just did, with the layout, with the
//! commands a queue holds, with failed and successful authentications, and with reloads.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use codec::nvme::Status;
use codec::nvme::cmd::{IoCommand, Rw};
use codec::nvme::fabrics::auth::Secret;
use codec::pdu::{H2CData, Pdu};
use tessera::initiator::{DhchapSecrets, RawEvent};
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

/// Starts the target on `yaml` (its `port: 4420` replaced) with its NVMe/TCP listener and its
/// metrics on two fresh ports; retries when one was taken meanwhile. Returns the daemon, the
/// NVMe/TCP address and the metrics one. The layout file is `dir/layout.yaml`.
async fn start(dir: &std::path::Path, yaml: &str) -> (Daemon, SocketAddr, SocketAddr) {
    for attempt in 0..5 {
        let (port, mport) = (daemon_port(), daemon_port());
        let layout = dir.join("layout.yaml");
        std::fs::write(
            &layout,
            yaml.replace("port: 4420", &format!("port: {port}")),
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

/// Scrapes until `ok` holds (bounded by [`DEADLINE`]); returns that scrape.
async fn scrape_until(
    maddr: SocketAddr,
    what: &str,
    ok: impl Fn(&prometheus_parse::Scrape) -> bool,
) -> prometheus_parse::Scrape {
    let t0 = Instant::now();
    loop {
        let (_, body) = get(maddr, "/metrics").await;
        let s = scrape(&body);
        if ok(&s) {
            return s;
        }
        assert!(t0.elapsed() < DEADLINE, "{what}: never seen in\n{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_counts_the_io_a_host_did() {
    let dir = TestDir::new();
    let (_d, addr, maddr) = start(dir.path(), STD_YAML).await;

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
    // Cluster-mode counters exist on a standalone target, at zero.
    assert_eq!(value(&s, "tessera_forwarded_commands_total", &[]), 0.0);
    for reason in ["unmapped", "unreachable", "map_settling"] {
        let l = [("reason", reason)];
        assert_eq!(value(&s, "tessera_path_errors_total", &l), 0.0);
    }
    for outcome in ["done", "failed", "cancelled"] {
        let l = [("outcome", outcome)];
        assert_eq!(value(&s, "tessera_extent_moves_total", &l), 0.0);
    }

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

    // A write waiting for its data (R2T sent, no H2CData yet) is held by its queue: one command
    // in flight on a second controller's I/O queue; none once that connection is gone.
    let c2 = connect(addr, SUBNQN).await;
    within("queues", c2.set_num_queues(1)).await.unwrap();
    let mut raw = raw_io_queue(&c2, 1, false, false).await;
    let w = IoCommand::Write(Rw::new(NS_RAM512, 0, 8, 0));
    raw.send_pdu(&io_capsule(&w, 9, Bytes::new(), 8 * 512))
        .await
        .unwrap();
    match within("R2T", raw.recv()).await {
        Ok(RawEvent::Pdu(Pdu::R2T(r))) => assert_eq!(r.cccid, 9),
        other => panic!("expected an R2T, got {other:?}"),
    }
    let cntlid = c2.cntlid().to_string();
    let s3 = scrape_until(maddr, "one command in flight", |s| {
        value(s, "tessera_commands_in_flight", &[]) == 1.0
    })
    .await;
    let c2_labels = [("subnqn", SUBNQN), ("cntlid", cntlid.as_str())];
    assert_eq!(value(&s3, "tessera_controller_io_queues", &c2_labels), 1.0);
    let c1 = c.cntlid().to_string();
    let c1_labels = [("subnqn", SUBNQN), ("cntlid", c1.as_str())];
    assert_eq!(value(&s3, "tessera_controller_io_queues", &c1_labels), 1.0);
    drop(raw);
    scrape_until(maddr, "no command in flight", |s| {
        value(s, "tessera_commands_in_flight", &[]) == 0.0
    })
    .await;
    drop(c2);

    q.close().await;
    within("disconnect", c.disconnect()).await.unwrap();

    // Anything but /metrics: 404.
    let (status, _) = get(maddr, "/").await;
    assert!(status.contains("404"), "{status}");
}

/// A layout where [`HOSTNQN`] must authenticate with `dir/host.key`, with `extra` namespaces
/// (nsid 2 on) besides nsid 1.
fn auth_layout(dir: &std::path::Path, extra: u32) -> String {
    let mut y = format!(
        "{PLACEHOLDER_LISTENER}subsystems:
  - nqn: {SUBNQN}
    hosts:
      - nqn: {HOSTNQN}
        dhchap_secret_file: {}
    namespaces:
      - nsid: 1
        backend: {{ kind: ram, size: 1MiB }}
",
        dir.join("host.key").display()
    );
    for nsid in 2..2 + extra {
        y.push_str(&format!(
            "      - nsid: {nsid}\n        backend: {{ kind: ram, size: 1MiB }}\n"
        ));
    }
    y
}

fn sighup(d: &Daemon) {
    let ok = Command::new("kill")
        .args(["-HUP", &d.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentications_and_reloads_are_counted_by_outcome() {
    let dir = TestDir::new();
    let host = Secret::generate(None, 32).unwrap();
    std::fs::write(dir.path().join("host.key"), format!("{}\n", host.to_text())).unwrap();
    let (d, addr, maddr) = start(dir.path(), &auth_layout(dir.path(), 0)).await;
    let port = addr.port();
    let auths = |s: &prometheus_parse::Scrape, outcome| {
        value(
            s,
            "tessera_dhchap_authentications_total",
            &[("outcome", outcome)],
        )
    };
    let reloads = |s: &prometheus_parse::Scrape, outcome| {
        value(s, "tessera_reloads_total", &[("outcome", outcome)])
    };
    let (_, body) = get(maddr, "/metrics").await;
    let s = scrape(&body);
    assert_eq!(auths(&s, "success"), 0.0);
    assert_eq!(auths(&s, "failure"), 0.0);
    assert_eq!(reloads(&s, "applied"), 0.0);
    assert_eq!(reloads(&s, "refused"), 0.0);

    // A wrong secret: one failed transaction (the admin queue's).
    let with = |secret: &Secret| {
        let mut o = ctrl_opts();
        o.dhchap = Some(std::sync::Arc::new(DhchapSecrets {
            host: secret.clone(),
            ctrl: None,
        }));
        o
    };
    let wrong = Secret::generate(None, 32).unwrap();
    let r = connect_as(addr, SUBNQN, HOSTNQN, &with(&wrong)).await;
    assert!(r.is_err(), "a wrong secret authenticated");
    // The right one: the admin queue and the I/O queue each authenticate.
    let c = connect_as(addr, SUBNQN, HOSTNQN, &with(&host))
        .await
        .expect("authenticated connect");
    let qs = io_queues(&c, 1).await;
    let (_, body) = get(maddr, "/metrics").await;
    let s = scrape(&body);
    assert_eq!(auths(&s, "failure"), 1.0);
    assert_eq!(auths(&s, "success"), 2.0);

    // A layout with an error is refused (nothing changes); a good one is applied.
    let layout = dir.path().join("layout.yaml");
    std::fs::write(&layout, "subsystems: [\n").unwrap();
    sighup(&d);
    let s = scrape_until(maddr, "a refused reload", |s| reloads(s, "refused") == 1.0).await;
    assert_eq!(reloads(&s, "applied"), 0.0);
    assert_eq!(value(&s, "tessera_namespaces", &[]), 1.0);
    let good = auth_layout(dir.path(), 1).replace("port: 4420", &format!("port: {port}"));
    std::fs::write(&layout, good).unwrap();
    sighup(&d);
    scrape_until(maddr, "an applied reload", |s| reloads(s, "applied") == 1.0).await;
    // A scrape is not one atomic snapshot: the one that first shows the reload counted may
    // have read the namespace gauge just before the reload applied. The counter moves after
    // the change is in force, so a scrape begun after seeing it must show the change.
    let (_, body) = get(maddr, "/metrics").await;
    let s = scrape(&body);
    assert_eq!(reloads(&s, "applied"), 1.0);
    assert_eq!(reloads(&s, "refused"), 1.0);
    assert_eq!(value(&s, "tessera_namespaces", &[]), 2.0);
    // The connection the reload does not concern is still there.
    let got = within("read after the reload", qs[0].read(1, 0, 8, 512)).await;
    assert!(got.is_ok(), "{got:?}");
    drop(qs);
    drop(c);
}
