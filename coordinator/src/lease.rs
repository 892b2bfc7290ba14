//! The learner lease: which learner may publish, fenced by an epoch.
//!
//! Registering takes the lease under a new epoch (the counter lives in Redis, so epochs only go
//! up across coordinator restarts). While one learner id holds a live lease, another id is
//! refused; the same id takes over at once (a restarted learner), which fences the old process.
//! Only the current epoch may publish or renew. A coordinator that restarted knows the newest
//! epoch and its holder's id from Redis: it treats the lease as held for one more lease length
//! (the holder renews it as before; the same id may take over at once; another id waits).

use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub struct Holder {
    pub learner_id: String,
    pub epoch: u64,
    pub expires: Instant,
}

/// Why a learner may not have or use the lease.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LeaseError {
    #[error("the learner lease is held by learner {holder:?} (epoch {epoch}) for another {left_s:.1} s; a second learner may not train this run (it may take over once that lease runs out)")]
    Held { holder: String, epoch: u64, left_s: f64 },
    #[error("epoch {epoch} is stale: the current learner epoch is {current}; this learner was fenced off (another learner registered)")]
    Stale { epoch: u64, current: u64 },
}

#[derive(Debug, Default)]
pub struct Lease {
    holder: Option<Holder>,
    /// The newest epoch granted (also in Redis).
    current: u64,
}

impl Lease {
    /// A lease recovered from Redis after a restart: epoch `current`, held by `learner_id` for
    /// one more `ttl` from `now` (renewals extend it as usual).
    pub fn recovered(current: u64, learner_id: Option<String>, now: Instant, ttl: Duration) -> Lease {
        let holder = (current > 0).then(|| Holder {
            learner_id: learner_id.unwrap_or_else(|| "(unknown, from before a coordinator restart)".into()),
            epoch: current,
            expires: now + ttl,
        });
        Lease { holder, current }
    }

    pub fn current_epoch(&self) -> u64 {
        self.current
    }

    pub fn holder(&self) -> Option<&Holder> {
        self.holder.as_ref()
    }

    /// Whether `learner_id` may take the lease now.
    pub fn may_acquire(&self, learner_id: &str, now: Instant) -> Result<(), LeaseError> {
        match &self.holder {
            Some(h) if h.learner_id != learner_id && h.expires > now => Err(LeaseError::Held {
                holder: h.learner_id.clone(),
                epoch: h.epoch,
                left_s: (h.expires - now).as_secs_f64(),
            }),
            _ => Ok(()),
        }
    }

    /// Grants the lease under `epoch`, which must be newer than every epoch granted before.
    pub fn grant(&mut self, learner_id: &str, epoch: u64, now: Instant, ttl: Duration) {
        assert!(
            epoch > self.current,
            "epochs only go up: {epoch} after {}",
            self.current
        );
        self.current = epoch;
        self.holder = Some(Holder {
            learner_id: learner_id.to_string(),
            epoch,
            expires: now + ttl,
        });
    }

    /// Checks that `epoch` is current and extends its lease. After a coordinator restart the
    /// current epoch's first caller re-adopts the lease.
    pub fn renew(&mut self, epoch: u64, now: Instant, ttl: Duration) -> Result<(), LeaseError> {
        if epoch != self.current || epoch == 0 {
            return Err(LeaseError::Stale {
                epoch,
                current: self.current,
            });
        }
        if let Some(h) = &mut self.holder {
            h.expires = now + ttl;
        }
        Ok(())
    }

    /// Checks that `epoch` may publish (the current one), without extending the lease.
    pub fn check(&self, epoch: u64) -> Result<(), LeaseError> {
        if epoch == 0 || epoch != self.current {
            return Err(LeaseError::Stale {
                epoch,
                current: self.current,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TTL: Duration = Duration::from_secs(10);

    #[test]
    fn a_second_learner_waits_for_the_lease_and_then_fences_the_first() {
        let t0 = Instant::now();
        let mut l = Lease::default();
        l.may_acquire("a", t0).unwrap();
        l.grant("a", 1, t0, TTL);
        let held = l.may_acquire("b", t0 + Duration::from_secs(3)).unwrap_err();
        assert!(matches!(held, LeaseError::Held { epoch: 1, .. }), "{held}");
        assert!(held.to_string().contains("\"a\""), "{held}");
        l.renew(1, t0 + Duration::from_secs(5), TTL).unwrap();
        assert!(
            l.may_acquire("b", t0 + Duration::from_secs(12)).is_err(),
            "renewed at 5 s"
        );
        l.may_acquire("b", t0 + Duration::from_secs(16)).unwrap();
        l.grant("b", 2, t0 + Duration::from_secs(16), TTL);
        assert_eq!(l.check(1), Err(LeaseError::Stale { epoch: 1, current: 2 }));
        assert!(l.renew(1, t0 + Duration::from_secs(17), TTL).is_err());
        l.check(2).unwrap();
    }

    #[test]
    fn the_same_learner_id_takes_over_at_once() {
        let t0 = Instant::now();
        let mut l = Lease::default();
        l.grant("a", 1, t0, TTL);
        l.may_acquire("a", t0 + Duration::from_secs(1)).unwrap();
        l.grant("a", 2, t0 + Duration::from_secs(1), TTL);
        assert!(l.check(1).is_err(), "the restarted learner fences its old process");
    }

    #[test]
    fn after_a_restart_the_lease_stays_with_its_holder() {
        let t0 = Instant::now();
        let mut l = Lease::recovered(7, Some("a".into()), t0, TTL);
        assert!(l.renew(6, t0, TTL).is_err());
        l.check(7).unwrap();
        assert!(l.may_acquire("other", t0).is_err(), "another id waits for the lease");
        l.may_acquire("a", t0).unwrap();
        l.renew(7, t0 + Duration::from_secs(8), TTL).unwrap();
        assert!(l.may_acquire("other", t0 + Duration::from_secs(12)).is_err(), "renewed");
        l.may_acquire("other", t0 + Duration::from_secs(19)).unwrap();
        assert!(Lease::recovered(0, None, t0, TTL).holder().is_none());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Register(u8, u64),
        Renew(u64, u64),
        Publish(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..3, 0u64..30).prop_map(|(id, dt)| Op::Register(id, dt)),
            (0u64..6, 0u64..30).prop_map(|(e, dt)| Op::Renew(e, dt)),
            (0u64..6).prop_map(Op::Publish),
        ]
    }

    proptest! {
        /// Against a model: epochs only go up; only the newest epoch may publish; a learner id
        /// other than the holder's is refused exactly while the holder's lease is live.
        #[test]
        fn the_lease_matches_its_model(ops in proptest::collection::vec(op(), 1..60)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut lease = Lease::default();
            let mut model_epoch = 0u64;
            let mut model_holder: Option<(u8, Instant)> = None;
            for op in ops {
                match op {
                    Op::Register(id, dt) => {
                        now += Duration::from_secs(dt);
                        let free = match model_holder {
                            Some((h, exp)) => h == id || exp <= now,
                            None => true,
                        };
                        let r = lease.may_acquire(&id.to_string(), now);
                        prop_assert_eq!(r.is_ok(), free);
                        if free {
                            model_epoch += 1;
                            lease.grant(&id.to_string(), model_epoch, now, TTL);
                            model_holder = Some((id, now + TTL));
                        }
                    }
                    Op::Renew(e, dt) => {
                        now += Duration::from_secs(dt);
                        let ok = e == model_epoch && e > 0;
                        prop_assert_eq!(lease.renew(e, now, TTL).is_ok(), ok);
                        if ok {
                            if let Some((_, exp)) = model_holder.as_mut() {
                                *exp = now + TTL;
                            }
                        }
                    }
                    Op::Publish(e) => {
                        prop_assert_eq!(lease.check(e).is_ok(), e == model_epoch && e > 0);
                    }
                }
                prop_assert_eq!(lease.current_epoch(), model_epoch);
            }
        }
    }
}
