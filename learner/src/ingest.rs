//! The learner's gRPC edge: one long-lived rollout stream per actor.
//!
//! Each rollout is checked here (dtypes, shapes, finiteness, action range, a known policy
//! version) and turned into plain [`Columns`]. A malformed rollout ends the stream with
//! `InvalidArgument` naming the problem; other streams and training go on. Accepted rollouts go
//! into a bounded queue and are acknowledged once there: the ack is the actor's credit for its
//! next rollout, so when the learner falls behind, actors wait, and no rollout sits in
//! transport buffers for long (that lag would make the data stale).
//!
//! Hardening: with tokens on, a stream speaks for one actor id, proven by the secret the
//! coordinator issued at registration (`troupe-actor-id`, `troupe-actor-secret` metadata), and
//! each id may hold `learner.max_streams_per_actor` streams. Streams that send nothing for
//! `learner.stream_idle_timeout_s` are closed. Rollouts more than `learner.max_policy_lag`
//! versions old are dropped (acked, so the actor's credit goes on) and counted as `stale`.
//! Streams share the queue fairly: a stream waits for room with at most one rollout, and tokio's
//! channel serves waiting senders first come, first served, so each open stream gets one turn in
//! each round.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::v1::learner_server::Learner;
use proto::v1::{Rollout, RolloutAck};
use proto::TensorView;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use troupe::telemetry::names;
use troupe::Error;

use crate::batch::{Columns, Rows};
use proto::v1::DType;
use troupe::spaces::{ActionSpace, ObsDType, PolicySpec};

/// What a rollout must look like: the policy's spaces and sizes.
#[derive(Debug, Clone)]
pub struct RolloutSpec {
    pub unroll_length: usize,
    pub env: PolicySpec,
    /// Floats of recurrent state per column (0 without an LSTM core).
    pub state_size: usize,
    /// Largest N accepted in one rollout: the run's `actor.num_envs` times the policy's agents
    /// per env.
    pub max_envs: usize,
    /// The policy this learner trains is the run's first (its rollouts may say "").
    pub first_policy: bool,
}

impl RolloutSpec {
    fn obs_dtype(&self) -> DType {
        match self.env.observation.dtype {
            ObsDType::F32 => DType::DtypeF32,
            ObsDType::U8 => DType::DtypeU8,
        }
    }
}

/// Why a rollout was refused: the metric label comes from this, never from the message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    UnknownVersion,
    NotFinite,
    Shape,
    OutOfRange,
    Missing,
    DType,
    /// A rollout of another policy than this learner's.
    WrongPolicy,
}

impl RejectKind {
    pub const ALL: [RejectKind; 7] = [
        RejectKind::UnknownVersion,
        RejectKind::NotFinite,
        RejectKind::Shape,
        RejectKind::OutOfRange,
        RejectKind::Missing,
        RejectKind::DType,
        RejectKind::WrongPolicy,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RejectKind::UnknownVersion => "unknown_version",
            RejectKind::NotFinite => "not_finite",
            RejectKind::Shape => "shape",
            RejectKind::OutOfRange => "out_of_range",
            RejectKind::Missing => "missing",
            RejectKind::DType => "dtype",
            RejectKind::WrongPolicy => "wrong_policy",
        }
    }
}

/// A refused rollout: its kind and a message naming the field.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RolloutError {
    pub kind: RejectKind,
    pub message: String,
}

impl From<proto::TensorError> for RolloutError {
    fn from(e: proto::TensorError) -> RolloutError {
        use proto::TensorError as T;
        let kind = match &e {
            T::Missing { .. } => RejectKind::Missing,
            T::DType { .. } => RejectKind::DType,
            T::Shape { .. } | T::Length { .. } => RejectKind::Shape,
            T::NotFinite { .. } => RejectKind::NotFinite,
            T::OutOfRange { .. } => RejectKind::OutOfRange,
        };
        RolloutError {
            kind,
            message: e.to_string(),
        }
    }
}

impl From<RolloutError> for Error {
    fn from(e: RolloutError) -> Error {
        Error::InvalidArgument(e.message)
    }
}

fn shape_error(message: String) -> RolloutError {
    RolloutError {
        kind: RejectKind::Shape,
        message,
    }
}

/// Checks a rollout and decodes it (one copy of each array). `latest_version` is the newest
/// policy version there is.
pub fn validate(r: &Rollout, spec: &RolloutSpec, latest_version: u64) -> Result<Columns, RolloutError> {
    if r.policy != spec.env.policy && !(r.policy.is_empty() && spec.first_policy) {
        return Err(RolloutError {
            kind: RejectKind::WrongPolicy,
            message: format!(
                "policy: expected {:?}, the policy this learner trains, got {:?}",
                spec.env.policy, r.policy
            ),
        });
    }
    if r.policy_version == 0 || r.policy_version > latest_version {
        return Err(RolloutError {
            kind: RejectKind::UnknownVersion,
            message: format!(
                "policy_version: unknown version {} (the newest version is {latest_version})",
                r.policy_version
            ),
        });
    }
    let t = spec.unroll_length;
    let obs_shape = &spec.env.observation.shape;
    let obs = TensorView::with_dtype("observations", r.observations.as_ref(), spec.obs_dtype())?;
    let n = if obs.shape.len() == obs_shape.len() + 2 {
        obs.shape[1]
    } else {
        0
    };
    if obs.shape.len() != obs_shape.len() + 2
        || obs.shape[0] != t + 1
        || &obs.shape[2..] != obs_shape.as_slice()
        || n == 0
        || n > spec.max_envs
    {
        let dims: Vec<String> = obs_shape.iter().map(|d| d.to_string()).collect();
        return Err(shape_error(format!(
            "observations: expected shape [{}, N, {}] with 1 <= N <= {}, got {:?}",
            t + 1,
            dims.join(", "),
            spec.max_envs,
            obs.shape
        )));
    }
    let a = spec.env.agents_per_env();
    if !n.is_multiple_of(a) {
        return Err(shape_error(format!(
            "observations: expected whole envs, N a multiple of the policy's {a} agents per env, got N = {n}"
        )));
    }
    let with_obs =
        |lead: &[usize]| -> Vec<Option<usize>> { lead.iter().chain(obs_shape.iter()).map(|&d| Some(d)).collect() };
    let action = &spec.env.action;
    let d = action.dim();
    let actions = match action {
        ActionSpace::Box { .. } => {
            let a = TensorView::new::<f32>("actions", r.actions.as_ref())?;
            a.expect_shape(&[Some(t), Some(n), Some(d)])?;
            a.check_finite_f32()?;
            a
        }
        _ => {
            let a = TensorView::new::<i64>("actions", r.actions.as_ref())?;
            a.expect_shape(&[Some(t), Some(n), Some(d)])?;
            let bounds: Vec<i64> = action.nvec().iter().map(|&k| k as i64).collect();
            a.check_i64_below(&bounds)?;
            a
        }
    };
    let rewards = TensorView::new::<f32>("rewards", r.rewards.as_ref())?;
    rewards.expect_shape(&[Some(t), Some(n)])?;
    rewards.check_finite_f32()?;
    let terminated = TensorView::new::<u8>("terminated", r.terminated.as_ref())?;
    terminated.expect_shape(&[Some(t), Some(n)])?;
    terminated.check_flags()?;
    let truncated = TensorView::new::<u8>("truncated", r.truncated.as_ref())?;
    truncated.expect_shape(&[Some(t), Some(n)])?;
    truncated.check_flags()?;
    let p = action.dist_params();
    let params = TensorView::new::<f32>("behaviour_params", r.behaviour_params.as_ref())?;
    params.expect_shape(&[Some(t), Some(n), Some(p)])?;
    params.check_finite_f32()?;
    let k = truncated.bytes().iter().filter(|&&x| x == 1).count();
    let trunc_obs = TensorView::with_dtype(
        "truncation_observations",
        r.truncation_observations.as_ref(),
        spec.obs_dtype(),
    )?;
    trunc_obs.expect_shape(&with_obs(&[k]))?;
    if spec.env.observation.dtype == ObsDType::F32 {
        obs.check_finite_f32()?;
        trunc_obs.check_finite_f32()?;
    }
    let masks = match (spec.env.action_mask, action.mask_width()) {
        (true, Some(m)) => {
            let v = TensorView::new::<u8>("action_masks", r.action_masks.as_ref())?;
            v.expect_shape(&[Some(t), Some(n), Some(m)])?;
            v.check_flags()?;
            check_masks_allow_actions(&v, &actions, action)?;
            Some(Rows::new(t, m, v.bytes().to_vec()))
        }
        _ => {
            if r.action_masks.is_some() {
                return Err(shape_error(
                    "action_masks: expected none, the env spec has no masks".into(),
                ));
            }
            None
        }
    };
    let state = if spec.state_size > 0 {
        let v = TensorView::new::<f32>("initial_state", r.initial_state.as_ref())?;
        v.expect_shape(&[Some(n), Some(spec.state_size)])?;
        v.check_finite_f32()?;
        Some(Rows::new(1, spec.state_size * 4, v.bytes().to_vec()))
    } else {
        if r.initial_state.is_some() {
            return Err(shape_error(
                "initial_state: expected none, the model has no recurrent core".into(),
            ));
        }
        None
    };
    let valid = match r.valid.as_ref() {
        Some(_) => {
            let v = TensorView::new::<u8>("valid", r.valid.as_ref())?;
            v.expect_shape(&[Some(t), Some(n)])?;
            v.check_flags()?;
            v.bytes().to_vec()
        }
        None => vec![1; t * n],
    };
    let truncations = truncated
        .bytes()
        .iter()
        .enumerate()
        .filter(|(_, &x)| x == 1)
        .map(|(i, _)| (i / n, i % n))
        .collect();
    let (states, truncation_states) = match &spec.env.state {
        Some(space) => {
            let s = space.size();
            let v = TensorView::new::<f32>("states", r.states.as_ref())?;
            v.expect_shape(&[Some(t + 1), Some(n), Some(s)])?;
            v.check_finite_f32()?;
            let tv = TensorView::new::<f32>("truncation_states", r.truncation_states.as_ref())?;
            tv.expect_shape(&[Some(k), Some(s)])?;
            tv.check_finite_f32()?;
            (Some(Rows::new(t + 1, s * 4, v.bytes().to_vec())), tv.bytes().to_vec())
        }
        None => {
            if r.states.is_some() || r.truncation_states.is_some() {
                return Err(shape_error(
                    "states: expected none, the policy has no centralized critic".into(),
                ));
            }
            (None, Vec::new())
        }
    };
    let ob = spec.env.observation.bytes();
    Ok(Columns {
        t,
        n,
        policy_version: r.policy_version,
        observations: Rows::new(t + 1, ob, obs.bytes().to_vec()),
        actions: Rows::new(t, actions.bytes().len() / (t * n), actions.bytes().to_vec()),
        rewards: Rows::new(t, 4, rewards.bytes().to_vec()),
        terminated: Rows::new(t, 1, terminated.bytes().to_vec()),
        truncated: Rows::new(t, 1, truncated.bytes().to_vec()),
        valid: Rows::new(t, 1, valid),
        params: Rows::new(t, p * 4, params.bytes().to_vec()),
        masks,
        state,
        truncations,
        truncation_observations: trunc_obs.bytes().to_vec(),
        agent_index: (0..n).map(|c| (c % a) as i64).collect(),
        states,
        truncation_states,
    })
}

/// Every taken action must be legal under its step's mask.
fn check_masks_allow_actions(
    masks: &TensorView<'_>,
    actions: &TensorView<'_>,
    space: &ActionSpace,
) -> Result<(), RolloutError> {
    let nvec = space.nvec();
    let m: usize = nvec.iter().sum();
    let acts: Vec<i64> = actions.to_vec();
    let mask = masks.bytes();
    for (row, a) in acts.chunks_exact(nvec.len()).enumerate() {
        let mut offset = 0;
        for (i, (&ai, &k)) in a.iter().zip(&nvec).enumerate() {
            if mask[row * m + offset + ai as usize] == 0 {
                return Err(RolloutError {
                    kind: RejectKind::OutOfRange,
                    message: format!(
                        "actions: element {} is {ai}, which action_masks marks illegal",
                        row * nvec.len() + i
                    ),
                });
            }
            offset += k;
        }
    }
    Ok(())
}

/// Limits on rollout streams (from the run config's learner section).
#[derive(Debug, Clone)]
pub struct StreamLimits {
    pub max_policy_lag: u64,
    pub max_streams_per_actor: usize,
    pub idle_timeout: Duration,
}

/// Open streams per actor id; a slot is given back when its stream ends.
#[derive(Debug, Default)]
pub struct StreamSlots {
    open: Mutex<HashMap<u64, usize>>,
}

pub struct Slot {
    slots: Arc<StreamSlots>,
    actor_id: u64,
}

impl StreamSlots {
    /// Takes one of `actor_id`'s `max` slots, if one is free.
    pub fn take(self: &Arc<Self>, actor_id: u64, max: usize) -> Option<Slot> {
        let mut open = self.open.lock().expect("lock");
        let n = open.entry(actor_id).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: Arc::clone(self),
            actor_id,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().expect("lock");
        if let Some(n) = open.get_mut(&self.actor_id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.actor_id);
            }
        }
    }
}

pub struct LearnerService {
    /// Shared with every stream's decoding task (one per rollout), not copied.
    pub spec: Arc<RolloutSpec>,
    pub limits: StreamLimits,
    /// Checks actors' binding secrets (with tokens on).
    pub binding: Option<troupe::security::ActorBinding>,
    pub slots: Arc<StreamSlots>,
    /// Newest policy version this learner has created.
    pub latest_version: Arc<AtomicU64>,
    pub queue: mpsc::Sender<Columns>,
    /// Bytes of the rollouts in `queue` (the model thread's batcher takes them off).
    pub queue_bytes: Arc<AtomicU64>,
    pub shutdown: CancellationToken,
    /// With `learner.replay_ratio`: accepted rollouts also go to replay's writer (bounded; a
    /// full queue drops them there, counted, and never holds a stream back).
    pub replay_writer: Option<mpsc::Sender<proto::v1::ReplayItem>>,
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

#[tonic::async_trait]
impl Learner for LearnerService {
    type StreamRolloutsStream = ReceiverStream<Result<RolloutAck, tonic::Status>>;

    async fn stream_rollouts(
        &self,
        request: tonic::Request<tonic::Streaming<Rollout>>,
    ) -> Result<tonic::Response<Self::StreamRolloutsStream>, tonic::Status> {
        let header = |k: &str| {
            request
                .metadata()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let stream_actor = header(troupe::security::ACTOR_ID_HEADER).and_then(|v| v.parse::<u64>().ok());
        let secret = header(troupe::security::ACTOR_SECRET_HEADER).unwrap_or_default();
        if let Some(binding) = &self.binding {
            let Some(id) = stream_actor else {
                return Err(tonic::Status::permission_denied(format!(
                    "{}: expected the actor id this stream speaks for",
                    troupe::security::ACTOR_ID_HEADER
                )));
            };
            if !binding.verify(id, &secret) {
                return Err(tonic::Status::permission_denied(format!(
                    "actor_id {id}: {} does not match (a stream must come from the actor registered under this id)",
                    troupe::security::ACTOR_SECRET_HEADER
                )));
            }
        }
        let slot = match stream_actor {
            Some(id) => Some(self.slots.take(id, self.limits.max_streams_per_actor).ok_or_else(|| {
                tonic::Status::resource_exhausted(format!(
                    "actor_id {id} already has {} rollout streams open (learner.max_streams_per_actor)",
                    self.limits.max_streams_per_actor
                ))
            })?),
            None => None,
        };
        let limits = self.limits.clone();
        let mut inbound = request.into_inner();
        let (acks, out) = mpsc::channel(ACK_BUFFER);
        let (spec, latest, queue, shutdown) = (
            self.spec.clone(),
            self.latest_version.clone(),
            self.queue.clone(),
            self.shutdown.clone(),
        );
        let queue_bytes = Arc::clone(&self.queue_bytes);
        let replay_writer = self.replay_writer.clone();
        tokio::spawn(async move {
            let _gauge = StreamGauge::open();
            let _slot = slot;
            let mut accepted = 0u64;
            loop {
                let next = tokio::select! {
                    m = tokio::time::timeout(limits.idle_timeout, inbound.message()) => match m {
                        Ok(m) => m,
                        Err(_) => {
                            tracing::info!(actor_id = ?stream_actor, idle_s = limits.idle_timeout.as_secs_f64(), "closing an idle rollout stream");
                            let _ = acks.send(Err(tonic::Status::deadline_exceeded(format!(
                                "no rollout for {:?} (learner.stream_idle_timeout_s)", limits.idle_timeout
                            )))).await;
                            return;
                        }
                    },
                    _ = shutdown.cancelled() => return,
                };
                let rollout = match next {
                    Ok(Some(r)) => r,
                    Ok(None) => return, // the actor closed its side
                    Err(status) if status.code() == tonic::Code::OutOfRange => {
                        // tonic refuses a message over the decoding cap with OUT_OF_RANGE; tell
                        // the actor plainly that it must send smaller rollouts.
                        let msg = format!(
                            "rollout message over the {} byte cap: split rollouts by columns ({})",
                            proto::MAX_MESSAGE_BYTES,
                            status.message()
                        );
                        metrics::counter!(names::LEARNER_ROLLOUTS_REJECTED, "reason" => "too_large").increment(1);
                        tracing::warn!(error = %msg, "refused an oversized rollout message");
                        let _ = acks.send(Err(tonic::Status::resource_exhausted(msg))).await;
                        return;
                    }
                    Err(status) => {
                        tracing::debug!(code = ?status.code(), "rollout stream broke");
                        return;
                    }
                };
                let actor_id = rollout.actor_id;
                if let Some(id) = stream_actor.filter(|&id| id != actor_id) {
                    let msg = format!("actor_id: this stream speaks for actor {id}, got a rollout for {actor_id}");
                    metrics::counter!(names::LEARNER_ROLLOUTS_REJECTED, "reason" => "wrong_actor").increment(1);
                    let _ = acks.send(Err(tonic::Status::permission_denied(msg))).await;
                    return;
                }
                // Decoding copies megabytes for pixel rollouts: keep it off the async workers.
                let (spec2, version) = (Arc::clone(&spec), latest.load(Ordering::Acquire));
                if rollout.policy_version > 0 && rollout.policy_version.saturating_add(limits.max_policy_lag) < version
                {
                    // Too old to learn from: dropped, but acked so the actor's credit goes on.
                    metrics::counter!(names::LEARNER_ROLLOUTS_REJECTED, "reason" => "stale").increment(1);
                    tracing::debug!(
                        actor_id,
                        version = rollout.policy_version,
                        latest = version,
                        "dropped a stale rollout"
                    );
                    accepted += 1;
                    if acks.send(Ok(RolloutAck { accepted })).await.is_err() {
                        return;
                    }
                    continue;
                }
                // With replay on, an accepted rollout is also encoded as a replay item here,
                // off the async workers like its decoding.
                let for_replay = replay_writer.is_some();
                let decoded = tokio::task::spawn_blocking(move || {
                    let c = validate(&rollout, &spec2, version);
                    let item = (for_replay && c.is_ok()).then(|| troupe::replay::item_of(&rollout));
                    (c, item)
                })
                .await;
                let cols = match decoded {
                    Ok((Ok(c), item)) => {
                        if let (Some(w), Some(item)) = (&replay_writer, item) {
                            if w.try_send(item).is_err() {
                                metrics::counter!(names::LEARNER_REPLAY_DROPPED).increment(1);
                            }
                        }
                        c
                    }
                    Ok((Err(e), _)) => {
                        metrics::counter!(names::LEARNER_ROLLOUTS_REJECTED, "reason" => e.kind.label()).increment(1);
                        tracing::warn!(actor_id, error = %e, "rejected a malformed rollout");
                        let _ = acks.send(Err(Error::from(e).into())).await;
                        return;
                    }
                    Err(join) => {
                        tracing::error!(error = %join, "rollout decoding panicked");
                        let _ = acks.send(Err(tonic::Status::internal("rollout decoding failed"))).await;
                        return;
                    }
                };
                // Bounded: the ack (the actor's next credit) waits until there is room.
                // Counted before the send: the batcher may take it off the queue (and count it
                // off) before `send` returns here.
                let bytes = cols.bytes() as u64;
                let held = queue_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
                metrics::gauge!(names::LEARNER_QUEUE_BYTES).set(held as f64);
                let queued = tokio::select! {
                    r = queue.send(cols) => r.is_ok(),
                    _ = shutdown.cancelled() => false,
                };
                if !queued {
                    queue_bytes.fetch_sub(bytes, Ordering::AcqRel);
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
    use troupe::spaces::{EnvSpec, ObservationSpace};

    fn spec() -> RolloutSpec {
        RolloutSpec {
            unroll_length: 3,
            env: PolicySpec::single(&EnvSpec::single(
                "Test-v0",
                ObservationSpace::f32(&[2]),
                ActionSpace::Discrete { n: 2 },
                false,
            )),
            state_size: 0,
            max_envs: 64,
            first_policy: true,
        }
    }

    fn good() -> Rollout {
        let (t, n, o, a) = (3, 2, 2, 2);
        let mut obs = vec![0.1f32; t * n * o];
        obs.extend([0.2f32; 4]);
        Rollout {
            actor_id: 1,
            policy_version: 4,
            observations: Some(Tensor::from_slice(&[t + 1, n, o], &obs)),
            actions: Some(Tensor::from_slice(&[t, n, 1], &[0i64, 1, 1, 0, 0, 1])),
            rewards: Some(Tensor::from_slice(&[t, n], &[1.0f32; 6])),
            terminated: Some(Tensor::from_slice(&[t, n], &[0u8, 0, 1, 0, 0, 0])),
            truncated: Some(Tensor::from_slice(&[t, n], &[0u8, 1, 0, 0, 0, 1])),
            behaviour_params: Some(Tensor::from_slice(&[t, n, a], &[0.0f32; 12])),
            truncation_observations: Some(Tensor::from_slice(&[2, o], &[1.0f32, 2.0, 3.0, 4.0])),
            action_masks: None,
            initial_state: None,
            valid: None,
            policy: "default".into(),
            states: None,
            truncation_states: None,
        }
    }

    fn err(r: &Rollout) -> String {
        validate(r, &spec(), 5).unwrap_err().to_string()
    }

    fn kind(r: &Rollout) -> RejectKind {
        validate(r, &spec(), 5).unwrap_err().kind
    }

    #[test]
    fn a_good_rollout_decodes() {
        let c = validate(&good(), &spec(), 5).unwrap();
        assert_eq!((c.t, c.n), (3, 2));
        assert_eq!(c.observations.rows, 4);
        let obs: Vec<f32> = bytemuck::pod_collect_to_vec(&c.observations.data);
        assert_eq!(&obs[12..], &[0.2; 4]);
        assert_eq!(c.truncations, vec![(0, 1), (2, 1)]);
        let acts: Vec<i64> = bytemuck::pod_collect_to_vec(&c.actions.data);
        assert_eq!(acts, vec![0, 1, 1, 0, 0, 1]);
    }

    #[test]
    fn each_problem_is_named_and_kinded() {
        let mut r = good();
        r.policy_version = 9;
        assert_eq!(err(&r), "policy_version: unknown version 9 (the newest version is 5)");
        assert_eq!(kind(&r), RejectKind::UnknownVersion);
        r.policy_version = 0;
        assert!(err(&r).starts_with("policy_version: unknown version 0"));

        let mut r = good();
        r.observations = Some(Tensor::from_slice(&[4, 2, 3], &[0.0f32; 24]));
        assert_eq!(
            err(&r),
            "observations: expected shape [4, N, 2] with 1 <= N <= 64, got [4, 2, 3]"
        );
        assert_eq!(kind(&r), RejectKind::Shape);

        let mut r = good();
        r.observations = Some(Tensor::from_slice(&[4, 65, 2], &[0.0f32; 4 * 65 * 2]));
        assert!(err(&r).contains("1 <= N <= 64, got [4, 65, 2]"), "{}", err(&r));

        let mut r = good();
        r.rewards = Some(Tensor::from_slice(&[3, 2], &[1.0f32, 1.0, f32::NAN, 1.0, 1.0, 1.0]));
        assert_eq!(err(&r), "rewards: element 2 is NaN, expected a finite number");
        assert_eq!(kind(&r), RejectKind::NotFinite);

        let mut r = good();
        let mut obs = vec![0.0f32; 16];
        obs[13] = f32::INFINITY;
        r.observations = Some(Tensor::from_slice(&[4, 2, 2], &obs));
        assert_eq!(err(&r), "observations: element 13 is inf, expected a finite number");

        let mut r = good();
        r.actions = Some(Tensor::from_slice(&[3, 2, 1], &[0i64, 1, 2, 0, 0, 1]));
        assert_eq!(err(&r), "actions: element 2 is 2, expected a value in [0, 2)");
        assert_eq!(kind(&r), RejectKind::OutOfRange);

        let mut r = good();
        r.actions = Some(Tensor::from_slice(&[2, 3, 1], &[0i64; 6]));
        assert_eq!(err(&r), "actions: expected shape [3, 2, 1], got [2, 3, 1]");

        let mut r = good();
        r.truncation_observations = Some(Tensor::from_slice(&[1, 2], &[0.0f32; 2]));
        assert_eq!(err(&r), "truncation_observations: expected shape [2, 2], got [1, 2]");

        let mut r = good();
        r.behaviour_params = None;
        assert_eq!(err(&r), "behaviour_params: missing tensor");
        assert_eq!(kind(&r), RejectKind::Missing);

        let mut r = good();
        r.terminated = Some(Tensor::from_slice(&[3, 2], &[0.0f32; 6]));
        assert_eq!(err(&r), "terminated: expected dtype u8, got f32");
        assert_eq!(kind(&r), RejectKind::DType);

        let mut r = good();
        r.initial_state = Some(Tensor::from_slice(&[2, 1], &[0.0f32; 2]));
        assert!(err(&r).starts_with("initial_state: expected none"));
    }

    #[test]
    fn pixels_masks_and_states_are_checked_against_the_spec() {
        let mut s = spec();
        s.env.observation = ObservationSpace::u8(&[2, 3]);
        s.env.action = ActionSpace::MultiDiscrete { nvec: vec![2, 3] };
        s.env.action_mask = true;
        s.state_size = 4;
        let (t, n) = (3, 2);
        let mut r = good();
        r.observations = Some(Tensor::from_slice(&[t + 1, n, 2, 3], &[9u8; 4 * 2 * 6]));
        r.truncation_observations = Some(Tensor::from_slice(&[2, 2, 3], &[5u8; 12]));
        r.actions = Some(Tensor::from_slice(&[t, n, 2], &[0i64, 2, 1, 0, 0, 1, 1, 1, 0, 0, 1, 2]));
        r.behaviour_params = Some(Tensor::from_slice(&[t, n, 5], &[0.0f32; 30]));
        let mut masks = vec![1u8; t * n * 5];
        r.action_masks = Some(Tensor::from_slice(&[t, n, 5], &masks));
        r.initial_state = Some(Tensor::from_slice(&[n, 4], &[0.5f32; 8]));
        let c = validate(&r, &s, 5).unwrap();
        assert_eq!(c.observations.width, 6);
        assert_eq!(c.masks.as_ref().unwrap().data.len(), 30);
        assert_eq!(c.state.as_ref().unwrap().width, 16);
        // An action the mask forbids is refused, naming the element.
        masks[2 + 2] = 0; // row 0, component 1, choice 2
        r.action_masks = Some(Tensor::from_slice(&[t, n, 5], &masks));
        let e = validate(&r, &s, 5).unwrap_err().to_string();
        assert_eq!(e, "actions: element 1 is 2, which action_masks marks illegal");
        // Component bounds follow nvec.
        r.action_masks = None;
        assert_eq!(
            validate(&r, &s, 5).unwrap_err().to_string(),
            "action_masks: missing tensor"
        );
        r.action_masks = Some(Tensor::from_slice(&[t, n, 5], &[1u8; 30]));
        r.actions = Some(Tensor::from_slice(&[t, n, 2], &[2i64, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1, 2]));
        assert_eq!(
            validate(&r, &s, 5).unwrap_err().to_string(),
            "actions: element 0 is 2, expected a value in [0, 2)"
        );
        // f32 pixels where the spec says u8.
        r.observations = Some(Tensor::from_slice(&[t + 1, n, 2, 3], &[0.0f32; 48]));
        assert_eq!(
            validate(&r, &s, 5).unwrap_err().to_string(),
            "observations: expected dtype u8, got f32"
        );
    }
}
