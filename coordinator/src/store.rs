//! Policy versions, the learner's address and run totals, kept in Redis so a restarted
//! coordinator recovers them.
//!
//! Keys, under `troupe:{run}:`:
//! - `policy:{v}:blob`: the safetensors weights of version v;
//! - `policy:{v}:meta`: a hash (version, learner_step, frames, created_unix_ms, parent_version,
//!   size_bytes);
//! - `policies`: sorted set of stored versions; `pinned`: set of pinned versions;
//! - `learner_address`, `actor_seq`, `frames`, `episodes`, `returns` (the last 100 returns);
//! - `env_spec`: the env's spaces as JSON, for Python-hosted envs (the first actor's report).
//!
//! Writes of one version go in one MULTI/EXEC, so a version is stored whole or not at all.

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
    })
}

/// Totals recovered at start-up.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub frames: u64,
    pub episodes: u64,
    pub returns: Vec<f32>,
}

impl Store {
    /// Connects, retrying for up to `patience` (Redis may start after us).
    pub async fn connect(url: &str, run: &str, patience: Duration) -> anyhow::Result<Store> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(3);
        let deadline = tokio::time::Instant::now() + patience;
        let mut backoff = troupe::process::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            match ConnectionManager::new_with_config(client.clone(), config.clone()).await {
                Ok(conn) => {
                    metrics::gauge!(names::COORD_REDIS_UP).set(1.0);
                    metrics::counter!(names::COORD_REDIS_ERRORS).absolute(0);
                    return Ok(Store {
                        conn,
                        prefix: format!("troupe:{run}:"),
                    });
                }
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "redis not reachable yet, retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(e) => anyhow::bail!("redis at {url}: {e}"),
            }
        }
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

    fn blob_key(&self, v: u64) -> String {
        self.key(&format!("policy:{v}:blob"))
    }

    fn meta_key(&self, v: u64) -> String {
        self.key(&format!("policy:{v}:meta"))
    }

    pub async fn versions(&self) -> Result<Vec<u64>, Error> {
        let mut c = self.conn.clone();
        c.zrange(self.key("policies"), 0, -1).await.map_err(redis_err)
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
        Ok(meta_from_hash(&h, pinned))
    }

    /// Metadata of every stored version, oldest first, in one round trip.
    pub async fn all_meta(&self) -> Result<Vec<PolicyMeta>, Error> {
        let mut c = self.conn.clone();
        let (versions, pinned): (Vec<u64>, Vec<u64>) = redis::pipe()
            .zrange(self.key("policies"), 0, -1)
            .smembers(self.key("pinned"))
            .query_async(&mut c)
            .await
            .map_err(redis_err)?;
        let mut p = redis::pipe();
        for &v in &versions {
            p.hgetall(self.meta_key(v));
        }
        let hashes: Vec<HashMap<String, u64>> = p.query_async(&mut c).await.map_err(redis_err)?;
        Ok(hashes
            .iter()
            .zip(&versions)
            .filter_map(|(h, v)| meta_from_hash(h, pinned.contains(v)))
            .collect())
    }

    pub async fn latest(&self) -> Result<Option<PolicyMeta>, Error> {
        let mut c = self.conn.clone();
        let top: Vec<u64> = c.zrevrange(self.key("policies"), 0, 0).await.map_err(redis_err)?;
        match top.first() {
            Some(&v) => self.meta(v).await,
            None => Ok(None),
        }
    }

    pub async fn blob(&self, version: u64) -> Result<Option<Vec<u8>>, Error> {
        let mut c = self.conn.clone();
        c.get(self.blob_key(version)).await.map_err(redis_err)
    }

    /// Stores a version whole, then deletes versions beyond the newest `keep` that are not
    /// pinned. Returns the versions deleted.
    pub async fn put(&self, meta: &PolicyMeta, blob: &[u8], keep: u64) -> Result<Vec<u64>, Error> {
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
        redis::pipe()
            .atomic()
            .set(self.blob_key(v), blob)
            .ignore()
            .hset_multiple(self.meta_key(v), &fields)
            .ignore()
            .zadd(self.key("policies"), v, v)
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(redis_err)?;
        let versions = self.versions().await?;
        let pinned = self.pinned().await?;
        let cut = versions.len().saturating_sub(keep as usize);
        let doomed: Vec<u64> = versions[..cut]
            .iter()
            .copied()
            .filter(|v| !pinned.contains(v))
            .collect();
        if !doomed.is_empty() {
            let mut p = redis::pipe();
            p.atomic();
            for &d in &doomed {
                p.del(self.blob_key(d))
                    .ignore()
                    .del(self.meta_key(d))
                    .ignore()
                    .zrem(self.key("policies"), d)
                    .ignore();
            }
            p.query_async::<()>(&mut c).await.map_err(redis_err)?;
        }
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

    pub async fn next_actor_id(&self) -> Result<u64, Error> {
        let mut c = self.conn.clone();
        c.incr(self.key("actor_seq"), 1u64).await.map_err(redis_err)
    }

    pub async fn set_learner_address(&self, addr: &str) -> Result<(), Error> {
        let mut c = self.conn.clone();
        c.set(self.key("learner_address"), addr).await.map_err(redis_err)
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

    pub async fn learner_address(&self) -> Result<Option<String>, Error> {
        let mut c = self.conn.clone();
        c.get(self.key("learner_address")).await.map_err(redis_err)
    }

    /// Adds an actor's report to the run totals (one pipelined round trip).
    pub async fn add_progress(&self, frames: u64, returns: &[f32]) -> Result<(), Error> {
        let mut c = self.conn.clone();
        let mut p = redis::pipe();
        p.incr(self.key("frames"), frames).ignore();
        p.incr(self.key("episodes"), returns.len() as u64).ignore();
        if !returns.is_empty() {
            p.rpush(self.key("returns"), returns).ignore();
            p.ltrim(self.key("returns"), -(RETURN_WINDOW as isize), -1).ignore();
        }
        p.query_async::<()>(&mut c).await.map_err(redis_err)
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
