//! A deterministic, seeded simulation of the map protocol (TigerBeetle-style, STYLE.md): the
//! manager (the REAL `manager::coord` state machine and `manager::plan`), storage servers (the
//! REAL `tessera::generation::GenerationState` stamp check around a model of
//! target/src/cluster: install with the gate and the final copy, copy-then-switch, routing),
//! layout-aware clients and hosts, over a network that delays, reorders, drops and duplicates
//! messages, with server and manager crashes and restarts.
//!
//! After every step it checks shared/DESIGN.md's
//! - invariant 1: no command stamped g executes on a server whose generation is not g
//!   (asserted where a command runs, against the model's own record of the installed
//!   generation, so a broken `check` is caught too);
//! - invariant 3: a read after an acknowledged write returns that data or newer, on every path
//!   (checked on every completed read, and in state form: every server holds, for the
//!   extents its own map says it owns, the newest acknowledged data).
//!
//! Seeds: `TESSERA_SIM_SEEDS=<n>` (default 2000 in release builds, 200 in debug ones) runs
//! seeds 0..n; `TESSERA_SIM_SEED=<s>` replays one seed. A failure prints the seed, the step and
//! the last events.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

#[path = "sim/client.rs"]
mod client;
#[path = "sim/install.rs"]
mod install;
#[path = "sim/manager.rs"]
mod manager;
#[path = "sim/mover.rs"]
mod mover;
#[path = "sim/rng.rs"]
mod rng;
#[path = "sim/server.rs"]
mod server;
#[path = "sim/world.rs"]
mod world;

use std::time::Instant;

use world::{Config, Failure, FaultSet, Mutation, Stats, World};

/// Events per seed with faults on (tens of simulated seconds: several moves, crashes and
/// phase-1b timeouts per seed; 2000 seeds stay well under a minute in release).
const STEPS: u64 = 3_000;
const SEEDS_RELEASE: u64 = 2_000;
const SEEDS_DEBUG: u64 = 200;
/// Failing seeds listed before giving up on a run.
const FAILURES_SHOWN: usize = 5;
/// Seeds that found the bugs reported with the tests below.
const SEED_RESTART_IN_1A: u64 = 226;
const SEED_LATE_OLD_OWNER: u64 = 1131;
const SEED_FORGOTTEN_ACKS: u64 = 4;

const REORDER: FaultSet = FaultSet {
    reorder: true,
    long_delays: false,
    drops: false,
    manager_crashes: false,
    server_crashes: false,
};
const LONG_DELAYS: FaultSet = FaultSet {
    long_delays: true,
    ..REORDER
};
const DROPS: FaultSet = FaultSet {
    drops: true,
    ..REORDER
};
const MANAGER_CRASHES: FaultSet = FaultSet {
    manager_crashes: true,
    ..REORDER
};
const SERVER_CRASHES: FaultSet = FaultSet {
    server_crashes: true,
    ..REORDER
};

fn config(faults: FaultSet) -> Config {
    Config {
        steps: STEPS,
        external_clients: 2,
        hosts: 1,
        mutation: Mutation::None,
        check_liveness: false,
        faults,
        state_check: true,
    }
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("TESSERA_SIM_SEED") {
        let seed = s
            .trim()
            .parse()
            .expect("TESSERA_SIM_SEED must be an unsigned integer");
        return vec![seed];
    }
    let n = match std::env::var("TESSERA_SIM_SEEDS") {
        Ok(s) => s
            .trim()
            .parse()
            .expect("TESSERA_SIM_SEEDS must be an unsigned integer"),
        Err(_) if cfg!(debug_assertions) => SEEDS_DEBUG,
        Err(_) => SEEDS_RELEASE,
    };
    (0..n).collect()
}

/// Runs every seed; returns the totals and the first failures.
fn run_all(seeds: &[u64], cfg: Config) -> (Stats, Vec<Failure>) {
    let mut total = Stats::default();
    let mut failures = Vec::new();
    for &seed in seeds {
        match World::new(seed, cfg).run() {
            Ok(s) => total += s,
            Err(f) => {
                failures.push(f);
                if failures.len() >= FAILURES_SHOWN {
                    break;
                }
            }
        }
    }
    (total, failures)
}

/// Runs the seeds of `TESSERA_SIM_SEED(S)`; panics with the first failure (seed, step, trace).
fn check(name: &str, cfg: Config) {
    let seeds = seeds();
    let started = Instant::now();
    let (total, failures) = run_all(&seeds, cfg);
    eprintln!(
        "{name}: {} seeds in {:.1} s: {total:?}",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(first) = failures.first() {
        let others: Vec<u64> = failures.iter().skip(1).map(|f| f.seed).collect();
        panic!("{name}: {first}\n(other failing seeds: {others:?})");
    }
}

/// One seed that found a bug: it must keep failing until the bug is fixed (then this test
/// fails, and the `#[ignore]` comes off).
fn still_fails(seed: u64, cfg: Config, what: &str) {
    match World::new(seed, cfg).run() {
        Ok(_) => panic!("seed {seed} no longer finds the bug ({what}): un-ignore its scenario"),
        Err(f) => {
            eprintln!("{f}");
            assert!(
                f.what.contains(what),
                "seed {seed} fails differently now:\n{f}"
            );
        }
    }
}

/// CI: delays (up to 200 ms, so no server misses a phase-1b deadline), reordering and
/// duplication, with every kind of map change. Green.
#[test]
fn invariants_hold_under_short_delays_reordering_and_duplication() {
    check("reorder", config(REORDER));
}

#[test]
#[ignore = "BUG late-old-owner: see late_old_owner_final_copy_is_refused"]
fn invariants_hold_under_long_delays() {
    check("long delays", config(LONG_DELAYS));
}

#[test]
#[ignore = "BUG late-old-owner: see late_old_owner_final_copy_is_refused"]
fn invariants_hold_under_lost_messages() {
    check("drops", config(DROPS));
}

#[test]
fn invariants_hold_under_manager_crashes() {
    check("manager crashes", config(MANAGER_CRASHES));
}

#[test]
#[ignore = "BUG restart-in-1a: see restart_in_phase_1a_skips_the_final_copy"]
fn invariants_hold_under_server_crashes() {
    check("server crashes", config(SERVER_CRASHES));
}

#[test]
#[ignore = "BUG: restart-in-1a and late-old-owner"]
fn invariants_hold_under_every_fault() {
    check("all faults", config(FaultSet::ALL));
}

/// Healing: once faults stop and every process is back, every durable map must be published
/// and installed within a minute. Not one of DESIGN.md's invariants, but a protocol that wedges
/// keeps clients on stale maps forever.
#[test]
#[ignore = "BUG forgotten-acks: see manager_restart_forgets_phase_1a_acks"]
fn publications_complete_once_faults_stop() {
    check(
        "liveness",
        Config {
            check_liveness: true,
            ..config(FaultSet::ALL)
        },
    );
}

/// BUG restart-in-1a. A server that crashes while it is the old owner of a phase-1a map
/// (copy converged, move-ready sent, writes still arriving and tracked only in RAM) restarts
/// and `cluster::start` fetches `role=server` with its id, which is that phase-1a map; it
/// installs it directly (`Registry::new_cluster(map.generation)`) and acks: no gate, no
/// `mover::finish`, so the writes acknowledged after the copier's last pass never reach the
/// new owner.
#[test]
#[ignore = "BUG restart-in-1a: un-ignore when fixed (this test then fails: it expects the bug)"]
fn restart_in_phase_1a_skips_the_final_copy() {
    still_fails(SEED_RESTART_IN_1A, config(SERVER_CRASHES), "invariant 3");
}

/// BUG late-old-owner. An old owner that missed a phase-1b deadline (still at g-1 while the
/// new owner is at g) gets phase-1a map g+1; `mover::finish` stamps the final copy with its own
/// generation g-1, the new owner answers "stale map", the refresh cannot run (the watch loop is
/// inside this very install) so `wait_for` times out, 20 tries x 4 rounds later `finish` gives
/// up, and `install` installs g+1 and acks anyway: the dirty blocks are lost.
#[test]
#[ignore = "BUG late-old-owner: un-ignore when fixed (this test then fails: it expects the bug)"]
fn late_old_owner_final_copy_is_refused() {
    still_fails(SEED_LATE_OLD_OWNER, config(LONG_DELAYS), "invariant 3");
}

/// BUG forgotten-acks (liveness). A manager restart rebuilds the coordinator with no acks; the
/// publication in progress starts over at phase 1a and waits for old owners that installed it
/// before the crash. Their watch streams reconnect with `after` = that generation, so the
/// 1 s re-send sends nothing, and they never ack again: publishing stops for good (clients
/// stay on the old committed map, whose stamps the old owner refuses).
#[test]
#[ignore = "BUG forgotten-acks: un-ignore when fixed (this test then fails: it expects the bug)"]
fn manager_restart_forgets_phase_1a_acks() {
    still_fails(
        SEED_FORGOTTEN_ACKS,
        Config {
            check_liveness: true,
            ..config(FaultSet::ALL)
        },
        "phase 1a",
    );
}

/// The checks themselves: a server that accepts a stamp one generation old must be caught.
#[test]
fn a_broken_stamp_check_is_caught() {
    let seeds: Vec<u64> = (0..200).collect();
    let cfg = Config {
        mutation: Mutation::AcceptStaleByOne,
        ..config(REORDER)
    };
    let (_, failures) = run_all(&seeds, cfg);
    let caught = failures.iter().find(|f| f.what.contains("invariant 1"));
    assert!(
        caught.is_some(),
        "200 seeds with a stamp check that accepts stale stamps and no invariant-1 failure; \
         failures seen: {:?}",
        failures.iter().map(|f| &f.what).collect::<Vec<_>>()
    );
}

/// The read check on its own (without the state-form check) catches the restart bug too:
/// a client really reads stale data.
#[test]
#[ignore = "BUG restart-in-1a: un-ignore when fixed (this test then fails: it expects the bug)"]
fn a_client_reads_stale_data_after_a_restart_in_phase_1a() {
    let cfg = Config {
        state_check: false,
        ..config(SERVER_CRASHES)
    };
    let seeds: Vec<u64> = (0..2_000).collect();
    let (_, failures) = run_all(&seeds, cfg);
    let read = failures
        .iter()
        .find(|f| f.what.contains("invariant 3: read of"));
    match read {
        Some(f) => eprintln!("{f}"),
        None => panic!("no stale read in 2000 seeds: un-ignore the server-crash scenario"),
    }
}

/// A seed replays exactly.
#[test]
fn a_seed_replays_exactly() {
    let cfg = config(FaultSet::ALL);
    let run = || {
        World::new(7, cfg)
            .run()
            .map(|s| format!("{s:?}"))
            .map_err(|f| f.to_string())
    };
    assert_eq!(run(), run());
}
