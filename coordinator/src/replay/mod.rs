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

use std::collections::{BTreeMap, BTreeSet, HashMap};
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

use rate_limiter::{Counts, RateLimiter};
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

/// A table's item signature: each tensor's name, dtype and shape, in order (an encoded
/// rollout's length excepted).
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
        // An encoded rollout is one u8 dimension whose length varies with its contents (varints,
        // truncated episodes): its length is not part of the signature. The learner checks what
        // it holds against the run's spaces when it is sampled.
        let shape = if nt.name == troupe::replay::ROLLOUT && dtype == DType::DtypeU8 && t.shape.len() == 1 {
            serde_json::json!([null])
        } else {
            serde_json::json!(t.shape)
        };
        parts.push(serde_json::json!({"name": nt.name, "dtype": dtype_name(dtype), "shape": shape}));
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

/// One table of one policy: its index (under an async lock, held only while the index
/// changes, never across Redis calls) and the notification its waiters wait on.
///
/// Redis calls run with the lock released, so requests overlap their round trips:
/// - an insert reserves its keys (the limiter counts them on the insert side), writes its
///   items, then commits them to the index; inserts commit in key order, so eviction stays
///   FIFO when their writes finish out of order;
/// - a sample draws from the index (counted at once), reads the payloads and writes the sample
///   counts, then takes back the draws of a shard that failed;
/// - an item that leaves the index (evicted, or drawn to its `max_times_sampled`) while a draw
///   still reads it keeps its payload until the last such draw is done.
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
    /// Items of inserts admitted but not yet in the index (writing, or written and waiting).
    uncommitted: u64,
    /// The first key of each insert whose Redis write is under way.
    writing: BTreeSet<u64>,
    /// Inserts written to Redis that wait for an earlier one before they join the index.
    written: BTreeMap<u64, Vec<NewItem>>,
    /// Draws whose Redis reads are under way, per item.
    reading: HashMap<u64, u32>,
    /// Items out of the index whose Redis delete waits for the draws still reading them.
    doomed: HashMap<u64, usize>,
}

impl State {
    /// The counters the insert side is admitted on: uncommitted inserts count as done.
    fn insert_counts(&self) -> Counts {
        let mut c = self.table.counts();
        c.inserts += self.uncommitted;
        c.size += self.uncommitted;
        c
    }

    /// Of items that left the index, those to delete from Redis now; the rest wait for the
    /// draws reading them ([`Self::done_reading`]).
    fn to_delete(&mut self, gone: Vec<(u64, usize)>) -> Vec<(u64, usize)> {
        let mut now = Vec::with_capacity(gone.len());
        for (key, shard) in gone {
            if self.reading.contains_key(&key) {
                self.doomed.insert(key, shard);
            } else {
                now.push((key, shard));
            }
        }
        now
    }

    /// A draw of `keys` is done reading: the doomed items nobody reads any more, to delete.
    fn done_reading(&mut self, keys: impl Iterator<Item = u64>) -> Vec<(u64, usize)> {
        let mut now = Vec::new();
        for key in keys {
            let Some(n) = self.reading.get_mut(&key) else { continue };
            *n -= 1;
            if *n == 0 {
                self.reading.remove(&key);
                if let Some(shard) = self.doomed.remove(&key) {
                    now.push((key, shard));
                }
            }
        }
        now
    }

    /// Moves written inserts into the index in key order, up to the first one still writing.
    /// Returns the items they evicted: (to delete now, how many).
    fn commit(&mut self) -> (Vec<(u64, usize)>, u64) {
        let mut evicted = Vec::new();
        while let Some(entry) = self.written.first_entry() {
            if self.writing.first().is_some_and(|&w| w < *entry.key()) {
                break;
            }
            let items = entry.remove();
            self.uncommitted -= items.len() as u64;
            evicted.extend(self.table.add(items, false));
        }
        let n = evicted.len() as u64;
        (self.to_delete(evicted), n)
    }
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
                let Ok(st) = tokio::time::timeout_at(deadline.into(), self.state.lock()).await else {
                    return Err(self.timed_out(side, n, started, None, &labels));
                };
                let ok = match side {
                    "insert" => st.table.limiter.can_insert(&st.insert_counts(), n),
                    _ => st.table.limiter.can_sample(&st.table.counts(), n),
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
            None => "the table's lock was never free".to_string(),
        };
        Error::DeadlineExceeded(format!(
            "replay table {} of policy {}: the rate limiter held this {side} of {n} back for {:.1} s ({state})",
            self.name,
            self.policy,
            started.elapsed().as_secs_f64()
        ))
    }

    /// Counts `n` items that left the table for `reason`.
    fn count_removed(&self, reason: &'static str, n: u64) {
        if n > 0 {
            let mut labels = self.labels().to_vec();
            labels.push(("reason", reason.to_string()));
            metrics::counter!(names::REPLAY_EVICTIONS, &labels).increment(n);
        }
    }

    /// Deletes items that left the index from Redis (after the lock is released). A delete that
    /// fails leaves them for the next rebuild, which drops them again.
    async fn delete(&self, keys: Vec<(u64, usize)>) {
        if keys.is_empty() {
            return;
        }
        if let Err(e) = self.store.delete(&keys).await {
            tracing::warn!(table = %self.name, items = keys.len(), error = %e, "could not delete items that left the table; a rebuild will");
        }
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
        // An item drawn to its limit while another draw still read it was counted, not yet
        // deleted, when the process stopped: it goes now.
        let (items, spent): (Vec<NewItem>, Vec<NewItem>) = items
            .into_iter()
            .partition(|i| cfg.max_times_sampled == 0 || i.times_sampled < cfg.max_times_sampled);
        let mut evicted = table.add(items, true);
        evicted.extend(spent.iter().map(|i| (i.key, i.shard)));
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
                uncommitted: 0,
                writing: BTreeSet::new(),
                written: BTreeMap::new(),
                reading: HashMap::new(),
                doomed: HashMap::new(),
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
        st.uncommitted += n as u64;
        st.writing.insert(first);
        drop(st);
        let written = h.store.insert(shard, &new).await;
        let mut st = h.state.lock().await;
        st.writing.remove(&first);
        let keys: Vec<u64> = new.iter().map(|(i, _)| i.key).collect();
        match written {
            Ok(()) => {
                st.written.insert(first, new.into_iter().map(|(i, _)| i).collect());
            }
            Err(_) => st.uncommitted -= n as u64,
        }
        // A failed write may be the one later inserts waited for.
        let (deletes, evicted) = st.commit();
        h.release(st);
        h.count_removed("evicted", evicted);
        h.delete(deletes).await;
        written.map(|()| keys)
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
            async move { Self::draw(&h, n, deadline).await }
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

    /// Draws `n` items once the limiter lets them through, then reads their payloads with the
    /// lock released. A shard whose writes fail has its draws taken back (the others' stand:
    /// their transactions are done); only when every shard fails is the sample UNAVAILABLE.
    /// Returns the draws and the table's size when they were drawn (N of the importance
    /// weights).
    async fn draw(h: &TableHandle, n: usize, deadline: Instant) -> Result<(Vec<SampledItem>, u64), Error> {
        let mut guard = h.admit("sample", n as u64, deadline).await?;
        let st = &mut *guard;
        let size = st.table.len() as u64;
        let drawn = st.table.draw(n, &mut st.rng);
        let mut own: HashMap<u64, u32> = HashMap::new();
        for d in &drawn {
            *own.entry(d.key).or_default() += 1;
            *st.reading.entry(d.key).or_default() += 1;
        }
        // An item this draw takes to its limit is deleted with the draw's writes, unless another
        // draw still reads it: then it waits for that one, and this draw only counts its sample.
        let writes: Vec<(u64, usize, bool)> = drawn
            .iter()
            .map(|d| {
                let alone = st.reading[&d.key] == own[&d.key];
                if d.removed && !alone {
                    st.doomed.insert(d.key, d.shard);
                }
                (d.key, d.shard, d.removed && alone)
            })
            .collect();
        // The draws' samples count at once: inserts waiting on them may go ahead.
        h.release(guard);

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

        let mut st = h.state.lock().await;
        let mut deletes = Vec::new();
        if !failed.is_empty() {
            let undone: Vec<table::Drawn> = drawn.iter().filter(|d| failed.contains(&d.shard)).cloned().collect();
            for d in undone.iter().filter(|d| d.removed) {
                st.doomed.remove(&d.key);
            }
            let evicted = st.table.undo(&undone);
            deletes = st.to_delete(evicted);
        }
        deletes.extend(st.done_reading(drawn.iter().map(|d| d.key)));
        let removed = drawn.iter().filter(|d| d.removed && !failed.contains(&d.shard)).count() as u64;
        let mut out = Vec::with_capacity(drawn.len());
        let mut lost = Vec::new();
        for d in drawn.iter().filter(|d| !failed.contains(&d.shard)) {
            match payloads.get(&d.key).cloned().flatten() {
                Some(p) => out.push((d, p)),
                None => {
                    // Redis no longer has it (it lost its data): the index and Redis let it go.
                    if lost.contains(&d.key) {
                        continue;
                    }
                    lost.push(d.key);
                    st.table.remove(d.key);
                    st.doomed.remove(&d.key);
                    metrics::counter!(names::REPLAY_ITEMS_LOST).increment(1);
                    tracing::warn!(table = %h.name, key = d.key, "a sampled item is gone from redis; dropping it");
                    deletes.push((d.key, d.shard));
                }
            }
        }
        h.release(st);
        h.count_removed("max_times_sampled", removed);
        h.delete(deletes).await;
        let mut items = Vec::with_capacity(out.len());
        for (d, p) in out {
            let item = ReplayItem::decode(p).map_err(|e| Error::Internal(format!("replay item {}: {e}", d.key)))?;
            items.push(SampledItem {
                key: d.key,
                probability: d.probability,
                times_sampled: d.times_sampled,
                item: Some(item),
            });
        }
        if items.is_empty() {
            return Err(first_error.unwrap_or_else(|| {
                Error::Unavailable(format!(
                    "replay table {}: redis no longer holds the sampled items (it lost its data?)",
                    h.name
                ))
            }));
        }
        Ok((items, size))
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
