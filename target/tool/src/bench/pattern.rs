//! `--verify`: data that says where and when it was written, and the record of what was
//! written last.
//!
//! Every 512-byte sector of a unit starts with `[unit: u64][MAGIC: u32][generation: u32]`
//! (little endian) and is filled with words derived from (unit, generation, word index), so a
//! block that landed at the wrong place, a stale block and a torn block all read differently.
//! The [`VersionMap`] keeps, per unit, the generation of the last acknowledged write (0: never
//! written in this run, content unknown) and which units have an I/O in flight, so that no two
//! commands in flight touch the same unit and a read knows exactly what it must find.

use std::collections::HashSet;

/// Marks our sectors ("TSRA").
pub const MAGIC: u32 = 0x5453_5241;

/// Sector granularity of the header (the smallest LBA size).
pub const SECTOR: usize = 512;

/// Most units verify tracks (4 bytes each: 64 MiB of map); larger namespaces are verified over
/// their first `VERIFY_UNITS_MAX` units.
pub const VERIFY_UNITS_MAX: u64 = 1 << 24;

fn word(unit: u64, generation: u32, i: u64) -> u64 {
    let mut z = unit
        .rotate_left(24)
        .wrapping_add(u64::from(generation).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(i.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    z = (z ^ (z >> 32)).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    z ^ (z >> 32)
}

/// Fills `buf` (a whole number of sectors) with the pattern of (`unit`, `generation`).
pub fn fill(buf: &mut [u8], unit: u64, generation: u32) {
    for (s, sector) in buf.chunks_mut(SECTOR).enumerate() {
        for (w, chunk) in sector.chunks_mut(8).enumerate() {
            let v = match w {
                0 => unit,
                1 => u64::from(MAGIC) | (u64::from(generation) << 32),
                _ => word(unit, generation, (s * SECTOR / 8 + w) as u64),
            };
            let b = v.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
    }
}

/// A mismatch: where, and what the sector's header says was written there instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Byte offset inside the unit of the first differing byte.
    pub at: usize,
    /// Header of the sector holding it: (unit, magic, generation) as found.
    pub found_unit: u64,
    pub found_magic: u32,
    pub found_generation: u32,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.found_magic == MAGIC {
            write!(
                f,
                "first difference at byte {}; that sector holds unit {} generation {}",
                self.at, self.found_unit, self.found_generation
            )
        } else {
            write!(
                f,
                "first difference at byte {}; that sector holds no pattern (magic {:#010x})",
                self.at, self.found_magic
            )
        }
    }
}

/// Checks `data` against the pattern of (`unit`, `generation`).
pub fn check(data: &[u8], unit: u64, generation: u32) -> Result<(), Mismatch> {
    let mut expect = vec![0u8; data.len()];
    fill(&mut expect, unit, generation);
    let Some(at) = data.iter().zip(&expect).position(|(a, b)| a != b) else {
        return Ok(());
    };
    let start = at - at % SECTOR;
    let hdr = |o: usize, n: usize| -> u64 {
        let mut b = [0u8; 8];
        if let Some(src) = data.get(start + o..start + o + n) {
            b[..n].copy_from_slice(src);
        }
        u64::from_le_bytes(b)
    };
    Err(Mismatch {
        at,
        found_unit: hdr(0, 8),
        found_magic: u32::try_from(hdr(8, 4)).unwrap_or(0),
        found_generation: u32::try_from(hdr(12, 4)).unwrap_or(0),
    })
}

/// Last acknowledged generation per unit, and the units with an I/O in flight.
#[derive(Debug)]
pub struct VersionMap {
    generation: Vec<u32>,
    busy: HashSet<u64>,
    next_generation: u32,
}

impl VersionMap {
    pub fn new(units: u64) -> Self {
        let n = usize::try_from(units.min(VERIFY_UNITS_MAX)).unwrap_or(0);
        Self {
            generation: vec![0; n],
            busy: HashSet::new(),
            next_generation: 1,
        }
    }

    /// Claims `unit` for one I/O; false when another I/O holds it.
    pub fn claim(&mut self, unit: u64) -> bool {
        self.busy.insert(unit)
    }

    pub fn release(&mut self, unit: u64) {
        self.busy.remove(&unit);
    }

    /// A fresh generation for a write (never 0, which means "unknown").
    pub fn new_generation(&mut self) -> u32 {
        let g = self.next_generation;
        self.next_generation = self.next_generation.checked_add(1).unwrap_or(1);
        g
    }

    /// What a read of `unit` must find (0: nothing known).
    pub fn expected(&self, unit: u64) -> u32 {
        usize::try_from(unit)
            .ok()
            .and_then(|u| self.generation.get(u))
            .copied()
            .unwrap_or(0)
    }

    /// A write of `generation` to `unit` was acknowledged.
    pub fn written(&mut self, unit: u64, generation: u32) {
        if let Some(g) = usize::try_from(unit)
            .ok()
            .and_then(|u| self.generation.get_mut(u))
        {
            *g = generation;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_round_trips_and_names_the_culprit() {
        let mut b = vec![0u8; 4096];
        fill(&mut b, 17, 3);
        assert_eq!(check(&b, 17, 3), Ok(()));
        // A stale generation.
        let e = check(&b, 17, 4).expect_err("generation differs");
        assert_eq!(
            (e.found_unit, e.found_generation, e.found_magic),
            (17, 3, MAGIC)
        );
        // Data from another unit.
        let mut other = vec![0u8; 4096];
        fill(&mut other, 18, 3);
        assert_eq!(
            check(&other, 17, 3).expect_err("unit differs").found_unit,
            18
        );
        // Zeroes (a null backend).
        let z = vec![0u8; 4096];
        let e = check(&z, 17, 3).expect_err("zeroes");
        assert_eq!(e.found_magic, 0);
        assert!(e.to_string().contains("no pattern"));
        // A torn write: the second sector is older.
        let mut torn = b.clone();
        fill(&mut torn[512..1024], 17, 2);
        assert_eq!(check(&torn, 17, 3).expect_err("torn").at, 512 + 12);
    }

    #[test]
    fn version_map() {
        let mut m = VersionMap::new(4);
        assert!(m.claim(2));
        assert!(!m.claim(2), "one I/O per unit");
        let g = m.new_generation();
        assert_ne!(g, 0);
        m.written(2, g);
        m.release(2);
        assert!(m.claim(2));
        assert_eq!(m.expected(2), g);
        assert_eq!(m.expected(3), 0);
        assert_eq!(m.expected(99), 0, "out of range: unknown");
    }
}
