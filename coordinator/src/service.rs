//! The coordinator's gRPC service: registration, policy versions (publish, watch, fetch, pin),
//! heartbeats and status.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proto::v1::coordinator_server::Coordinator;
use proto::v1::*;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use troupe::config::EnvBackend;
use troupe::security::{ActorBinding, ACTOR_SECRET_HEADER};
use troupe::spaces::EnvSpec as EnvSpecValue;
use troupe::telemetry::names;
use troupe::{Error, RunConfig};

use crate::lease::Lease;
use crate::store::{Applied, Store, Totals, RETURN_WINDOW};

/// Largest frame count one heartbeat may report (a sanity bound: 2^40).
pub const MAX_FRAMES_PER_HEARTBEAT: u64 = 1 << 40;

/// Largest version number accepted from a learner's checkpoint (2^53: far from wrapping).
pub const MAX_VERSION: u64 = 1 << 53;

/// How far above the latest stored version the lease holder's expected number may move the
/// count (it knows versions Redis lost in its last second before a crash); never further.
pub const MAX_VERSION_JUMP: u64 = 1000;

/// Largest policy blob accepted (1 GiB).
pub const MAX_POLICY_BYTES: u64 = 1 << 30;

struct ActorEntry {
    hostname: String,
    policy_version: u64,
    frames: u64,
    episodes: u64,
    /// The last report number applied.
    seq: u64,
    last_seen: Instant,
}

#[derive(Default)]
struct RunStats {
    frames: u64,
    episodes: u64,
    returns: VecDeque<f32>,
}

impl RunStats {
    fn mean_return(&self) -> f64 {
        if self.returns.is_empty() {
            f64::NAN
        } else {
            self.returns.iter().map(|&r| r as f64).sum::<f64>() / self.returns.len() as f64
        }
    }
}

/// A stored version held in memory: fetches are served from here, not from Redis, and after
/// Redis loses its data the coordinator writes these back.
#[derive(Clone)]
struct HotPolicy {
    meta: PolicyMeta,
    blob: bytes::Bytes,
}

pub struct CoordinatorService {
    config: RunConfig,
    config_toml: String,
    store: Store,
    /// Binds actor ids to the actors they were issued to (with tokens on).
    binding: Option<ActorBinding>,
    lease: Mutex<Lease>,
    /// Versions are minted above this as well as above the latest stored (raised from a
    /// learner's checkpoint after Redis lost its data).
    version_floor: AtomicU64,
    /// Every version stored since start-up that retention has not dropped.
    hot: Mutex<BTreeMap<u64, HotPolicy>>,
    /// Highest actor id issued (to re-seed Redis's counter if Redis loses it).
    max_actor_id: AtomicU64,
    /// Our marker in Redis; gone means Redis lost its data.
    marker: String,
    reseed_lock: tokio::sync::Mutex<()>,
    latest: watch::Sender<Option<PolicyMeta>>,
    /// Serialises publishes so versions only go up.
    publish_lock: tokio::sync::Mutex<()>,
    learner_address: Mutex<String>,
    /// The env's spaces: the native env's, or the first an actor reported (kept in Redis).
    env_spec: Mutex<Option<EnvSpecValue>>,
    actors: Mutex<HashMap<u64, ActorEntry>>,
    distribution: Mutex<crate::distribution::Distribution>,
    stats: Mutex<RunStats>,
    shutdown: CancellationToken,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl CoordinatorService {
    /// Actors heard from within `coordinator.actor_timeout_s`.
    fn live_actors(&self) -> Vec<u64> {
        let timeout = Duration::from_secs_f64(self.config.coordinator.actor_timeout_s);
        let actors = self.actors.lock().expect("lock");
        actors
            .iter()
            .filter(|(_, a)| a.last_seen.elapsed() < timeout)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Once a second: the live-actor gauge, and actors that timed out stop holding up the
    /// policy-distribution latency. Every 5 s: a Redis ping for `troupe_coordinator_redis_up`.
    pub async fn upkeep(&self, shutdown: CancellationToken) {
        let timeout = Duration::from_secs_f64(self.config.coordinator.actor_timeout_s);
        let mut ticks = 0u64;
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let (live, silent): (Vec<u64>, Vec<u64>) = {
                let actors = self.actors.lock().expect("lock");
                let (live, silent): (Vec<_>, Vec<_>) =
                    actors.iter().partition(|(_, a)| a.last_seen.elapsed() < timeout);
                (
                    live.into_iter().map(|(id, _)| *id).collect(),
                    silent.into_iter().map(|(id, _)| *id).collect(),
                )
            };
            metrics::gauge!(names::COORD_ACTORS).set(live.len() as f64);
            {
                let mut d = self.distribution.lock().expect("lock");
                for actor in silent {
                    for latency in d.gone(actor) {
                        metrics::histogram!(names::COORD_POLICY_DISTRIBUTION_SECONDS).record(latency.as_secs_f64());
                    }
                }
            }
            if ticks.is_multiple_of(5) {
                let up = self.store.ping().await.is_ok();
                metrics::gauge!(names::COORD_REDIS_UP).set(if up { 1.0 } else { 0.0 });
            }
            // Redis lost data: our marker is gone (restarted empty), or the newest version we
            // stored is not there (the last second before a crash, with AOF everysec).
            if let (Ok(marker), Ok(stored)) = (self.store.marker().await, self.store.latest_stored_version().await) {
                let lost = marker.as_deref() != Some(self.marker.as_str()) || stored < self.latest_version();
                if lost {
                    if let Err(e) = self.reseed().await {
                        tracing::warn!(error = %e, "re-seeding Redis failed; will retry");
                    }
                }
            }
            ticks += 1;
        }
    }

    /// Builds the service from what Redis holds (the recovery path after a restart).
    pub async fn recover(
        config: RunConfig,
        store: Store,
        binding: Option<ActorBinding>,
        shutdown: CancellationToken,
    ) -> Result<CoordinatorService, Error> {
        let latest = store.latest().await?;
        let epoch = store.epoch().await?;
        let lease_holder = store.lease_holder().await?;
        let config_lease_s = config.coordinator.learner_lease_s;
        let actor_seq = store.actor_seq().await?;
        let marker = format!("{:032x}", rand::random::<u128>());
        store.set_marker(&marker).await?;
        let learner = store.learner_address().await?.unwrap_or_default();
        let Totals {
            frames,
            episodes,
            returns,
        } = store.totals().await?;
        metrics::gauge!(names::COORD_LEARNER_EPOCH).set(epoch as f64);
        if let Some(m) = &latest {
            tracing::info!(version = m.version, frames, episodes, "recovered from redis");
            metrics::gauge!(names::COORD_POLICY_VERSION).set(m.version as f64);
        }
        // Every stored version goes into memory (retention bounds them): fetches are served
        // from there, and they can be written back if Redis loses them.
        let mut hot = BTreeMap::new();
        for meta in store.all_meta().await? {
            if let Some(blob) = store.blob(meta.version).await? {
                hot.insert(
                    meta.version,
                    HotPolicy {
                        meta,
                        blob: bytes::Bytes::from(blob),
                    },
                );
            }
        }
        metrics::gauge!(names::COORD_POLICIES_STORED).set(hot.len() as f64);
        let config_toml = config.to_toml();
        let env_spec = if config.env.backend == EnvBackend::Native {
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
        Ok(CoordinatorService {
            env_spec: Mutex::new(env_spec),
            config,
            config_toml,
            store,
            binding,
            lease: Mutex::new(Lease::recovered(
                epoch,
                lease_holder,
                Instant::now(),
                Duration::from_secs_f64(config_lease_s),
            )),
            version_floor: AtomicU64::new(0),
            hot: Mutex::new(hot),
            max_actor_id: AtomicU64::new(actor_seq),
            marker,
            reseed_lock: tokio::sync::Mutex::new(()),
            latest: watch::channel(latest).0,
            publish_lock: tokio::sync::Mutex::new(()),
            learner_address: Mutex::new(learner),
            distribution: Mutex::new(Default::default()),
            actors: Mutex::new(HashMap::new()),
            stats: Mutex::new(RunStats {
                frames,
                episodes,
                returns: returns.into_iter().collect(),
            }),
            shutdown,
        })
    }

    /// Redis lost its data (restarted without it, or flushed): writes back what this
    /// coordinator knows, so ids, epochs and versions are never issued twice and the versions in
    /// memory can still be fetched.
    async fn reseed(&self) -> Result<(), Error> {
        let _one_at_a_time = self.reseed_lock.lock().await;
        if self.store.marker().await?.as_deref() == Some(self.marker.as_str())
            && self.store.latest_stored_version().await? >= self.latest_version()
            && self.store.actor_seq().await? >= self.max_actor_id.load(Ordering::Acquire)
        {
            return Ok(()); // another call re-seeded it meanwhile
        }
        let (frames, episodes) = {
            let s = self.stats.lock().expect("lock");
            (s.frames, s.episodes)
        };
        let epoch = self.lease.lock().expect("lock").current_epoch();
        self.store
            .raise_counters(self.max_actor_id.load(Ordering::Acquire), epoch, frames, episodes)
            .await?;
        let actors: Vec<(u64, u64, u64, u64)> = self
            .actors
            .lock()
            .expect("lock")
            .iter()
            .map(|(&id, a)| (id, a.seq, a.frames, a.episodes))
            .collect();
        for (id, seq, frames, episodes) in actors {
            self.store.reseed_actor(id, seq, frames, episodes).await?;
        }
        let stored = self.store.versions().await?;
        let hot: Vec<HotPolicy> = self.hot.lock().expect("lock").values().cloned().collect();
        let mut restored = 0;
        for h in hot.iter().filter(|h| !stored.contains(&h.meta.version)) {
            self.store.put(&h.meta, &h.blob, u64::MAX, &[]).await?;
            restored += 1;
        }
        let learner = self.learner_address();
        if !learner.is_empty() {
            self.store.set_learner_address(&learner).await?;
        }
        let spec = self.env_spec.lock().expect("lock").clone();
        if let Some(spec) = spec {
            self.store
                .adopt_env_spec(&serde_json::to_string(&spec).expect("json"))
                .await?;
        }
        self.store.set_marker(&self.marker).await?;
        tracing::warn!(
            restored_versions = restored,
            latest = self.latest_version(),
            epoch,
            frames,
            "Redis lost its data: re-seeded it from this coordinator's memory"
        );
        Ok(())
    }

    fn latest_version(&self) -> u64 {
        self.latest.borrow().as_ref().map_or(0, |m| m.version)
    }

    /// The version the next publish gets: minted here, never taken from the client.
    fn next_version(&self) -> u64 {
        self.latest_version().max(self.version_floor.load(Ordering::Acquire)) + 1
    }

    fn learner_address(&self) -> String {
        self.learner_address.lock().expect("lock").clone()
    }

    /// Reads a publish stream: the first chunk carries the metadata, the blob follows in order.
    async fn read_publish(&self, mut stream: Streaming<PolicyChunk>) -> Result<(PolicyMeta, Vec<u8>, u64), Status> {
        let first = tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, stream.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!("PolicyChunk: no first chunk within {FIRST_MESSAGE_TIMEOUT:?}"))
            })??
            .ok_or_else(|| {
                Error::InvalidArgument("PolicyChunk stream is empty, expected a first chunk with meta".into())
            })?;
        let epoch = first.epoch;
        // Fenced before the blob is read: a stale learner's upload is not worth receiving.
        self.lease
            .lock()
            .expect("lock")
            .check(epoch)
            .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
        let meta = first
            .meta
            .ok_or_else(|| Error::InvalidArgument("PolicyChunk.meta: missing on the first chunk".into()))?;
        if meta.size_bytes > MAX_POLICY_BYTES {
            return Err(Error::InvalidArgument(format!(
                "PolicyChunk.meta.size_bytes: expected at most {MAX_POLICY_BYTES}, got {}",
                meta.size_bytes
            ))
            .into());
        }
        // Grow with the data rather than trusting the declared size up front.
        let mut blob = Vec::with_capacity((meta.size_bytes as usize).min(proto::MAX_MESSAGE_BYTES));
        blob.extend_from_slice(&first.data);
        loop {
            let next = tokio::time::timeout(IDLE_MESSAGE_TIMEOUT, stream.message())
                .await
                .map_err(|_| {
                    Status::deadline_exceeded(format!("PolicyChunk: no chunk for {IDLE_MESSAGE_TIMEOUT:?}"))
                })??;
            let Some(chunk) = next else { break };
            if chunk.meta.is_some() {
                return Err(
                    Error::InvalidArgument("PolicyChunk.meta: only the first chunk may carry meta".into()).into(),
                );
            }
            if blob.len() + chunk.data.len() > meta.size_bytes as usize {
                return Err(Error::InvalidArgument(format!(
                    "PolicyChunk.data: more than meta.size_bytes = {} bytes",
                    meta.size_bytes
                ))
                .into());
            }
            blob.extend_from_slice(&chunk.data);
        }
        if blob.len() as u64 != meta.size_bytes {
            return Err(Error::InvalidArgument(format!(
                "PolicyChunk.data: got {} bytes, meta.size_bytes says {}",
                blob.len(),
                meta.size_bytes
            ))
            .into());
        }
        // A policy with NaN or infinite weights would stop every actor that loads it.
        if let Err(e) = troupe::policy_file::check_finite(&blob) {
            return Err(Error::InvalidArgument(format!("PolicyChunk.data: {e}")).into());
        }
        Ok((meta, blob, epoch))
    }

    /// Versions live actors act with: retention keeps them (it never outruns distribution).
    fn versions_in_use(&self) -> Vec<u64> {
        let timeout = Duration::from_secs_f64(self.config.coordinator.actor_timeout_s);
        let actors = self.actors.lock().expect("lock");
        let mut v: Vec<u64> = actors
            .values()
            .filter(|a| a.last_seen.elapsed() < timeout && a.policy_version > 0)
            .map(|a| a.policy_version)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
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
}

/// How long a client stream may take to send its first message, and then between messages.
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
pub const IDLE_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn register_actor(
        &self,
        request: Request<RegisterActorRequest>,
    ) -> Result<Response<RegisterActorResponse>, Status> {
        // May be empty: the learner registers once the env's spaces are known, which for a
        // Python-hosted env takes an actor; heartbeats bring the address later.
        let learner_address = self.learner_address();
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
        self.actors.lock().expect("lock").insert(
            actor_id,
            ActorEntry {
                hostname: hostname.clone(),
                policy_version: 0,
                frames: 0,
                episodes: 0,
                seq: 0,
                last_seen: Instant::now(),
            },
        );
        metrics::counter!(names::COORD_REGISTRATIONS, "role" => "actor").increment(1);
        tracing::info!(actor_id, hostname = %hostname, "actor registered");
        Ok(Response::new(RegisterActorResponse {
            actor_id,
            run_config_toml: self.config_toml.clone(),
            env_seeds,
            learner_address,
            actor_secret: self.binding.as_ref().map(|b| b.secret(actor_id)).unwrap_or_default(),
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
        let spec = self.env_spec.lock().expect("lock").clone().ok_or_else(|| {
            Error::Unavailable(format!(
                "the spaces of env {} are not known yet (the first actor reports them); retry",
                self.config.env.id
            ))
        })?;
        let ttl = Duration::from_secs_f64(self.config.coordinator.learner_lease_s);
        // Under the publish lock: no publish runs while the lease changes hands.
        let _guard = self.publish_lock.lock().await;
        self.lease
            .lock()
            .expect("lock")
            .may_acquire(&learner_id, Instant::now())
            .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
        let mut epoch = self.store.next_epoch().await?;
        {
            let mut lease = self.lease.lock().expect("lock");
            // Redis may have lost the counter: never grant an epoch twice.
            epoch = epoch.max(lease.current_epoch() + 1);
            lease.grant(&learner_id, epoch, Instant::now(), ttl);
        }
        let latest = self.latest_version();
        if req.checkpoint_version > latest {
            // Redis lost versions the learner's checkpoint has seen: mint above it.
            self.version_floor.fetch_max(req.checkpoint_version, Ordering::AcqRel);
            tracing::warn!(
                stored_latest = latest,
                checkpoint_version = req.checkpoint_version,
                "the learner's checkpoint is newer than any stored version: versions continue above the checkpoint's"
            );
        }
        self.store.set_learner_address(&addr).await?;
        self.store.set_lease_holder(&learner_id).await?;
        *self.learner_address.lock().expect("lock") = addr.clone();
        metrics::counter!(names::COORD_REGISTRATIONS, "role" => "learner").increment(1);
        metrics::gauge!(names::COORD_LEARNER_EPOCH).set(epoch as f64);
        tracing::info!(address = %addr, learner_id = %learner_id, epoch, "learner registered");
        Ok(Response::new(RegisterLearnerResponse {
            run_config_toml: self.config_toml.clone(),
            // What is stored (0: nothing): the learner fetches it if it has no checkpoint, and
            // publishes at once if there is none.
            latest_version: self.latest_version(),
            spec: Some(EnvSpec {
                json: serde_json::to_string(&spec).expect("json"),
            }),
            epoch,
            lease_s: ttl.as_secs_f64(),
        }))
    }

    async fn renew_learner_lease(
        &self,
        request: Request<RenewLearnerLeaseRequest>,
    ) -> Result<Response<RenewLearnerLeaseResponse>, Status> {
        let epoch = request.into_inner().epoch;
        let ttl = Duration::from_secs_f64(self.config.coordinator.learner_lease_s);
        self.lease
            .lock()
            .expect("lock")
            .renew(epoch, Instant::now(), ttl)
            .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
        Ok(Response::new(RenewLearnerLeaseResponse {
            lease_s: ttl.as_secs_f64(),
        }))
    }

    async fn report_env_spec(
        &self,
        request: Request<ReportEnvSpecRequest>,
    ) -> Result<Response<ReportEnvSpecResponse>, Status> {
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
        let known = self.env_spec.lock().expect("lock").clone();
        let run_spec = match known {
            Some(s) => s,
            None => {
                let stored = self.store.adopt_env_spec(&json).await?;
                let s: EnvSpecValue = serde_json::from_str(&stored)
                    .map_err(|e| Error::Internal(format!("stored env spec is not valid: {e}")))?;
                tracing::info!(env = %s.id, spec = %stored, "adopted the env's spaces");
                *self.env_spec.lock().expect("lock") = Some(s.clone());
                s
            }
        };
        if run_spec != reported {
            return Err(Error::FailedPrecondition(format!(
                "actor {}: env {} has different spaces than the run's: reported {}, the run has {}",
                req.actor_id,
                reported.id,
                json,
                serde_json::to_string(&run_spec).expect("json")
            ))
            .into());
        }
        Ok(Response::new(ReportEnvSpecResponse {
            spec: Some(EnvSpec {
                json: serde_json::to_string(&run_spec).expect("json"),
            }),
        }))
    }

    type WatchPoliciesStream = ReceiverStream<Result<PolicyMeta, Status>>;

    async fn watch_policies(
        &self,
        _: Request<WatchPoliciesRequest>,
    ) -> Result<Response<Self::WatchPoliciesStream>, Status> {
        let mut rx = self.latest.subscribe();
        let (tx, out) = mpsc::channel(4);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            metrics::gauge!(names::COORD_WATCHERS).increment(1.0);
            loop {
                let current = *rx.borrow_and_update();
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
        let asked = request.into_inner().version;
        let version = if asked == 0 { self.latest_version() } else { asked };
        let not_found = || {
            let stored = self.latest.borrow().as_ref().map(|m| m.version);
            Error::NotFound(match (asked, stored) {
                (0, None) => "no policy version has been published yet".to_string(),
                (_, Some(l)) => {
                    format!("policy version {version} not found (latest is {l}; older ones may have been dropped)")
                }
                (_, None) => format!("policy version {version} not found (none published yet)"),
            })
        };
        if version == 0 {
            return Err(not_found().into());
        }
        // Hot versions come from memory; the Bytes keep a version alive for this fetch even if
        // retention drops it meanwhile.
        let hot = self.hot.lock().expect("lock").get(&version).cloned();
        let (meta, blob) = match hot {
            Some(h) => {
                metrics::counter!(names::COORD_POLICY_FETCHES, "source" => "memory").increment(1);
                (h.meta, h.blob)
            }
            None => {
                let meta = self.store.meta(version).await?.ok_or_else(not_found)?;
                let blob = self.store.blob(version).await?.ok_or_else(not_found)?;
                metrics::counter!(names::COORD_POLICY_FETCHES, "source" => "redis").increment(1);
                (meta, bytes::Bytes::from(blob))
            }
        };
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
        let (mut meta, blob, epoch) = self.read_publish(request.into_inner()).await?;
        let _guard = self.publish_lock.lock().await;
        self.lease
            .lock()
            .expect("lock")
            .check(epoch)
            .map_err(|e| Error::FailedPrecondition(e.to_string()))?;
        let asked = meta.version;
        meta.parent_version = self.latest_version();
        // Minted here. The lease holder's expected number (the one after the last it was given)
        // may lift the count a little: after a coordinator restart Redis may lack the versions of
        // its last second, and those numbers must not be issued twice.
        let next = self.next_version();
        meta.version = next.max(asked.min(next + MAX_VERSION_JUMP));
        if meta.version > MAX_VERSION {
            return Err(Error::FailedPrecondition(format!(
                "policy versions are exhausted ({} > {MAX_VERSION})",
                meta.version
            ))
            .into());
        }
        if asked != 0 && asked != meta.version {
            tracing::info!(
                asked,
                minted = meta.version,
                "the publisher expected another version number"
            );
        }
        meta.created_unix_ms = now_ms();
        meta.pinned = false;
        let blob = bytes::Bytes::from(blob);
        let protect = self.versions_in_use();
        let dropped = self
            .store
            .put(&meta, &blob, self.config.coordinator.keep_versions, &protect)
            .await?;
        {
            let mut hot = self.hot.lock().expect("lock");
            hot.insert(
                meta.version,
                HotPolicy {
                    meta,
                    blob: blob.clone(),
                },
            );
            for d in &dropped {
                hot.remove(d);
            }
        }
        if !dropped.is_empty() {
            tracing::debug!(?dropped, "dropped old policy versions");
        }
        {
            let live = self.live_actors();
            self.distribution
                .lock()
                .expect("lock")
                .stored(meta.version, Instant::now(), live);
        }
        metrics::counter!(names::COORD_POLICIES_PUBLISHED).increment(1);
        metrics::gauge!(names::COORD_POLICY_VERSION).set(meta.version as f64);
        if let Ok(v) = self.store.versions().await {
            metrics::gauge!(names::COORD_POLICIES_STORED).set(v.len() as f64);
        }
        tracing::debug!(version = meta.version, bytes = blob.len(), "stored policy");
        self.latest.send_replace(Some(meta));
        Ok(Response::new(PublishPolicyResponse { meta: Some(meta) }))
    }

    async fn pin_policy(&self, request: Request<PinPolicyRequest>) -> Result<Response<PolicyMeta>, Status> {
        let r = request.into_inner();
        // Under the publish lock, so retention cannot drop the version between check and pin.
        let _guard = self.publish_lock.lock().await;
        if self.store.meta(r.version).await?.is_none() {
            return Err(Error::NotFound(format!("policy version {} not found", r.version)).into());
        }
        self.store.set_pinned(r.version, r.pinned).await?;
        let meta = self
            .store
            .meta(r.version)
            .await?
            .ok_or_else(|| Error::NotFound(format!("policy version {} not found", r.version)))?;
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
        let returns: Vec<f32> = r.episodes.iter().map(|e| e.episode_return).collect();
        let mut applied = self.store.add_progress(r.actor_id, r.seq, r.frames, &returns).await?;
        if applied == Applied::UnknownActor && r.actor_id <= self.max_actor_id.load(Ordering::Acquire) {
            // We issued this id: Redis lost its counter. Write back what we know, then apply.
            self.reseed().await?;
            applied = self.store.add_progress(r.actor_id, r.seq, r.frames, &returns).await?;
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
        let returns = if totals.is_some() { returns } else { Vec::new() };
        let frames = if totals.is_some() { r.frames } else { 0 };
        let n_episodes = returns.len() as u64;
        {
            let mut actors = self.actors.lock().expect("lock");
            // Forget actors silent for 10 timeouts, so restarts do not grow the map.
            let forget = Duration::from_secs_f64(self.config.coordinator.actor_timeout_s) * 10;
            actors.retain(|_, a| a.last_seen.elapsed() < forget);
            let entry = actors.entry(r.actor_id).or_insert_with(|| ActorEntry {
                hostname: String::new(),
                policy_version: 0,
                frames: 0,
                episodes: 0,
                seq: 0,
                last_seen: Instant::now(),
            });
            entry.policy_version = r.policy_version;
            if let Some((f, e, _, _)) = totals {
                (entry.frames, entry.episodes, entry.seq) = (f, e, r.seq);
            }
            entry.last_seen = Instant::now();
        }
        if r.policy_version > 0 {
            let now = Instant::now();
            let switched_at = now
                .checked_sub(Duration::from_millis(r.policy_loaded_ms_ago))
                .unwrap_or(now);
            let done = self
                .distribution
                .lock()
                .expect("lock")
                .acting(r.actor_id, r.policy_version, switched_at);
            for latency in done {
                metrics::histogram!(names::COORD_POLICY_DISTRIBUTION_SECONDS).record(latency.as_secs_f64());
            }
        }
        let mean = {
            let mut s = self.stats.lock().expect("lock");
            // Redis's totals after this report: the same numbers whatever else was cancelled.
            if let Some((_, _, run_frames, run_episodes)) = totals {
                (s.frames, s.episodes) = (s.frames.max(run_frames), s.episodes.max(run_episodes));
            }
            for x in returns {
                if s.returns.len() == RETURN_WINDOW {
                    s.returns.pop_front();
                }
                s.returns.push_back(x);
            }
            s.mean_return()
        };
        metrics::counter!(names::COORD_FRAMES).increment(frames);
        metrics::counter!(names::COORD_EPISODES).increment(n_episodes);
        if mean.is_finite() {
            metrics::gauge!(names::COORD_MEAN_RETURN_100).set(mean);
        }
        Ok(Response::new(HeartbeatResponse {
            latest_version: self.latest_version(),
            learner_address: self.learner_address(),
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let timeout = Duration::from_secs_f64(self.config.coordinator.actor_timeout_s);
        let actors: Vec<ActorStatus> = {
            let mut map = self.actors.lock().expect("lock");
            // Forget actors that have been silent for 10 timeouts.
            map.retain(|_, a| a.last_seen.elapsed() < timeout * 10);
            let mut v: Vec<ActorStatus> = map
                .iter()
                .filter(|(_, a)| a.last_seen.elapsed() < timeout)
                .map(|(&id, a)| ActorStatus {
                    actor_id: id,
                    hostname: a.hostname.clone(),
                    policy_version: a.policy_version,
                    frames: a.frames,
                    episodes: a.episodes,
                    seconds_since_heartbeat: a.last_seen.elapsed().as_secs_f64(),
                })
                .collect();
            v.sort_by_key(|a| a.actor_id);
            v
        };
        let (frames, episodes, mean, n) = {
            let s = self.stats.lock().expect("lock");
            (s.frames, s.episodes, s.mean_return(), s.returns.len())
        };
        let policies = self.store.all_meta().await?;
        Ok(Response::new(StatusResponse {
            latest_version: self.latest_version(),
            frames,
            episodes,
            mean_return_100: mean,
            episodes_in_mean: n as u32,
            actors,
            learner_address: self.learner_address(),
            policies,
            run_config_toml: self.config_toml.clone(),
        }))
    }
}
