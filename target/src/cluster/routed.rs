//! A volume routed by the cluster map: each byte range is split at extent boundaries and every
//! piece goes to its extent's owner — this server's pool, or a peer over an internal
//! connection, stamped with this server's generation. On "stale map" / "server behind" the
//! routing server refreshes its map and retries, bounded; the host never sees a vendor status
//! (docs/cluster-protocol.md, "Routing host I/O").

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hw::{IoError, Op};
use manager::map::ClusterMap;

use super::NodeShared;
use super::node::policy;
use super::node::route::{self, Piece, Pieces, Route, SplitError};
use super::peers::{INTERNAL_BLOCK, INTERNAL_NSID};
use super::replica::{self, WriteOp};
use crate::initiator::InitiatorError;
use crate::subsystem::volume::{IoFuture, IoResult, NoPath, Volume, VolumeError};

/// Tries per piece before the host gets a path error (then it retries itself).
pub const ROUTE_TRIES: u32 = policy::ROUTE_TRIES;
/// How long a forwarded piece may take, all tries included, before the host gets a retryable
/// path error (well under a Linux host's 30 s I/O timeout). `tessera-target --forward-timeout`.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
// Backoff between tries: 10 ms doubling to 320 ms (well under Linux's 30 s I/O timeout):
// `node::retry::Retry::route`.

pub struct RoutedVolume {
    node: Arc<NodeShared>,
    /// Shared with each command's future (no copy per command).
    name: Arc<str>,
    size_bytes: u64,
}

enum Target {
    Local(u64),
    Remote {
        server: String,
        addr: std::net::SocketAddr,
        pool_off: u64,
    },
}

/// What is done to every piece of a request (one path for all of them: [`RoutedVolume::route`]).
#[derive(Clone)]
enum PieceIo {
    Read,
    /// The whole request's data; each piece writes its slice of it.
    Write {
        data: Bytes,
        fua: bool,
    },
    Zeroes {
        deallocate: bool,
    },
}

impl RoutedVolume {
    pub fn new(node: Arc<NodeShared>, name: &str, size_bytes: u64) -> Self {
        Self {
            node,
            name: Arc::from(name),
            size_bytes,
        }
    }

    /// The pieces of `[off, off + len)` under the current map (`node::route::split`).
    fn pieces(&self, off: u64, len: u64) -> Result<Pieces, VolumeError> {
        route::split(&self.node.map.load(), &self.name, off, len).map_err(|e| match e {
            SplitError::Unmapped => VolumeError::NoPath(NoPath::Unmapped),
            SplitError::OutOfRange { capacity } => VolumeError::Backend(IoError::OutOfRange {
                op: Op::Read,
                offset: off,
                len,
                capacity,
            }),
        })
    }

    /// Where piece `p` goes under `map`: a write to the extent's primary
    /// (`node::route::locate`), a read to this server's own copy if it has one, else to the
    /// primary (`node::route::locate_read`).
    fn locate(map: &ClusterMap, me: &str, name: &str, p: &Piece, write: bool) -> Option<Target> {
        let route = if write {
            route::locate(map, name, p, me)
        } else {
            route::locate_read(map, name, p, me)
        };
        match route {
            Route::Local { pool_off } => Some(Target::Local(pool_off)),
            Route::Remote { server, pool_off } => Some(Target::Remote {
                server: server.id.clone(),
                addr: server.internal,
                pool_off,
            }),
            Route::NoPath => None,
        }
    }

    /// Runs `io` on every piece of `[offset, offset + len)` in turn, each with routing
    /// retries; read pieces land in `out` (the caller's buffer: no second buffer).
    fn route(
        &self,
        offset: u64,
        len: u64,
        io: PieceIo,
        out: Vec<u8>,
    ) -> impl Future<Output = IoResult<Vec<u8>>> + Send + 'static {
        let node = Arc::clone(&self.node);
        let name = Arc::clone(&self.name);
        let pieces = self.pieces(offset, len);
        async move {
            let mut out = out;
            for p in pieces? {
                let data = Self::with_retries(&node, &name, p, &io).await?;
                if !data.is_empty()
                    && let Some(dst) = out.get_mut(p.buf_off..p.buf_off + data.len())
                {
                    dst.copy_from_slice(&data);
                }
            }
            Ok(out)
        }
    }

    /// One try of `io` on piece `p` at `t`, stamped `generation` and carrying `expires` if
    /// forwarded. A read returns the piece's bytes; anything else an empty buffer.
    async fn piece(
        node: &NodeShared,
        t: Target,
        (generation, expires): (u64, u64),
        p: Piece,
        io: &PieceIo,
    ) -> Result<Bytes, RouteError> {
        let len = usize::try_from(p.len).unwrap_or(0);
        match t {
            // A write here: this server is the extent's primary; it reaches every copy
            // (`replica::write`, the same path as a write routed here by a peer).
            // Without a read lease, a read of our copy is confirmed with the other copies once
            // read (docs/replication.md, "Read leases").
            Target::Local(off) if matches!(io, PieceIo::Read) && !node.lease.valid() => {
                let data = node
                    .pool
                    .read(off, vec![0u8; len])
                    .await
                    .map_err(RouteError::Io)?;
                super::lease::confirm(node, off, p.len).await?;
                Ok(data)
            }
            Target::Local(off) => match io {
                PieceIo::Read => node.pool.read(off, vec![0u8; len]).await,
                PieceIo::Write { data, fua } => {
                    let chunk = data.slice(p.buf_off..p.buf_off + len);
                    let op = WriteOp::Data {
                        data: chunk,
                        fua: *fua,
                    };
                    replica::write(node, off, p.len, op)
                        .await
                        .map(|()| Bytes::new())
                }
                PieceIo::Zeroes { deallocate } => {
                    let op = if *deallocate {
                        WriteOp::Deallocate
                    } else {
                        WriteOp::Zeroes
                    };
                    replica::write(node, off, p.len, op)
                        .await
                        .map(|()| Bytes::new())
                }
            }
            .map_err(RouteError::Io),
            Target::Remote {
                server,
                addr,
                pool_off,
            } => {
                let err = |e| route_err(&server, e);
                // This reactor's polled queue to the peer: the command is written by this
                // task and its completion wakes this task only (initiator/polled.rs).
                let q = node.peers.polled(&server, addr).await.map_err(err)?;
                let stamp = (generation, expires);
                match io {
                    PieceIo::Read => q
                        .read(
                            stamp,
                            INTERNAL_NSID,
                            lba(pool_off),
                            nlb(p.len),
                            INTERNAL_BLOCK,
                        )
                        .await
                        .map_err(err),
                    PieceIo::Write { data, fua } => {
                        let chunk = data.slice(p.buf_off..p.buf_off + len);
                        q.write(
                            stamp,
                            INTERNAL_NSID,
                            lba(pool_off),
                            INTERNAL_BLOCK,
                            chunk,
                            *fua,
                        )
                        .await
                        .map(|()| Bytes::new())
                        .map_err(err)
                    }
                    PieceIo::Zeroes { deallocate } => {
                        let mut left = p.len;
                        let mut at = pool_off;
                        // Write Zeroes NLB is 16 bits: split large ranges.
                        let max = u64::from(crate::initiator::NLB_MAX) * u64::from(INTERNAL_BLOCK);
                        while left > 0 {
                            let n = left.min(max);
                            q.write_zeroes(stamp, INTERNAL_NSID, lba(at), nlb(n), *deallocate)
                                .await
                                .map_err(err)?;
                            left -= n;
                            at += n;
                        }
                        Ok(Bytes::new())
                    }
                }
            }
        }
    }

    /// Runs `io` on one piece with routing retries.
    async fn with_retries(
        node: &Arc<NodeShared>,
        name: &str,
        p: Piece,
        io: &PieceIo,
    ) -> IoResult<Bytes> {
        use super::node::retry::{Answer, Next, Retry};
        let mut retry = Retry::route();
        let mut last = VolumeError::NoPath(NoPath::Unmapped);
        let timeout = node.forward_timeout();
        let deadline = tokio::time::Instant::now() + timeout;
        // Past this wall-clock time (shortly before the deadline) the peer does not start the
        // piece: once the host has its path error, a late write cannot land on blocks it may
        // have written again through another path (docs/cluster-protocol.md, "Bounds").
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let expires = super::node::expires_at(super::wall_clock_ms(), timeout_ms);
        loop {
            // The piece is stamped with the generation of the map it is routed by: an install
            // stores the map just before it moves the server's generation, and a piece routed
            // by the new map but stamped with the old generation would reach a peer whose old
            // map does not let it in.
            let map = node.map.load_full();
            let Some(generation) = retry.next_try(map.generation) else {
                break;
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(last);
            }
            // Marked down, or catching up after a restart: serve nothing (a retryable path
            // error; docs/cluster-protocol.md, "Fencing").
            if !node.admission.serving() {
                return Err(last);
            }
            let write = !matches!(io, PieceIo::Read);
            // An extent whose data is gone: its reads fail for good, wherever its copies are
            // (docs/replication.md, "The last copy"). Writes go through.
            if !write && route::lost(&map, name, &p) {
                return Err(VolumeError::Lost);
            }
            let Some(t) = Self::locate(&map, &node.me, name, &p, write) else {
                return Err(last);
            };
            drop(map);
            let peer = match &t {
                Target::Remote { server, .. } => Some(server.clone()),
                Target::Local(_) => None,
            };
            if peer.is_some() {
                crate::metrics::count_forwarded();
            }
            let answer = match peer {
                // A peer that does not answer in time (hung, or cut off) is given up: its
                // connection is dropped and the host gets a retryable path error.
                Some(server) => {
                    match tokio::time::timeout_at(
                        deadline,
                        Self::piece(node, t, (generation, expires), p, io),
                    )
                    .await
                    {
                        Ok(a) => a,
                        Err(_) => {
                            tracing::warn!(peer = %server, "forwarded command timed out");
                            if replicated(node, name) {
                                replica::report_unreachable(node, &server);
                            }
                            node.peers.drop_peer(&server);
                            node.refresh.notify_one();
                            return Err(last);
                        }
                    }
                }
                None => Self::piece(node, t, (generation, expires), p, io).await,
            };
            let next = match answer {
                Ok(v) => return Ok(v),
                Err(RouteError::Io(e)) => return Err(e),
                Err(RouteError::Generation { server_generation }) => {
                    last = VolumeError::NoPath(NoPath::MapSettling);
                    node.stale_retries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    retry.on_answer(
                        generation,
                        Answer::Mismatch {
                            theirs: server_generation,
                        },
                    )
                }
                Err(RouteError::PathError) => {
                    // The peer (a primary) could not complete it on every copy in time, or
                    // its map does not let us in yet: try again, bounded, keeping the
                    // connection.
                    last = VolumeError::NoPath(NoPath::MapSettling);
                    retry.on_answer(generation, Answer::Lost)
                }
                Err(RouteError::Unreachable(server)) => {
                    if replicated(node, name) {
                        replica::report_unreachable(node, &server);
                    }
                    node.peers.drop_peer(&server);
                    last = VolumeError::NoPath(NoPath::Unreachable);
                    retry.on_answer(generation, Answer::Lost)
                }
            };
            match next {
                // We are behind: ask for the map now and wait for it (bounded).
                Next::WaitFor { generation, ms } => {
                    node.refresh.notify_one();
                    node.registry
                        .generation
                        .wait_for(generation, Duration::from_millis(ms))
                        .await;
                }
                // The peer is behind (it catches up through its own watch stream), or lost.
                Next::Sleep { ms, refresh } => {
                    if refresh {
                        node.refresh.notify_one();
                    }
                    let until =
                        deadline.min(tokio::time::Instant::now() + Duration::from_millis(ms));
                    tokio::time::sleep_until(until).await;
                }
                // (A routed piece never adopts the peer's generation.)
                Next::Now => {}
            }
        }
        Err(last)
    }
}

/// Whether volume `name` keeps several copies (a dead primary of it is reported, so that the
/// manager can hand its extents to the next copy).
fn replicated(node: &NodeShared, name: &str) -> bool {
    node.map.load().volume(name).is_some_and(|v| v.replicas > 1)
}

/// Why one routed piece failed.
pub enum RouteError {
    /// A final answer (media error, out of range...).
    Io(VolumeError),
    /// SC 80h / 81h from the peer, with its generation.
    Generation { server_generation: u64 },
    /// The peer could not be reached.
    Unreachable(String),
    /// The peer answered a path error (Internal Path Error: a primary whose copy's write
    /// failed): retryable.
    PathError,
}

fn route_err(server: &str, e: InitiatorError) -> RouteError {
    match e {
        InitiatorError::Generation {
            server_generation, ..
        } => RouteError::Generation { server_generation },
        InitiatorError::Status(s) if s.same_code(codec::nvme::Status::INTERNAL_PATH_ERROR) => {
            RouteError::PathError
        }
        // The peer's map does not let this server write there (its map and ours disagree
        // for now): a routing failure, never a media error; retried with a fresh map.
        InitiatorError::Status(s) if s.same_code(codec::nvme::Status::ACCESS_DENIED) => {
            RouteError::PathError
        }
        InitiatorError::Status(s) => {
            // A standard status from the peer: keep its class (the host sees a standard one).
            tracing::warn!(peer = server, status = %s, "forwarded command failed on the peer");
            let errno = if s.same_code(codec::nvme::Status::LBA_RANGE) {
                libc::ERANGE
            } else if s.same_code(codec::nvme::Status::CAP_EXCEEDED) {
                libc::ENOSPC
            } else {
                libc::EIO
            };
            if errno == libc::ENOSPC {
                RouteError::Io(VolumeError::Backend(IoError::NoSpace {
                    op: Op::Write,
                    errno,
                }))
            } else {
                RouteError::Io(VolumeError::Backend(IoError::Io {
                    op: Op::Write,
                    errno,
                }))
            }
        }
        _ => RouteError::Unreachable(server.to_string()),
    }
}

fn lba(off: u64) -> u64 {
    off / u64::from(INTERNAL_BLOCK)
}

fn nlb(len: u64) -> u32 {
    u32::try_from(len / u64::from(INTERNAL_BLOCK)).unwrap_or(u32::MAX)
}

impl Volume for RoutedVolume {
    fn len_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn volatile_write_cache(&self) -> bool {
        self.node.pool.volatile_write_cache()
    }

    fn kind(&self) -> &'static str {
        "routed"
    }

    fn read(&self, offset: u64, buf: Vec<u8>) -> IoFuture<Bytes> {
        // The common local case, one piece whose in-sync copy is this server's: the pool's own
        // read into the caller's buffer (inline for RAM), no future of ours, no second buffer.
        // It is the decision `with_retries` makes on its first try, whose answer is final.
        if let Some(pool_off) = self.local_piece(offset, buf.len() as u64) {
            return self.node.pool.read(pool_off, buf);
        }
        let f = self.route(offset, buf.len() as u64, PieceIo::Read, buf);
        IoFuture::Boxed(Box::pin(async move { f.await.map(Bytes::from) }))
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> IoFuture<()> {
        let len = data.len() as u64;
        let f = self.route(offset, len, PieceIo::Write { data, fua }, Vec::new());
        IoFuture::Boxed(Box::pin(async move { f.await.map(drop) }))
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> IoFuture<()> {
        self.zero_like(offset, len, false)
    }

    fn deallocate(&self, offset: u64, len: u64) -> IoFuture<()> {
        self.zero_like(offset, len, true)
    }

    fn flush(&self) -> IoFuture<()> {
        let node = Arc::clone(&self.node);
        let name = Arc::clone(&self.name);
        IoFuture::Boxed(Box::pin(async move {
            node.pool.flush().await?;
            // Peers' pools hold our extents too: flush every server the map names (each
            // flushes its whole pool, which holds every copy it has). For a replicated volume
            // the flush completes only once every server holding a copy flushed: a write
            // acknowledged by a copy must be durable there too (docs/replication.md).
            let map = node.map.load_full();
            let replicated = map.volume(&name).is_some_and(|v| v.replicas > 1);
            for s in &map.servers {
                if s.id == node.me {
                    continue;
                }
                let holds = replicated
                    && s.state != manager::map::ServerState::Down
                    && map.volume(&name).is_some_and(|v| {
                        v.extents.iter().any(|e| {
                            e.replicas
                                .iter()
                                .any(|r| r.server == s.id && r.state.takes_writes())
                        })
                    });
                let g = node.registry.generation.current();
                let flushed = tokio::time::timeout(node.forward_timeout(), async {
                    let q = node.peers.queue(&s.id, s.internal).await?;
                    q.with_generation(g).flush(INTERNAL_NSID).await
                })
                .await;
                if holds && !matches!(flushed, Ok(Ok(()))) {
                    tracing::warn!(peer = %s.id, "flush of a server holding copies failed");
                    return Err(VolumeError::NoPath(NoPath::Unreachable));
                }
            }
            Ok(())
        }))
    }
}

impl RoutedVolume {
    /// Where `[offset, offset + len)` lies in this server's pool when it is one piece read
    /// from this server's own in-sync copy, while this server serves (not of a `lost` extent:
    /// `with_retries` fails those).
    fn local_piece(&self, offset: u64, len: u64) -> Option<u64> {
        // Without a read lease a read is confirmed (`with_retries`); a lease is what makes
        // this path safe for a replicated extent.
        if !self.node.admission.serving() || !self.node.lease.valid() {
            return None;
        }
        let map = self.node.map.load();
        let mut pieces = route::split(&map, &self.name, offset, len).ok()?;
        let p = pieces.next()?;
        if pieces.next().is_some() || route::lost(&map, &self.name, &p) {
            return None;
        }
        match route::locate_read(&map, &self.name, &p, &self.node.me) {
            Route::Local { pool_off } => Some(pool_off),
            Route::Remote { .. } | Route::NoPath => None,
        }
    }

    fn zero_like(&self, offset: u64, len: u64, deallocate: bool) -> IoFuture<()> {
        let f = self.route(offset, len, PieceIo::Zeroes { deallocate }, Vec::new());
        IoFuture::Boxed(Box::pin(async move { f.await.map(drop) }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::cluster::node::fixtures::{self, EXTENT, rep, server};
    use crate::cluster::replica::testing;
    use crate::controller::status::from_volume_error;
    use codec::nvme::Status;
    use manager::map::{ExtentEntry, ServerState};

    /// `vol1` of two single-copy extents on s1, extent 1 marked `lost` when `lost`.
    fn lost_map(lost: bool) -> ClusterMap {
        let e = |off: u64, lost: bool| ExtentEntry {
            replicas: vec![rep("s1", off)],
            moving: None,
            lost,
        };
        fixtures::map(
            3,
            vec![server("s1", ServerState::Up), server("s2", ServerState::Up)],
            vec![e(0, false), e(EXTENT, lost)],
        )
    }

    /// A read touching a lost extent fails with Unrecovered Read Error, DNR, on the server
    /// holding its copy and on one that would forward it; a read of the other extent, and a
    /// write to the lost one, go through (docs/replication.md, "The last copy").
    #[tokio::test]
    async fn a_read_of_a_lost_extent_is_an_unrecovered_read_error_and_others_succeed() {
        let m = lost_map(true);
        let owner = testing::node(&m, "s1", 600);
        let vol = RoutedVolume::new(Arc::clone(&owner), "vol1", 2 * EXTENT);
        // Inside the lost extent, and a range that spans both extents.
        for (off, len) in [(EXTENT, 512), (EXTENT - 512, 1024)] {
            let r = vol.read(off, vec![0u8; len]).await;
            let Err(e) = r else {
                panic!("read of {len} bytes at {off} succeeded on lost data")
            };
            let st = from_volume_error(&e);
            assert_eq!((st.sct(), st.sc()), (0x2, 0x81), "{e}: got {st}");
            assert!(st.dnr(), "{e}: {st} without DNR");
            assert!(st.same_code(Status::UNRECOVERED_READ));
        }
        // The other extent reads.
        let ok = vol.read(0, vec![0u8; 512]).await.expect("extent 0 reads");
        assert_eq!(ok.len(), 512);
        // Writes to the lost extent are accepted.
        vol.write(EXTENT, Bytes::from(vec![9u8; 512]), false)
            .await
            .expect("a write to a lost extent is accepted");
        // A server without a copy fails the read itself, without forwarding (nothing listens
        // at s1's internal address in this test).
        let other = testing::node(&m, "s2", 600);
        let vol2 = RoutedVolume::new(other, "vol1", 2 * EXTENT);
        let e = vol2
            .read(EXTENT, vec![0u8; 512])
            .await
            .expect_err("lost data read through another server");
        assert!(matches!(e, VolumeError::Lost), "{e}");
        // Once the mark is cleared, the blocks read as the pool holds them.
        testing::install(&owner, &{
            let mut c = lost_map(false);
            c.generation = 4;
            c
        });
        let back = vol.read(EXTENT, vec![0u8; 512]).await.expect("cleared");
        assert_eq!(&back[..], &[9u8; 512][..]);
    }

    /// Without a read lease, a read of this server's copy of a replicated extent is confirmed
    /// with the other copy before it is served (docs/replication.md, "Read leases"): with that
    /// copy unreachable the read fails with a retryable path error instead of returning what
    /// may be stale. With the lease it is served from the pool; a single-copy extent is served
    /// without one.
    #[tokio::test]
    async fn without_a_read_lease_a_replicated_read_is_confirmed_with_the_other_copy() {
        let e = |replicas| ExtentEntry {
            replicas,
            moving: None,
            lost: false,
        };
        let mut m = fixtures::map(
            3,
            vec![server("s1", ServerState::Up), server("s2", ServerState::Up)],
            vec![
                e(vec![rep("s1", 0), rep("s2", 0)]),
                e(vec![rep("s1", EXTENT)]),
            ],
        );
        m.volumes[0].replicas = 2;
        let node = testing::node(&m, "s1", 300);
        let vol = RoutedVolume::new(Arc::clone(&node), "vol1", 2 * EXTENT);
        let ok = vol
            .read(0, vec![0u8; 512])
            .await
            .expect("read under a lease");
        assert_eq!(ok.len(), 512);
        node.lease.end();
        // Nothing listens at s2's internal address: the confirmation cannot be had.
        let e = vol
            .read(0, vec![0u8; 512])
            .await
            .expect_err("a replicated read served without a lease or a confirmation");
        let st = from_volume_error(&e);
        assert!(
            st.same_code(Status::INTERNAL_PATH_ERROR) && !st.dnr(),
            "{e}: got {st}"
        );
        let single = vol
            .read(EXTENT, vec![0u8; 512])
            .await
            .expect("a single-copy extent needs no lease");
        assert_eq!(single.len(), 512);
        // The routed path (a peer's read of our copy) is held to the same rule.
        let fan = replica::FanoutPool::new(&node);
        assert!(fan.read(0, vec![0u8; 512]).await.is_err());
        assert!(fan.read(EXTENT, vec![0u8; 512]).await.is_ok());
    }
}
