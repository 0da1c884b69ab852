//! A deterministic, seeded simulation of the map protocol (seeded, TigerBeetle-style): the
//! manager (the REAL `manager::coord` state machine and `manager::plan`), storage servers (the
//! REAL storage-server node, `tessera::cluster::node`: the rules `boot`, `lost_extents`,
//! `Ownership::admit`, `frozen`, `policy::*`; a command's admission, `admission::step` (gate,
//! stamp check, behind-wait, fencing rule; the stamp counted by the REAL
//! `tessera::cluster::generation::GenerationState`); the router, `route::split`/`locate`; and
//! its state machines: `watch::Watch`, the watch loop (next map, fetches, re-acks, postponed
//! installs, the fence), `install::Install`, the install of a map with the gate and the final
//! copy, `copier::Copier`, copy-then-switch, and `retry::Retry`; around a shell that only
//! carries out their actions on simulated time, network and pool), layout-aware clients and
//! hosts, over a network
//! that delays, reorders, drops and duplicates messages, with server and manager crashes and
//! restarts, and (scenario `hangs`) hung servers that the operator marks down, then resumes or
//! restarts from their durable pool, and marks up.
//!
//! After every step it checks docs/cluster-protocol.md's
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
//!
//! Fixed bugs, kept as regression tests: late-old-owner, forgotten-acks, an added extent's
//! switch not given back (seed 173 of healing with hangs), postponed-install-never-retried (a healing run that wedges on it again says
//! so) and restart-in-1a (the model boots a restarted server from its persisted map; with
//! `Mutation::BootAtFetchedMap` it boots at the fetched map as before the fix, records each
//! occurrence, and labels a failure on an extent it hit "after known bug restart-in-1a").
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
/// phase-1b timeouts per seed; 2000 seeds take about 4 s per scenario in release).
const STEPS: u64 = 3_000;
const SEEDS_RELEASE: u64 = 2_000;
const SEEDS_DEBUG: u64 = 200;
/// Failing seeds listed before giving up on a run.
const FAILURES_SHOWN: usize = 5;
/// Seeds that found the bugs reported with the tests below.
const SEED_RESTART_IN_1A: u64 = 311;
/// The seeds (of 0..2000, SERVER_CRASHES, state check off) where restart-in-1a made a client
/// read stale data (rescanned when the move-ready check reshuffled the traces: 311 no longer
/// reads stale data with the restart booting at the fetched map; 532 does).
const SEEDS_STALE_READ: [u64; 3] = [532, 569, 672];
const SEED_LATE_OLD_OWNER: u64 = 1131;
/// A seed whose late old owner's final copy adopts the new owner's generation under the
/// current model (seeds do not carry over when the model changes: 1131 no longer does, nor
/// 70 since a final pass starts no try past its install's budget, nor 50 since the manager
/// switches a move only once its destination acked it).
const SEED_STAMP_ADOPTED: u64 = 83;
const SEED_FORGOTTEN_ACKS: u64 = 4;
const SEED_POSTPONED: u64 = 36;
/// Healing with hangs: a switch of an extent added behind a stuck switch, to a hung server
/// marked down, was not given back (a trace of the manager before the move-ready check, which
/// refuses the forged move-readies it needs: run with `Mutation::SwitchBeforeDestAck`).
const SEED_ADDED_EXTENT: u64 = 173;
/// Seeds (of `HANGS`) on which the hung-server scenario loses an acknowledged write without
/// the source rule, and without the freeze fence (first of 0..2000 with the move-ready check).
const SEED_NO_SOURCE_RULE: u64 = 780;
const SEED_NO_FREEZE_FENCE: u64 = 1;
/// Healing with hangs: an install's final pass to a hung new owner kept its gate closed over
/// a minute (docs/cluster-protocol.md, "Bounds"), then wedged on a forged switch.
const SEED_UNBOUNDED_GATE: u64 = 442;
/// A seed whose trace, with `Mutation::UnboundedFinalPass`, keeps a gate closed beyond its
/// bound now that seed 442's does not.
const SEED_UNBOUNDED_GATE_NOW: u64 = 732;
/// The label the model puts on a failure of an extent that restart-in-1a hit.
const RESTART_IN_1A: &str = "after known bug restart-in-1a";

const REORDER: FaultSet = FaultSet {
    reorder: true,
    long_delays: false,
    drops: false,
    manager_crashes: false,
    server_crashes: false,
    spare_old_owners: false,
    hangs: false,
};
/// Hung servers marked down by the operator, resumed or restarted from their durable pool,
/// marked up again (docs/cluster-protocol.md, "Fencing").
const HANGS: FaultSet = FaultSet {
    hangs: true,
    ..REORDER
};
const ALL_WITH_HANGS: FaultSet = FaultSet {
    hangs: true,
    ..FaultSet::ALL
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
/// Server crashes, except of a server that may be an old owner in phase 1a (the variant CI ran
/// while restart-in-1a was open; kept: it crashes the other servers more often).
const SERVER_CRASHES_OUTSIDE_1A: FaultSet = FaultSet {
    spare_old_owners: true,
    ..SERVER_CRASHES
};
const ALL_OUTSIDE_1A: FaultSet = FaultSet {
    spare_old_owners: true,
    ..FaultSet::ALL
};
const NO_SERVER_CRASHES: FaultSet = FaultSet {
    server_crashes: false,
    ..FaultSet::ALL
};
/// Healing runs in CI (release; `TESSERA_SIM_SEED(S)` overrides).
const LIVENESS_SEEDS: u64 = 300;

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

fn liveness(faults: FaultSet) -> Config {
    Config {
        check_liveness: true,
        ..config(faults)
    }
}

/// `release` seeds by default in release builds (at most [`SEEDS_DEBUG`] in debug ones).
fn seeds_or(release: u64) -> Vec<u64> {
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
        Err(_) if cfg!(debug_assertions) => SEEDS_DEBUG.min(release),
        Err(_) => release,
    };
    (0..n).collect()
}

/// Runs every seed; returns the totals and the failures (at most `limit`).
fn run_all(seeds: &[u64], cfg: Config, limit: usize) -> (Stats, Vec<Failure>) {
    let mut total = Stats::default();
    let mut failures = Vec::new();
    for &seed in seeds {
        match World::new(seed, cfg).run() {
            Ok(s) => total += s,
            Err(f) => {
                failures.push(f);
                if failures.len() >= limit {
                    break;
                }
            }
        }
    }
    (total, failures)
}

/// Runs the seeds of `TESSERA_SIM_SEED(S)`; panics with the first failure (seed, step, trace).
fn check(name: &str, cfg: Config) {
    check_n(name, cfg, SEEDS_RELEASE);
}

fn check_n(name: &str, cfg: Config, release_seeds: u64) {
    let seeds = seeds_or(release_seeds);
    let started = Instant::now();
    let (total, failures) = run_all(&seeds, cfg, FAILURES_SHOWN);
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

/// One seed that must fail with `what`: a bug not fixed yet (its test fails once it is, and
/// the `#[ignore]` comes off), or a fixed one that a mutation puts back (the regression test
/// is not vacuous).
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

/// One seed that found a bug that is now fixed: it must pass.
fn now_passes(seed: u64, cfg: Config) -> Stats {
    match World::new(seed, cfg).run() {
        Ok(s) => {
            eprintln!("seed {seed}: {s:?}");
            s
        }
        Err(f) => panic!("seed {seed} finds its bug again:\n{f}"),
    }
}

/// CI: delays (up to 200 ms, so no server misses a phase-1b deadline), reordering and
/// duplication, with every kind of map change.
#[test]
fn invariants_hold_under_short_delays_reordering_and_duplication() {
    check("reorder", config(REORDER));
}

/// CI: delays of seconds (servers miss phase-1b deadlines: late old owners).
#[test]
fn invariants_hold_under_long_delays() {
    check("long delays", config(LONG_DELAYS));
}

/// CI: lost messages and broken watch streams.
#[test]
fn invariants_hold_under_lost_messages() {
    check("drops", config(DROPS));
}

/// CI: manager crashes and restarts.
#[test]
fn invariants_hold_under_manager_crashes() {
    check("manager crashes", config(MANAGER_CRASHES));
}

/// CI: server crashes and restarts, except of a server that is (or may become while down)
/// the old owner in a phase-1a map (those hit restart-in-1a before its fix).
#[test]
fn invariants_hold_under_server_crashes_outside_phase_1a() {
    check(
        "server crashes outside 1a",
        config(SERVER_CRASHES_OUTSIDE_1A),
    );
}

/// CI: every fault, with server crashes as above.
#[test]
fn invariants_hold_under_every_fault_outside_phase_1a() {
    check("all faults outside 1a", config(ALL_OUTSIDE_1A));
}

/// CI, healing: once faults stop and every process is back, every durable map must be
/// published and installed within a minute. Not one of docs/cluster-protocol.md's invariants, but a protocol
/// that wedges keeps clients on stale maps forever. Every fault but server crashes (see
/// `publications_complete_once_faults_stop_outside_phase_1a`); a healing run costs about
/// ten faulty ones, so CI runs [`LIVENESS_SEEDS`] seeds.
#[test]
fn publications_complete_once_faults_stop_without_server_crashes() {
    check_n(
        "liveness without server crashes",
        liveness(NO_SERVER_CRASHES),
        LIVENESS_SEEDS,
    );
}

/// CI, healing with every fault, server crashes included but not during phase 1a as an old
/// owner (restart-in-1a before its fix). A postponed install is retried a second later
/// (`cluster::POSTPONED_RETRY`); without that retry seed 36 wedged here.
#[test]
fn publications_complete_once_faults_stop_outside_phase_1a() {
    check_n(
        "liveness outside 1a",
        liveness(ALL_OUTSIDE_1A),
        LIVENESS_SEEDS,
    );
}

/// NEW BUG postponed-install-never-retried (liveness), found with the fixes. A final copy
/// that fails (here: the new owner crashed and stays down for the four rounds) postpones the
/// install, as intended; but nothing installs that map again. The manager's 1 s phase-1a
/// re-send goes through the watch streams, and a stream sends a map only if it is newer than
/// the last one it sent (manager/src/server/watch.rs), which it is not; the client side of the
/// stream skips it too (`map.generation <= self.after`) and reconnects with that `after`; the
/// watch loop retries only if a routed command or a copy notified `refresh` meanwhile. So
/// phase 1a of that map (and every map queued behind it) waits forever once the new owner is
/// back. Un-ignore `publications_complete_once_faults_stop_outside_phase_1a` when fixed.
/// Regression: the install postponed by a failed final copy is retried (it used to wedge
/// phase 1a forever on this seed).
#[test]
fn a_postponed_install_is_retried_seed_36() {
    let s = now_passes(SEED_POSTPONED, liveness(ALL_OUTSIDE_1A));
    assert!(
        s.installs_postponed > 0,
        "seed {SEED_POSTPONED} no longer postpones an install: pick another"
    );
}

/// CI: server crashes and restarts, old owners in phase 1a included (restart-in-1a, fixed:
/// a restart boots from the persisted map and installs the newer one through `install`).
#[test]
fn invariants_hold_under_server_crashes() {
    check("server crashes", config(SERVER_CRASHES));
}

/// CI: every fault.
#[test]
fn invariants_hold_under_every_fault() {
    check("all faults", config(FaultSet::ALL));
}

/// CI, healing with every fault, server crashes in phase 1a included.
#[test]
fn publications_complete_once_faults_stop() {
    check_n("liveness", liveness(FaultSet::ALL), LIVENESS_SEEDS);
}

/// Fixed bug restart-in-1a (regression). A server that crashed while it was the old owner of
/// a phase-1a map (copy converged, move-ready sent, writes still arriving and tracked only in
/// RAM) restarted, fetched `role=server` (that phase-1a map) and installed it directly: no
/// gate, no `mover::finish`, so the writes acknowledged after the copier's last pass never
/// reached the new owner. Now a server with a durable pool persists every installed map
/// (before the ack) and the map it boots with, boots from it, and installs the newer map
/// through `install`, whose no-copier-state branch final-copies the whole lost extent.
#[test]
fn restart_in_phase_1a_now_final_copies_seed_311() {
    let s = now_passes(SEED_RESTART_IN_1A, config(SERVER_CRASHES));
    assert!(
        s.restart_final_copies > 0,
        "seed {SEED_RESTART_IN_1A} no longer restarts an old owner in phase 1a: pick another \
         (SERVER_CRASHES, restart_final_copies > 0)"
    );
    now_passes(SEED_RESTART_IN_1A, liveness(SERVER_CRASHES));
    // Not vacuous: booting at the fetched map (the target before the fix) still loses data.
    still_fails(
        SEED_RESTART_IN_1A,
        Config {
            mutation: Mutation::BootAtFetchedMap,
            ..config(SERVER_CRASHES)
        },
        RESTART_IN_1A,
    );
}

/// The read check on its own (without the state-form check) caught restart-in-1a too: with
/// the restart booting at the fetched map, clients of these seeds (of 0..2000 under
/// SERVER_CRASHES) read stale data. Regression: they now read what was acknowledged.
#[test]
fn no_stale_read_after_a_restart_in_phase_1a() {
    let reads_only = |mutation| Config {
        state_check: false,
        mutation,
        ..config(SERVER_CRASHES)
    };
    for seed in SEEDS_STALE_READ {
        now_passes(seed, reads_only(Mutation::None));
        match World::new(seed, reads_only(Mutation::BootAtFetchedMap)).run() {
            Ok(_) => panic!(
                "seed {seed} no longer reads stale data when booting at the fetched map: \
                 pick others (rescan 0..2000, state_check off, Mutation::BootAtFetchedMap)"
            ),
            Err(f) => assert!(
                f.what.contains("invariant 3: read of") && f.what.contains(RESTART_IN_1A),
                "seed {seed} fails differently when booting at the fetched map:\n{f}"
            ),
        }
    }
}

/// Fixed bug late-old-owner (regression). An old owner that missed a phase-1b deadline (still
/// at g-1 while the new owner is at g) gets phase-1a map g+1; its final copy was stamped with
/// its own g-1, refused as stale, the refresh could not run (the watch loop is inside this
/// very install), `finish` gave up and `install` installed g+1 and acked anyway: the dirty
/// blocks were lost. Now the final copy adopts the generation of the 80h answer and retries at
/// once; a final copy that still fails postpones the install (no ack).
/// (Seed 1131 passes, healed too; under the current model it no longer reaches the late old
/// owner's final copy, so seed 50 under lost messages, which does, is checked as well.)
#[test]
fn late_old_owner_final_copy_now_succeeds_seed_1131() {
    now_passes(SEED_LATE_OLD_OWNER, config(LONG_DELAYS));
    now_passes(SEED_LATE_OLD_OWNER, liveness(LONG_DELAYS));
    let s = now_passes(SEED_STAMP_ADOPTED, liveness(DROPS));
    assert!(
        s.stamps_adopted > 0,
        "seed {SEED_STAMP_ADOPTED} no longer adopts a stamp: pick another (DROPS, \
         stamps_adopted > 0)"
    );
}

/// Without the stamp adoption (the final copy keeping its own stamp, as `copy_range` does in
/// 6886384: its 80h branch never assigns the answer's generation to `stamp`) the late old
/// owner no longer loses data (the postpone rule) but wedges: it retries the same refused
/// copy forever (its `refresh` fetch brings the same phase-1a map), so phase 1a never
/// completes. The regression test above is not vacuous.
#[test]
fn late_old_owner_wedges_without_the_stamp_adoption_seed_50() {
    let keep = |cfg| Config {
        mutation: Mutation::FinalCopyKeepsOwnStamp,
        ..cfg
    };
    still_fails(SEED_STAMP_ADOPTED, keep(liveness(DROPS)), "liveness");
    let s = now_passes(SEED_STAMP_ADOPTED, keep(config(DROPS)));
    assert_eq!(s.stamps_adopted, 0);
}

/// Fixed bug forgotten-acks (regression, liveness). A manager restart rebuilds the
/// coordinator with no acks; the publication in progress starts over at phase 1a and waited
/// for old owners that installed it before the crash (their watch streams reconnect with
/// `after` = that generation, so the 1 s re-send sends nothing). Now every server re-acks its
/// installed generation every second.
#[test]
fn manager_restart_forgotten_acks_now_repeated_seed_4() {
    let s = now_passes(SEED_FORGOTTEN_ACKS, liveness(FaultSet::ALL));
    assert!(s.manager_crashes > 0 && s.reacks > 0);
}

/// The checks themselves: a server that accepts a stamp one generation old must be caught.
#[test]
fn a_broken_stamp_check_is_caught() {
    let seeds: Vec<u64> = (0..200).collect();
    let cfg = Config {
        mutation: Mutation::AcceptStaleByOne,
        ..config(REORDER)
    };
    let (_, failures) = run_all(&seeds, cfg, FAILURES_SHOWN);
    let caught = failures.iter().find(|f| f.what.contains("invariant 1"));
    assert!(
        caught.is_some(),
        "200 seeds with a stamp check that accepts stale stamps and no invariant-1 failure; \
         failures seen: {:?}",
        failures.iter().map(|f| &f.what).collect::<Vec<_>>()
    );
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

/// Issue 10, scenario 1, in the simulation: a server hangs (preferably the old owner of a
/// moving extent), the operator marks it down while it is hung (the switch then commits
/// without it), hosts write to the new owner, and the hung server resumes or is restarted
/// from its durable pool (older persisted map). The fencing rule (`cluster::node`): its final
/// copy is refused under the source rule, a resumed process fences itself (frozen clock)
/// until it has the current map, a restarted one serves nothing before its catch-up install.
/// Acknowledged writes survive (writes only the hung server had acknowledged are given up by
/// marking it down; the checks forget those, see `FaultSet::hangs`).
#[test]
fn invariants_hold_when_a_hung_server_is_marked_down() {
    let seeds = seeds_or(SEEDS_RELEASE);
    let (total, failures) = run_all(&seeds, config(HANGS), FAILURES_SHOWN);
    eprintln!("hangs: {} seeds: {total:?}", seeds.len());
    if let Some(first) = failures.first() {
        panic!("hangs: {first}");
    }
    if seeds.len() > 1 {
        assert!(
            total.marked_down > 0 && total.copies_refused > 0 && total.freezes_detected > 0,
            "the scenario no longer exercises the fencing rule: {total:?}"
        );
    }
}

/// CI: every fault, hung servers marked down included.
#[test]
fn invariants_hold_under_every_fault_with_hangs() {
    check("all faults with hangs", config(ALL_WITH_HANGS));
}

/// Healing with hung servers marked down and up again. Manager bugs found here are fixed:
/// a queued map waited for an old owner marked down in a newer one (seed 0, g24 waiting for
/// s2), and a switch whose new owner hung and was marked down waited forever for the old
/// owner's final copy to it (seeds 0, 2-5: `plan::cancel_moves_to_down` now gives the extent
/// back, see `hung_new_owner_marked_down_cancels_the_switch`), and catching-up servers
/// retried final copies to servers that serve nothing or are marked down (seeds 118, 144,
/// 153), and such a switch of an extent that the newest map through phase 1a did not have yet
/// was not given back (seed 173, see `an_added_extents_switch_to_a_hung_server_is_given_back`).
#[test]
fn publications_complete_once_faults_stop_with_hangs() {
    check_n(
        "liveness with hangs",
        liveness(ALL_WITH_HANGS),
        LIVENESS_SEEDS,
    );
}

/// Regression (seed 173): manager restarts and forged move-readies leave a switch stuck in
/// phase 1a (its old owner hung), a resize queued behind it adds an extent, which is moved
/// and switched to the hung server; the operator marks that server down. The chain's first map
/// (the committed one) lacks the extent, so `plan::cancel_moves_to_down` skipped its switch:
/// nothing was given back, and after healing the old owner's final copy to the server marked
/// down failed forever (its install of the switch postponed, phase 1a never done). The switch
/// now goes back to the extent's first owner and offset (nobody took writes for an extent no
/// host has a map with).
#[test]
fn an_added_extents_switch_to_a_hung_server_is_given_back() {
    // The forged move-readies of this trace are refused since the move-ready check; the
    // mutation lets them through, so the cancellation of an added extent's switch still runs.
    let cfg = Config {
        mutation: Mutation::SwitchBeforeDestAck,
        ..liveness(ALL_WITH_HANGS)
    };
    let s = now_passes(SEED_ADDED_EXTENT, cfg);
    assert!(
        s.marked_down > 0 && s.manager_crashes > 0 && s.forged > 0,
        "seed {SEED_ADDED_EXTENT} no longer marks down a hung server after manager restarts \
         and forged move-readies: {s:?}"
    );
}

/// Healing with hangs, seed 442 (docs/cluster-protocol.md, "A switch to a server catching
/// up"): a serving old owner's phase-1a install final-copied to a new owner that hung, and the
/// pass in flight when the install's budget ended ran all its ranges' tries (20 each, each
/// waiting out its timeout), so its gate stayed closed over a minute. Now a final pass starts
/// no try past the budget and the install is postponed with the gate open; every gate the
/// simulation opens (or finds closed at the end) is checked against the bound ("Bounds").
#[test]
fn the_install_gate_is_closed_within_its_bound_seed_442() {
    let cfg = liveness(ALL_WITH_HANGS);
    now_passes(SEED_UNBOUNDED_GATE, cfg);
    // Not vacuous: with the final pass unbounded (the shell before the fix), a gate stays
    // closed beyond the bound again. Since the move-ready check
    // (`a_switch_waits_for_its_destination_seed_442`), seed 442's trace no longer reaches such
    // a gate; seed 732 does (s3's gate closed 67.6 s with the mutation).
    now_passes(SEED_UNBOUNDED_GATE_NOW, cfg);
    still_fails(
        SEED_UNBOUNDED_GATE_NOW,
        Config {
            mutation: Mutation::UnboundedFinalPass,
            ..cfg
        },
        "bound: ",
    );
}

/// Healing with hangs, seed 442 again (docs/cluster-protocol.md, "A switch to a server
/// catching up"): with the gate bounded, its trace reached the cycle of seeds 858 and 1388. A
/// forged move-ready switched a move to s3, a server catching up that never had the copier's
/// passes; the old owner's install of that switch (g46) final-copied to s3, which answered
/// "server behind" while its own catch-up install waited for a hung s2, and the map marking s2
/// down queued behind g46 forever. The manager now switches a move only once its destination
/// has acked the newest map through phase 1a that has the move
/// (`Coordinator::move_ready_check`): the forged move-ready is refused and the seed heals.
#[test]
fn a_switch_waits_for_its_destination_seed_442() {
    let cfg = liveness(ALL_WITH_HANGS);
    let s = now_passes(SEED_UNBOUNDED_GATE, cfg);
    assert!(
        s.hangs > 0 && s.marked_down > 0 && s.forged > 0,
        "seed {SEED_UNBOUNDED_GATE} no longer hangs, marks down and forges: {s:?}"
    );
    // Not vacuous: with every move-ready switched at once (the manager before the check), the
    // seed wedges on the forged switch to the server catching up again.
    still_fails(
        SEED_UNBOUNDED_GATE,
        Config {
            mutation: Mutation::SwitchBeforeDestAck,
            ..cfg
        },
        "g46",
    );
}

/// Not vacuous: without the source rule (a copy admitted like a routed write) or without the
/// freeze fence (a resumed process serves at once at its old map), the hung-server scenario
/// loses an acknowledged write.
#[test]
fn a_missing_fence_is_caught() {
    for (seed, mutation) in [
        (SEED_NO_SOURCE_RULE, Mutation::NoSourceRule),
        (SEED_NO_FREEZE_FENCE, Mutation::NoFreezeFence),
    ] {
        now_passes(seed, config(HANGS));
        still_fails(
            seed,
            Config {
                mutation,
                ..config(HANGS)
            },
            "invariant 3",
        );
    }
}

/// The seeds on which a switch whose new owner hung and was marked down waited forever in
/// phase 1a (the old owner cannot finish its final copy to a dead server). Now the map marking
/// the new owner down gives the extent back to its old owner and the switch is abandoned
/// (`plan::cancel_moves_to_down`, `Coordinator`, docs/cluster-protocol.md "Cancelling a switch
/// to a server marked down"): they heal, and acknowledged writes survive.
const SEEDS_HUNG_NEW_OWNER: [u64; 5] = [0, 2, 3, 4, 5];

#[test]
fn hung_new_owner_marked_down_cancels_the_switch() {
    for seed in SEEDS_HUNG_NEW_OWNER {
        now_passes(seed, liveness(ALL_WITH_HANGS));
    }
}

/// Not vacuous: without the cancellation (the manager before the fix) these seeds wedge again.
#[test]
fn hung_new_owner_wedges_without_the_cancellation() {
    let cfg = Config {
        mutation: Mutation::NoCancel,
        ..liveness(ALL_WITH_HANGS)
    };
    let wedged = SEEDS_HUNG_NEW_OWNER
        .iter()
        .filter(|&&seed| {
            World::new(seed, cfg)
                .run()
                .is_err_and(|f| f.what.contains("liveness"))
        })
        .count();
    assert!(
        wedged > 0,
        "no seed of {SEEDS_HUNG_NEW_OWNER:?} wedges without the cancellation: pick others"
    );
}

#[path = "sim/replica.rs"]
mod replica;

/// Steps per seed of the replica scenarios (then quiescence).
const REPLICA_STEPS: u64 = 1_500;
const REPLICA_SEEDS_RELEASE: u64 = 200;
const REPLICA_SEEDS_DEBUG: u64 = 40;
/// Seeds searched for a deliberate breakage or a known bug before giving up.
const REPLICA_SEARCH: u64 = 1_000;

fn replica_seeds() -> Vec<u64> {
    if let Some(s) = std::env::var("TESSERA_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![s];
    }
    let n = std::env::var("TESSERA_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) {
            REPLICA_SEEDS_DEBUG
        } else {
            REPLICA_SEEDS_RELEASE
        });
    (0..n).collect()
}

fn replica_config(replicas: usize) -> replica::Config {
    replica::Config {
        replicas,
        steps: REPLICA_STEPS,
        fixes: replica::Fixes::ALL,
        mutation: None,
        give_up: false,
        lose_diverged: false,
        spares: 0,
        moves: false,
        gap_moves: false,
    }
}

fn replica_scenario(replicas: usize) {
    replica_scenario_with(replica_config(replicas));
}

fn replica_scenario_with(cfg: replica::Config) {
    let replicas = cfg.replicas;
    let seeds = replica_seeds();
    let mut faults = replica::Faults::default();
    let mut acked = 0;
    // Writes that waited for a rebuild-done report's outcome; of those, refused reports; of
    // those, writes failed at their deadline (none with `Fixes::refused_answer`).
    let (mut settle, mut refused, mut deadlines) = (0, 0, 0);
    let mut failures = Vec::new();
    // Failures of runs that dropped a primary not `replicas[0]` (the known gap of "Moving a
    // copy"), counted apart when the scenario does not choose such a `from` itself.
    let mut gap_failures = Vec::new();
    for &seed in &seeds {
        match replica::Sim::new(seed, cfg).run() {
            Ok(o) => {
                faults.add(&o.faults);
                acked += o.acked;
                settle += o.settle_waits;
                refused += o.refused_waits;
                deadlines += o.refused_deadlines;
            }
            // With a host that gives up failed writes and `from` never a primary that is not
            // first, a run in which such a copy was dropped anyway (it became the primary
            // later) and failed is counted apart.
            Err(e)
                if cfg.moves
                    && cfg.give_up
                    && !cfg.gap_moves
                    && e.starts_with(replica::KNOWN_GAP) =>
            {
                gap_failures.push((seed, e));
            }
            Err(e) => failures.push((seed, e)),
        }
    }
    println!(
        "replicas {replicas}: {} seeds ({}..={}), {acked} blocks acknowledged at the end; faults: {faults:?}; \
         writes waiting for a rebuild-done outcome {settle} (refused reports {refused}, failed at the deadline {deadlines}); {} failing",
        seeds.len(),
        seeds.first().copied().unwrap_or(0),
        seeds.last().copied().unwrap_or(0),
        failures.len()
    );
    if cfg.moves {
        println!(
            "replicas {replicas} (+{} spare): copy moves started {} (refused {}, replacing a pending copy {}), \
             completed {} (dropping replicas[0] with phase 1a {}, dropping a primary not first {}); \
             old owners' writes failed at the phase-1a gate {}; records of a dropped copy found when it came back (rebuilt whole) {}; \
             failing seeds counted apart (a primary not first dropped while never chosen as from) {}",
            cfg.spares,
            faults.moves_started,
            faults.moves_refused,
            faults.moves_replaced,
            faults.moves_done,
            faults.owner_drops,
            faults.gap_drops,
            faults.gate_deadlines,
            faults.stray_records_kept,
            gap_failures.len()
        );
        for (seed, e) in gap_failures.iter().take(FAILURES_SHOWN) {
            println!(
                "seed {seed} (counted apart): {}",
                e.lines().next().unwrap_or("")
            );
        }
    }
    for (seed, e) in failures.iter().take(FAILURES_SHOWN) {
        println!("seed {seed} failed: {e}");
    }
    assert!(failures.is_empty(), "{} seeds failed", failures.len());
    if cfg.fixes.refused_answer {
        assert_eq!(
            deadlines, 0,
            "writes failed at their deadline after a refused report"
        );
    }
}

/// Copy moves ("Moving a copy": add, rebuild, drop) with one spare server, under the faults of
/// the scenarios above; `from` any copy (the primary, `replicas[0]`, a stale copy on a down
/// server), `to` a server without one.
fn move_config(replicas: usize) -> replica::Config {
    replica::Config {
        spares: 1,
        moves: true,
        gap_moves: true,
        ..replica_config(replicas)
    }
}

fn move_scenario(cfg: replica::Config) {
    replica_scenario_with(cfg);
}

#[test]
fn replicas_2_move_copies_losing_no_acknowledged_write_through_crashes_and_copy_failures() {
    move_scenario(move_config(2));
}

#[test]
fn replicas_3_move_copies_losing_no_acknowledged_write_through_crashes_and_copy_failures() {
    move_scenario(move_config(3));
}

/// Two spare servers: a move can go on while its pending copy's server is marked down, the
/// next move replacing that copy (the planner drops it, its range freed). Two copies only:
/// with three and two spares, four copies per extent while a move is pending, the model's
/// host writes (its range lock is not fair, and a replica write stamped ahead of its copy
/// fails at once) keep the rebuilds' ends from their whole-extent lock for long: seed 1902 of
/// 2000 did not quiesce within the model's step bound.
#[test]
fn replicas_2_move_copies_with_two_spares_replacing_pending_copies_on_down_servers() {
    move_scenario(replica::Config {
        spares: 2,
        ..move_config(2)
    });
}

/// The host gives up failed writes while copies move: the copies must end equal, `from` any
/// copy (a dropped primary has the other copies rebuilt whole from the new one: "Moving a
/// copy").
#[test]
fn replicas_2_move_copies_ending_equal_when_the_host_gives_up_failed_writes() {
    move_scenario(replica::Config {
        give_up: true,
        ..move_config(2)
    });
}

#[test]
fn replicas_3_move_copies_ending_equal_when_the_host_gives_up_failed_writes() {
    move_scenario(replica::Config {
        give_up: true,
        ..move_config(3)
    });
}

#[test]
fn replicas_2_lose_no_acknowledged_write_through_copy_failures_crashes_and_rebuilds() {
    replica_scenario(2);
}

#[test]
fn replicas_3_lose_no_acknowledged_write_through_copy_failures_crashes_and_rebuilds() {
    replica_scenario(3);
}

/// A host that sometimes gives up a failed write (never retried): after a failover, or a
/// handover that a former primary's write failed across, the copies must still end equal (the
/// new primary rebuilds the other copies whole).
#[test]
fn replicas_2_end_equal_when_the_host_gives_up_failed_writes() {
    replica_scenario_with(replica::Config {
        give_up: true,
        ..replica_config(2)
    });
}

#[test]
fn replicas_3_end_equal_when_the_host_gives_up_failed_writes() {
    replica_scenario_with(replica::Config {
        give_up: true,
        ..replica_config(3)
    });
}

/// The host gives up failed writes and a former primary's copies-diverged report is lost half
/// the time (the former primary killed or cut off before it arrives): the copy that refused
/// its stale replica write reports instead, and the copies still end equal.
#[test]
fn replicas_2_end_equal_when_former_primaries_reports_are_lost() {
    replica_scenario_with(replica::Config {
        give_up: true,
        lose_diverged: true,
        ..replica_config(2)
    });
}

#[test]
fn replicas_3_end_equal_when_former_primaries_reports_are_lost() {
    replica_scenario_with(replica::Config {
        give_up: true,
        lose_diverged: true,
        ..replica_config(3)
    });
}

#[test]
fn a_replica_seed_replays_exactly() {
    for seed in [1, 7] {
        let a = replica::Sim::new(seed, replica_config(3))
            .run()
            .expect("runs");
        let b = replica::Sim::new(seed, replica_config(3))
            .run()
            .expect("runs");
        assert_eq!(a.hash, b.hash, "seed {seed} replays differently");
    }
}

/// Seeds that failed at 5000 seeds (release) while the model's write that missed a
/// `rebuilding` copy with a rebuild-done report out waited for any newer map instead of that
/// report's outcome (the daemon's `promotions_settled`): 3864 (three copies) acknowledged a
/// write on a newer map without the outcome, and the copy was then marked `in_sync` without it;
/// 4797 (two copies), 2935, 3077 and 4071 (three) waited forever for a newer map that only the
/// end of the rebuild the waiting write's range lock blocked could bring (docs/replication.md,
/// "The simulation").
#[test]
fn a_write_that_misses_a_copy_with_a_rebuild_done_report_out_waits_for_its_outcome() {
    for (replicas, seed) in [(3, 3864), (2, 4797), (3, 2935), (3, 3077), (3, 4071)] {
        let o = replica::Sim::new(seed, replica_config(replicas))
            .run()
            .unwrap_or_else(|e| panic!("replicas {replicas} seed {seed}: {e}"));
        assert!(
            o.settle_waits > 0,
            "replicas {replicas} seed {seed} no longer reaches a write that waits for a \
             rebuild-done report's outcome: pick another seed"
        );
    }
}

/// Seed 47947 (two copies) did not quiesce once the model waited for a report's outcome: the
/// report was refused (sent at g50, the copy rebuilding again since g53), so no outcome came,
/// and the writes waiting for it held every block, which the rebuild's next report needed. The
/// daemon's forwarding deadline ended them (a 5 s stall, then a failed write: the model, which
/// has no clock, failed them at once). Now the refusal names the manager's generation and is
/// the report's outcome (the daemon's `rebuild::settled_by`): those writes wait until that map
/// is installed and are re-checked, and none fails for want of an outcome
/// (docs/replication.md, "The end of a rebuild" and "The simulation").
#[test]
fn a_write_waiting_for_a_refused_reports_outcome_goes_on_at_the_refusals_generation_seed_47947() {
    let o = replica::Sim::new(47947, replica_config(2))
        .run()
        .unwrap_or_else(|e| panic!("seed 47947: {e}"));
    assert!(
        o.refused_waits > 0,
        "seed 47947 no longer reaches a write waiting for a refused report: pick another seed"
    );
    assert_eq!(
        o.refused_deadlines, 0,
        "a write waited for a refused report's outcome until its deadline"
    );
    // Without the fix the same seed's writes fail at their deadline instead.
    let before = replica::Sim::new(
        47947,
        replica::Config {
            fixes: replica::Fixes {
                refused_answer: false,
                ..replica::Fixes::ALL
            },
            ..replica_config(2)
        },
    )
    .run()
    .unwrap_or_else(|e| panic!("seed 47947 without the fix: {e}"));
    assert!(
        before.refused_deadlines > 0,
        "seed 47947 without the fix no longer fails a write at its deadline: pick another seed"
    );
}

/// The first seed in `0..REPLICA_SEARCH` on which `broken` fails and `good` (the same
/// scenario without the breakage) passes, printed.
fn first_failing(what: &str, broken: replica::Config, good: replica::Config) -> Option<u64> {
    let one: Option<u64> = std::env::var("TESSERA_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    let seeds = one.map_or(0..REPLICA_SEARCH, |s| s..s + 1);
    for seed in seeds {
        if let Err(e) = replica::Sim::new(seed, broken).run() {
            if replica::Sim::new(seed, good).run().is_err() {
                continue;
            }
            // The whole trace when replaying one seed, its first line otherwise.
            let shown = if one.is_some() {
                e.as_str()
            } else {
                e.lines().next().unwrap_or("")
            };
            println!("{what}: caught on seed {seed}: {shown}");
            return Some(seed);
        }
    }
    None
}

#[test]
fn a_broken_replication_rule_is_caught() {
    for (what, m) in [
        ("ack before in_sync copies", replica::Mutation::AckEarly),
        (
            "copy accepts an old stamp",
            replica::Mutation::AcceptOldStamp,
        ),
    ] {
        for replicas in [2, 3] {
            let cfg = replica::Config {
                mutation: Some(m),
                ..replica_config(replicas)
            };
            assert!(
                first_failing(what, cfg, replica_config(replicas)).is_some(),
                "{what} with {replicas} copies not caught"
            );
        }
    }
}

/// A seed on which the scenario with `fixes` loses a write and the same scenario with
/// `fixed` (the fix under test on) does not.
fn known_bug_caught(what: &str, fixes: replica::Fixes, fixed: replica::Fixes) {
    let caught = [2, 3].into_iter().any(|replicas| {
        first_failing(
            what,
            replica::Config {
                fixes,
                ..replica_config(replicas)
            },
            replica::Config {
                fixes: fixed,
                ..replica_config(replicas)
            },
        )
        .is_some()
    });
    assert!(caught, "{what}: no loss found without the fix");
}

/// The daemon's three fixes are tried against the daemon as it is (without the model's
/// proposed `after_done`, which also covers some of their cases).
const DAEMON: replica::Fixes = replica::Fixes::DAEMON;

#[test]
fn without_the_handover_fix_a_write_is_lost() {
    known_bug_caught(
        "handover",
        replica::Fixes {
            handover: false,
            ..DAEMON
        },
        DAEMON,
    );
}

#[test]
fn without_the_in_flight_fix_a_write_is_lost() {
    known_bug_caught(
        "in flight",
        replica::Fixes {
            in_flight: false,
            ..DAEMON
        },
        DAEMON,
    );
}

#[test]
fn without_the_after_done_fix_a_write_is_lost() {
    known_bug_caught(
        "after done",
        replica::Fixes {
            after_done: false,
            ..replica::Fixes::ALL
        },
        replica::Fixes::ALL,
    );
}

#[test]
fn without_the_stale_done_fix_a_write_is_lost() {
    known_bug_caught(
        "stale done (the manager's rebuild-done check bypassed)",
        replica::Fixes {
            stale_done: false,
            ..replica::Fixes::ALL
        },
        replica::Fixes::ALL,
    );
}

/// Without the manager's failover resync (the other `in_sync` copies of a dead primary's
/// extent made `rebuilding`), a write the old primary forwarded to one copy only, given up by
/// the host, leaves three copies different at quiescence.
#[test]
fn without_the_failover_resync_fix_the_copies_differ() {
    // Both runs without the former primary's copies-diverged report: in the model the dead
    // primary comes back, is rebuilt and takes the role back (a handover) while the host keeps
    // writing, so the interim primary nearly always has a write fail across that handover and
    // its report has every copy rebuilt, hiding this fix's seeds (none in 10,000). A dead old
    // primary reports nothing itself, and a handover need not follow, so this finds a seed
    // that only the failover resync fixes. The same goes for the refusing copy's report (a
    // copy already on the newer map refuses the interim primary's stale write): off too.
    let give_up = replica::Config {
        give_up: true,
        fixes: replica::Fixes {
            diverged_report: false,
            refuser_report: false,
            ..replica::Fixes::ALL
        },
        ..replica_config(3)
    };
    let seed = first_failing(
        "failover resync",
        replica::Config {
            fixes: replica::Fixes {
                failover_resync: false,
                ..give_up.fixes
            },
            ..give_up
        },
        give_up,
    );
    assert!(
        seed.is_some(),
        "failover resync: no divergence found without the fix"
    );
}

/// A former primary whose write fails because it lost the role (a handover) reports
/// `copies-diverged`; without the report, a write it applied to its own copy and the new
/// primary refused, given up by the host, leaves two copies different at quiescence. Both
/// runs without the refusing copy's report, which covers the same cases when the former
/// primary's report is missing (`without_the_refusers_diverged_report_the_copies_differ`).
#[test]
fn without_the_diverged_report_the_copies_differ() {
    let give_up = replica::Config {
        give_up: true,
        fixes: replica::Fixes {
            refuser_report: false,
            ..replica::Fixes::ALL
        },
        ..replica_config(2)
    };
    let seed = first_failing(
        "diverged report",
        replica::Config {
            fixes: replica::Fixes {
                diverged_report: false,
                ..give_up.fixes
            },
            ..give_up
        },
        give_up,
    );
    assert!(
        seed.is_some(),
        "diverged report: no divergence found without the fix"
    );
}

/// A former primary killed (or cut off from the manager) before its copies-diverged report
/// arrives: the copy that refused its stale replica write reports instead. Without that
/// report, a write the former primary applied to its own copy (and maybe others), refused by a
/// copy already on the newer map and given up by the host, leaves `in_sync` copies different
/// at quiescence.
#[test]
fn without_the_refusers_diverged_report_the_copies_differ() {
    let caught = [2, 3].into_iter().any(|replicas| {
        let lost = replica::Config {
            give_up: true,
            lose_diverged: true,
            ..replica_config(replicas)
        };
        first_failing(
            "refuser's diverged report",
            replica::Config {
                fixes: replica::Fixes {
                    refuser_report: false,
                    ..replica::Fixes::ALL
                },
                ..lost
            },
            lost,
        )
        .is_some()
    });
    assert!(
        caught,
        "refuser's diverged report: no divergence found without it"
    );
}

/// A bug the copy-move scenarios found, fixed in the manager (`plan::copy_move::rebuild_done`
/// rebuilds the other copies whole from the new primary when the dropped copy led): the drop of
/// `replicas[0]` by a copy move ("Moving a copy") while the old owner (the primary) has a
/// write in flight whose forward to an `in_sync` copy fails (here: refused by a copy not yet
/// on the write's map; a lost forward or a copy I/O error does the same). The old owner reports
/// replica-failed; the manager plans it on its newest map, the drop, in which the old owner is
/// no longer the primary (nor holds a copy): refused. The write then waits for a map newer than
/// its own, which is the drop itself, held back by the old owner's own phase-1a gate until the
/// write leaves: it fails at its deadline (host-visible: a 5 s stall, then a retryable path
/// error) after it reached the new copy but not the copy that failed. Nobody reports or
/// rebuilt that: with a host that does not retry the write, the two `in_sync` copies of the
/// new map differed on its block (reads through them disagreed). The write's 5 s stall
/// remains (docs/replication.md, "Known problems"). Seed 616 (two copies; w234
/// b1=224 is on s3, not on s2) and seed 1975 (three copies; w364 b2=373 on s3 and s4, not on
/// s2): `TESSERA_SIM_LOG=200 TESSERA_SIM_SEED=616 cargo test --release -p tessera-target
/// --test sim -- --ignored a_dropped_first --nocapture` prints the trace.
#[test]
fn a_dropped_first_copys_write_failing_at_its_gate_leaves_no_copies_different() {
    for (replicas, seed) in [(2, 616), (3, 1975)] {
        let cfg = replica::Config {
            give_up: true,
            gap_moves: false,
            ..move_config(replicas)
        };
        if let Err(e) = replica::Sim::new(seed, cfg).run() {
            panic!("replicas {replicas} seed {seed}: {e}");
        }
    }
}
