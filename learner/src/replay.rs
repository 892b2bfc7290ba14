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
use tokio_util::sync::CancellationToken;
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

/// Replayed columns, with each column's item key and the probability its draw had.
pub struct Drawn {
    pub cols: Vec<Columns>,
    pub keys: Vec<u64>,
    pub probabilities: Vec<f64>,
    /// Items in the table when drawn (the largest the draws saw).
    pub table_size: u64,
}

enum DrawError {
    /// The table's rate limiter held sampling back for the request's whole timeout.
    Limited,
    Failed(String),
}

impl std::fmt::Display for DrawError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DrawError::Limited => f.write_str("the rate limiter held sampling back"),
            DrawError::Failed(why) => f.write_str(why),
        }
    }
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
        match self.draw(k, newest) {
            Ok(d) => {
                self.backoff.reset();
                Some(d.cols)
            }
            Err(why) => {
                self.failed(&why.to_string());
                None
            }
        }
    }

    /// A whole batch of `k` replayed columns (Ape-X: replay is the only source). Waits while
    /// replay cannot give one (unreachable, below its minimum size, its rate limiter holding
    /// sampling back), with backoff on errors; past `deadline` it says so in its log and in
    /// `troupe_learner_replay_waiting`, and goes on waiting. `None` on shutdown.
    pub fn batch(&mut self, k: usize, newest: u64, deadline: Duration, shutdown: &CancellationToken) -> Option<Drawn> {
        let start = Instant::now();
        let mut warned = false;
        let waited = |warned: &mut bool, why: &str| {
            if !*warned && start.elapsed() >= deadline {
                *warned = true;
                metrics::gauge!(names::LEARNER_REPLAY_WAITING).set(1.0);
                tracing::warn!(
                    why,
                    waited_s = start.elapsed().as_secs_f64(),
                    "no batch from replay yet: replay is this learner's only source, so it waits"
                );
            }
        };
        loop {
            if shutdown.is_cancelled() {
                return None;
            }
            let attempt = Instant::now();
            match self.draw(k, newest) {
                Ok(d) => {
                    self.backoff.reset();
                    if warned {
                        tracing::info!(waited_s = start.elapsed().as_secs_f64(), "replay gives batches again");
                    }
                    metrics::gauge!(names::LEARNER_REPLAY_WAITING).set(0.0);
                    // The time before the try that gave the batch.
                    let waited_s = start.elapsed().saturating_sub(attempt.elapsed()).as_secs_f64();
                    metrics::histogram!(names::LEARNER_REPLAY_WAIT_SECONDS).record(waited_s);
                    return Some(d);
                }
                // The rate limiter held sampling back (its own wait was the request's): ask again.
                Err(DrawError::Limited) => waited(&mut warned, "the rate limiter holds sampling back"),
                Err(DrawError::Failed(why)) => {
                    metrics::counter!(names::LEARNER_REPLAY_SAMPLE_FAILURES).increment(1);
                    waited(&mut warned, &why);
                    if !warned {
                        tracing::info!(why, "no batch from replay; waiting");
                    }
                    if !self.runtime.block_on(self.backoff.wait(shutdown)) {
                        return None;
                    }
                }
            }
        }
    }

    /// One try at `k` columns: whole items, the last one cut to what is still needed.
    fn draw(&mut self, k: usize, newest: u64) -> Result<Drawn, DrawError> {
        let mut d = Drawn {
            cols: Vec::new(),
            keys: Vec::new(),
            probabilities: Vec::new(),
            table_size: 0,
        };
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
            let r = match res {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(status)) if status.code() == tonic::Code::DeadlineExceeded => return Err(DrawError::Limited),
                Ok(Err(status)) => {
                    return Err(DrawError::Failed(format!("{:?}: {}", status.code(), status.message())));
                }
                Err(_) => return Err(DrawError::Failed("no answer within 3 s".into())),
            };
            d.table_size = d.table_size.max(r.table_size);
            let before = have;
            for s in r.items {
                let Some(item) = s.item else { continue };
                match columns_of(&item, &self.spec) {
                    Ok(cols) => {
                        self.per_item = cols.n;
                        metrics::histogram!(names::LEARNER_REPLAY_SAMPLE_AGE)
                            .record(newest.saturating_sub(cols.policy_version) as f64);
                        have += cols.n;
                        d.keys.extend(std::iter::repeat_n(s.key, cols.n));
                        d.probabilities.extend(std::iter::repeat_n(s.probability, cols.n));
                        d.cols.push(cols);
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
                return Err(DrawError::Failed(
                    "every replayed rollout of a sample was refused".into(),
                ));
            }
        }
        // Exactly k: the last rollout gives what is still needed.
        let extra = have - k;
        if extra > 0 {
            let last = d.cols.pop().expect("have > k > 0");
            let at = last.n - extra;
            let (keep, _) = last.split(at);
            d.cols.push(keep);
            d.keys.truncate(k);
            d.probabilities.truncate(k);
        }
        Ok(d)
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

/// Priority updates waiting to be sent; beyond it they are dropped (counted): a slow replay
/// service must not hold the model thread up, and an item whose update is lost keeps the
/// priority it had.
const PRIORITY_QUEUE: usize = 8;

/// Each column's new priority, and the item key it came from.
pub struct PriorityUpdate {
    pub keys: Vec<u64>,
    pub priorities: Vec<f64>,
}

/// Starts the task that sends the model thread's new priorities to replay: an item of several
/// columns (a team's) takes the largest of theirs. Needs a Tokio runtime context.
pub fn spawn_priority_updater(
    link: ReplayLink,
    shutdown: CancellationToken,
) -> tokio::sync::mpsc::Sender<PriorityUpdate> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<PriorityUpdate>(PRIORITY_QUEUE);
    tokio::spawn(async move {
        loop {
            let u = tokio::select! {
                u = rx.recv() => u,
                _ = shutdown.cancelled() => None,
            };
            let Some(u) = u else { return };
            let mut by_key: Vec<(u64, f64)> = Vec::with_capacity(u.keys.len());
            for (&k, &p) in u.keys.iter().zip(&u.priorities) {
                match by_key.iter_mut().find(|(key, _)| *key == k) {
                    Some((_, best)) => *best = best.max(p),
                    None => by_key.push((k, p)),
                }
            }
            let n = by_key.len() as u64;
            let req = proto::v1::UpdatePrioritiesRequest {
                table: link.table.clone(),
                policy: link.policy.clone(),
                keys: by_key.iter().map(|&(k, _)| k).collect(),
                priorities: by_key.iter().map(|&(_, p)| p).collect(),
            };
            let mut client = link.client.clone();
            match tokio::time::timeout(Duration::from_secs(5), client.update_priorities(req)).await {
                Ok(Ok(_)) => metrics::counter!(names::LEARNER_PRIORITY_UPDATES).increment(n),
                Ok(Err(status)) => {
                    metrics::counter!(names::LEARNER_PRIORITY_UPDATE_ERRORS).increment(1);
                    tracing::warn!(code = ?status.code(), error = %status.message(), "a priority update failed");
                }
                Err(_) => {
                    metrics::counter!(names::LEARNER_PRIORITY_UPDATE_ERRORS).increment(1);
                    tracing::warn!("a priority update had no answer within 5 s");
                }
            }
        }
    });
    tx
}
