//! Policy versions, the learner's address and run totals, kept in Redis so a restarted
//! coordinator recovers them.
//!
//! Keys, under `troupe:{run}:`:
//! - `actor_seq`, `frames`, `episodes`, `returns` (the last 100 episode returns, the team's);
//! - `actor:{id}`: a hash (seq, frames, episodes): the last heartbeat applied and its totals;
//! - `env_spec`: the env's spaces as JSON, for Python-hosted envs (the first actor's report);
//! - `marker`: a value the coordinator set at start-up; gone means Redis lost its data;
//!
//! and for each policy, under `troupe:{run}:policy:{name}:` ([`PolicyStore`]):
//! - `v:{v}:blob`: the safetensors weights of version v;
//! - `v:{v}:meta`: a hash (version, learner_step, frames, created_unix_ms, parent_version,
//!   size_bytes);
//! - `versions`: sorted set of stored versions; `pinned`: set of pinned versions;
//! - `learner_address`, `learner_epoch` (the newest lease epoch), `learner_id` (its holder);
//! - `returns`: the last 100 returns of the policy's agents (multi-policy runs).
//!
//! Writes of one version go in one MULTI/EXEC, so a version is stored whole or not at all. A
//! heartbeat's counts are applied by one script, once per (actor, seq).

use std::collections::HashMap;
use std::time::Duration;

use proto::v1::PolicyMeta;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use troupe::telemetry::names;
use troupe::Error;

/// Episodes the mean return is taken over.
pub const RETURN_WINDOW: usize = 100;

fn redis_err(e: redis::RedisError) -> Error {
    metrics::counter!(names::COORD_REDIS_ERRORS).increment(1);
    metrics::gauge!(names::COORD_REDIS_UP).set(0.0);
    Error::Unavailable(format!("redis: {e}"))
}

/// A connection manager to the Redis at `url` (it reconnects by itself after), retrying with
/// backoff for up to `patience` at start-up.
pub async fn connect_redis(url: &str, patience: Duration) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("redis URL {url}: {e}"))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(3);
    let deadline = tokio::time::Instant::now() + patience;
    let mut backoff = troupe::process::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
            Ok(conn) => return Ok(conn),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(url, error = %e, "redis not reachable yet, retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => anyhow::bail!("redis at {url}: {e}"),
        }
    }
}

#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    prefix: String,
}

/// A version's metadata from its Redis hash; `None` if the hash is gone (dropped by retention).
fn meta_from_hash(h: &HashMap<String, u64>, pinned: bool) -> Option<PolicyMeta> {
    if h.is_empty() {
        return None;
    }
    let get = |k: &str| h.get(k).copied().unwrap_or(0);
    Some(PolicyMeta {
        version: get("version"),
        learner_step: get("learner_step"),
        frames: get("frames"),
        created_unix_ms: get("created_unix_ms"),
        parent_version: get("parent_version"),
        size_bytes: get("size_bytes"),
        pinned,
        policy: String::new(),
    })
}

/// What became of a heartbeat's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Applied; the actor's totals and the run's after it.
    Yes {
        frames: u64,
        episodes: u64,
        run_frames: u64,
        run_episodes: u64,
    },
    /// This (actor, seq) was applied before: a retry, not counted again.
    Duplicate,
    /// No actor was ever registered under this id.
    UnknownActor,
}

/// Applies a heartbeat once: KEYS = actor_seq, actor:{id}, frames, episodes, then the return
/// lists (the team's, then each policy's); ARGV = id, seq, frames, window, episodes, L (the
/// number of lists), L counts, then each list's values in turn (at most `window` each, the
/// newest). Checks come before any write, so a refused report changes nothing.
const HEARTBEAT_SCRIPT: &str = r#"
local issued = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > issued then return {-1, 0, 0, 0, 0} end
local last = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
if tonumber(ARGV[2]) <= last then return {0, 0, 0, 0, 0} end
local n = tonumber(ARGV[5])
redis.call('HSET', KEYS[2], 'seq', ARGV[2])
local f = redis.call('HINCRBY', KEYS[2], 'frames', ARGV[3])
local e = redis.call('HINCRBY', KEYS[2], 'episodes', n)
local rf = redis.call('INCRBY', KEYS[3], ARGV[3])
local re = redis.call('INCRBY', KEYS[4], n)
local lists = tonumber(ARGV[6])
local pos = 7 + lists
for i = 0, lists - 1 do
  local c = tonumber(ARGV[7 + i])
  if c > 0 then
    redis.call('RPUSH', KEYS[5 + i], unpack(ARGV, pos, pos + c - 1))
    redis.call('LTRIM', KEYS[5 + i], -tonumber(ARGV[4]), -1)
  end
  pos = pos + c
end
return {1, f, e, rf, re}
"#;

/// The scripts, built once (a `Script` hashes its source).
static HEARTBEAT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(HEARTBEAT_SCRIPT));
static ACTOR_RESEED: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(ACTOR_RESEED_SCRIPT));
static RAISE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| redis::Script::new(RAISE_SCRIPT));

/// Writes an actor's totals back unless Redis has them: KEYS = actor:{id}; ARGV = seq, frames,
/// episodes.
const ACTOR_RESEED_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'frames', ARGV[2], 'episodes', ARGV[3])
end
return 1
"#;

/// Raises each key to at least its value: KEYS = the keys, ARGV = the values.
const RAISE_SCRIPT: &str = r#"
for i, k in ipairs(KEYS) do
  local v = tonumber(redis.call('GET', k) or '0')
  if v < tonumber(ARGV[i]) then redis.call('SET', k, ARGV[i]) end
end
return 1
"#;

/// Totals recovered at start-up.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub frames: u64,
    pub episodes: u64,
    /// The team's last returns.
    pub returns: Vec<f32>,
}

/// One policy's keys ([`Store::policy`]).
#[derive(Clone)]
pub struct PolicyStore {
    conn: ConnectionManager,
    prefix: String,
    name: String,
}

impl Store {
    /// Connects, retrying for up to `patience` (Redis may start after us).
    pub async fn connect(url: &str, run: &str, patience: Duration) -> anyhow::Result<Store> {
        let conn = connect_redis(url, patience).await?;
        metrics::gauge!(names::COORD_REDIS_UP).set(1.0);
        metrics::counter!(names::COORD_REDIS_ERRORS).absolute(0);
        Ok(Store {
            conn,
            prefix: format!("troupe:{run}:"),
        })
    }

    /// A round trip to Redis (`PING`).
    pub async fn ping(&self) -> Result<(), Error> {
        let mut c = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut c).await.map_err(redis_err)?;
        Ok(())
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    /// The keys of policy `name`.
    pub fn policy(&self, name: &str) -> PolicyStore {
        PolicyStore {
            conn: self.conn.clone(),
            prefix: format!("{}policy:{name}:", self.prefix),
            name: name.to_string(),
        }
    }

    /// The highest actor id issued (0 if none).
    pub async fn actor_seq(&self) -> Result<u64, Error> {
        let mut c = self.conn.clone();
        let v: Option<u64> = c.get(self.key("actor_seq")).await.map_err(redis_err)?;
        Ok(v.unwrap_or(0))
    }

    pub async fn next_actor_id(&self) -> Result<u64, Error> {
        let mut c = self.conn.clone();
        c.incr(self.key("actor_seq"), 1u64).await.map_err(redis_err)
    }

    /// Stores the run's env spec (JSON) unless one is stored; returns the stored one.
    pub async fn adopt_env_spec(&self, json: &str) -> Result<String, Error> {
        let mut c = self.conn.clone();
        let key = self.key("env_spec");
        let _: bool = c.set_nx(&key, json).await.map_err(redis_err)?;
        let stored: Option<String> = c.get(&key).await.map_err(redis_err)?;
        Ok(stored.unwrap_or_else(|| json.to_string()))
    }

    pub async fn env_spec(&self) -> Result<Option<String>, Error> {
        let mut c = self.conn.clone();
        c.get(self.key("env_spec")).await.map_err(redis_err)
    }

    /// Applies an actor's report to its totals and the run's, once per (actor, seq), in one
    /// script: a retried heartbeat is not counted twice, and an id never issued counts nothing.
    /// Of `returns` (the team's, each an episode), only the newest [`RETURN_WINDOW`] are kept
    /// (the mean's window); all count. `policy_returns` are each policy's returns, by the key of
    /// its list ([`PolicyStore::returns_key`]).
    pub async fn add_progress(
        &self,
        actor_id: u64,
        seq: u64,
        frames: u64,
        returns: &[f32],
        policy_returns: &[(String, Vec<f32>)],
    ) -> Result<Applied, Error> {
        let mut c = self.conn.clone();
        let mut inv = HEARTBEAT.prepare_invoke();
        inv.key(self.key("actor_seq"))
            .key(self.key(&format!("actor:{actor_id}")))
            .key(self.key("frames"))
            .key(self.key("episodes"))
            .key(self.key("returns"));
        for (key, _) in policy_returns {
            inv.key(key);
        }
        inv.arg(actor_id)
            .arg(seq)
            .arg(frames)
            .arg(RETURN_WINDOW)
            .arg(returns.len())
            .arg(1 + policy_returns.len());
        let newest = |r: &[f32]| r[r.len().saturating_sub(RETURN_WINDOW)..].to_vec();
        let lists: Vec<Vec<f32>> = std::iter::once(newest(returns))
            .chain(policy_returns.iter().map(|(_, r)| newest(r)))
            .collect();
        for l in &lists {
            inv.arg(l.len());
        }
        for l in &lists {
            for r in l {
                inv.arg(*r);
            }
        }
        let (code, f, e, rf, re): (i64, u64, u64, u64, u64) = inv.invoke_async(&mut c).await.map_err(redis_err)?;
        Ok(match code {
            1 => Applied::Yes {
                frames: f,
                episodes: e,
                run_frames: rf,
                run_episodes: re,
            },
            0 => Applied::Duplicate,
            _ => Applied::UnknownActor,
        })
    }

    /// Writes back an actor's totals and last applied report number, unless Redis has them.
    pub async fn reseed_actor(&self, actor_id: u64, seq: u64, frames: u64, episodes: u64) -> Result<(), Error> {
        let mut c = self.conn.clone();
        ACTOR_RESEED
            .key(self.key(&format!("actor:{actor_id}")))
            .arg(seq)
            .arg(frames)
            .arg(episodes)
            .invoke_async::<i64>(&mut c)
            .await
            .map_err(redis_err)?;
        Ok(())
    }

    /// Sets the marker whose absence later means Redis lost its data.
    pub async fn set_marker(&self, value: &str) -> Result<(), Error> {
        let mut c = self.conn.clone();
        c.set(self.key("marker"), value).await.map_err(redis_err)
    }

    pub async fn marker(&self) -> Result<Option<String>, Error> {
        let mut c = self.conn.clone();
        c.get(self.key("marker")).await.map_err(redis_err)
    }

    /// Raises the counters (actor ids, frames, episodes) to at least what the coordinator
    /// knows, after Redis lost data: ids must never be issued twice (epochs: see
    /// [`PolicyStore::raise_epoch`]).
    pub async fn raise_counters(&self, actor_seq: u64, frames: u64, episodes: u64) -> Result<(), Error> {
        let mut c = self.conn.clone();
        let mut inv = RAISE.prepare_invoke();
        for (k, v) in [("actor_seq", actor_seq), ("frames", frames), ("episodes", episodes)] {
            inv.key(self.key(k)).arg(v);
        }
        inv.invoke_async::<i64>(&mut c).await.map_err(redis_err)?;
        Ok(())
    }

    pub async fn totals(&self) -> Result<Totals, Error> {
        let mut c = self.conn.clone();
        let (frames, episodes, returns): (Option<u64>, Option<u64>, Vec<f32>) = redis::pipe()
            .get(self.key("frames"))
            .get(self.key("episodes"))
            .lrange(self.key("returns"), 0, -1)
            .query_async(&mut c)
            .await
            .map_err(redis_err)?;
        Ok(Totals {
            frames: frames.unwrap_or(0),
            episodes: episodes.unwrap_or(0),
            returns,
        })
    }
}

impl PolicyStore {
    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    fn named(&self, meta: PolicyMeta) -> PolicyMeta {
        PolicyMeta {
            policy: self.name.clone(),
            ..meta
        }
    }

    /// The key of this policy's list of recent returns.
    pub fn returns_key(&self) -> String {
        self.key("returns")
    }

    fn blob_key(&self, v: u64) -> String {
        self.key(&format!("v:{v}:blob"))
    }

    fn meta_key(&self, v: u64) -> String {
        self.key(&format!("v:{v}:meta"))
    }

    pub async fn versions(&self) -> Result<Vec<u64>, Error> {
        let mut c = self.conn.clone();
        c.zrange(self.key("versions"), 0, -1).await.map_err(redis_err)
    }

    pub async fn pinned(&self) -> Result<Vec<u64>, Error> {
        let mut c = self.conn.clone();
        c.smembers(self.key("pinned")).await.map_err(redis_err)
    }

    pub async fn meta(&self, version: u64) -> Result<Option<PolicyMeta>, Error> {
        let mut c = self.conn.clone();
        let (h, pinned): (HashMap<String, u64>, bool) = redis::pipe()
            .hgetall(self.meta_key(version))
            .sismember(self.key("pinned"), version)
            .query_async(&mut c)
            .await
            .map_err(redis_err)?;
        Ok(meta_from_hash(&h, pinned).map(|m| self.named(m)))
    }

    /// Metadata of every stored version, oldest first, in one round trip.
    pub async fn all_meta(&self) -> Result<Vec<PolicyMeta>, Error> {
        let mut c = self.conn.clone();
        let (versions, pinned): (Vec<u64>, Vec<u64>) = redis::pipe()
            .zrange(self.key("versions"), 0, -1)
            .smembers(self.key("pinned"))
            .query_async(&mut c)
            .await
            .map_err(redis_err)?;
        if versions.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        for &v in &versions {
            p.hgetall(self.meta_key(v));
        }
        let hashes: Vec<HashMap<String, u64>> = p.query_async(&mut c).await.map_err(redis_err)?;
        Ok(hashes
            .iter()
            .zip(&versions)
            .filter_map(|(h, v)| meta_from_hash(h, pinned.contains(v)))
            .map(|m| self.named(m))
            .collect())
    }

    pub async fn latest(&self) -> Result<Option<PolicyMeta>, Error> {
        let mut c = self.conn.clone();
        let top: Vec<u64> = c.zrevrange(self.key("versions"), 0, 0).await.map_err(redis_err)?;
        match top.first() {
            Some(&v) => self.meta(v).await,
            None => Ok(None),
        }
    }

    /// The newest version in the store's index (0 if none).
    pub async fn latest_stored_version(&self) -> Result<u64, Error> {
        let mut c = self.conn.clone();
        let top: Vec<u64> = c.zrevrange(self.key("versions"), 0, 0).await.map_err(redis_err)?;
        Ok(top.first().copied().unwrap_or(0))
    }

    pub async fn blob(&self, version: u64) -> Result<Option<Vec<u8>>, Error> {
        let mut c = self.conn.clone();
        c.get(self.blob_key(version)).await.map_err(redis_err)
    }

    /// Stores a version whole and deletes versions beyond the newest `keep` that are neither
    /// pinned nor in `protect` (versions live actors still act with), in one transaction.
    /// Returns those deleted.
    pub async fn put(&self, meta: &PolicyMeta, blob: &[u8], keep: u64, protect: &[u64]) -> Result<Vec<u64>, Error> {
        let mut c = self.conn.clone();
        let v = meta.version;
        let fields: [(&str, u64); 6] = [
            ("version", meta.version),
            ("learner_step", meta.learner_step),
            ("frames", meta.frames),
            ("created_unix_ms", meta.created_unix_ms),
            ("parent_version", meta.parent_version),
            ("size_bytes", meta.size_bytes),
        ];
        // Retention is decided first, so the new version and the deletions go in one
        // MULTI/EXEC: no reader sees more than what is kept. (Callers serialise puts.)
        let (stored, pinned): (Vec<u64>, Vec<u64>) = redis::pipe()
            .zrange(self.key("versions"), 0, -1)
            .smembers(self.key("pinned"))
            .query_async(&mut c)
            .await
            .map_err(redis_err)?;
        let mut versions = stored;
        if !versions.contains(&v) {
            versions.push(v);
            versions.sort_unstable();
        }
        let cut = versions.len().saturating_sub(keep as usize);
        let doomed: Vec<u64> = versions[..cut]
            .iter()
            .copied()
            .filter(|d| *d != v && !pinned.contains(d) && !protect.contains(d))
            .collect();
        let mut p = redis::pipe();
        p.atomic()
            .set(self.blob_key(v), blob)
            .ignore()
            .hset_multiple(self.meta_key(v), &fields)
            .ignore()
            .zadd(self.key("versions"), v, v)
            .ignore();
        for &d in &doomed {
            p.del(self.blob_key(d))
                .ignore()
                .del(self.meta_key(d))
                .ignore()
                .zrem(self.key("versions"), d)
                .ignore();
        }
        p.query_async::<()>(&mut c).await.map_err(redis_err)?;
        Ok(doomed)
    }

    pub async fn set_pinned(&self, version: u64, pinned: bool) -> Result<(), Error> {
        let mut c = self.conn.clone();
        if pinned {
            c.sadd::<_, _, ()>(self.key("pinned"), version).await.map_err(redis_err)
        } else {
            c.srem::<_, _, ()>(self.key("pinned"), version).await.map_err(redis_err)
        }
    }

    pub async fn set_learner_address(&self, addr: &str) -> Result<(), Error> {
        let mut c = self.conn.clone();
        c.set(self.key("learner_address"), addr).await.map_err(redis_err)
    }

    pub async fn learner_address(&self) -> Result<Option<String>, Error> {
        let mut c = self.conn.clone();
        c.get(self.key("learner_address")).await.map_err(redis_err)
    }

    /// Records which learner id holds the lease (a restarted coordinator keeps it held).
    pub async fn set_lease_holder(&self, learner_id: &str) -> Result<(), Error> {
        let mut c = self.conn.clone();
        c.set(self.key("learner_id"), learner_id).await.map_err(redis_err)
    }

    pub async fn lease_holder(&self) -> Result<Option<String>, Error> {
        let mut c = self.conn.clone();
        c.get(self.key("learner_id")).await.map_err(redis_err)
    }

    /// Takes the next learner epoch.
    pub async fn next_epoch(&self) -> Result<u64, Error> {
        let mut c = self.conn.clone();
        c.incr(self.key("learner_epoch"), 1u64).await.map_err(redis_err)
    }

    /// The newest learner epoch granted (0 if none).
    pub async fn epoch(&self) -> Result<u64, Error> {
        let mut c = self.conn.clone();
        let e: Option<u64> = c.get(self.key("learner_epoch")).await.map_err(redis_err)?;
        Ok(e.unwrap_or(0))
    }

    /// Raises the epoch counter to at least `epoch` (after Redis lost data).
    pub async fn raise_epoch(&self, epoch: u64) -> Result<(), Error> {
        let mut c = self.conn.clone();
        let mut inv = RAISE.prepare_invoke();
        inv.key(self.key("learner_epoch")).arg(epoch);
        inv.invoke_async::<i64>(&mut c).await.map_err(redis_err)?;
        Ok(())
    }

    pub async fn returns(&self) -> Result<Vec<f32>, Error> {
        let mut c = self.conn.clone();
        c.lrange(self.key("returns"), 0, -1).await.map_err(redis_err)
    }
}
