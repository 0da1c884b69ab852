//! What the next I/O is: its direction (the `--rw` mode and `--mix`) and its offset (sequential,
//! or uniformly random from a seeded xorshift), always a whole, aligned `--bs` unit inside the
//! namespace.

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// `--rw`: the access pattern, as spdk_nvme_perf's `-w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RwMode {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Uniformly random reads.
    Randread,
    /// Uniformly random writes.
    Randwrite,
    /// Uniformly random, `--mix` percent reads.
    Randrw,
}

impl RwMode {
    pub fn is_random(self) -> bool {
        matches!(self, Self::Randread | Self::Randwrite | Self::Randrw)
    }

    /// Percentage of reads: 100, 0, or the mix for randrw.
    pub fn read_pct(self, mix: u8) -> u8 {
        match self {
            Self::Read | Self::Randread => 100,
            Self::Write | Self::Randwrite => 0,
            Self::Randrw => mix.min(100),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Randread => "randread",
            Self::Randwrite => "randwrite",
            Self::Randrw => "randrw",
        }
    }
}

/// xorshift64* (Vigna, "An experimental exploration of Marsaglia's xorshift generators", 2016):
/// fast, seedable, and plenty for choosing offsets (not for anything cryptographic).
#[derive(Debug, Clone)]
pub struct XorShift64 {
    state: u64,
}

impl XorShift64 {
    /// A generator for `seed`; the seed is spread with splitmix64 so that nearby seeds give
    /// unrelated streams, and 0 (xorshift's one fixed point) cannot occur.
    pub fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Self {
            state: if z == 0 { 0x2545_F491_4F6C_DD1D } else { z },
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0) by Lemire's multiply-shift: no division, bias below 2^-64 * n.
    pub fn below(&mut self, n: u64) -> u64 {
        let wide = u128::from(self.next_u64()) * u128::from(n);
        // The high half of a 64x64 product fits in 64 bits.
        u64::try_from(wide >> 64).unwrap_or(0)
    }
}

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Read,
    Write,
}

/// Chooses units (`bs`-sized, `bs`-aligned pieces of the namespace) and directions.
///
/// A unit is a logical index `0..units`; [`Workload::offset`] maps it to the namespace. Without
/// [`Workload::restrict`] that is the unit at the same place; restricted to some byte ranges
/// (`--extents`: the extents one server leads, say), logical units walk the whole units inside
/// those ranges in order, so sequential modes, random offsets and `--verify`'s version map all
/// work unchanged on the chosen part of the namespace.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Whole `bs` units the workload may touch (the tail smaller than `bs` is never touched).
    units: u64,
    /// With [`Workload::restrict`]: `(first logical unit, first namespace unit)` of each
    /// segment, sorted; a segment runs to the next one's first logical unit (the last to
    /// `units`). Empty: logical unit = namespace unit.
    segments: Vec<(u64, u64)>,
    bs: u64,
    random: bool,
    read_pct: u8,
    next_seq: u64,
    rng: XorShift64,
}

impl Workload {
    /// `ns_bytes` of namespace, `bs`-byte I/Os. Fails when not even one unit fits.
    pub fn new(ns_bytes: u64, bs: u64, mode: RwMode, mix: u8, seed: u64) -> Result<Self, String> {
        if bs == 0 {
            return Err("block size 0".into());
        }
        let units = ns_bytes / bs;
        if units == 0 {
            return Err(format!(
                "namespace of {ns_bytes} bytes holds no {bs}-byte block"
            ));
        }
        Ok(Self {
            units,
            segments: Vec::new(),
            bs,
            random: mode.is_random(),
            read_pct: mode.read_pct(mix),
            next_seq: 0,
            rng: XorShift64::new(seed),
        })
    }

    /// Restricts the workload to the whole units inside `ranges` (byte `(start, len)` pairs of
    /// the namespace, sorted and not overlapping, e.g. extents). Fails when they hold no unit.
    pub fn restrict(&mut self, ranges: &[(u64, u64)]) -> Result<(), String> {
        let ns_units = self.units;
        let mut segments = Vec::new();
        let mut logical = 0u64;
        let mut prev_end = 0u64;
        for &(start, len) in ranges {
            let end = start
                .checked_add(len)
                .ok_or_else(|| format!("range {start}+{len} overflows"))?;
            if start < prev_end {
                return Err(format!("range at byte {start} overlaps the one before"));
            }
            prev_end = end;
            let first = start.div_ceil(self.bs);
            let last = (end / self.bs).min(ns_units);
            if last > first {
                segments.push((logical, first));
                logical += last - first;
            }
        }
        if logical == 0 {
            return Err(format!(
                "the chosen ranges hold no whole {}-byte block of the namespace",
                self.bs
            ));
        }
        self.units = logical;
        self.segments = segments;
        self.next_seq = 0;
        Ok(())
    }

    /// Restrict the workload to the first `max` units (verify keeps a version per unit).
    pub fn limit_units(&mut self, max: u64) {
        self.units = self.units.min(max.max(1));
    }

    pub fn units(&self) -> u64 {
        self.units
    }

    /// The next unit: sequential wraps at the end of the namespace.
    pub fn next_unit(&mut self) -> u64 {
        if self.random {
            self.rng.below(self.units)
        } else {
            let u = self.next_seq;
            self.next_seq = if u + 1 >= self.units { 0 } else { u + 1 };
            u
        }
    }

    /// The direction of the next I/O.
    pub fn next_dir(&mut self) -> Dir {
        match self.read_pct {
            100 => Dir::Read,
            0 => Dir::Write,
            p => {
                if self.rng.below(100) < u64::from(p) {
                    Dir::Read
                } else {
                    Dir::Write
                }
            }
        }
    }

    /// Byte offset in the namespace of logical `unit`.
    pub fn offset(&self, unit: u64) -> u64 {
        if self.segments.is_empty() {
            return unit * self.bs;
        }
        // The last segment starting at or before `unit` (the first starts at 0).
        let k = self
            .segments
            .partition_point(|&(logical, _)| logical <= unit)
            .saturating_sub(1);
        let (logical, first) = self.segments.get(k).copied().unwrap_or((0, 0));
        (first + (unit - logical)) * self.bs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_offsets_are_aligned_and_in_range() {
        // A namespace that is not a whole number of blocks: the tail is never touched.
        let ns = 10 * 131_072 + 4096;
        for bs in [512u64, 4096, 131_072] {
            let mut w = Workload::new(ns, bs, RwMode::Randread, 50, 7).expect("fits");
            let mut seen_last = false;
            for _ in 0..100_000 {
                let u = w.next_unit();
                let off = w.offset(u);
                assert_eq!(off % bs, 0, "aligned to bs");
                assert!(off + bs <= ns, "inside the namespace");
                seen_last |= u == w.units() - 1;
            }
            assert!(seen_last, "the last unit is reachable");
        }
    }

    #[test]
    fn sequential_wraps() {
        let mut w = Workload::new(3 * 4096, 4096, RwMode::Read, 0, 1).expect("fits");
        let got: Vec<u64> = (0..7).map(|_| w.next_unit()).collect();
        assert_eq!(got, [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(w.next_dir(), Dir::Read);
    }

    #[test]
    fn seeded_and_mixed() {
        let mut a = Workload::new(1 << 30, 4096, RwMode::Randrw, 70, 42).expect("fits");
        let mut b = Workload::new(1 << 30, 4096, RwMode::Randrw, 70, 42).expect("fits");
        let mut reads = 0;
        for _ in 0..10_000 {
            assert_eq!(a.next_unit(), b.next_unit(), "same seed, same stream");
            let d = a.next_dir();
            assert_eq!(d, b.next_dir());
            reads += usize::from(d == Dir::Read);
        }
        assert!((6_500..7_500).contains(&reads), "about 70% reads: {reads}");
        assert!(Workload::new(100, 4096, RwMode::Read, 0, 1).is_err());
    }

    #[test]
    fn restricted_to_ranges() {
        let mb = 1u64 << 20;
        // A 10 MiB namespace, 128 KiB blocks; two ranges, the second not aligned to the block
        // at either end and running past the end of the namespace.
        let mut w = Workload::new(10 * mb, 131_072, RwMode::Randwrite, 0, 3).expect("fits");
        w.restrict(&[(mb, mb), (4 * mb + 4096, 20 * mb)])
            .expect("holds blocks");
        // 8 blocks in [1, 2) MiB; [4 MiB + 4 KiB, 10 MiB): blocks 33..80, 47 of them.
        assert_eq!(w.units(), 8 + 47);
        assert_eq!(w.offset(0), mb);
        assert_eq!(w.offset(7), 2 * mb - 131_072);
        assert_eq!(w.offset(8), 33 * 131_072);
        assert_eq!(w.offset(54), 79 * 131_072);
        let mut seen = [false; 55];
        for _ in 0..20_000 {
            let u = w.next_unit();
            let off = w.offset(u);
            let inside = (mb..2 * mb).contains(&off) || (4 * mb + 4096..10 * mb).contains(&off);
            assert!(inside && off + 131_072 <= 10 * mb, "offset {off}");
            seen[usize::try_from(u).expect("small")] = true;
        }
        assert!(seen.iter().all(|&s| s), "every chosen block is reachable");
        // Sequential walks the ranges in order and wraps.
        let mut s = Workload::new(10 * mb, mb, RwMode::Write, 0, 1).expect("fits");
        s.restrict(&[(2 * mb, 2 * mb), (7 * mb, mb)])
            .expect("holds");
        let got: Vec<u64> = (0..4)
            .map(|_| {
                let u = s.next_unit();
                s.offset(u) / mb
            })
            .collect();
        assert_eq!(got, [2, 3, 7, 2]);
        // Nothing whole inside, or overlapping ranges: refused.
        let mut e = Workload::new(10 * mb, mb, RwMode::Read, 0, 1).expect("fits");
        assert!(e.restrict(&[(mb + 512, mb)]).is_err());
        assert!(e.restrict(&[(0, 2 * mb), (mb, mb)]).is_err());
        assert!(e.restrict(&[]).is_err());
    }

    #[test]
    fn below_is_roughly_uniform() {
        let mut r = XorShift64::new(0);
        let mut buckets = [0u32; 8];
        for _ in 0..80_000 {
            let i = usize::try_from(r.below(8)).expect("below 8");
            buckets[i] += 1;
        }
        assert!(
            buckets.iter().all(|&b| (9_000..11_000).contains(&b)),
            "{buckets:?}"
        );
    }
}
