//! Experience replay: named tables (the run config's `[[replay.tables]]`, one copy per policy)
//! with Reverb's semantics (a sampler, a FIFO remover, `max_times_sampled`, a rate limiter),
//! whose items live in Redis, on one instance or several, and whose in-memory index (a sum
//! tree, the insertion order, the limiter's counters) is rebuilt from Redis on first use after
//! a restart. Served over gRPC (`troupe.v1.Replay`) by the coordinator, or alone with
//! `coordinator --role replay`.
//!
//! - [`sum_tree`]: prioritized sampling in O(log n);
//! - [`rate_limiter`]: when inserts and samples may go ahead;
//! - [`table`]: one table's index, sampler and remover;
//! - [`storage`]: the Redis keys, per shard.
//!
//! The side the rate limiter holds back waits on its table's notification, never spinning,
//! until its deadline (the request's `timeout_s`, or the table's); then it fails with
//! DEADLINE_EXCEEDED. Redis failures are UNAVAILABLE, and leave the index as it was.

pub mod rate_limiter;
pub mod storage;
pub mod sum_tree;
pub mod table;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use proto::v1::{
    replay_server::Replay, DType, InsertRequest, InsertResponse, ReplayItem, SampleRequest, SampleResponse,
    SampledItem, TableInfo, TableInfoRequest, TableInfoResponse, UpdatePrioritiesRequest, UpdatePrioritiesResponse,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{Mutex, Notify};
use tonic::{Request, Response, Status};
use troupe::config::{ReplayConfig, ReplayTableConfig, SamplerKind};
use troupe::telemetry::names;
use troupe::Error;

use rate_limiter::RateLimiter;
use storage::{Shards, TableStore};
use table::{NewItem, Sampler, Table};

/// Items in one insert or sample call, at most.
pub const MAX_BATCH: usize = 4096;

/// The limiter a table's config describes.
pub fn limiter_of(cfg: &ReplayTableConfig) -> RateLimiter {
    match cfg.samples_per_insert {
        Some(spi) => {
            RateLimiter::sample_to_insert_ratio(spi, cfg.min_size_to_sample, cfg.error_buffer().unwrap_or_default())
        }
        None => RateLimiter::min_size(cfg.min_size_to_sample),
    }
}

fn sampler_of(cfg: &ReplayTableConfig) -> Sampler {
    match cfg.sampler {
        SamplerKind::Uniform => Sampler::Uniform,
        SamplerKind::Prioritized => Sampler::Prioritized {
            alpha: cfg.priority_exponent,
        },
        SamplerKind::Fifo => Sampler::Fifo,
    }
}

fn sampler_name(s: SamplerKind) -> &'static str {
    match s {
        SamplerKind::Uniform => "uniform",
        SamplerKind::Prioritized => "prioritized",
        SamplerKind::Fifo => "fifo",
    }
}

/// A table's item signature: each tensor's name, dtype and shape, in order.
fn signature(item: &ReplayItem) -> Result<String, Error> {
    let mut parts = Vec::with_capacity(item.tensors.len());
    if item.tensors.is_empty() {
        return Err(Error::InvalidArgument(
            "items[].tensors: expected 1 or more tensors, got none".into(),
        ));
    }
    for (i, nt) in item.tensors.iter().enumerate() {
        let t = nt
            .tensor
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument(format!("items[].tensors[{i}] ({}): no tensor", nt.name)))?;
        let dtype = DType::try_from(t.dtype).unwrap_or(DType::DtypeUnspecified);
        if dtype == DType::DtypeUnspecified {
            return Err(Error::InvalidArgument(format!(
                "items[].tensors[{i}] ({}): expected dtype f32, i64 or u8, got {}",
                nt.name, t.dtype
            )));
        }
        let want = t
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(proto::dtype_size(dtype) as u64));
        if want != Some(t.data.len() as u64) {
            return Err(Error::InvalidArgument(format!(
                "items[].tensors[{i}] ({}): shape {:?} of {} needs {} bytes, got {}",
                nt.name,
                t.shape,
                dtype_name(dtype),
                want.map_or("too many".to_string(), |w| w.to_string()),
                t.data.len()
            )));
        }
        parts.push(serde_json::json!({"name": nt.name, "dtype": dtype_name(dtype), "shape": t.shape}));
    }
    Ok(serde_json::Value::Array(parts).to_string())
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::DtypeF32 => "f32",
        DType::DtypeI64 => "i64",
        DType::DtypeU8 => "u8",
        DType::DtypeUnspecified => "unspecified",
    }
}

/// A priority must be finite and >= 0, and its sampling weight (`p ^ priority_exponent`) small
/// enough that the table's total stays finite.
fn check_priority(field: &str, p: f64, cfg: &ReplayTableConfig) -> Result<(), Error> {
    if !(p.is_finite() && p >= 0.0) {
        return Err(Error::InvalidArgument(format!(
            "{field}: expected a finite priority >= 0, got {p}"
        )));
    }
    let cap = 1e300 / cfg.max_size as f64;
    if cfg.sampler == SamplerKind::Prioritized && !(p.powf(cfg.priority_exponent) <= cap) {
        return Err(Error::InvalidArgument(format!(
            "{field}: expected a priority whose weight p^{} is at most {cap:e} (the table's total must stay finite), got {p}",
            cfg.priority_exponent
        )));
    }
    Ok(())
}

/// One table of one policy: its index (under an async lock, held across its Redis writes, so
/// the index and Redis change together) and the notification its waiters wait on.
struct TableHandle {
    policy: String,
    name: String,
    cfg: ReplayTableConfig,
    /// Items one insert or sample may carry: the batch limit, `max_size` (inserts) and what
    /// the rate limiter can always let through at once.
    max_insert: usize,
    max_sample: usize,
    store: TableStore,
    state: Mutex<State>,
    changed: Notify,
}

struct State {
    table: Table,
    /// The next item key (keys increase with insertion, across shards).
    next_key: u64,
    next_shard: usize,
    signature: Option<String>,
    rng: StdRng,
}

impl TableHandle {
    fn labels(&self) -> [(&'static str, String); 2] {
        [("policy", self.policy.clone()), ("table", self.name.clone())]
    }

    fn record(&self, t: &Table) {
        metrics::gauge!(names::REPLAY_ITEMS, &self.labels()).set(t.len() as f64);
        metrics::gauge!(names::REPLAY_BYTES, &self.labels()).set(t.bytes() as f64);
    }

    /// Waits for the limiter to let `n` items through on `side` and returns the table, locked;
    /// fails with DEADLINE_EXCEEDED at `deadline`. Hand the lock back with [`Self::release`].
    async fn admit(
        &self,
        side: &'static str,
        n: u64,
        deadline: Instant,
    ) -> Result<tokio::sync::MutexGuard<'_, State>, Error> {
        let started = Instant::now();
        let mut labels = self.labels().to_vec();
        labels.push(("side", side.to_string()));
        loop {
            let notified = self.changed.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a change between the check and the wait wakes it.
            notified.as_mut().enable();
            {
                // The lock is held across Redis calls: waiting for it counts against the deadline.
                let Ok(st) = tokio::time::timeout_at(deadline.into(), self.state.lock()).await else {
                    return Err(self.timed_out(side, n, started, None, &labels));
                };
                let c = st.table.counts();
                let ok = match side {
                    "insert" => st.table.limiter.can_insert(&c, n),
                    _ => st.table.limiter.can_sample(&c, n),
                };
                if ok {
                    metrics::histogram!(names::REPLAY_WAIT_SECONDS, &labels).record(started.elapsed().as_secs_f64());
                    return Ok(st);
                }
                if Instant::now() >= deadline {
                    return Err(self.timed_out(side, n, started, Some(&st), &labels));
                }
            }
            if tokio::time::timeout_at(deadline.into(), notified).await.is_err() {
                let st = self.state.try_lock().ok();
                return Err(self.timed_out(side, n, started, st.as_deref(), &labels));
            }
        }
    }

    /// The DEADLINE_EXCEEDED a wait ends with, counted, with the limiter's state if known.
    fn timed_out(
        &self,
        side: &str,
        n: u64,
        started: Instant,
        st: Option<&State>,
        labels: &[(&'static str, String)],
    ) -> Error {
        metrics::counter!(names::REPLAY_TIMEOUTS, labels).increment(1);
        let state = match st {
            Some(st) => {
                let (c, l) = (st.table.counts(), st.table.limiter);
                format!(
                    "size {}, inserts {}, samples {}, min_size_to_sample {}, samples_per_insert {}, diff window [{}, {}]",
                    c.size, c.inserts, c.samples, l.min_size_to_sample, l.samples_per_insert, l.min_diff, l.max_diff
                )
            }
            None => "the table was busy with Redis all along".to_string(),
        };
        Error::DeadlineExceeded(format!(
            "replay table {} of policy {}: the rate limiter held this {side} of {n} back for {:.1} s ({state})",
            self.name,
            self.policy,
            started.elapsed().as_secs_f64()
        ))
    }

    /// Unlocks the table after a change and wakes whoever waits on it.
    fn release(&self, st: tokio::sync::MutexGuard<'_, State>) {
        self.record(&st.table);
        drop(st);
        self.changed.notify_waiters();
    }
}

/// The replay service: every (policy, table) the run's config names, each rebuilt from Redis
/// when first used.
pub struct ReplayService {
    config: ReplayConfig,
    shards: Shards,
    tables: Mutex<HashMap<(String, String), Arc<TableHandle>>>,
}

impl ReplayService {
    pub fn new(config: ReplayConfig, shards: Shards) -> ReplayService {
        ReplayService {
            config,
            shards,
            tables: Mutex::new(HashMap::new()),
        }
    }

    /// The table, rebuilt from Redis the first time it is asked for.
    async fn table(&self, policy: &str, name: &str) -> Result<Arc<TableHandle>, Error> {
        let policy = if policy.is_empty() {
            troupe::spaces::DEFAULT_POLICY
        } else {
            policy
        };
        if !troupe::config::valid_policy_name(policy) {
            return Err(Error::InvalidArgument(format!(
                "policy: expected 1 to 64 letters, digits, '-' and '_', got {policy:?}"
            )));
        }
        let cfg = self.config.table(name).ok_or_else(|| {
            let known: Vec<&str> = self.config.tables.iter().map(|t| t.name.as_str()).collect();
            Error::InvalidArgument(format!(
                "table: expected one of the run's replay tables {known:?}, got {name:?}"
            ))
        })?;
        let mut tables = self.tables.lock().await;
        if let Some(t) = tables.get(&(policy.to_string(), name.to_string())) {
            return Ok(t.clone());
        }
        let store = self.shards.table(policy, name);
        let started = Instant::now();
        let storage::Loaded {
            items,
            inserts,
            samples,
            last_key,
        } = store.load().await?;
        let signature = store.signature().await?;
        let mut table = Table::new(cfg.max_size, cfg.max_times_sampled, sampler_of(cfg), limiter_of(cfg));
        let next_key = last_key + 1;
        let evicted = table.add(items, true);
        table.set_totals(inserts, samples);
        if !evicted.is_empty() {
            // Left behind by an eviction whose delete failed: evicted again now.
            store.delete(&evicted).await?;
        }
        tracing::info!(
            policy,
            table = name,
            items = table.len(),
            inserts,
            samples,
            stale_evicted = evicted.len(),
            seconds = started.elapsed().as_secs_f64(),
            "replay table rebuilt from redis"
        );
        let limiter = limiter_of(cfg);
        let at_once = |inserting: bool| usize::try_from(limiter.max_batch(inserting)).unwrap_or(usize::MAX);
        let handle = Arc::new(TableHandle {
            policy: policy.to_string(),
            name: name.to_string(),
            cfg: cfg.clone(),
            max_insert: MAX_BATCH.min(cfg.max_size as usize).min(at_once(true)),
            max_sample: MAX_BATCH.min(at_once(false)),
            store,
            state: Mutex::new(State {
                table,
                next_key,
                next_shard: (next_key as usize) % self.shards.len(),
                signature,
                rng: StdRng::from_os_rng(),
            }),
            changed: Notify::new(),
        });
        handle.record(&handle.state.lock().await.table);
        tables.insert((policy.to_string(), name.to_string()), handle.clone());
        Ok(handle)
    }

    fn deadline(cfg: &ReplayTableConfig, timeout_s: f64) -> Result<Instant, Error> {
        if !timeout_s.is_finite() || timeout_s < 0.0 {
            return Err(Error::InvalidArgument(format!(
                "timeout_s: expected 0 (the table's) or a number of seconds > 0, got {timeout_s}"
            )));
        }
        let t = if timeout_s > 0.0 {
            timeout_s.min(cfg.timeout_s)
        } else {
            cfg.timeout_s
        };
        Ok(Instant::now() + Duration::from_secs_f64(t))
    }

    pub async fn insert(&self, req: InsertRequest) -> Result<InsertResponse, Error> {
        let h = self.table(&req.policy, &req.table).await?;
        let n = req.items.len();
        let max = h.max_insert;
        if n == 0 || n > max {
            return Err(Error::InvalidArgument(format!(
                "items: expected 1 to {max} items per insert (the batch limit, the table's max_size {} and what its rate limiter can always let through at once), got {n}",
                h.cfg.max_size
            )));
        }
        let deadline = Self::deadline(&h.cfg, req.timeout_s)?;
        let mut sig = None;
        let mut encoded = Vec::with_capacity(n);
        for (i, item) in req.items.iter().enumerate() {
            check_priority(&format!("items[{i}].priority"), item.priority, &h.cfg)?;
            let s = signature(item).map_err(|e| match e {
                Error::InvalidArgument(m) => Error::InvalidArgument(m.replacen("items[]", &format!("items[{i}]"), 1)),
                e => e,
            })?;
            match &sig {
                None => sig = Some(s),
                Some(first) if *first != s => {
                    return Err(Error::InvalidArgument(format!(
                        "items[{i}]: expected the tensors of items[0] ({first}), got {s}"
                    )))
                }
                Some(_) => {}
            }
            encoded.push(Bytes::from(item.encode_to_vec()));
        }
        let sig = sig.expect("1 or more items");
        let news: Vec<(f64, u64)> = req.items.iter().map(|it| (it.priority, it.policy_version)).collect();
        // Run to the end even if the caller goes away: the index and Redis change together.
        let task = tokio::spawn(Self::insert_locked(h.clone(), sig, news, encoded, deadline));
        let keys = task
            .await
            .map_err(|e| Error::Internal(format!("replay insert: {e}")))??;
        metrics::counter!(names::REPLAY_INSERTS, &h.labels()).increment(n as u64);
        for it in &req.items {
            metrics::histogram!(names::REPLAY_PRIORITY, &h.labels()).record(it.priority);
        }
        Ok(InsertResponse { keys })
    }

    async fn insert_locked(
        h: Arc<TableHandle>,
        sig: String,
        items: Vec<(f64, u64)>,
        encoded: Vec<Bytes>,
        deadline: Instant,
    ) -> Result<Vec<u64>, Error> {
        let n = items.len();
        let mut st = h.admit("insert", n as u64, deadline).await?;
        let fixed = match &st.signature {
            Some(fixed) => fixed.clone(),
            None => {
                let fixed = match h.store.fix_signature(&sig).await {
                    Ok(f) => f,
                    Err(e) => {
                        h.release(st);
                        return Err(e);
                    }
                };
                st.signature = Some(fixed.clone());
                fixed
            }
        };
        if fixed != sig {
            h.release(st);
            return Err(Error::InvalidArgument(format!(
                "items: table {} of policy {} holds items of {fixed}, got {sig}",
                h.name, h.policy
            )));
        }
        let shard = st.next_shard;
        let first = st.next_key;
        let new: Vec<(NewItem, Bytes)> = items
            .iter()
            .zip(encoded)
            .enumerate()
            .map(|(i, (&(priority, version), payload))| {
                (
                    NewItem {
                        key: first + i as u64,
                        priority,
                        shard,
                        version,
                        bytes: payload.len() as u64,
                        times_sampled: 0,
                    },
                    payload,
                )
            })
            .collect();
        // Keys are spent even if the write fails: a key is never reused.
        st.next_key += n as u64;
        st.next_shard = (shard + 1) % h.store.shards();
        if let Err(e) = h.store.insert(shard, &new).await {
            h.release(st);
            return Err(e);
        }
        let keys: Vec<u64> = new.iter().map(|(i, _)| i.key).collect();
        let evicted = st.table.add(new.into_iter().map(|(i, _)| i).collect(), false);
        if !evicted.is_empty() {
            let mut labels = h.labels().to_vec();
            labels.push(("reason", "evicted".to_string()));
            metrics::counter!(names::REPLAY_EVICTIONS, &labels).increment(evicted.len() as u64);
            if let Err(e) = h.store.delete(&evicted).await {
                // The index has let them go; the next rebuild evicts them again.
                tracing::warn!(table = %h.name, error = %e, "could not delete evicted items; a rebuild will");
            }
        }
        h.release(st);
        Ok(keys)
    }

    pub async fn sample(&self, req: SampleRequest) -> Result<SampleResponse, Error> {
        let h = self.table(&req.policy, &req.table).await?;
        let n = req.batch_size as usize;
        let max = h.max_sample;
        if n == 0 || n > max {
            return Err(Error::InvalidArgument(format!(
                "batch_size: expected 1 to {max} (the batch limit and what the table's rate limiter can always let through at once), got {n}"
            )));
        }
        let deadline = Self::deadline(&h.cfg, req.timeout_s)?;
        let task = tokio::spawn({
            let h = h.clone();
            async move {
                let mut guard = h.admit("sample", n as u64, deadline).await?;
                let result = Self::draw(&h, &mut guard, n).await;
                h.release(guard);
                result
            }
        });
        let (items, size) = task
            .await
            .map_err(|e| Error::Internal(format!("replay sample: {e}")))??;
        metrics::counter!(names::REPLAY_SAMPLES, &h.labels()).increment(items.len() as u64);
        Ok(SampleResponse {
            items,
            table_size: size,
        })
    }

    /// Draws `n` items of the admitted table and reads their payloads. A shard whose writes
    /// fail has its draws taken back (the others' stand: their transactions are done); only
    /// when every shard fails is the sample UNAVAILABLE. Returns the draws and the table's size
    /// when they were drawn (N of the importance weights).
    async fn draw(h: &TableHandle, st: &mut State, n: usize) -> Result<(Vec<SampledItem>, u64), Error> {
        let State { table, rng, .. } = st;
        let size = table.len() as u64;
        let drawn = table.draw(n, rng);
        let writes: Vec<(u64, usize, bool)> = drawn.iter().map(|d| (d.key, d.shard, d.removed)).collect();
        let mut payloads = HashMap::new();
        let mut failed = Vec::new();
        let mut first_error = None;
        for (shard, result) in h.store.sample(&writes).await {
            match result {
                Ok(p) => payloads.extend(p),
                Err(e) => {
                    failed.push(shard);
                    first_error.get_or_insert(e);
                }
            }
        }
        if !failed.is_empty() {
            let undone: Vec<table::Drawn> = drawn.iter().filter(|d| failed.contains(&d.shard)).cloned().collect();
            table.undo(&undone);
        }
        let removed = drawn.iter().filter(|d| d.removed && !failed.contains(&d.shard)).count() as u64;
        if removed > 0 {
            let mut labels = h.labels().to_vec();
            labels.push(("reason", "max_times_sampled".to_string()));
            metrics::counter!(names::REPLAY_EVICTIONS, &labels).increment(removed);
        }
        let mut out = Vec::with_capacity(drawn.len());
        for d in drawn.iter().filter(|d| !failed.contains(&d.shard)) {
            match payloads.get(&d.key).cloned().flatten() {
                Some(p) => {
                    let item =
                        ReplayItem::decode(p).map_err(|e| Error::Internal(format!("replay item {}: {e}", d.key)))?;
                    out.push(SampledItem {
                        key: d.key,
                        probability: d.probability,
                        times_sampled: d.times_sampled,
                        item: Some(item),
                    });
                }
                None => {
                    // Redis no longer has it (it lost its data): the index and Redis let it go.
                    metrics::counter!(names::REPLAY_ITEMS_LOST).increment(1);
                    tracing::warn!(table = %h.name, key = d.key, "a sampled item is gone from redis; dropping it");
                    table.remove(d.key);
                    if let Err(e) = h.store.forget(d.key, d.shard).await {
                        tracing::warn!(table = %h.name, key = d.key, error = %e, "could not forget a lost item");
                    }
                }
            }
        }
        if out.is_empty() {
            return Err(first_error.unwrap_or_else(|| {
                Error::Unavailable(format!(
                    "replay table {}: redis no longer holds the sampled items (it lost its data?)",
                    h.name
                ))
            }));
        }
        Ok((out, size))
    }

    pub async fn update_priorities(&self, req: UpdatePrioritiesRequest) -> Result<UpdatePrioritiesResponse, Error> {
        let h = self.table(&req.policy, &req.table).await?;
        if req.keys.len() != req.priorities.len() {
            return Err(Error::InvalidArgument(format!(
                "priorities: expected one per key ({} keys), got {}",
                req.keys.len(),
                req.priorities.len()
            )));
        }
        if req.keys.len() > MAX_BATCH {
            return Err(Error::InvalidArgument(format!(
                "keys: expected at most {MAX_BATCH} per call, got {}",
                req.keys.len()
            )));
        }
        for (i, &p) in req.priorities.iter().enumerate() {
            check_priority(&format!("priorities[{i}]"), p, &h.cfg)?;
        }
        let task = tokio::spawn({
            let h = h.clone();
            async move {
                let mut st = h.state.lock().await;
                let held: Vec<(u64, usize, f64)> = req
                    .keys
                    .iter()
                    .zip(&req.priorities)
                    .filter_map(|(&k, &p)| st.table.get(k).map(|i| (k, i.shard, p)))
                    .collect();
                // Redis first: a failed write leaves the index as it was.
                h.store.set_priorities(&held).await?;
                let ups: Vec<(u64, f64)> = held.iter().map(|&(k, _, p)| (k, p)).collect();
                let updated = st.table.update_priorities(&ups).len() as u32;
                h.release(st);
                Ok::<_, Error>((updated, ups))
            }
        });
        let (updated, ups) = task
            .await
            .map_err(|e| Error::Internal(format!("replay update: {e}")))??;
        for &(_, p) in &ups {
            metrics::histogram!(names::REPLAY_PRIORITY, &h.labels()).record(p);
        }
        Ok(UpdatePrioritiesResponse { updated })
    }

    pub async fn table_info(&self, req: TableInfoRequest) -> Result<TableInfoResponse, Error> {
        let names: Vec<String> = if req.table.is_empty() {
            self.config.tables.iter().map(|t| t.name.clone()).collect()
        } else {
            vec![req.table.clone()]
        };
        let mut tables = Vec::new();
        for name in names {
            let h = self.table(&req.policy, &name).await?;
            let st = h.state.lock().await;
            let c = st.table.counts();
            let l = st.table.limiter;
            tables.push(TableInfo {
                table: h.name.clone(),
                policy: h.policy.clone(),
                size: c.size,
                max_size: h.cfg.max_size,
                bytes: st.table.bytes(),
                inserts: c.inserts,
                samples: c.samples,
                sampler: sampler_name(h.cfg.sampler).to_string(),
                max_times_sampled: h.cfg.max_times_sampled,
                samples_per_insert: l.samples_per_insert,
                min_size_to_sample: l.min_size_to_sample,
                min_diff: l.min_diff,
                max_diff: l.max_diff,
                can_insert: l.can_insert(&c, 1),
                can_sample: l.can_sample(&c, 1),
                shards: h.store.shards() as u32,
            });
        }
        Ok(TableInfoResponse { tables })
    }
}

#[tonic::async_trait]
impl Replay for ReplayService {
    async fn insert(&self, request: Request<InsertRequest>) -> Result<Response<InsertResponse>, Status> {
        Ok(Response::new(ReplayService::insert(self, request.into_inner()).await?))
    }

    async fn sample(&self, request: Request<SampleRequest>) -> Result<Response<SampleResponse>, Status> {
        Ok(Response::new(ReplayService::sample(self, request.into_inner()).await?))
    }

    async fn update_priorities(
        &self,
        request: Request<UpdatePrioritiesRequest>,
    ) -> Result<Response<UpdatePrioritiesResponse>, Status> {
        Ok(Response::new(
            ReplayService::update_priorities(self, request.into_inner()).await?,
        ))
    }

    async fn table_info(&self, request: Request<TableInfoRequest>) -> Result<Response<TableInfoResponse>, Status> {
        Ok(Response::new(
            ReplayService::table_info(self, request.into_inner()).await?,
        ))
    }
}
