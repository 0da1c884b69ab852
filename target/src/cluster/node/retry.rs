//! The sender's retries of one internal command, a routed piece of a host's I/O or one copied
//! range of a moving extent, as a small state machine (docs/cluster-protocol.md, "Routing
//! host I/O" and "Moving an extent"): how many tries, which generation each try is stamped
//! with, and what to do after a "stale map" / "server behind" answer or a lost connection. No
//! I/O, no clock, no allocation (it runs on the I/O path). The daemon (`routed.rs`,
//! `mover.rs`) and the simulation drive it; final answers (success, Access Denied, a media
//! error) are the shell's.

use super::{OnMismatch, on_mismatch, policy};

/// A failed try's answer, as far as retrying goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// "Stale map" (80h) or "server behind" (81h), with the receiver's generation.
    Mismatch { theirs: u64 },
    /// The peer could not be reached, or the connection failed.
    Lost,
}

/// What to do before the next try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again at once (a final copy adopted the receiver's generation).
    Now,
    /// We are behind: fetch the map now and wait, at most `ms`, for `generation`.
    WaitFor { generation: u64, ms: u64 },
    /// Wait `ms`; with `refresh`, ask for the map now too.
    Sleep { ms: u64, refresh: bool },
}

/// The retry state of one routed piece or one copied range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    tries: u32,
    tries_max: u32,
    backoff_ms: u64,
    backoff_max_ms: u64,
    /// A routed piece (a lost peer also asks for the map: it may have left).
    route: bool,
    /// A final copy inside an install: adopts the receiver's generation on a mismatch.
    adopt: bool,
    /// The generation a final copy stamps (ours at first, then the adopted one).
    stamp: Option<u64>,
}

impl Retry {
    /// A routed piece: [`policy::ROUTE_TRIES`] tries, each stamped with our generation then.
    pub fn route() -> Self {
        Self {
            tries: 0,
            tries_max: policy::ROUTE_TRIES,
            backoff_ms: policy::ROUTE_BACKOFF_MIN_MS,
            backoff_max_ms: policy::ROUTE_BACKOFF_MAX_MS,
            route: true,
            adopt: false,
            stamp: None,
        }
    }

    /// A copied range: [`policy::COPY_TRIES`] tries. A copier's copy is stamped with our
    /// generation at each try; the final copy inside an install (`final_pass`) with `current`
    /// (our generation, which cannot move while we install), then with the generation the
    /// new owner reports (docs/cluster-protocol.md, "Rules added after the simulation").
    pub fn copy(final_pass: bool, current: u64) -> Self {
        Self {
            tries: 0,
            tries_max: policy::COPY_TRIES,
            backoff_ms: policy::COPY_BACKOFF_MIN_MS,
            backoff_max_ms: policy::COPY_BACKOFF_MAX_MS,
            route: false,
            adopt: final_pass,
            stamp: final_pass.then_some(current),
        }
    }

    /// Test-only fault switch (the simulation's mutation `FinalCopyKeepsOwnStamp`): a final
    /// copy that does not adopt the receiver's generation, as before that rule.
    #[doc(hidden)]
    pub fn without_adoption(mut self) -> Self {
        self.adopt = false;
        self
    }

    /// The next try, stamped with the returned generation (`current`: ours now); `None` when
    /// the tries are spent.
    pub fn next_try(&mut self, current: u64) -> Option<u64> {
        if self.tries >= self.tries_max {
            return None;
        }
        self.tries += 1;
        Some(self.stamp.unwrap_or(current))
    }

    /// A try stamped `sent` failed with `answer`: what to do before the next one. The backoff
    /// doubles (up to its maximum) after each wait.
    pub fn on_answer(&mut self, sent: u64, answer: Answer) -> Next {
        let ms = self.backoff_ms;
        let next = match answer {
            Answer::Mismatch { theirs } => match on_mismatch(sent, theirs, self.adopt) {
                OnMismatch::Adopt(theirs) => {
                    self.stamp = Some(theirs);
                    return Next::Now;
                }
                OnMismatch::Refresh(generation) => Next::WaitFor {
                    generation,
                    ms: ms.saturating_mul(4),
                },
                OnMismatch::Backoff => Next::Sleep { ms, refresh: false },
            },
            Answer::Lost => Next::Sleep {
                ms,
                refresh: self.route,
            },
        };
        self.backoff_ms = ms.saturating_mul(2).min(self.backoff_max_ms);
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routed_piece_backs_off_and_gives_up() {
        let mut r = Retry::route();
        assert_eq!(r.next_try(5), Some(5));
        assert_eq!(
            r.on_answer(5, Answer::Mismatch { theirs: 7 }),
            Next::WaitFor {
                generation: 7,
                ms: 4 * policy::ROUTE_BACKOFF_MIN_MS
            }
        );
        assert_eq!(r.next_try(7), Some(7));
        assert_eq!(
            r.on_answer(7, Answer::Lost),
            Next::Sleep {
                ms: 2 * policy::ROUTE_BACKOFF_MIN_MS,
                refresh: true
            }
        );
        for _ in 2..policy::ROUTE_TRIES {
            assert!(r.next_try(7).is_some());
            assert!(matches!(
                r.on_answer(7, Answer::Mismatch { theirs: 3 }),
                Next::Sleep { ms, refresh: false } if ms <= policy::ROUTE_BACKOFF_MAX_MS
            ));
        }
        assert_eq!(r.next_try(7), None);
    }

    #[test]
    fn a_final_copy_adopts_the_receivers_generation() {
        let mut r = Retry::copy(true, 5);
        assert_eq!(r.next_try(5), Some(5));
        assert_eq!(r.on_answer(5, Answer::Mismatch { theirs: 6 }), Next::Now);
        // Our generation does not matter: the adopted one is stamped.
        assert_eq!(r.next_try(5), Some(6));
        let mut plain = Retry::copy(false, 5);
        assert_eq!(plain.next_try(5), Some(5));
        assert!(matches!(
            plain.on_answer(5, Answer::Mismatch { theirs: 6 }),
            Next::WaitFor { generation: 6, .. }
        ));
        assert_eq!(plain.next_try(6), Some(6));
        let mut mutated = Retry::copy(true, 5).without_adoption();
        mutated.next_try(5);
        assert!(matches!(
            mutated.on_answer(5, Answer::Mismatch { theirs: 6 }),
            Next::WaitFor { .. }
        ));
        assert_eq!(
            Retry::copy(false, 5).on_answer(5, Answer::Lost),
            Next::Sleep {
                ms: policy::COPY_BACKOFF_MIN_MS,
                refresh: false
            }
        );
    }
}
