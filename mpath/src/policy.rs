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

/// Per-channel selector state.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    current: usize,
    run: u32,
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
        if let [only] = *tier {
            // One usable path: no turn to take (the turn restarts on it).
            self.current = only;
            return Some(only);
        }
        let first = *tier.first()?;
        if self.run < min_ios.max(1) && tier.contains(&self.current) {
            self.run += 1;
            return Some(self.current);
        }
        let next = tier
            .iter()
            .copied()
            .find(|&i| i > self.current)
            .unwrap_or(first);
        self.current = next;
        self.run = 1;
        Some(next)
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
