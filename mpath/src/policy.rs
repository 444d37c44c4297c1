//! I/O policies: which usable path takes the next command. All of them prefer ANA-optimized
//! paths and use non-optimized ones only when no optimized path is usable.

use crate::path::PathStatus;

/// Path selection policy, switchable at run time with `Channel::set_policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// All I/O on the preferred path while it is usable; failover to another otherwise. With
    /// `failback`, I/O returns to the preferred path when it comes back.
    ActivePassive {
        /// Index of the preferred path.
        preferred: usize,
        /// Return to the preferred path when it is usable again.
        failback: bool,
    },
    /// Rotate between paths, sending at least `min_ios` commands to one before moving on.
    RoundRobin {
        /// Commands per turn.
        min_ios: u32,
    },
    /// The path with the fewest commands in flight.
    LeastQueueDepth,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::RoundRobin { min_ios: 1 }
    }
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "active-passive" | "failover" => Ok(Policy::ActivePassive {
                preferred: 0,
                failback: true,
            }),
            "active-passive-nofailback" => Ok(Policy::ActivePassive {
                preferred: 0,
                failback: false,
            }),
            "round-robin" | "rr" => Ok(Policy::RoundRobin { min_ios: 1 }),
            "least-queue-depth" | "lqd" | "queue-depth" => Ok(Policy::LeastQueueDepth),
            other => Err(format!(
                "unknown policy {other:?} (active-passive, active-passive-nofailback, round-robin, least-queue-depth)"
            )),
        }
    }
}

/// Round-robin's turns taken by index into a tier of usable paths, away from the [`Selector`]
/// ([`Selector::begin_turns`]): what a run over several paths keeps for itself, one compare
/// per command. (The caller drives the run's loop, so the cursor lives in the run, in memory:
/// loaded and stored on every command, about 10 instructions.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TurnCursor {
    /// Index of the turn's path in the tier.
    at: usize,
    /// Commands sent in this turn.
    run: u32,
    /// Paths in the tier.
    n: usize,
    /// Commands per turn (at least one).
    turn_ios: u32,
}

impl TurnCursor {
    /// The tier index of the path that takes the next command.
    #[inline(always)]
    pub fn take_turn(&mut self) -> usize {
        if self.run >= self.turn_ios {
            self.run = 0;
            self.at += 1;
            if self.at == self.n {
                self.at = 0;
            }
        }
        self.run += 1;
        self.at
    }
}

/// Per-channel selector state.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    current: usize,
    run: u32,
    /// Where `current` was in the tier [`Selector::round_robin`] was last given: while it is
    /// still there, the next turn is the next index (the tier is ascending), with no search.
    cursor: usize,
}

impl Selector {
    /// Makes `path` the current turn (the only usable path): what [`Selector::round_robin`] does
    /// each time it is given a single path, done once while that stays so.
    pub fn restart_on(&mut self, path: usize) {
        self.current = path;
    }

    /// Round-robin over `tier` (the usable paths of the best ANA tier, in ascending order) with
    /// at least `min_ios` commands per turn: the channel's common-case pick. It shares its state
    /// with [`Selector::pick`], so both take turns in the same order.
    #[inline]
    pub fn round_robin(&mut self, tier: &[usize], min_ios: u32) -> Option<usize> {
        // The common case: more than one path, the turn's path still at the cursor. What
        // `TurnCursor::take_turn` does, on the selector's own fields: built as a run of one turn
        // instead, it cost 7 instructions more per pick.
        if tier.len() > 1 && tier.get(self.cursor) == Some(&self.current) {
            if self.run < min_ios.max(1) {
                self.run += 1;
                return Some(self.current);
            }
            self.cursor = if self.cursor + 1 < tier.len() {
                self.cursor + 1
            } else {
                0
            };
            self.current = tier[self.cursor];
            self.run = 1;
            return Some(self.current);
        }
        self.round_robin_search(tier, min_ios)
    }

    /// [`Selector::round_robin`] when the cursor is not on the turn's path (the tier or the turn
    /// changed): a run of one turn from where [`Selector::begin_turns`] finds the turn.
    #[inline(never)]
    fn round_robin_search(&mut self, tier: &[usize], min_ios: u32) -> Option<usize> {
        match *tier {
            [] => None,
            [only] => {
                // One usable path: no turn to take (the turn restarts on it).
                self.current = only;
                self.cursor = 0;
                Some(only)
            }
            _ => {
                let mut turns = self.begin_turns_search(tier, min_ios.max(1));
                let at = turns.take_turn();
                self.end_turns(tier, &turns);
                Some(tier[at])
            }
        }
    }

    /// Starts taking round-robin's turns over `tier` (at least two usable paths, ascending)
    /// away from the selector, as a run does: the cursor it returns gives the same turns as
    /// [`Selector::round_robin`] would, by index into `tier`, until [`Selector::end_turns`]
    /// hands it back (the selector is left as it was if that never happens).
    #[inline]
    pub fn begin_turns(&self, tier: &[usize], min_ios: u32) -> TurnCursor {
        let turn_ios = min_ios.max(1);
        let n = tier.len();
        debug_assert!(n > 1, "turns over a single path");
        if tier.get(self.cursor) == Some(&self.current) {
            return TurnCursor {
                at: self.cursor,
                run: self.run,
                n,
                turn_ios,
            };
        }
        self.begin_turns_search(tier, turn_ios)
    }

    /// [`Selector::begin_turns`] when the cursor is not on the turn's path (the tier or the turn
    /// changed): the turn goes on where that path still is in the tier, or else a new one starts
    /// on the next path by number.
    #[cold]
    fn begin_turns_search(&self, tier: &[usize], turn_ios: u32) -> TurnCursor {
        let (at, run) = match tier.iter().position(|&i| i == self.current) {
            Some(at) => (at, self.run),
            None => (tier.iter().position(|&i| i > self.current).unwrap_or(0), 0),
        };
        TurnCursor {
            at,
            run,
            n: tier.len(),
            turn_ios,
        }
    }

    /// Takes back the turns a [`TurnCursor`] from [`Selector::begin_turns`] over the same `tier`
    /// went on to, for the next pick or run.
    #[inline]
    pub fn end_turns(&mut self, tier: &[usize], turns: &TurnCursor) {
        self.cursor = turns.at;
        self.current = tier[turns.at];
        self.run = turns.run;
    }

    /// Picks a path among `status` (one per path) given in-flight counts, or `None` if no path is
    /// usable. `exclude` is skipped when another usable path exists (the path a command just failed
    /// on).
    pub fn pick(
        &mut self,
        policy: Policy,
        status: &[PathStatus],
        in_flight: &[usize],
        exclude: Option<usize>,
    ) -> Option<usize> {
        let tier = |want: PathStatus| {
            let any = (0..status.len()).any(|i| status[i] == want && Some(i) != exclude);
            let any_incl = (0..status.len()).any(|i| status[i] == want);
            if any {
                Some((want, exclude))
            } else if any_incl {
                Some((want, None))
            } else {
                None
            }
        };
        let (want, exclude) =
            tier(PathStatus::Optimized).or_else(|| tier(PathStatus::NonOptimized))?;
        let ok = |i: usize| status[i] == want && Some(i) != exclude;
        let n = status.len();
        match policy {
            Policy::ActivePassive {
                preferred,
                failback,
            } => {
                if (failback || self.current == preferred) && preferred < n && ok(preferred) {
                    self.current = preferred;
                    return Some(preferred);
                }
                if self.current < n && ok(self.current) {
                    return Some(self.current);
                }
                let i = (0..n).find(|&i| ok(i))?;
                self.current = i;
                Some(i)
            }
            Policy::RoundRobin { min_ios } => {
                if self.current < n && ok(self.current) && self.run < min_ios.max(1) {
                    self.run += 1;
                    return Some(self.current);
                }
                let start = self.current + 1;
                let i = (0..n).map(|k| (start + k) % n).find(|&i| ok(i))?;
                self.current = i;
                self.run = 1;
                Some(i)
            }
            Policy::LeastQueueDepth => (0..n).filter(|&i| ok(i)).min_by_key(|&i| in_flight[i]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PathStatus::*;

    #[test]
    fn optimized_paths_win_over_non_optimized() {
        let mut s = Selector::default();
        let st = [NonOptimized, Optimized];
        for p in [
            Policy::RoundRobin { min_ios: 1 },
            Policy::LeastQueueDepth,
            Policy::ActivePassive {
                preferred: 0,
                failback: true,
            },
        ] {
            assert_eq!(s.pick(p, &st, &[0, 100], None), Some(1), "{p:?}");
        }
        // Non-optimized is used when nothing optimized is usable.
        assert_eq!(
            s.pick(
                Policy::LeastQueueDepth,
                &[NonOptimized, Waiting],
                &[5, 0],
                None
            ),
            Some(0)
        );
        assert_eq!(
            s.pick(Policy::LeastQueueDepth, &[Gone, Waiting], &[0, 0], None),
            None
        );
    }

    #[test]
    fn round_robin_alternates_with_minimum_run() {
        let mut s = Selector::default();
        let st = [Optimized, Optimized];
        let picks: Vec<usize> = (0..6)
            .map(|_| {
                s.pick(Policy::RoundRobin { min_ios: 2 }, &st, &[0, 0], None)
                    .unwrap()
            })
            .collect();
        assert_eq!(picks, vec![0, 0, 1, 1, 0, 0]);
    }

    #[test]
    fn tier_round_robin_takes_the_same_turns_as_the_general_pick() {
        let mut a = Selector::default();
        let mut b = Selector::default();
        let p = Policy::RoundRobin { min_ios: 2 };
        for _ in 0..7 {
            assert_eq!(
                a.round_robin(&[0, 1], 2),
                b.pick(p, &[Optimized, Optimized], &[0, 0], None)
            );
        }
        assert_eq!(a.round_robin(&[], 1), None);
        // A path leaving the tier is skipped at once.
        assert_eq!(a.round_robin(&[1], 5), Some(1));
    }

    #[test]
    fn round_robin_by_cursor_takes_the_turns_of_the_search_by_path_number() {
        // The reference: the next turn is the first path of the tier above the current one
        // (or the tier's first), after min_ios picks of the current one while it is usable.
        fn reference(cur: &mut usize, run: &mut u32, tier: &[usize], min: u32) -> Option<usize> {
            if let [only] = *tier {
                *cur = only;
                return Some(only);
            }
            let first = *tier.first()?;
            if *run < min.max(1) && tier.contains(cur) {
                *run += 1;
                return Some(*cur);
            }
            *cur = tier.iter().copied().find(|&i| i > *cur).unwrap_or(first);
            *run = 1;
            Some(*cur)
        }
        // Tiers that change under the turns: paths leave, come back, and the tier empties.
        let tiers: [&[usize]; 6] = [&[0, 2, 5], &[0, 5], &[5], &[0, 2, 5], &[], &[2, 5]];
        for min in [0, 1, 2, 3] {
            let mut s = Selector::default();
            let (mut cur, mut run) = (0, 0);
            for (k, tier) in tiers.iter().enumerate() {
                for i in 0..7 {
                    let want = reference(&mut cur, &mut run, tier, min);
                    assert_eq!(
                        s.round_robin(tier, min),
                        want,
                        "min {min}, tier {k}, pick {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn turns_taken_away_from_the_selector_are_its_own_turns() {
        // Runs of every length over changing tiers, begun and ended at any point, against the
        // selector's own picks.
        let tiers: [&[usize]; 5] = [&[0, 2, 5], &[0, 5], &[2, 5], &[0, 2, 5], &[1, 3]];
        for min in [0, 1, 2, 3] {
            let mut by_run = Selector::default();
            let mut by_pick = Selector::default();
            for (k, tier) in tiers.iter().enumerate() {
                for len in [0, 1, 2, 5, 7] {
                    let mut t = by_run.begin_turns(tier, min);
                    for i in 0..len {
                        let want = by_pick.round_robin(tier, min);
                        assert_eq!(
                            Some(tier[t.take_turn()]),
                            want,
                            "min {min}, tier {k}, run {len}/{i}"
                        );
                    }
                    by_run.end_turns(tier, &t);
                    // A pick after the run follows on from it.
                    assert_eq!(
                        by_run.round_robin(tier, min),
                        by_pick.round_robin(tier, min)
                    );
                }
            }
            // A run that is never ended leaves the selector where it was.
            let before = by_run.clone();
            let mut t = by_run.begin_turns(&[0, 5], min);
            t.take_turn();
            assert_eq!(
                by_run.round_robin(&[0, 5], min),
                before.clone().round_robin(&[0, 5], min)
            );
        }
    }

    #[test]
    fn active_passive_fails_over_and_back() {
        let mut s = Selector::default();
        let p = Policy::ActivePassive {
            preferred: 0,
            failback: true,
        };
        assert_eq!(s.pick(p, &[Optimized, Optimized], &[0, 0], None), Some(0));
        assert_eq!(s.pick(p, &[Waiting, Optimized], &[0, 0], None), Some(1));
        assert_eq!(
            s.pick(p, &[Optimized, Optimized], &[0, 0], None),
            Some(0),
            "failback"
        );
        let p = Policy::ActivePassive {
            preferred: 0,
            failback: false,
        };
        assert_eq!(s.pick(p, &[Waiting, Optimized], &[0, 0], None), Some(1));
        assert_eq!(
            s.pick(p, &[Optimized, Optimized], &[0, 0], None),
            Some(1),
            "no failback"
        );
    }

    #[test]
    fn least_queue_depth_and_exclusion() {
        let mut s = Selector::default();
        let st = [Optimized, Optimized, Optimized];
        assert_eq!(
            s.pick(Policy::LeastQueueDepth, &st, &[3, 1, 2], None),
            Some(1)
        );
        assert_eq!(
            s.pick(Policy::LeastQueueDepth, &st, &[3, 1, 2], Some(1)),
            Some(2)
        );
        // Excluding the only usable path still uses it.
        assert_eq!(
            s.pick(
                Policy::LeastQueueDepth,
                &[Gone, Optimized],
                &[0, 0],
                Some(1)
            ),
            Some(1)
        );
    }

    #[test]
    fn policy_names_parse() {
        assert_eq!("lqd".parse::<Policy>(), Ok(Policy::LeastQueueDepth));
        assert!("fastest"
            .parse::<Policy>()
            .unwrap_err()
            .contains("unknown policy"));
    }
}
