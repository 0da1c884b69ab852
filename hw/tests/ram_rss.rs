//! A sparse RAM volume costs memory only for what is written, and deallocate gives it back.
//! Its own test binary (one test) so no other test moves this process's RSS meanwhile.

use hw::{Backend, RamBackend};

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs is mounted");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line in /proc/self/status");
    kib * 1024
}

#[test]
fn sparse_gigabyte_costs_only_what_is_written() {
    const MIB: u64 = 1 << 20;
    let start = rss_bytes();
    let backend = RamBackend::new(1 << 30, false).expect("1 GiB sparse");
    let opened = rss_bytes();
    assert!(
        opened.saturating_sub(start) < 16 * MIB,
        "opening 1 GiB sparse cost {} MiB",
        (opened - start) / MIB
    );

    let chunk = vec![0x5A; 1 << 20];
    for i in 0..64 {
        backend.write_at(i * 64 * MIB / 4, &chunk).expect("write");
    }
    let written = rss_bytes();
    assert!(
        written >= opened + 48 * MIB,
        "64 MiB written, RSS grew {} MiB",
        (written - opened) / MIB
    );

    backend
        .deallocate(0, 1 << 30)
        .expect("deallocate everything");
    let released = rss_bytes();
    assert!(
        released + 48 * MIB <= written,
        "deallocate released only {} MiB",
        written.saturating_sub(released) / MIB
    );
    assert!(common_read_zero(&backend));

    // Write Zeroes over the whole volume (what mkfs does) must not commit it either.
    backend
        .write_zeroes(0, 1 << 30)
        .expect("write zeroes everything");
    let zeroed = rss_bytes();
    assert!(
        zeroed < released + 16 * MIB,
        "write zeroes of 1 GiB cost {} MiB",
        zeroed.saturating_sub(released) / MIB
    );
}

fn common_read_zero(backend: &RamBackend) -> bool {
    let mut buf = vec![0xFF; 1 << 20];
    backend.read_at(16 << 20, &mut buf).expect("read");
    buf.iter().all(|&b| b == 0)
}
