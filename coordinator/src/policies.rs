//! One policy's versions, lease and learner: each policy of a run has its own.
//!
//! - **Versions** are minted here (the next after the latest stored), stored whole in Redis and
//!   held in memory ([`PolicyState::fetch`] serves from memory), with retention of the newest
//!   `coordinator.keep_versions` plus pinned ones and those live actors act with.
//! - **The lease** ([`crate::lease`]) fences the policy's learner: only its current epoch may
//!   publish or renew.
//! - **The learner's address**, which actors stream this policy's rollouts to.
//! - **Recent returns** of the policy's agents, for Status and the per-policy gauge.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proto::v1::{PolicyChunk, PolicyMeta, PolicyStatus};
use tokio::sync::watch;
use tonic::{Status, Streaming};
use troupe::telemetry::names;
use troupe::Error;

use crate::lease::Lease;
use crate::store::{PolicyStore, RETURN_WINDOW};

/// Largest version number accepted from a learner's checkpoint (2^53: far from wrapping).
pub const MAX_VERSION: u64 = 1 << 53;

/// How far above the latest stored version the lease holder's expected number may move the
/// count (it knows versions Redis lost in its last second before a crash); never further.
pub const MAX_VERSION_JUMP: u64 = 1000;

/// Largest policy blob accepted (1 GiB).
pub const MAX_POLICY_BYTES: u64 = 1 << 30;

/// How long a client stream may take to send its first message, and then between messages.
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);
pub const IDLE_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A stored version held in memory: fetches are served from here, not from Redis, and after
/// Redis loses its data the coordinator writes these back.
#[derive(Clone)]
struct HotPolicy {
    meta: PolicyMeta,
    blob: bytes::Bytes,
}

pub struct PolicyState {
    pub name: String,
    /// The env's agents this policy acts for.
    pub agents: Vec<String>,
    store: PolicyStore,
    lease: Mutex<Lease>,
    /// Versions are minted above this as well as above the latest stored (raised from a
    /// learner's checkpoint after Redis lost its data).
    version_floor: AtomicU64,
    /// Every version stored since start-up that retention has not dropped.
    hot: Mutex<BTreeMap<u64, HotPolicy>>,
    latest: watch::Sender<Option<PolicyMeta>>,
    /// Serialises publishes (and lease changes) so versions only go up.
    publish_lock: tokio::sync::Mutex<()>,
    learner_address: Mutex<String>,
    pub distribution: Mutex<crate::distribution::Distribution>,
    returns: Mutex<VecDeque<f32>>,
}

/// What a publish needs from the rest of the coordinator.
pub struct PublishContext {
    pub keep_versions: u64,
    /// Versions live actors act with (kept by retention).
    pub in_use: Vec<u64>,
    /// Actors live now (they are waited on for the distribution latency).
    pub live: Vec<u64>,
}

impl PolicyState {
    /// The policy as Redis holds it (the recovery path after a restart): every stored version
    /// goes into memory (retention bounds them).
    pub async fn recover(
        name: &str,
        agents: Vec<String>,
        store: PolicyStore,
        lease_s: f64,
    ) -> Result<PolicyState, Error> {
        let latest = store.latest().await?;
        let epoch = store.epoch().await?;
        let holder = store.lease_holder().await?;
        let learner = store.learner_address().await?.unwrap_or_default();
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
        let returns = store.returns().await?;
        metrics::gauge!(names::COORD_LEARNER_EPOCH, "policy" => name.to_string()).set(epoch as f64);
        metrics::gauge!(names::COORD_POLICIES_STORED, "policy" => name.to_string()).set(hot.len() as f64);
        if let Some(m) = &latest {
            tracing::info!(policy = name, version = m.version, "recovered policy from redis");
            metrics::gauge!(names::COORD_POLICY_VERSION, "policy" => name.to_string()).set(m.version as f64);
        }
        Ok(PolicyState {
            name: name.to_string(),
            agents,
            store,
            lease: Mutex::new(Lease::recovered(
                epoch,
                holder,
                Instant::now(),
                Duration::from_secs_f64(lease_s),
            )),
            version_floor: AtomicU64::new(0),
            hot: Mutex::new(hot),
            latest: watch::channel(latest).0,
            publish_lock: tokio::sync::Mutex::new(()),
            learner_address: Mutex::new(learner),
            distribution: Mutex::new(Default::default()),
            returns: Mutex::new(returns.into_iter().collect()),
        })
    }

    pub fn store(&self) -> &PolicyStore {
        &self.store
    }

    pub fn latest_version(&self) -> u64 {
        self.latest.borrow().as_ref().map_or(0, |m| m.version)
    }

    pub fn watch(&self) -> watch::Receiver<Option<PolicyMeta>> {
        self.latest.subscribe()
    }

    /// The version the next publish gets: minted here, never taken from the client.
    fn next_version(&self) -> u64 {
        self.latest_version().max(self.version_floor.load(Ordering::Acquire)) + 1
    }

    pub fn learner_address(&self) -> String {
        self.learner_address.lock().expect("lock").clone()
    }

    pub fn epoch(&self) -> u64 {
        self.lease.lock().expect("lock").current_epoch()
    }

    /// Takes the lease for `learner_id` under a new epoch and records its address; returns the
    /// epoch. `checkpoint_version` above the latest stored moves minting above it (Redis lost
    /// versions the learner's checkpoint has seen).
    pub async fn register_learner(
        &self,
        learner_id: &str,
        address: &str,
        checkpoint_version: u64,
        ttl: Duration,
    ) -> Result<u64, Error> {
        // Under the publish lock: no publish runs while the lease changes hands.
        let _guard = self.publish_lock.lock().await;
        self.lease
            .lock()
            .expect("lock")
            .may_acquire(learner_id, Instant::now())
            .map_err(|e| Error::FailedPrecondition(format!("policy {}: {e}", self.name)))?;
        let mut epoch = self.store.next_epoch().await?;
        {
            let mut lease = self.lease.lock().expect("lock");
            // Redis may have lost the counter: never grant an epoch twice.
            epoch = epoch.max(lease.current_epoch() + 1);
            lease.grant(learner_id, epoch, Instant::now(), ttl);
        }
        let latest = self.latest_version();
        if checkpoint_version > latest {
            self.version_floor.fetch_max(checkpoint_version, Ordering::AcqRel);
            tracing::warn!(
                policy = %self.name,
                stored_latest = latest,
                checkpoint_version,
                "the learner's checkpoint is newer than any stored version: versions continue above the checkpoint's"
            );
        }
        self.store.set_learner_address(address).await?;
        self.store.set_lease_holder(learner_id).await?;
        *self.learner_address.lock().expect("lock") = address.to_string();
        metrics::gauge!(names::COORD_LEARNER_EPOCH, "policy" => self.name.clone()).set(epoch as f64);
        Ok(epoch)
    }

    pub fn renew(&self, epoch: u64, ttl: Duration) -> Result<(), Error> {
        self.lease
            .lock()
            .expect("lock")
            .renew(epoch, Instant::now(), ttl)
            .map_err(|e| Error::FailedPrecondition(format!("policy {}: {e}", self.name)))
    }

    /// Reads a publish stream (its first chunk already read: `first`): the blob follows in
    /// order. Fenced before the blob is read: a stale learner's upload is not worth receiving.
    pub async fn read_publish(
        &self,
        first: PolicyChunk,
        mut stream: Streaming<PolicyChunk>,
    ) -> Result<(PolicyMeta, Vec<u8>, u64), Status> {
        let epoch = first.epoch;
        self.lease
            .lock()
            .expect("lock")
            .check(epoch)
            .map_err(|e| Error::FailedPrecondition(format!("policy {}: {e}", self.name)))?;
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
        // A policy with NaN or infinite weights would stop every actor that loads it. A blob of
        // up to 1 GiB takes a while to scan: on a blocking thread, not a runtime worker.
        let (blob, finite) = tokio::task::spawn_blocking(move || {
            let finite = troupe::policy_file::check_finite(&blob);
            (blob, finite)
        })
        .await
        .map_err(|e| Error::Internal(format!("checking the policy's weights: {e}")))?;
        if let Err(e) = finite {
            return Err(Error::InvalidArgument(format!("PolicyChunk.data: {e}")).into());
        }
        Ok((meta, blob, epoch))
    }

    /// Stores a published version under a minted number and makes it the latest.
    pub async fn publish(
        &self,
        mut meta: PolicyMeta,
        blob: Vec<u8>,
        epoch: u64,
        ctx: impl FnOnce() -> PublishContext,
    ) -> Result<PolicyMeta, Status> {
        let _guard = self.publish_lock.lock().await;
        self.lease
            .lock()
            .expect("lock")
            .check(epoch)
            .map_err(|e| Error::FailedPrecondition(format!("policy {}: {e}", self.name)))?;
        let asked = meta.version;
        meta.parent_version = self.latest_version();
        // Minted here. The lease holder's expected number (the one after the last it was given)
        // may lift the count a little: after a coordinator restart Redis may lack the versions of
        // its last second, and those numbers must not be issued twice.
        let next = self.next_version();
        meta.version = next.max(asked.min(next + MAX_VERSION_JUMP));
        if meta.version > MAX_VERSION {
            return Err(Error::FailedPrecondition(format!(
                "policy {}: versions are exhausted ({} > {MAX_VERSION})",
                self.name, meta.version
            ))
            .into());
        }
        if asked != 0 && asked != meta.version {
            tracing::info!(policy = %self.name, asked, minted = meta.version, "the publisher expected another version number");
        }
        meta.created_unix_ms = now_ms();
        meta.pinned = false;
        meta.policy = self.name.clone();
        let blob = bytes::Bytes::from(blob);
        let ctx = ctx();
        let dropped = self.store.put(&meta, &blob, ctx.keep_versions, &ctx.in_use).await?;
        {
            let mut hot = self.hot.lock().expect("lock");
            hot.insert(
                meta.version,
                HotPolicy {
                    meta: meta.clone(),
                    blob: blob.clone(),
                },
            );
            for d in &dropped {
                hot.remove(d);
            }
            metrics::gauge!(names::COORD_POLICIES_STORED, "policy" => self.name.clone()).set(hot.len() as f64);
        }
        if !dropped.is_empty() {
            tracing::debug!(policy = %self.name, ?dropped, "dropped old policy versions");
        }
        self.distribution
            .lock()
            .expect("lock")
            .stored(meta.version, Instant::now(), ctx.live);
        metrics::counter!(names::COORD_POLICIES_PUBLISHED, "policy" => self.name.clone()).increment(1);
        metrics::gauge!(names::COORD_POLICY_VERSION, "policy" => self.name.clone()).set(meta.version as f64);
        tracing::debug!(policy = %self.name, version = meta.version, bytes = blob.len(), "stored policy");
        self.latest.send_replace(Some(meta.clone()));
        Ok(meta)
    }

    /// A version's metadata and blob (0 = the latest): from memory when hot, else from Redis.
    /// The Bytes keep a version alive for this fetch even if retention drops it meanwhile.
    pub async fn fetch(&self, asked: u64) -> Result<(PolicyMeta, bytes::Bytes), Error> {
        let version = if asked == 0 { self.latest_version() } else { asked };
        let not_found = || {
            let stored = self.latest.borrow().as_ref().map(|m| m.version);
            let p = &self.name;
            Error::NotFound(match (asked, stored) {
                (0, None) => format!("policy {p}: no version has been published yet"),
                (_, Some(l)) => {
                    format!("policy {p}: version {version} not found (latest is {l}; older ones may have been dropped)")
                }
                (_, None) => format!("policy {p}: version {version} not found (none published yet)"),
            })
        };
        if version == 0 {
            return Err(not_found());
        }
        let hot = self.hot.lock().expect("lock").get(&version).cloned();
        match hot {
            Some(h) => {
                metrics::counter!(names::COORD_POLICY_FETCHES, "source" => "memory").increment(1);
                Ok((h.meta, h.blob))
            }
            None => {
                let meta = self.store.meta(version).await?.ok_or_else(not_found)?;
                let blob = self.store.blob(version).await?.ok_or_else(not_found)?;
                metrics::counter!(names::COORD_POLICY_FETCHES, "source" => "redis").increment(1);
                Ok((meta, bytes::Bytes::from(blob)))
            }
        }
    }

    /// Pins or unpins a stored version, in Redis and in the copies fetches are served from.
    pub async fn pin(&self, version: u64, pinned: bool) -> Result<PolicyMeta, Error> {
        // Under the publish lock, so retention cannot drop the version between check and pin.
        let _guard = self.publish_lock.lock().await;
        let missing = || Error::NotFound(format!("policy {}: version {version} not found", self.name));
        if self.store.meta(version).await?.is_none() {
            return Err(missing());
        }
        self.store.set_pinned(version, pinned).await?;
        let meta = self.store.meta(version).await?.ok_or_else(missing)?;
        if let Some(h) = self.hot.lock().expect("lock").get_mut(&version) {
            h.meta.pinned = meta.pinned;
        }
        self.latest.send_if_modified(|latest| match latest {
            Some(m) if m.version == version && m.pinned != meta.pinned => {
                m.pinned = meta.pinned;
                true
            }
            _ => false,
        });
        Ok(meta)
    }

    /// Episode returns of this policy's agents.
    pub fn record_returns(&self, returns: &[f32]) {
        if returns.is_empty() {
            return;
        }
        let mut r = self.returns.lock().expect("lock");
        for &x in returns {
            if r.len() == RETURN_WINDOW {
                r.pop_front();
            }
            r.push_back(x);
        }
        let mean = r.iter().map(|&x| x as f64).sum::<f64>() / r.len() as f64;
        metrics::gauge!(names::COORD_POLICY_MEAN_RETURN_100, "policy" => self.name.clone()).set(mean);
    }

    pub async fn status(&self) -> Result<PolicyStatus, Error> {
        let (mean, n) = {
            let r = self.returns.lock().expect("lock");
            let mean = if r.is_empty() {
                f64::NAN
            } else {
                r.iter().map(|&x| x as f64).sum::<f64>() / r.len() as f64
            };
            (mean, r.len())
        };
        Ok(PolicyStatus {
            policy: self.name.clone(),
            agents: self.agents.clone(),
            latest_version: self.latest_version(),
            learner_address: self.learner_address(),
            epoch: self.epoch(),
            mean_return_100: mean,
            episodes_in_mean: n as u32,
            versions: self.store.all_meta().await?,
        })
    }

    /// Redis lost its data: writes back the versions, epoch, learner address and holder this
    /// coordinator knows. Returns how many versions it restored.
    pub async fn reseed(&self) -> Result<usize, Error> {
        self.store.raise_epoch(self.epoch()).await?;
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
        let holder = self.lease.lock().expect("lock").holder().map(|h| h.learner_id.clone());
        if let Some(h) = holder {
            self.store.set_lease_holder(&h).await?;
        }
        Ok(restored)
    }
}
