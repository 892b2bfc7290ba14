//! Replay in the learner (IMPALA/APPO with `learner.replay_ratio`): every rollout the streaming
//! edge accepts is also written to the policy's copy of `learner.replay_table` (by
//! [`troupe::replay`]'s writer, unless `learner.replay_inserter = "actors"`: then the actors write
//! what they send), and that share of each batch's columns is drawn back from it. V-trace corrects
//! for their policy lag, so ingest's staleness and version checks stay at the streaming edge: a
//! replayed rollout is old by design. It is still validated, as every rollout is, before it is
//! trained on.
//!
//! Replay never stops training: a writer that cannot keep up drops rollouts (counted), and a batch
//! whose replayed share cannot be had (the table below its minimum size, the service unreachable,
//! every sampled rollout refused) is filled from the stream instead, with a backoff before replay
//! is asked again.

use std::time::{Duration, Instant};

use prost::Message;
use proto::v1::{ReplayItem, Rollout, SampleRequest};
use troupe::process::Backoff;
use troupe::replay::{ReplayLink, ROLLOUT};
use troupe::telemetry::names;

use crate::batch::Columns;
use crate::ingest::{validate, RolloutSpec};

/// The rollout an item holds, validated as the streaming edge validates (but for its age).
pub fn columns_of(item: &ReplayItem, spec: &RolloutSpec) -> Result<Columns, String> {
    let t = item
        .tensors
        .iter()
        .find(|t| t.name == ROLLOUT)
        .and_then(|t| t.tensor.as_ref())
        .ok_or_else(|| format!("a replay item without a {ROLLOUT:?} tensor"))?;
    let r = Rollout::decode(t.data.clone()).map_err(|e| format!("a replay item's rollout: {e}"))?;
    validate(&r, spec, u64::MAX).map_err(|e| e.to_string())
}

/// The sampling side, on the batcher thread.
pub struct Sampler {
    link: ReplayLink,
    spec: RolloutSpec,
    runtime: tokio::runtime::Handle,
    backoff: Backoff,
    /// Replay is not asked before this (after a failure).
    resume_at: Instant,
    /// Columns an item held last time (to ask for about as many items as needed).
    per_item: usize,
}

impl Sampler {
    pub fn new(link: ReplayLink, spec: RolloutSpec, runtime: tokio::runtime::Handle) -> Sampler {
        let per_item = spec.max_envs;
        Sampler {
            link,
            spec,
            runtime,
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(10)),
            resume_at: Instant::now(),
            per_item,
        }
    }

    /// `k` columns of replayed rollouts, with the age of each (the newest known version minus
    /// its own), or `None` when replay cannot give them now: the batch is filled from the
    /// stream, and replay is asked again after a backoff.
    pub fn columns(&mut self, k: usize, newest: u64) -> Option<Vec<Columns>> {
        if Instant::now() < self.resume_at {
            return None;
        }
        let mut got: Vec<Columns> = Vec::new();
        let mut have = 0;
        while have < k {
            let want = (k - have).div_ceil(self.per_item.max(1)).clamp(1, 256) as u32;
            let req = SampleRequest {
                table: self.link.table.clone(),
                policy: self.link.policy.clone(),
                batch_size: want,
                timeout_s: 1.0,
            };
            let mut client = self.link.client.clone();
            let res = self
                .runtime
                .block_on(async move { tokio::time::timeout(Duration::from_secs(3), client.sample(req)).await });
            let items = match res {
                Ok(Ok(r)) => r.into_inner().items,
                Ok(Err(status)) => {
                    self.failed(&format!("{:?}: {}", status.code(), status.message()));
                    return None;
                }
                Err(_) => {
                    self.failed("no answer within 3 s");
                    return None;
                }
            };
            let before = have;
            for s in items {
                let Some(item) = s.item else { continue };
                match columns_of(&item, &self.spec) {
                    Ok(cols) => {
                        self.per_item = cols.n;
                        metrics::histogram!(names::LEARNER_REPLAY_SAMPLE_AGE)
                            .record(newest.saturating_sub(cols.policy_version) as f64);
                        have += cols.n;
                        got.push(cols);
                    }
                    Err(e) => {
                        metrics::counter!(names::LEARNER_ROLLOUTS_REJECTED, "reason" => "replayed").increment(1);
                        tracing::warn!(key = s.key, error = %e, "refused a replayed rollout");
                    }
                }
            }
            if have == before {
                // Every item refused (an actor's rollouts of another shape, a table left over
                // from another run): asking again at once would spin.
                self.failed("every replayed rollout of a sample was refused");
                return None;
            }
        }
        self.backoff.reset();
        // Exactly k: the last rollout gives what is still needed.
        let extra = have - k;
        if extra > 0 {
            let last = got.pop().expect("have > k > 0");
            let at = last.n - extra;
            let (keep, _) = last.split(at);
            got.push(keep);
        }
        Some(got)
    }

    fn failed(&mut self, why: &str) {
        let wait = self.backoff.next_delay();
        self.resume_at = Instant::now() + wait;
        metrics::counter!(names::LEARNER_REPLAY_SAMPLE_FAILURES).increment(1);
        tracing::info!(
            why,
            retry_in_s = wait.as_secs_f64(),
            "no replayed columns for this batch; filling it from the stream"
        );
    }
}
