//! What becomes of a command that reaches this server (docs/cluster-protocol.md, "The
//! generation on the wire" and "Fencing"): the install gate first, then the stamp against the
//! installed generation (a newer stamp waits, bounded, for our map), then, for internal
//! commands, the fencing rule ([`super::Ownership::admit`]). Pure: the daemon's
//! `controller/io.rs` and the simulation both call [`step`] and carry out what it says.

use super::Refusal;

/// How a command's stamp compares with this server's installed generation `current`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// Stamped with our generation (or unstamped on a host connection): it may run.
    Current,
    /// Stamped with an older generation: answer "stale map" (80h) with ours.
    Stale { current: u64 },
    /// Stamped with a newer generation: our map is on its way; answer "server behind" (81h).
    Ahead { current: u64 },
    /// Unstamped on an internal connection, where every command must be stamped.
    Unstamped { current: u64 },
}

/// The stamp rule: `stamp` (0: none) against `current`; `internal` connections must stamp.
pub fn compare(stamp: u64, current: u64, internal: bool) -> Stamp {
    match stamp.cmp(&current) {
        _ if stamp == 0 && internal => Stamp::Unstamped { current },
        _ if stamp == 0 => Stamp::Current,
        std::cmp::Ordering::Equal => Stamp::Current,
        std::cmp::Ordering::Less => Stamp::Stale { current },
        std::cmp::Ordering::Greater => Stamp::Ahead { current },
    }
}

/// How far a command has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// It just arrived.
    Arrived,
    /// It waited already (at the closed gate, or for our map): it waits for our map no more.
    Waited,
}

/// What to do with the command now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Run it (holding the gate open until it completes).
    Run,
    /// The gate is closed (a map is being installed): wait until it opens, then
    /// [`step`] again at [`Stage::Waited`].
    WaitGate,
    /// Stamped ahead of us: wait, without holding the gate, until our generation reaches the
    /// stamp or the behind-wait runs out, then [`step`] again at [`Stage::Waited`].
    WaitBehind,
    /// Answer the stamp mismatch (80h, 81h, or Invalid Field for an unstamped internal
    /// command), with our generation.
    Answer(Stamp),
    /// Refused by the fencing rule.
    Refuse(Refusal),
}

/// The next step of a command at `stage`. `gate_open`: the install gate lets it in (or this
/// server has none); `behind_wait`: a command stamped ahead may wait for our map (cluster
/// mode; a standalone server has no manager to catch up from); `stamp`: the stamp check,
/// called only once the gate is passed (it counts what it finds); `fencing`: the fencing
/// rule (`Ok` for host connections), called only for a stamp that passed.
pub fn step(
    stage: Stage,
    gate_open: bool,
    behind_wait: bool,
    stamp: impl FnOnce() -> Stamp,
    fencing: impl FnOnce() -> Result<(), Refusal>,
) -> Step {
    if !gate_open {
        return Step::WaitGate;
    }
    match stamp() {
        Stamp::Current => match fencing() {
            Ok(()) => Step::Run,
            Err(why) => Step::Refuse(why),
        },
        Stamp::Ahead { .. } if stage == Stage::Arrived && behind_wait => Step::WaitBehind,
        other => Step::Answer(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(stage: Stage, gate_open: bool, stamp: u64, current: u64) -> Step {
        step(
            stage,
            gate_open,
            true,
            || compare(stamp, current, true),
            || Ok(()),
        )
    }

    #[test]
    fn the_gate_then_the_stamp_then_the_fencing_rule() {
        assert_eq!(at(Stage::Arrived, false, 7, 7), Step::WaitGate);
        assert_eq!(at(Stage::Arrived, true, 7, 7), Step::Run);
        assert_eq!(
            at(Stage::Arrived, true, 6, 7),
            Step::Answer(Stamp::Stale { current: 7 })
        );
        assert_eq!(at(Stage::Arrived, true, 8, 7), Step::WaitBehind);
        // Once waited, a stamp still ahead is answered 81h.
        assert_eq!(
            at(Stage::Waited, true, 8, 7),
            Step::Answer(Stamp::Ahead { current: 7 })
        );
        assert_eq!(
            at(Stage::Arrived, true, 0, 7),
            Step::Answer(Stamp::Unstamped { current: 7 })
        );
        // A standalone server answers 81h at once; a host connection may send no stamp.
        let standalone = step(
            Stage::Arrived,
            true,
            false,
            || compare(8, 7, false),
            || Ok(()),
        );
        assert_eq!(standalone, Step::Answer(Stamp::Ahead { current: 7 }));
        assert_eq!(compare(0, 7, false), Stamp::Current);
        // The fencing rule is asked only once the stamp passed.
        let refused = step(
            Stage::Arrived,
            true,
            true,
            || Stamp::Current,
            || Err(Refusal::NotOwner),
        );
        assert_eq!(refused, Step::Refuse(Refusal::NotOwner));
        let mut asked = false;
        let stale = step(
            Stage::Waited,
            true,
            true,
            || Stamp::Stale { current: 9 },
            || {
                asked = true;
                Ok(())
            },
        );
        assert_eq!(stale, Step::Answer(Stamp::Stale { current: 9 }));
        assert!(!asked, "the fencing rule after a stale stamp");
    }
}
