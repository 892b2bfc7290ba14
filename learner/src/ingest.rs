//! The learner's gRPC edge: one long-lived rollout stream per actor.
//!
//! Each rollout is checked here (dtypes, shapes, finiteness, action range, a known policy
//! version) and turned into plain [`Columns`]. A malformed rollout ends the stream with
//! `InvalidArgument` naming the problem; other streams and training go on. Accepted rollouts go
//! into a bounded queue and are acknowledged once there: the ack is the actor's credit for its
//! next rollout, so when the learner falls behind, actors wait, and no rollout sits in
//! transport buffers for long (that lag would make the data stale).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use proto::v1::learner_server::Learner;
use proto::v1::{Rollout, RolloutAck};
use proto::TensorView;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use troupe::telemetry::names;
use troupe::Error;

use crate::batch::Columns;

/// What a rollout must look like.
#[derive(Debug, Clone)]
pub struct RolloutSpec {
    pub unroll_length: usize,
    pub obs_size: usize,
    pub num_actions: usize,
    /// Largest N accepted in one rollout.
    pub max_envs: usize,
}

/// Checks a rollout and decodes it. `latest_version` is the newest policy version there is.
pub fn validate(r: &Rollout, spec: &RolloutSpec, latest_version: u64) -> Result<Columns, Error> {
    if r.policy_version == 0 || r.policy_version > latest_version {
        return Err(Error::InvalidArgument(format!(
            "policy_version: unknown version {} (the newest version is {latest_version})",
            r.policy_version
        )));
    }
    let (t, o, a) = (spec.unroll_length, spec.obs_size, spec.num_actions);
    let obs = TensorView::new::<f32>("observations", r.observations.as_ref())?;
    if obs.shape.len() != 3
        || obs.shape[0] != t
        || obs.shape[2] != o
        || obs.shape[1] == 0
        || obs.shape[1] > spec.max_envs
    {
        return Err(Error::InvalidArgument(format!(
            "observations: expected shape [{t}, N, {o}] with 1 <= N <= {}, got {:?}",
            spec.max_envs, obs.shape
        )));
    }
    let n = obs.shape[1];
    let actions = TensorView::new::<i64>("actions", r.actions.as_ref())?;
    actions.expect_shape(&[Some(t), Some(n)])?;
    let rewards = TensorView::new::<f32>("rewards", r.rewards.as_ref())?;
    rewards.expect_shape(&[Some(t), Some(n)])?;
    let terminated = TensorView::new::<u8>("terminated", r.terminated.as_ref())?;
    terminated.expect_shape(&[Some(t), Some(n)])?;
    let truncated = TensorView::new::<u8>("truncated", r.truncated.as_ref())?;
    truncated.expect_shape(&[Some(t), Some(n)])?;
    let logits = TensorView::new::<f32>("behaviour_logits", r.behaviour_logits.as_ref())?;
    logits.expect_shape(&[Some(t), Some(n), Some(a)])?;
    let bootstrap = TensorView::new::<f32>("bootstrap_observations", r.bootstrap_observations.as_ref())?;
    bootstrap.expect_shape(&[Some(n), Some(o)])?;
    let truncated = truncated.to_flags()?;
    let k = truncated.iter().filter(|&&x| x).count();
    let trunc_obs = TensorView::new::<f32>("truncation_observations", r.truncation_observations.as_ref())?;
    trunc_obs.expect_shape(&[Some(k), Some(o)])?;

    let mut observations = obs.to_finite_f32()?;
    observations.extend(bootstrap.to_finite_f32()?);
    let truncations = truncated
        .iter()
        .enumerate()
        .filter(|(_, &x)| x)
        .map(|(i, _)| (i / n, i % n))
        .collect();
    Ok(Columns {
        t,
        n,
        obs_size: o,
        num_actions: a,
        policy_version: r.policy_version,
        observations,
        actions: actions.to_i64_in(0, a as i64)?,
        rewards: rewards.to_finite_f32()?,
        terminated: terminated.to_flags()?,
        truncated,
        logits: logits.to_finite_f32()?,
        truncations,
        truncation_observations: trunc_obs.to_finite_f32()?,
    })
}

pub struct LearnerService {
    pub spec: RolloutSpec,
    /// Newest policy version this learner has created.
    pub latest_version: Arc<AtomicU64>,
    pub queue: mpsc::Sender<Columns>,
    pub shutdown: CancellationToken,
}

/// Counts open streams in a gauge for as long as it lives.
struct StreamGauge;

impl StreamGauge {
    fn open() -> StreamGauge {
        metrics::gauge!(names::LEARNER_STREAMS).increment(1.0);
        StreamGauge
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        metrics::gauge!(names::LEARNER_STREAMS).decrement(1.0);
    }
}

fn reject_reason(e: &Error) -> &'static str {
    let m = e.to_string();
    if m.starts_with("policy_version") {
        "unknown_version"
    } else if m.contains("finite") {
        "not_finite"
    } else if m.contains("shape") || m.contains("bytes") {
        "shape"
    } else {
        "other"
    }
}

#[tonic::async_trait]
impl Learner for LearnerService {
    type StreamRolloutsStream = ReceiverStream<Result<RolloutAck, tonic::Status>>;

    async fn stream_rollouts(
        &self,
        request: tonic::Request<tonic::Streaming<Rollout>>,
    ) -> Result<tonic::Response<Self::StreamRolloutsStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let (acks, out) = mpsc::channel(ACK_BUFFER);
        let (spec, latest, queue, shutdown) = (
            self.spec.clone(),
            self.latest_version.clone(),
            self.queue.clone(),
            self.shutdown.clone(),
        );
        tokio::spawn(async move {
            let _gauge = StreamGauge::open();
            let mut accepted = 0u64;
            loop {
                let next = tokio::select! {
                    m = inbound.message() => m,
                    _ = shutdown.cancelled() => return,
                };
                let rollout = match next {
                    Ok(Some(r)) => r,
                    Ok(None) => return, // the actor closed its side
                    Err(status) => {
                        tracing::debug!(code = ?status.code(), "rollout stream broke");
                        return;
                    }
                };
                let cols = match validate(&rollout, &spec, latest.load(Ordering::Acquire)) {
                    Ok(c) => c,
                    Err(e) => {
                        metrics::counter!(names::LEARNER_ROLLOUTS_REJECTED, "reason" => reject_reason(&e)).increment(1);
                        tracing::warn!(actor_id = rollout.actor_id, error = %e, "rejected a malformed rollout");
                        let _ = acks.send(Err(e.into())).await;
                        return;
                    }
                };
                // Bounded: the ack (the actor's next credit) waits until there is room.
                let queued = tokio::select! {
                    r = queue.send(cols) => r.is_ok(),
                    _ = shutdown.cancelled() => false,
                };
                if !queued {
                    return;
                }
                metrics::gauge!(names::LEARNER_QUEUE_DEPTH).set((queue.max_capacity() - queue.capacity()) as f64);
                metrics::counter!(names::LEARNER_ROLLOUTS).increment(1);
                accepted += 1;
                if acks.send(Ok(RolloutAck { accepted })).await.is_err() {
                    return; // the actor went away
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(out)))
    }
}

/// Acks waiting to be read by the actor; it holds at most max_in_flight unacked rollouts, so a
/// few slots are plenty.
const ACK_BUFFER: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1::Tensor;

    fn spec() -> RolloutSpec {
        RolloutSpec {
            unroll_length: 3,
            obs_size: 2,
            num_actions: 2,
            max_envs: 64,
        }
    }

    fn good() -> Rollout {
        let (t, n, o, a) = (3, 2, 2, 2);
        Rollout {
            actor_id: 1,
            policy_version: 4,
            observations: Some(Tensor::from_slice(&[t, n, o], &vec![0.1f32; t * n * o])),
            actions: Some(Tensor::from_slice(&[t, n], &[0i64, 1, 1, 0, 0, 1])),
            rewards: Some(Tensor::from_slice(&[t, n], &[1.0f32; 6])),
            terminated: Some(Tensor::from_slice(&[t, n], &[0u8, 0, 1, 0, 0, 0])),
            truncated: Some(Tensor::from_slice(&[t, n], &[0u8, 1, 0, 0, 0, 1])),
            behaviour_logits: Some(Tensor::from_slice(&[t, n, a], &[0.0f32; 12])),
            bootstrap_observations: Some(Tensor::from_slice(&[n, o], &[0.2f32; 4])),
            truncation_observations: Some(Tensor::from_slice(&[2, o], &[1.0f32, 2.0, 3.0, 4.0])),
        }
    }

    fn err(r: &Rollout) -> String {
        validate(r, &spec(), 5).unwrap_err().to_string()
    }

    #[test]
    fn a_good_rollout_decodes() {
        let c = validate(&good(), &spec(), 5).unwrap();
        assert_eq!((c.t, c.n), (3, 2));
        assert_eq!(c.observations.len(), 4 * 2 * 2);
        assert_eq!(&c.observations[12..], &[0.2; 4]);
        assert_eq!(c.truncations, vec![(0, 1), (2, 1)]);
        assert_eq!(c.actions, vec![0, 1, 1, 0, 0, 1]);
    }

    #[test]
    fn each_problem_is_named() {
        let mut r = good();
        r.policy_version = 9;
        assert_eq!(err(&r), "policy_version: unknown version 9 (the newest version is 5)");
        r.policy_version = 0;
        assert!(err(&r).starts_with("policy_version: unknown version 0"));

        let mut r = good();
        r.observations = Some(Tensor::from_slice(&[3, 2, 3], &[0.0f32; 18]));
        assert_eq!(
            err(&r),
            "observations: expected shape [3, N, 2] with 1 <= N <= 64, got [3, 2, 3]"
        );

        let mut r = good();
        r.rewards = Some(Tensor::from_slice(&[3, 2], &[1.0f32, 1.0, f32::NAN, 1.0, 1.0, 1.0]));
        assert_eq!(err(&r), "rewards: element 2 is NaN, expected a finite number");

        let mut r = good();
        r.bootstrap_observations = Some(Tensor::from_slice(&[2, 2], &[0.0f32, f32::INFINITY, 0.0, 0.0]));
        assert_eq!(
            err(&r),
            "bootstrap_observations: element 1 is inf, expected a finite number"
        );

        let mut r = good();
        r.actions = Some(Tensor::from_slice(&[3, 2], &[0i64, 1, 2, 0, 0, 1]));
        assert_eq!(err(&r), "actions: element 2 is 2, expected a value in [0, 2)");

        let mut r = good();
        r.actions = Some(Tensor::from_slice(&[2, 3], &[0i64; 6]));
        assert_eq!(err(&r), "actions: expected shape [3, 2], got [2, 3]");

        let mut r = good();
        r.truncation_observations = Some(Tensor::from_slice(&[1, 2], &[0.0f32; 2]));
        assert_eq!(err(&r), "truncation_observations: expected shape [2, 2], got [1, 2]");

        let mut r = good();
        r.behaviour_logits = None;
        assert_eq!(err(&r), "behaviour_logits: missing tensor");

        let mut r = good();
        r.terminated = Some(Tensor::from_slice(&[3, 2], &[0.0f32; 6]));
        assert_eq!(err(&r), "terminated: expected dtype u8, got f32");
    }
}
