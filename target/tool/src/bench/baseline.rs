//! The limit of this machine: what plain TCP on the same runtime does over loopback, with no
//! NVMe/TCP in the way.
//!
//! * `stream` / `stream-write`: one connection moving bulk data one way, 128 KiB per write
//!   (the size of a 128K read's C2HData), reads of up to 256 KiB (the target's read chunk).
//! * `pingpong`: a 72-byte request (CapsuleCmd: 8-byte header + 64-byte SQE) answered with
//!   4120 bytes (C2HData: 24-byte header + 4096 bytes of data), one exchange at a time: the wire
//!   exchange of a 4K read at QD1 with digests off.
//!
//! * `pingpong-spin`: the same exchange with both ends spinning on non-blocking sockets instead
//!   of sleeping in epoll: what the wire costs without the sleep/wake-up of each side (SPDK
//!   polls; on a VM a wake-up is an inter-processor interrupt and often a VM exit).
//!
//! * `stream-spin` / `stream-write-spin`: the streams with both ends spinning on non-blocking
//!   sockets: the bandwidth limit for a data path that polls (the target polls while I/O flows,
//!   the bench always), so the "vs limit" ratios take the better of the two kinds.
//!
//! The client sends one byte first to say which.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::report::{BaselineMode, BaselineRecord};
use super::stats::{self, Latency};

/// CapsuleCmd of an NVMe command without in-capsule data, digests off (NVMe/TCP 1.0, 3.6.2.3).
pub const PING_LEN: usize = 8 + 64;
/// C2HData carrying 4096 bytes, digests off (NVMe/TCP 1.0, 3.6.2.7).
pub const PONG_LEN: usize = 24 + 4096;
/// One write of the stream: a 128K read's data.
pub const STREAM_CHUNK: usize = 128 * 1024;
/// Largest read of the stream: the target's READ_CHUNK.
pub const STREAM_READ_MAX: usize = 256 * 1024;

const MODE_STREAM: u8 = b'R';
const MODE_STREAM_WRITE: u8 = b'W';
const MODE_PINGPONG: u8 = b'P';
const MODE_PINGPONG_SPIN: u8 = b'S';
const MODE_STREAM_SPIN: u8 = b'r';
const MODE_STREAM_WRITE_SPIN: u8 = b'w';

/// Fills `buf` from a non-blocking socket by spinning (never sleeps).
fn spin_read_exact(s: &mut std::net::TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads what is there (at least one byte, 0 at the end) from a non-blocking socket by
/// spinning.
fn spin_read_some(s: &mut std::net::TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    loop {
        match s.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e),
        }
    }
}

/// Writes all of `buf` to a non-blocking socket by spinning.
fn spin_write_all(s: &mut std::net::TcpStream, buf: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut put = 0;
    while put < buf.len() {
        match s.write(&buf[put..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => put += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Serves baseline connections on `addr` until killed.
pub async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let l = TcpListener::bind(addr).await?;
    eprintln!("bench-baseline-server: listening on {}", l.local_addr()?);
    loop {
        let (s, _) = l.accept().await?;
        tokio::spawn(async move {
            if let Err(e) = serve_one(s).await
                && e.kind() != std::io::ErrorKind::UnexpectedEof
                && e.kind() != std::io::ErrorKind::ConnectionReset
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                eprintln!("bench-baseline-server: {e}");
            }
        });
    }
}

async fn serve_one(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mode = s.read_u8().await?;
    match mode {
        MODE_STREAM => {
            let chunk = vec![0x5au8; STREAM_CHUNK];
            loop {
                s.write_all(&chunk).await?;
            }
        }
        MODE_STREAM_WRITE => {
            let mut buf = vec![0u8; STREAM_READ_MAX];
            while s.read(&mut buf).await? > 0 {}
            Ok(())
        }
        MODE_STREAM_SPIN | MODE_STREAM_WRITE_SPIN => {
            let mut std = s.into_std()?;
            std.set_nonblocking(true)?;
            tokio::task::spawn_blocking(move || {
                if mode == MODE_STREAM_SPIN {
                    let chunk = vec![0x5au8; STREAM_CHUNK];
                    loop {
                        spin_write_all(&mut std, &chunk)?;
                    }
                }
                let mut buf = vec![0u8; STREAM_READ_MAX];
                loop {
                    if spin_read_some(&mut std, &mut buf)? == 0 {
                        return Ok(());
                    }
                }
            })
            .await
            .map_err(std::io::Error::other)?
        }
        MODE_PINGPONG_SPIN => {
            // Spinning blocks the thread: give the connection one of its own (it inherits
            // the process's CPU pinning).
            let mut std = s.into_std()?;
            std.set_nonblocking(true)?;
            tokio::task::spawn_blocking(move || {
                let mut req = [0u8; PING_LEN];
                let resp = vec![0x5au8; PONG_LEN];
                loop {
                    spin_read_exact(&mut std, &mut req)?;
                    spin_write_all(&mut std, &resp)?;
                }
            })
            .await
            .map_err(std::io::Error::other)?
        }
        MODE_PINGPONG => {
            let mut req = [0u8; PING_LEN];
            let resp = vec![0x5au8; PONG_LEN];
            loop {
                s.read_exact(&mut req).await?;
                s.write_all(&resp).await?;
            }
        }
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unknown baseline mode byte {mode:#04x}"),
        )),
    }
}

/// Runs the client side of `mode` against `addr` for `warmup` + `time`.
pub async fn run(
    addr: SocketAddr,
    mode: BaselineMode,
    time: Duration,
    warmup: Duration,
) -> Result<BaselineRecord, String> {
    let io = |what: &'static str| move |e: std::io::Error| format!("baseline {what}: {e}");
    let mut s = TcpStream::connect(addr).await.map_err(io("connect"))?;
    s.set_nodelay(true).map_err(io("nodelay"))?;
    let byte = match mode {
        BaselineMode::Stream => MODE_STREAM,
        BaselineMode::StreamWrite => MODE_STREAM_WRITE,
        BaselineMode::Pingpong => MODE_PINGPONG,
        BaselineMode::PingpongSpin => MODE_PINGPONG_SPIN,
        BaselineMode::StreamSpin => MODE_STREAM_SPIN,
        BaselineMode::StreamWriteSpin => MODE_STREAM_WRITE_SPIN,
    };
    s.write_u8(byte).await.map_err(io("hello"))?;
    let start = Instant::now() + warmup;
    let end = start + time;
    let mut cpu0 = None;
    let mut bytes = 0u64;
    let mut round_trips = 0u64;
    let mut hist = stats::new_histogram();
    // Checking the clock every operation costs ~25 ns against µs-scale operations.
    let window = |now: Instant, cpu0: &mut Option<Duration>| -> Option<bool> {
        if now >= end {
            return None;
        }
        if now >= start && cpu0.is_none() {
            *cpu0 = Some(stats::self_cpu());
        }
        Some(now >= start)
    };
    match mode {
        BaselineMode::Stream => {
            let mut buf = vec![0u8; STREAM_READ_MAX];
            loop {
                let n = s.read(&mut buf).await.map_err(io("read"))?;
                if n == 0 {
                    return Err("baseline server closed the stream".into());
                }
                match window(Instant::now(), &mut cpu0) {
                    None => break,
                    Some(true) => bytes += n as u64,
                    Some(false) => {}
                }
            }
        }
        BaselineMode::StreamWrite => {
            let chunk = vec![0x5au8; STREAM_CHUNK];
            loop {
                s.write_all(&chunk).await.map_err(io("write"))?;
                match window(Instant::now(), &mut cpu0) {
                    None => break,
                    Some(true) => bytes += chunk.len() as u64,
                    Some(false) => {}
                }
            }
        }
        BaselineMode::Pingpong => {
            let req = [0u8; PING_LEN];
            let mut resp = vec![0u8; PONG_LEN];
            loop {
                let t = Instant::now();
                s.write_all(&req).await.map_err(io("write"))?;
                s.read_exact(&mut resp).await.map_err(io("read"))?;
                let now = Instant::now();
                match window(now, &mut cpu0) {
                    None => break,
                    Some(true) => {
                        bytes += (PING_LEN + PONG_LEN) as u64;
                        round_trips += 1;
                        stats::record(&mut hist, now - t);
                    }
                    Some(false) => {}
                }
            }
        }
        BaselineMode::StreamSpin | BaselineMode::StreamWriteSpin => {
            let mut std = s.into_std().map_err(io("into_std"))?;
            std.set_nonblocking(true).map_err(io("nonblocking"))?;
            let chunk = vec![0x5au8; STREAM_CHUNK];
            let mut buf = vec![0u8; STREAM_READ_MAX];
            loop {
                let n = if mode == BaselineMode::StreamSpin {
                    let n = spin_read_some(&mut std, &mut buf).map_err(io("read"))?;
                    if n == 0 {
                        return Err("baseline server closed the stream".into());
                    }
                    n
                } else {
                    spin_write_all(&mut std, &chunk).map_err(io("write"))?;
                    chunk.len()
                };
                match window(Instant::now(), &mut cpu0) {
                    None => break,
                    Some(true) => bytes += n as u64,
                    Some(false) => {}
                }
            }
        }
        BaselineMode::PingpongSpin => {
            let mut std = s.into_std().map_err(io("into_std"))?;
            std.set_nonblocking(true).map_err(io("nonblocking"))?;
            let req = [0u8; PING_LEN];
            let mut resp = vec![0u8; PONG_LEN];
            loop {
                let t = Instant::now();
                spin_write_all(&mut std, &req).map_err(io("write"))?;
                spin_read_exact(&mut std, &mut resp).map_err(io("read"))?;
                let now = Instant::now();
                match window(now, &mut cpu0) {
                    None => break,
                    Some(true) => {
                        bytes += (PING_LEN + PONG_LEN) as u64;
                        round_trips += 1;
                        stats::record(&mut hist, now - t);
                    }
                    Some(false) => {}
                }
            }
        }
    }
    let cpu = stats::self_cpu().saturating_sub(cpu0.unwrap_or_default());
    let secs = time.as_secs_f64();
    Ok(BaselineRecord {
        mode,
        seconds: secs,
        bytes,
        mib_s: bytes as f64 / secs / 1_048_576.0,
        mb_s: bytes as f64 / secs / 1e6,
        gb_s: bytes as f64 / secs / 1e9,
        round_trips,
        rate: round_trips as f64 / secs,
        latency: matches!(mode, BaselineMode::Pingpong | BaselineMode::PingpongSpin)
            .then(|| Latency::from_histogram(&hist)),
        bench_cpu_pct: 100.0 * cpu.as_secs_f64() / secs,
    })
}
