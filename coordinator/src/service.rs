//! The coordinator's gRPC service: each call checks its input and hands it to the piece that
//! owns the state: [`crate::actors`] (registration and liveness), [`crate::run_policies`] and
//! [`crate::policies`] (each policy's versions, lease and learner), [`crate::stats`] (the run's
//! totals and the team's returns) and [`crate::recovery`] (Redis losing its data).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::v1::coordinator_server::Coordinator;
use proto::v1::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use troupe::config::EnvBackend;
use troupe::security::{ActorBinding, ACTOR_SECRET_HEADER};
use troupe::spaces::EnvSpec as EnvSpecValue;
use troupe::telemetry::names;
use troupe::{Error, RunConfig};

use crate::actors::Actors;
use crate::policies::{PolicyState, PublishContext, FIRST_MESSAGE_TIMEOUT, MAX_VERSION};
use crate::run_policies::RunPolicies;
use crate::stats::RunStats;
use crate::store::{Applied, Store};

pub use crate::policies::{IDLE_MESSAGE_TIMEOUT, MAX_POLICY_BYTES, MAX_VERSION_JUMP};

/// Largest frame count one heartbeat may report (a sanity bound: 2^40).
pub const MAX_FRAMES_PER_HEARTBEAT: u64 = 1 << 40;

pub struct CoordinatorService {
    pub(crate) config: RunConfig,
    config_toml: String,
    pub(crate) store: Store,
    /// Binds actor ids to the actors they were issued to (with tokens on).
    binding: Option<ActorBinding>,
    pub(crate) actors: Actors,
    /// The env's spaces and the run's policies, once the spaces are known.
    pub(crate) policies: tokio::sync::OnceCell<RunPolicies>,
    /// Highest actor id issued (to re-seed Redis's counter if Redis loses it).
    pub(crate) max_actor_id: AtomicU64,
    /// Our marker in Redis; gone means Redis lost its data.
    pub(crate) marker: String,
    pub(crate) reseed_lock: tokio::sync::Mutex<()>,
    pub(crate) stats: Mutex<RunStats>,
    shutdown: CancellationToken,
}

impl CoordinatorService {
    /// Builds the service from what Redis holds (the recovery path after a restart).
    pub async fn recover(
        config: RunConfig,
        store: Store,
        binding: Option<ActorBinding>,
        shutdown: CancellationToken,
    ) -> Result<CoordinatorService, Error> {
        let actor_seq = store.actor_seq().await?;
        let marker = format!("{:032x}", rand::random::<u128>());
        store.set_marker(&marker).await?;
        let totals = store.totals().await?;
        if totals.frames > 0 {
            tracing::info!(
                frames = totals.frames,
                episodes = totals.episodes,
                "recovered run totals from redis"
            );
        }
        let env_spec: Option<EnvSpecValue> = if config.env.backend == EnvBackend::Native {
            troupe::env::native_spec(&config.env.id)
        } else {
            match store.env_spec().await? {
                Some(json) => Some(
                    serde_json::from_str(&json)
                        .map_err(|e| Error::Internal(format!("stored env spec is not valid: {e}")))?,
                ),
                None => None,
            }
        };
        let policies = tokio::sync::OnceCell::new();
        if let Some(spec) = env_spec {
            let run = RunPolicies::recover(&config, spec, &store).await?;
            let _ = policies.set(run);
        }
        Ok(CoordinatorService {
            actors: Actors::new(Duration::from_secs_f64(config.coordinator.actor_timeout_s)),
            config_toml: config.to_toml(),
            config,
            store,
            binding,
            policies,
            max_actor_id: AtomicU64::new(actor_seq),
            marker,
            reseed_lock: tokio::sync::Mutex::new(()),
            stats: Mutex::new(RunStats::from_totals(totals)),
            shutdown,
        })
    }

    /// The run's policies, or UNAVAILABLE while the env's spaces are not known.
    fn run_policies(&self) -> Result<&RunPolicies, Error> {
        self.policies.get().ok_or_else(|| {
            Error::Unavailable(format!(
                "the spaces of env {} are not known yet (the first actor reports them); retry",
                self.config.env.id
            ))
        })
    }

    fn policy(&self, name: &str) -> Result<&Arc<PolicyState>, Error> {
        self.run_policies()?.get(name)
    }

    /// The first policy's address ("" before its learner registers), and every policy's.
    fn learner_addresses(&self) -> (String, std::collections::HashMap<String, String>) {
        match self.policies.get() {
            Some(run) => (
                run.first().learner_address(),
                run.states
                    .iter()
                    .map(|p| (p.name.clone(), p.learner_address()))
                    .filter(|(_, a)| !a.is_empty())
                    .collect(),
            ),
            None => (String::new(), Default::default()),
        }
    }

    /// Once a second: the live-actor gauge, and actors that timed out stop holding up the
    /// policy-distribution latency. Every 5 s: a Redis ping for `troupe_coordinator_redis_up`.
    /// And Redis losing its data is noticed here.
    pub async fn upkeep(&self, shutdown: CancellationToken) {
        let mut ticks = 0u64;
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let (live, silent) = self.actors.partition();
            metrics::gauge!(names::COORD_ACTORS).set(live.len() as f64);
            if let Some(run) = self.policies.get() {
                for p in &run.states {
                    let mut d = p.distribution.lock().expect("lock");
                    for &actor in &silent {
                        for latency in d.gone(actor) {
                            metrics::histogram!(names::COORD_POLICY_DISTRIBUTION_SECONDS).record(latency.as_secs_f64());
                        }
                    }
                }
            }
            if ticks.is_multiple_of(5) {
                let up = self.store.ping().await.is_ok();
                metrics::gauge!(names::COORD_REDIS_UP).set(if up { 1.0 } else { 0.0 });
            }
            if let Ok(true) = self.lost_data().await {
                if let Err(e) = self.reseed().await {
                    tracing::warn!(error = %e, "re-seeding Redis failed; will retry");
                }
            }
            ticks += 1;
        }
    }

    /// The caller's actor-binding secret must match `actor_id` (with tokens on).
    fn check_binding<T>(&self, request: &Request<T>, actor_id: u64) -> Result<(), Status> {
        let Some(binding) = &self.binding else { return Ok(()) };
        let secret = request
            .metadata()
            .get(ACTOR_SECRET_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if binding.verify(actor_id, secret) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "actor_id {actor_id}: {ACTOR_SECRET_HEADER} does not match (reports must come from the actor registered under this id)"
            )))
        }
    }

    /// Adopts the env's spaces (the first report of a Python-hosted env) and builds the run's
    /// policies from them, once.
    async fn adopt(&self, json: &str) -> Result<&RunPolicies, Status> {
        let config = &self.config;
        let store = &self.store;
        let run = self
            .policies
            .get_or_try_init(|| async move {
                let stored = store.adopt_env_spec(json).await?;
                let spec: EnvSpecValue = serde_json::from_str(&stored)
                    .map_err(|e| Error::Internal(format!("stored env spec is not valid: {e}")))?;
                tracing::info!(env = %spec.id, spec = %stored, "adopted the env's spaces");
                RunPolicies::recover(config, spec, store).await
            })
            .await?;
        Ok(run)
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn register_actor(
        &self,
        request: Request<RegisterActorRequest>,
    ) -> Result<Response<RegisterActorResponse>, Status> {
        // May be empty: the learner registers once the env's spaces are known, which for a
        // Python-hosted env takes an actor; heartbeats bring the address later.
        let (learner_address, learner_addresses) = self.learner_addresses();
        let mut actor_id = self.store.next_actor_id().await?;
        if actor_id <= self.max_actor_id.load(Ordering::Acquire) {
            // Redis lost its counter: never issue an id twice.
            self.reseed().await?;
            actor_id = self.store.next_actor_id().await?;
        }
        self.max_actor_id.fetch_max(actor_id, Ordering::AcqRel);
        let n = self.config.actor.num_envs as u64;
        // Actor ids start at 1; each actor's envs get seeds no other actor gets.
        let base = self.config.env.seed.wrapping_add((actor_id - 1).wrapping_mul(n));
        let env_seeds = (0..n).map(|i| base.wrapping_add(i)).collect();
        let hostname = request.into_inner().hostname;
        self.actors.register(actor_id, hostname.clone());
        metrics::counter!(names::COORD_REGISTRATIONS, "role" => "actor").increment(1);
        tracing::info!(actor_id, hostname = %hostname, "actor registered");
        Ok(Response::new(RegisterActorResponse {
            actor_id,
            run_config_toml: self.config_toml.clone(),
            env_seeds,
            learner_address,
            actor_secret: self.binding.as_ref().map(|b| b.secret(actor_id)).unwrap_or_default(),
            learner_addresses,
        }))
    }

    async fn register_learner(
        &self,
        request: Request<RegisterLearnerRequest>,
    ) -> Result<Response<RegisterLearnerResponse>, Status> {
        let req = request.into_inner();
        let addr = req.advertise_address;
        let learner_id = req.learner_id;
        if learner_id.is_empty() || learner_id.len() > 253 {
            return Err(Error::InvalidArgument(format!(
                "learner_id: expected 1 to 253 characters, got {}",
                learner_id.len()
            ))
            .into());
        }
        if req.checkpoint_version > MAX_VERSION {
            return Err(Error::InvalidArgument(format!(
                "checkpoint_version: expected at most {MAX_VERSION}, got {}",
                req.checkpoint_version
            ))
            .into());
        }
        if !(addr.starts_with("http://") || addr.starts_with("https://")) {
            return Err(Error::InvalidArgument(format!(
                "advertise_address: expected an http:// or https:// URL, got {addr:?}"
            ))
            .into());
        }
        let run = self.run_policies()?;
        let policy = run.get(&req.policy)?;
        let ttl = Duration::from_secs_f64(self.config.coordinator.learner_lease_s);
        let epoch = policy
            .register_learner(&learner_id, &addr, req.checkpoint_version, ttl)
            .await?;
        metrics::counter!(names::COORD_REGISTRATIONS, "role" => "learner").increment(1);
        tracing::info!(address = %addr, learner_id = %learner_id, policy = %policy.name, epoch, "learner registered");
        Ok(Response::new(RegisterLearnerResponse {
            run_config_toml: self.config_toml.clone(),
            // What is stored (0: nothing): the learner fetches it if it has no checkpoint, and
            // publishes at once if there is none.
            latest_version: policy.latest_version(),
            spec: Some(EnvSpec {
                json: serde_json::to_string(&run.env).expect("json"),
            }),
            epoch,
            lease_s: ttl.as_secs_f64(),
        }))
    }

    async fn renew_learner_lease(
        &self,
        request: Request<RenewLearnerLeaseRequest>,
    ) -> Result<Response<RenewLearnerLeaseResponse>, Status> {
        let req = request.into_inner();
        let ttl = Duration::from_secs_f64(self.config.coordinator.learner_lease_s);
        self.policy(&req.policy)?.renew(req.epoch, ttl)?;
        Ok(Response::new(RenewLearnerLeaseResponse {
            lease_s: ttl.as_secs_f64(),
        }))
    }

    async fn report_env_spec(
        &self,
        request: Request<ReportEnvSpecRequest>,
    ) -> Result<Response<ReportEnvSpecResponse>, Status> {
        self.check_binding(&request, request.get_ref().actor_id)?;
        let req = request.into_inner();
        let json = req
            .spec
            .map(|s| s.json)
            .ok_or_else(|| Error::InvalidArgument("spec: missing".into()))?;
        let reported: EnvSpecValue = serde_json::from_str(&json)
            .map_err(|e| Error::InvalidArgument(format!("spec.json: not an env spec: {e}")))?;
        reported
            .validate()
            .map_err(|e| Error::InvalidArgument(format!("spec: {e}")))?;
        if reported.id != self.config.env.id {
            return Err(Error::InvalidArgument(format!(
                "spec.id: expected the run's env {}, got {}",
                self.config.env.id, reported.id
            ))
            .into());
        }
        let run = match self.policies.get() {
            Some(run) => run,
            None => self.adopt(&json).await?,
        };
        if let Some(diff) = reported.difference(&run.env) {
            return Err(Error::FailedPrecondition(format!(
                "actor {}: env {} has different spaces than the run's: {diff} (reported against the run's)",
                req.actor_id, reported.id
            ))
            .into());
        }
        Ok(Response::new(ReportEnvSpecResponse {
            spec: Some(EnvSpec {
                json: serde_json::to_string(&run.env).expect("json"),
            }),
        }))
    }

    type WatchPoliciesStream = ReceiverStream<Result<PolicyMeta, Status>>;

    async fn watch_policies(
        &self,
        request: Request<WatchPoliciesRequest>,
    ) -> Result<Response<Self::WatchPoliciesStream>, Status> {
        let mut rx = self.policy(&request.into_inner().policy)?.watch();
        let (tx, out) = mpsc::channel(4);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            metrics::gauge!(names::COORD_WATCHERS).increment(1.0);
            loop {
                let current = rx.borrow_and_update().clone();
                if let Some(meta) = current {
                    if tx.send(Ok(meta)).await.is_err() {
                        break; // the watcher went away
                    }
                }
                tokio::select! {
                    r = rx.changed() => if r.is_err() { break },
                    _ = tx.closed() => break,
                    _ = shutdown.cancelled() => break,
                }
            }
            metrics::gauge!(names::COORD_WATCHERS).decrement(1.0);
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }

    type GetPolicyStream = ReceiverStream<Result<PolicyChunk, Status>>;

    async fn get_policy(&self, request: Request<GetPolicyRequest>) -> Result<Response<Self::GetPolicyStream>, Status> {
        let req = request.into_inner();
        let (meta, blob) = self.policy(&req.policy)?.fetch(req.version).await?;
        let (tx, out) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut first = Some(meta);
            let mut pieces = blob.chunks(proto::POLICY_CHUNK_BYTES).peekable();
            if pieces.peek().is_none() {
                let _ = tx
                    .send(Ok(PolicyChunk {
                        meta: first.take(),
                        data: Default::default(),
                        epoch: 0,
                    }))
                    .await;
                return;
            }
            for piece in pieces {
                let chunk = PolicyChunk {
                    meta: first.take(),
                    data: blob.slice_ref(piece),
                    epoch: 0,
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }

    async fn publish_policy(
        &self,
        request: Request<Streaming<PolicyChunk>>,
    ) -> Result<Response<PublishPolicyResponse>, Status> {
        let mut stream = request.into_inner();
        let first = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, stream.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!("PolicyChunk: no first chunk within {FIRST_MESSAGE_TIMEOUT:?}"))
            })??
            .ok_or_else(|| {
                Error::InvalidArgument("PolicyChunk stream is empty, expected a first chunk with meta".into())
            })?;
        let name = first.meta.as_ref().map(|m| m.policy.clone()).unwrap_or_default();
        let policy = self.policy(&name)?;
        let (meta, blob, epoch) = policy.read_publish(first, stream).await?;
        let meta = policy
            .publish(meta, blob, epoch, || PublishContext {
                keep_versions: self.config.coordinator.keep_versions,
                in_use: self.actors.versions_in_use(&policy.name),
                live: self.actors.live_ids(),
            })
            .await?;
        Ok(Response::new(PublishPolicyResponse { meta: Some(meta) }))
    }

    async fn pin_policy(&self, request: Request<PinPolicyRequest>) -> Result<Response<PolicyMeta>, Status> {
        let r = request.into_inner();
        let meta = self.policy(&r.policy)?.pin(r.version, r.pinned).await?;
        Ok(Response::new(meta))
    }

    async fn heartbeat(&self, request: Request<HeartbeatRequest>) -> Result<Response<HeartbeatResponse>, Status> {
        self.check_binding(&request, request.get_ref().actor_id)?;
        let r = request.into_inner();
        if r.actor_id == 0 {
            return Err(
                Error::InvalidArgument("actor_id: expected an id from RegisterActor (>= 1), got 0".into()).into(),
            );
        }
        if r.frames > MAX_FRAMES_PER_HEARTBEAT {
            return Err(Error::InvalidArgument(format!(
                "frames: expected at most {MAX_FRAMES_PER_HEARTBEAT} per heartbeat, got {}",
                r.frames
            ))
            .into());
        }
        if let Some((i, e)) = r
            .episodes
            .iter()
            .enumerate()
            .find(|(_, e)| !e.episode_return.is_finite())
        {
            return Err(Error::InvalidArgument(format!(
                "episodes[{i}].episode_return: expected a finite number, got {}",
                e.episode_return
            ))
            .into());
        }
        if r.seq == 0 {
            return Err(Error::InvalidArgument("seq: expected a report number >= 1, got 0".into()).into());
        }
        // The team's returns ("" policy), and each policy's.
        let returns: Vec<f32> = r
            .episodes
            .iter()
            .filter(|e| e.policy.is_empty())
            .map(|e| e.episode_return)
            .collect();
        let mut per_policy: Vec<(Arc<PolicyState>, Vec<f32>)> = Vec::new();
        for (i, e) in r.episodes.iter().enumerate().filter(|(_, e)| !e.policy.is_empty()) {
            let p = self.policy(&e.policy).map_err(|_| {
                Error::InvalidArgument(format!(
                    "episodes[{i}].policy: {:?} is not a policy of this run",
                    e.policy
                ))
            })?;
            match per_policy.iter_mut().find(|(q, _)| q.name == p.name) {
                Some((_, v)) => v.push(e.episode_return),
                None => per_policy.push((p.clone(), vec![e.episode_return])),
            }
        }
        let lists: Vec<(String, Vec<f32>)> = per_policy
            .iter()
            .map(|(p, v)| (p.store().returns_key(), v.clone()))
            .collect();
        let mut applied = self
            .store
            .add_progress(r.actor_id, r.seq, r.frames, &returns, &lists)
            .await?;
        if applied == Applied::UnknownActor && r.actor_id <= self.max_actor_id.load(Ordering::Acquire) {
            // We issued this id: Redis lost its counter. Write back what we know, then apply.
            self.reseed().await?;
            applied = self
                .store
                .add_progress(r.actor_id, r.seq, r.frames, &returns, &lists)
                .await?;
        }
        let totals = match applied {
            Applied::Yes {
                frames,
                episodes,
                run_frames,
                run_episodes,
            } => Some((frames, episodes, run_frames, run_episodes)),
            Applied::Duplicate => {
                metrics::counter!(names::COORD_DUPLICATE_HEARTBEATS).increment(1);
                None
            }
            Applied::UnknownActor => {
                return Err(Error::NotFound(format!(
                    "actor_id {}: no actor was registered under this id (call RegisterActor)",
                    r.actor_id
                ))
                .into())
            }
        };
        // The versions it acts with: every policy's, or the first's alone (older actors).
        let mut versions: BTreeMap<String, u64> = r.acting.iter().map(|a| (a.policy.clone(), a.version)).collect();
        if versions.is_empty() && r.policy_version > 0 {
            if let Some(run) = self.policies.get() {
                versions.insert(run.first().name.clone(), r.policy_version);
            }
        }
        self.actors
            .heard(r.actor_id, versions.clone(), totals.map(|(f, e, _, _)| (f, e, r.seq)));
        if let Some(run) = self.policies.get() {
            let now = Instant::now();
            let ages: BTreeMap<&str, u64> = r.acting.iter().map(|a| (a.policy.as_str(), a.loaded_ms_ago)).collect();
            for p in &run.states {
                let Some(&version) = versions.get(&p.name) else {
                    continue;
                };
                let ago = ages.get(p.name.as_str()).copied().unwrap_or(r.policy_loaded_ms_ago);
                let switched_at = now.checked_sub(Duration::from_millis(ago)).unwrap_or(now);
                let done = p
                    .distribution
                    .lock()
                    .expect("lock")
                    .acting(r.actor_id, version, switched_at);
                for latency in done {
                    metrics::histogram!(names::COORD_POLICY_DISTRIBUTION_SECONDS).record(latency.as_secs_f64());
                }
            }
        }
        if let Some((_, _, run_frames, run_episodes)) = totals {
            let mean = self
                .stats
                .lock()
                .expect("lock")
                .apply(run_frames, run_episodes, &returns);
            for (p, v) in &per_policy {
                p.record_returns(v);
            }
            metrics::counter!(names::COORD_FRAMES).increment(r.frames);
            metrics::counter!(names::COORD_EPISODES).increment(returns.len() as u64);
            if mean.is_finite() {
                metrics::gauge!(names::COORD_MEAN_RETURN_100).set(mean);
            }
        }
        let (learner_address, learner_addresses) = self.learner_addresses();
        let (latest_version, latest_versions) = match self.policies.get() {
            Some(run) => (
                run.first().latest_version(),
                run.states
                    .iter()
                    .map(|p| (p.name.clone(), p.latest_version()))
                    .collect(),
            ),
            None => (0, Default::default()),
        };
        Ok(Response::new(HeartbeatResponse {
            latest_version,
            learner_address,
            learner_addresses,
            latest_versions,
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let (frames, episodes, mean, n) = self.stats.lock().expect("lock").summary();
        let (first, policy_status) = match self.policies.get() {
            Some(run) => {
                let mut all = Vec::new();
                for p in &run.states {
                    all.push(p.status().await?);
                }
                (Some(run.first().clone()), all)
            }
            None => (None, Vec::new()),
        };
        let first_name = first.as_ref().map(|p| p.name.clone()).unwrap_or_default();
        Ok(Response::new(StatusResponse {
            latest_version: first.as_ref().map_or(0, |p| p.latest_version()),
            frames,
            episodes,
            mean_return_100: mean,
            episodes_in_mean: n as u32,
            actors: self.actors.status(&first_name),
            learner_address: first.as_ref().map(|p| p.learner_address()).unwrap_or_default(),
            policies: policy_status.first().map(|s| s.versions.clone()).unwrap_or_default(),
            run_config_toml: self.config_toml.clone(),
            policy_status,
        }))
    }
}
