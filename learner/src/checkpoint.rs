//! The learner's local checkpoint: the latest policy snapshot written to `--checkpoint-dir` (a
//! volume of its own in Kubernetes and compose), so the newest weights survive the coordinator
//! and Redis both. `latest.safetensors` is the policy blob actors load; `latest.json` its version,
//! learner step and frames. Each is written to a temporary file and renamed, so a reader never
//! sees half a file, at most every `every` and on the final snapshot.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::trainer::Snapshot;

pub struct Checkpointer {
    dir: PathBuf,
    every: Duration,
    last: Option<Instant>,
}

impl Checkpointer {
    /// Creates `dir` if needed; an unwritable directory is an error at start-up, not later.
    pub fn new(dir: &Path, every: Duration) -> anyhow::Result<Checkpointer> {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("--checkpoint-dir {}: {e}", dir.display()))?;
        let probe = dir.join(".write-test");
        std::fs::write(&probe, b"")
            .map_err(|e| anyhow::anyhow!("--checkpoint-dir {}: not writable: {e}", dir.display()))?;
        let _ = std::fs::remove_file(probe);
        Ok(Checkpointer {
            dir: dir.to_path_buf(),
            every,
            last: None,
        })
    }

    /// Writes `snap` if the last write is older than `every`, or if `last` is set.
    pub async fn offer(&mut self, snap: &Snapshot, last: bool) {
        if !last && self.last.is_some_and(|t| t.elapsed() < self.every) {
            return;
        }
        self.last = Some(Instant::now());
        let meta = serde_json::json!({
            "version": snap.version,
            "parent_version": snap.parent_version,
            "learner_step": snap.learner_step,
            "frames": snap.frames,
        });
        let written = async {
            write_atomic(&self.dir.join("latest.safetensors"), &snap.blob).await?;
            write_atomic(&self.dir.join("latest.json"), &serde_json::to_vec_pretty(&meta)?).await
        }
        .await;
        match written {
            Ok(()) => tracing::debug!(version = snap.version, dir = %self.dir.display(), "checkpoint written"),
            Err(e) => tracing::warn!(error = %e, dir = %self.dir.display(), "could not write the checkpoint"),
        }
    }
}

async fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(version: u64) -> Snapshot {
        Snapshot {
            version,
            parent_version: version - 1,
            learner_step: version * 10,
            frames: version * 100,
            blob: vec![version as u8; 16],
        }
    }

    #[tokio::test]
    async fn writes_at_most_every_interval_and_always_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Checkpointer::new(&dir.path().join("ckpt"), Duration::from_secs(3600)).unwrap();
        c.offer(&snap(1), false).await;
        c.offer(&snap(2), false).await;
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("ckpt/latest.json")).unwrap()).unwrap();
        assert_eq!(meta["version"], 1, "the second offer came within the interval");
        c.offer(&snap(3), true).await;
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("ckpt/latest.json")).unwrap()).unwrap();
        assert_eq!(meta["version"], 3);
        assert_eq!(meta["frames"], 300);
        assert_eq!(
            std::fs::read(dir.path().join("ckpt/latest.safetensors")).unwrap(),
            vec![3u8; 16]
        );
    }

    #[test]
    fn an_unwritable_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let err = Checkpointer::new(&file.join("sub"), Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(err.to_string().contains("--checkpoint-dir"), "{err}");
    }
}
