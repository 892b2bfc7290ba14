//! Where a replay table's items live: Redis, one or several instances (shards). Each shard
//! holds whole items, so every write is one MULTI/EXEC on one instance and nothing needs a
//! transaction across instances.
//!
//! Keys of table T of policy P, under `troupe:{run}:replay:{P}:{T}:` on every shard s:
//! - `s{s}:items`: sorted set of the shard's item keys (score = key: insertion order);
//! - `s{s}:item:{key}`: hash `payload` (the encoded `ReplayItem`), `priority`, `times_sampled`,
//!   `version`;
//! - `s{s}:counts`: hash `inserts`, `samples`: the rate limiter's counters, the table's being
//!   the sum over shards (each shard counts what touched it);
//! - `signature` (shard 0): the table's item signature, fixed by the first insert.
//!
//! An insert's items all go to one shard (round robin over batches), in one transaction with
//! the shard's insert count, so a batch is stored whole or not at all. A sample's payload reads,
//! sample counts and the deletions it causes (`max_times_sampled`) go in one transaction per
//! shard. Evictions are deleted after the insert that caused them, or once the draws still
//! reading them are done; one that a failure left behind comes back at the next rebuild and is
//! evicted again there. An item drawn to its limit while another draw reads it keeps its hash
//! (with `times_sampled` at the limit) until that draw is done; a rebuild drops such items.

use std::collections::HashMap;

use bytes::Bytes;
use redis::aio::ConnectionManager;
use troupe::telemetry::names;
use troupe::Error;

use super::table::NewItem;

/// Sets a hash's `last_key` to ARGV[1] if that is above what it holds.
const RAISE_LAST_KEY: &str = "local cur = tonumber(redis.call('HGET', KEYS[1], 'last_key') or '0') \
     if tonumber(ARGV[1]) > cur then redis.call('HSET', KEYS[1], 'last_key', ARGV[1]) end return 0";

fn redis_err(shard: usize, e: redis::RedisError) -> Error {
    metrics::counter!(names::REPLAY_REDIS_ERRORS).increment(1);
    Error::Unavailable(format!("replay redis shard {shard}: {e}"))
}

/// The Redis shards of the replay service.
#[derive(Clone)]
pub struct Shards {
    conns: Vec<ConnectionManager>,
    run: String,
}

impl Shards {
    /// Connects to every shard, retrying each for up to `patience`.
    pub async fn connect(urls: &[String], run: &str, patience: std::time::Duration) -> anyhow::Result<Shards> {
        anyhow::ensure!(!urls.is_empty(), "--replay-redis-url: expected 1 or more Redis URLs");
        let mut conns = Vec::new();
        for url in urls {
            let conn = crate::store::connect_redis(url, patience)
                .await
                .map_err(|e| anyhow::anyhow!("--replay-redis-url: {e}"))?;
            conns.push(conn);
        }
        Ok(Shards {
            conns,
            run: run.to_string(),
        })
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The storage of one table of one policy.
    pub fn table(&self, policy: &str, table: &str) -> TableStore {
        TableStore {
            shards: self.clone(),
            prefix: format!("troupe:{}:replay:{policy}:{table}", self.run),
        }
    }
}

/// What a rebuild reads of a table.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    /// Its items, in key (insertion) order, without payloads.
    pub items: Vec<NewItem>,
    /// The rate limiter's counters, summed over the shards.
    pub inserts: u64,
    pub samples: u64,
    /// The newest key ever given (0: none).
    pub last_key: u64,
}

#[derive(Clone)]
pub struct TableStore {
    shards: Shards,
    prefix: String,
}

impl TableStore {
    fn conn(&self, shard: usize) -> ConnectionManager {
        self.shards.conns[shard].clone()
    }

    fn items_key(&self, shard: usize) -> String {
        format!("{}:s{shard}:items", self.prefix)
    }

    fn item_key(&self, shard: usize, key: u64) -> String {
        format!("{}:s{shard}:item:{key}", self.prefix)
    }

    fn counts_key(&self, shard: usize) -> String {
        format!("{}:s{shard}:counts", self.prefix)
    }

    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// The table's signature, if one was fixed.
    pub async fn signature(&self) -> Result<Option<String>, Error> {
        let mut c = self.conn(0);
        redis::cmd("GET")
            .arg(format!("{}:signature", self.prefix))
            .query_async(&mut c)
            .await
            .map_err(|e| redis_err(0, e))
    }

    /// Fixes the signature unless one is; returns the one in force.
    pub async fn fix_signature(&self, sig: &str) -> Result<String, Error> {
        let mut c = self.conn(0);
        let key = format!("{}:signature", self.prefix);
        let (_, now): (bool, String) = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(&key)
            .arg(sig)
            .arg("NX")
            .cmd("GET")
            .arg(&key)
            .query_async(&mut c)
            .await
            .map_err(|e| redis_err(0, e))?;
        Ok(now)
    }

    /// Stores items (with their payloads) on `shard`, in one transaction with its insert count.
    pub async fn insert(&self, shard: usize, items: &[(NewItem, Bytes)]) -> Result<(), Error> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (it, payload) in items {
            pipe.cmd("HSET")
                .arg(self.item_key(shard, it.key))
                .arg("payload")
                .arg(payload.as_ref())
                .arg("priority")
                .arg(it.priority)
                .arg("times_sampled")
                .arg(it.times_sampled)
                .arg("version")
                .arg(it.version)
                .ignore();
            pipe.cmd("ZADD")
                .arg(self.items_key(shard))
                .arg(it.key)
                .arg(it.key)
                .ignore();
        }
        pipe.cmd("HINCRBY")
            .arg(self.counts_key(shard))
            .arg("inserts")
            .arg(items.len())
            .ignore();
        // The newest key ever given, so a restart never hands out a key again (the newest
        // items may be gone by then: sampled to their limit). Only ever raised: inserts run
        // at once, and a later batch's transaction may land first.
        if let Some(last) = items.iter().map(|(i, _)| i.key).max() {
            pipe.cmd("EVAL")
                .arg(RAISE_LAST_KEY)
                .arg(1)
                .arg(self.counts_key(shard))
                .arg(last)
                .ignore();
        }
        let mut c = self.conn(shard);
        pipe.query_async::<()>(&mut c).await.map_err(|e| redis_err(shard, e))
    }

    /// Deletes items (evicted or sampled to their limit), per shard.
    pub async fn delete(&self, keys: &[(u64, usize)]) -> Result<(), Error> {
        for (shard, keys) in by_shard(keys.iter().map(|&(k, s)| (s, k))) {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for k in &keys {
                pipe.cmd("DEL").arg(self.item_key(shard, *k)).ignore();
                pipe.cmd("ZREM").arg(self.items_key(shard)).arg(*k).ignore();
            }
            let mut c = self.conn(shard);
            pipe.query_async::<()>(&mut c).await.map_err(|e| redis_err(shard, e))?;
        }
        Ok(())
    }

    /// One sample's writes on every shard it touched, in one transaction per shard: each
    /// draw's payload read and sample count, the shard's sample count, and the deletion of
    /// items drawn to their limit. Returns the payloads by key (`None`: the item is gone from
    /// Redis, e.g. a Redis that lost its data).
    ///
    /// The shards' transactions run at once, and each stands alone: a shard that fails leaves
    /// its draws undone there (its entry is the error), while the others' are done.
    pub async fn sample(
        &self,
        draws: &[(u64, usize, bool)],
    ) -> Vec<(usize, Result<HashMap<u64, Option<Bytes>>, Error>)> {
        let mut shards = tokio::task::JoinSet::new();
        for (shard, keys) in by_shard(draws.iter().map(|&(k, s, removed)| (s, (k, removed)))) {
            let store = self.clone();
            shards.spawn(async move { (shard, store.sample_shard(shard, &keys).await) });
        }
        let mut results = Vec::new();
        while let Some(done) = shards.join_next().await {
            // A shard's task only ends early by panicking: that panic is this caller's.
            results.push(done.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())));
        }
        results
    }

    async fn sample_shard(&self, shard: usize, keys: &[(u64, bool)]) -> Result<HashMap<u64, Option<Bytes>>, Error> {
        let mut out = HashMap::new();
        {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for &(k, _) in keys {
                pipe.cmd("HGET").arg(self.item_key(shard, k)).arg("payload");
            }
            for &(k, removed) in keys {
                if removed {
                    pipe.cmd("DEL").arg(self.item_key(shard, k)).ignore();
                    pipe.cmd("ZREM").arg(self.items_key(shard)).arg(k).ignore();
                } else {
                    pipe.cmd("HINCRBY")
                        .arg(self.item_key(shard, k))
                        .arg("times_sampled")
                        .arg(1)
                        .ignore();
                }
            }
            pipe.cmd("HINCRBY")
                .arg(self.counts_key(shard))
                .arg("samples")
                .arg(keys.len())
                .ignore();
            let mut c = self.conn(shard);
            let payloads: Vec<Option<Vec<u8>>> = pipe.query_async(&mut c).await.map_err(|e| redis_err(shard, e))?;
            for (&(k, _), p) in keys.iter().zip(payloads) {
                // A key drawn twice in one batch reads the same payload twice.
                out.entry(k).or_insert(p.map(Bytes::from));
            }
        }
        Ok(out)
    }

    /// New priorities, per shard. An item deleted since keeps no hash: HSET would recreate
    /// it, so only existing items are written (a script checks EXISTS first).
    pub async fn set_priorities(&self, updates: &[(u64, usize, f64)]) -> Result<(), Error> {
        static SCRIPT: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
            redis::Script::new(
                "for i, k in ipairs(KEYS) do if redis.call('EXISTS', k) == 1 then redis.call('HSET', k, 'priority', ARGV[i]) end end return 0",
            )
        });
        for (shard, ups) in by_shard(updates.iter().map(|&(k, s, p)| (s, (k, p)))) {
            let mut inv = SCRIPT.prepare_invoke();
            for (k, p) in &ups {
                inv.key(self.item_key(shard, *k)).arg(*p);
            }
            let mut c = self.conn(shard);
            inv.invoke_async::<i64>(&mut c).await.map_err(|e| redis_err(shard, e))?;
        }
        Ok(())
    }

    /// Everything a rebuild needs: every shard's items (without payloads: their lengths) and
    /// the summed counters.
    pub async fn load(&self) -> Result<Loaded, Error> {
        let mut items = Vec::new();
        let (mut inserts, mut samples, mut last_key) = (0u64, 0u64, 0u64);
        for shard in 0..self.shards() {
            let mut c = self.conn(shard);
            let keys: Vec<u64> = redis::cmd("ZRANGE")
                .arg(self.items_key(shard))
                .arg(0)
                .arg(-1)
                .query_async(&mut c)
                .await
                .map_err(|e| redis_err(shard, e))?;
            let counts: HashMap<String, u64> = redis::cmd("HGETALL")
                .arg(self.counts_key(shard))
                .query_async(&mut c)
                .await
                .map_err(|e| redis_err(shard, e))?;
            inserts += counts.get("inserts").copied().unwrap_or(0);
            samples += counts.get("samples").copied().unwrap_or(0);
            last_key = last_key.max(counts.get("last_key").copied().unwrap_or(0));
            for chunk in keys.chunks(512) {
                let mut pipe = redis::pipe();
                for k in chunk {
                    pipe.cmd("HMGET")
                        .arg(self.item_key(shard, *k))
                        .arg("priority")
                        .arg("times_sampled")
                        .arg("version");
                    pipe.cmd("HSTRLEN").arg(self.item_key(shard, *k)).arg("payload");
                }
                let rows: Vec<redis::Value> = pipe.query_async(&mut c).await.map_err(|e| redis_err(shard, e))?;
                for (k, pair) in chunk.iter().zip(rows.chunks(2)) {
                    let parse =
                        |e: redis::ParsingError| Error::Internal(format!("replay item {k} on shard {shard}: {e}"));
                    let fields: (Option<f64>, Option<u64>, Option<u64>) =
                        redis::from_redis_value(pair[0].clone()).map_err(parse)?;
                    let len: u64 = redis::from_redis_value(pair[1].clone()).map_err(parse)?;
                    let (Some(priority), Some(times_sampled), Some(version)) = fields else {
                        // Listed but its hash is gone: a deletion cut short.
                        continue;
                    };
                    items.push(NewItem {
                        key: *k,
                        priority,
                        shard,
                        version,
                        bytes: len,
                        times_sampled,
                    });
                }
            }
        }
        items.sort_by_key(|i| i.key);
        let last_key = last_key.max(items.last().map_or(0, |i| i.key));
        Ok(Loaded {
            items,
            inserts,
            samples,
            last_key,
        })
    }
}

/// Groups `(shard, x)` pairs by shard, keeping their order within a shard.
fn by_shard<T>(pairs: impl Iterator<Item = (usize, T)>) -> Vec<(usize, Vec<T>)> {
    let mut out: Vec<(usize, Vec<T>)> = Vec::new();
    for (s, x) in pairs {
        match out.iter_mut().find(|(t, _)| *t == s) {
            Some((_, v)) => v.push(x),
            None => out.push((s, vec![x])),
        }
    }
    out
}
