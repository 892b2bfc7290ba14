//! Policy-distribution latency: the time from storing a policy version to the moment the last
//! live actor acts with it (or with a newer one, which supersedes it).
//!
//! Actors report in each heartbeat the version they act with and how long ago, by their own
//! clock, they switched to it; the coordinator places that switch on its own clock, so no two
//! clocks are compared. A version is complete once every actor that was live when it was stored
//! has switched to it or past it; actors that go away stop being waited for. Pending versions are
//! bounded: the oldest is dropped unobserved when too many are pending (a stalled actor).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

/// Versions waited on at most (with a version every few ms, a stalled actor would otherwise grow
/// the map without bound).
pub const MAX_PENDING: usize = 1024;

struct Pending {
    stored_at: Instant,
    waiting: HashSet<u64>,
    /// The latest switch among the actors that have switched so far.
    last_switch: Option<Instant>,
}

#[derive(Default)]
pub struct Distribution {
    pending: BTreeMap<u64, Pending>,
    /// Per actor: the version it acts with, as last reported.
    acting: HashMap<u64, u64>,
}

impl Distribution {
    /// `version` was stored at `at`; `live` are the actors live then.
    pub fn stored(&mut self, version: u64, at: Instant, live: impl IntoIterator<Item = u64>) {
        let waiting: HashSet<u64> = live
            .into_iter()
            .filter(|a| self.acting.get(a).is_none_or(|v| *v < version))
            .collect();
        if waiting.is_empty() {
            return;
        }
        self.pending.insert(
            version,
            Pending {
                stored_at: at,
                waiting,
                last_switch: None,
            },
        );
        while self.pending.len() > MAX_PENDING {
            self.pending.pop_first();
        }
    }

    /// `actor` reported acting with `version` since `switched_at`. Returns the latencies of the
    /// versions this completes.
    pub fn acting(&mut self, actor: u64, version: u64, switched_at: Instant) -> Vec<Duration> {
        let previous = self.acting.insert(actor, version);
        if previous == Some(version) {
            return Vec::new();
        }
        let mut done = Vec::new();
        let mut complete = Vec::new();
        for (v, p) in self.pending.range_mut(..=version) {
            if p.waiting.remove(&actor) {
                let at = switched_at.max(p.stored_at);
                p.last_switch = Some(p.last_switch.map_or(at, |t| t.max(at)));
            }
            if p.waiting.is_empty() {
                complete.push(*v);
            }
        }
        for v in complete {
            let p = self.pending.remove(&v).expect("pending");
            if let Some(t) = p.last_switch {
                done.push(t - p.stored_at);
            }
        }
        done
    }

    /// `actor` is gone (timed out): it is no longer waited for. Returns the latencies of the
    /// versions this completes (those some other actor switched to).
    pub fn gone(&mut self, actor: u64) -> Vec<Duration> {
        self.acting.remove(&actor);
        let mut done = Vec::new();
        self.pending.retain(|_, p| {
            p.waiting.remove(&actor);
            if !p.waiting.is_empty() {
                return true;
            }
            if let Some(t) = p.last_switch {
                done.push(t - p.stored_at);
            }
            false
        });
        done
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    #[test]
    fn the_last_actor_to_switch_sets_the_latency() {
        let t0 = Instant::now();
        let mut d = Distribution::default();
        d.stored(1, t0, [1, 2]);
        assert!(d.acting(1, 1, t0 + ms(10)).is_empty());
        assert_eq!(d.acting(2, 1, t0 + ms(30)), vec![ms(30)]);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn a_newer_version_supersedes_and_a_gone_actor_is_not_waited_for() {
        let t0 = Instant::now();
        let mut d = Distribution::default();
        d.stored(1, t0, [1, 2, 3]);
        d.stored(2, t0 + ms(5), [1, 2, 3]);
        // Actor 1 skips version 1 and acts with 2 directly: both count it.
        assert!(d.acting(1, 2, t0 + ms(20)).is_empty());
        assert!(d.acting(2, 1, t0 + ms(8)).is_empty());
        // Actor 3 dies: version 1 is complete (last switch at 20 ms), version 2 waits on 2.
        assert_eq!(d.gone(3), vec![ms(20)]);
        assert_eq!(d.acting(2, 2, t0 + ms(50)), vec![ms(45)]);
        // No actors, nothing to wait for.
        d.gone(1);
        d.gone(2);
        d.stored(3, t0 + ms(60), []);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn pending_versions_are_bounded() {
        let t0 = Instant::now();
        let mut d = Distribution::default();
        for v in 1..=(MAX_PENDING as u64 + 10) {
            d.stored(v, t0, [7]);
        }
        assert_eq!(d.pending(), MAX_PENDING);
        assert_eq!(d.acting(7, MAX_PENDING as u64 + 10, t0 + ms(1)).len(), MAX_PENDING);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Store(Vec<u64>),
        Act { actor: u64, ahead: u64, after_ms: u64 },
        Gone(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            proptest::collection::vec(0u64..4, 0..4).prop_map(Op::Store),
            (0u64..4, 0u64..3, 0u64..100).prop_map(|(actor, ahead, after_ms)| Op::Act { actor, ahead, after_ms }),
            (0u64..4).prop_map(Op::Gone),
        ]
    }

    type Model = BTreeMap<u64, (Instant, HashSet<u64>, Vec<Instant>)>;

    /// The model's versions no actor holds up any more: their latency is the latest switch.
    fn retire(model: &mut Model, expected: &mut Vec<Duration>) {
        model.retain(|_, (stored, waiting, switches)| {
            if waiting.is_empty() {
                if let Some(last) = switches.iter().max() {
                    expected.push(*last - *stored);
                }
            }
            !waiting.is_empty()
        });
    }

    proptest! {
        /// Against a model that keeps, per version, the switch times of each waited-on actor:
        /// every latency observed is the latest first switch to that version or past it, minus
        /// the time it was stored, and each version is observed at most once.
        #[test]
        fn matches_a_model(ops in proptest::collection::vec(op(), 1..60)) {
            let t0 = Instant::now();
            let mut d = Distribution::default();
            let mut now = t0;
            let mut version = 0u64;
            // Model: version -> (stored_at, waiting, switch times), and each actor's version.
            let mut model: Model = BTreeMap::new();
            let mut acting: HashMap<u64, u64> = HashMap::new();
            let mut observed = Vec::new();
            let mut expected = Vec::new();
            for op in ops {
                now += ms(3);
                match op {
                    Op::Store(live) => {
                        version += 1;
                        d.stored(version, now, live.clone());
                        let waiting: HashSet<u64> = live.into_iter().filter(|a| acting.get(a).is_none_or(|v| *v < version)).collect();
                        if !waiting.is_empty() {
                            model.insert(version, (now, waiting, Vec::new()));
                        }
                    }
                    Op::Act { actor, ahead, after_ms } => {
                        let v = version.saturating_sub(ahead);
                        let at = now - ms(after_ms.min(2));
                        observed.extend(d.acting(actor, v, at));
                        if acting.insert(actor, v) != Some(v) {
                            for (stored, waiting, switches) in model.range_mut(..=v).map(|(_, p)| p) {
                                if waiting.remove(&actor) {
                                    switches.push(at.max(*stored));
                                }
                            }
                            retire(&mut model, &mut expected);
                        }
                    }
                    Op::Gone(actor) => {
                        observed.extend(d.gone(actor));
                        acting.remove(&actor);
                        for (_, waiting, _) in model.values_mut() {
                            waiting.remove(&actor);
                        }
                        retire(&mut model, &mut expected);
                    }
                }
                prop_assert_eq!(d.pending(), model.len());
            }
            observed.sort();
            expected.sort();
            prop_assert_eq!(observed, expected);
        }
    }
}
