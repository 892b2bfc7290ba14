//! Redis losing its data (restarted without it, or flushed): noticed from the marker the
//! coordinator set at start-up, or from a stored version behind the one in memory; answered by
//! writing back what this coordinator knows, so ids, epochs and versions are never issued twice
//! and the versions in memory can still be fetched.

use std::sync::atomic::Ordering;

use troupe::Error;

use crate::service::CoordinatorService;

impl CoordinatorService {
    /// Whether Redis lost data: our marker is gone (restarted empty), or the newest version of
    /// a policy we stored is not there (the last second before a crash, with AOF everysec).
    pub(crate) async fn lost_data(&self) -> Result<bool, Error> {
        if self.store.marker().await?.as_deref() != Some(self.marker.as_str()) {
            return Ok(true);
        }
        if self.store.actor_seq().await? < self.max_actor_id.load(Ordering::Acquire) {
            return Ok(true);
        }
        if let Some(run) = self.policies.get() {
            for p in &run.states {
                if p.store().latest_stored_version().await? < p.latest_version() {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Writes back what this coordinator knows (see the module docs).
    pub(crate) async fn reseed(&self) -> Result<(), Error> {
        let _one_at_a_time = self.reseed_lock.lock().await;
        if !self.lost_data().await? {
            return Ok(()); // another call re-seeded it meanwhile
        }
        let (frames, episodes, _, _) = self.stats.lock().expect("lock").summary();
        self.store
            .raise_counters(self.max_actor_id.load(Ordering::Acquire), frames, episodes)
            .await?;
        for a in self.actors.totals() {
            self.store.reseed_actor(a.id, a.seq, a.frames, a.episodes).await?;
        }
        let mut restored = 0;
        if let Some(run) = self.policies.get() {
            for p in &run.states {
                restored += p.reseed().await?;
            }
            self.store
                .adopt_env_spec(&serde_json::to_string(&run.env).expect("json"))
                .await?;
        }
        self.store.set_marker(&self.marker).await?;
        tracing::warn!(
            restored_versions = restored,
            frames,
            "Redis lost its data: re-seeded it from this coordinator's memory"
        );
        Ok(())
    }
}
