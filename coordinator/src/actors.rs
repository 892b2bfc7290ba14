//! The actor registry: who registered, what each actor last reported, and which actors are live
//! (heard from within `coordinator.actor_timeout_s`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proto::v1::ActorStatus;

struct ActorEntry {
    hostname: String,
    /// The version of each policy the actor acts with (from heartbeats).
    versions: BTreeMap<String, u64>,
    frames: u64,
    episodes: u64,
    /// The last report number applied.
    seq: u64,
    last_seen: Instant,
}

impl ActorEntry {
    fn new(hostname: String) -> ActorEntry {
        ActorEntry {
            hostname,
            versions: BTreeMap::new(),
            frames: 0,
            episodes: 0,
            seq: 0,
            last_seen: Instant::now(),
        }
    }
}

/// What Redis needs written back for one actor after it lost its data.
pub struct ActorTotals {
    pub id: u64,
    pub seq: u64,
    pub frames: u64,
    pub episodes: u64,
}

pub struct Actors {
    map: Mutex<HashMap<u64, ActorEntry>>,
    timeout: Duration,
}

impl Actors {
    pub fn new(timeout: Duration) -> Actors {
        Actors {
            map: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    fn live(&self, a: &ActorEntry) -> bool {
        a.last_seen.elapsed() < self.timeout
    }

    /// Forgets actors silent for 10 timeouts, so restarts do not grow the map.
    fn forget_silent(&self, map: &mut HashMap<u64, ActorEntry>) {
        let forget = self.timeout * 10;
        map.retain(|_, a| a.last_seen.elapsed() < forget);
    }

    pub fn register(&self, id: u64, hostname: String) {
        self.map.lock().expect("lock").insert(id, ActorEntry::new(hostname));
    }

    pub fn live_ids(&self) -> Vec<u64> {
        let map = self.map.lock().expect("lock");
        map.iter().filter(|(_, a)| self.live(a)).map(|(&id, _)| id).collect()
    }

    /// (live, silent) ids.
    pub fn partition(&self) -> (Vec<u64>, Vec<u64>) {
        let map = self.map.lock().expect("lock");
        let (live, silent): (Vec<_>, Vec<_>) = map.iter().partition(|(_, a)| self.live(a));
        (
            live.into_iter().map(|(id, _)| *id).collect(),
            silent.into_iter().map(|(id, _)| *id).collect(),
        )
    }

    /// Versions of `policy` live actors act with: retention keeps them.
    pub fn versions_in_use(&self, policy: &str) -> Vec<u64> {
        let map = self.map.lock().expect("lock");
        let mut v: Vec<u64> = map
            .values()
            .filter(|a| self.live(a))
            .filter_map(|a| a.versions.get(policy).copied())
            .filter(|&v| v > 0)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// A heartbeat from `id`: its acting versions, and its totals once Redis applied the report.
    pub fn heard(&self, id: u64, versions: BTreeMap<String, u64>, applied: Option<(u64, u64, u64)>) {
        let mut map = self.map.lock().expect("lock");
        self.forget_silent(&mut map);
        let entry = map.entry(id).or_insert_with(|| ActorEntry::new(String::new()));
        entry.versions = versions;
        if let Some((frames, episodes, seq)) = applied {
            (entry.frames, entry.episodes, entry.seq) = (frames, episodes, seq);
        }
        entry.last_seen = Instant::now();
    }

    /// Live actors, by id; `first_policy`'s version is each one's `policy_version`.
    pub fn status(&self, first_policy: &str) -> Vec<ActorStatus> {
        let mut map = self.map.lock().expect("lock");
        self.forget_silent(&mut map);
        let mut v: Vec<ActorStatus> = map
            .iter()
            .filter(|(_, a)| self.live(a))
            .map(|(&id, a)| ActorStatus {
                actor_id: id,
                hostname: a.hostname.clone(),
                policy_version: a.versions.get(first_policy).copied().unwrap_or(0),
                frames: a.frames,
                episodes: a.episodes,
                seconds_since_heartbeat: a.last_seen.elapsed().as_secs_f64(),
            })
            .collect();
        v.sort_by_key(|a| a.actor_id);
        v
    }

    pub fn totals(&self) -> Vec<ActorTotals> {
        let map = self.map.lock().expect("lock");
        map.iter()
            .map(|(&id, a)| ActorTotals {
                id,
                seq: a.seq,
                frames: a.frames,
                episodes: a.episodes,
            })
            .collect()
    }
}
