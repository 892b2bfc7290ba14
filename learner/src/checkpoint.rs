//! Checkpoints that resume exactly: `--checkpoint-dir` (the chart's PVC, a compose volume) holds
//! `checkpoint-{version}.safetensors` files, each with
//! - the policy (the weights with the observation and value statistics, as actors load them);
//! - the optimizer's state and step count;
//! - the policy version, learner step, frames and the minibatch generator's seed;
//! - a SHA-256 over all of it, so a damaged file is found and skipped.
//!
//! A checkpoint is written to a temporary name, fsynced, renamed, and the directory fsynced; the
//! newest `learner.keep_checkpoints` are kept. On start the learner resumes from the newest one
//! that reads back whole, and says which it skipped and why.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};
use troupe::telemetry::names;

const FORMAT: &str = "troupe-checkpoint-v1";

/// An encoded checkpoint on its way to the writer.
pub struct Encoded {
    pub version: u64,
    pub bytes: Vec<u8>,
}

/// Writes the newest checkpoint the model thread hands over (a newer one replaces one not yet
/// written), until the sender is gone; a fenced learner writes nothing more (its state is not
/// the run's any more).
pub async fn writer(
    checkpointer: std::sync::Arc<Checkpointer>,
    mut rx: tokio::sync::watch::Receiver<Option<std::sync::Arc<Encoded>>>,
    fenced: tokio_util::sync::CancellationToken,
) {
    loop {
        let closed = rx.changed().await.is_err();
        let next = rx.borrow_and_update().clone();
        if let Some(e) = next {
            if fenced.is_cancelled() {
                tracing::warn!(version = e.version, "fenced: not writing the checkpoint");
                return;
            }
            let c = std::sync::Arc::clone(&checkpointer);
            let version = e.version;
            match tokio::task::spawn_blocking(move || c.write(e.version, &e.bytes)).await {
                Ok(Ok(path)) => tracing::info!(version, path = %path.display(), "checkpoint written"),
                Ok(Err(err)) => tracing::error!(version, error = %err, "could not write the checkpoint"),
                Err(err) => tracing::error!(version, error = %err, "checkpoint writer panicked"),
            }
        }
        if closed {
            return;
        }
    }
}

/// What a checkpoint holds, as the model thread takes it.
pub struct State {
    pub version: u64,
    pub learner_step: u64,
    pub frames: u64,
    pub optimizer_steps: u64,
    pub rng_seed: u64,
    /// The policy blob (safetensors, the policy-file format).
    pub policy: Vec<u8>,
    pub optimizer: Vec<(String, Tensor)>,
}

/// A checkpoint read back.
pub struct Loaded {
    pub path: PathBuf,
    pub version: u64,
    pub learner_step: u64,
    pub frames: u64,
    pub optimizer_steps: u64,
    pub rng_seed: u64,
    pub policy: Vec<u8>,
    pub optimizer: BTreeMap<String, Tensor>,
}

/// Serialises a checkpoint (on the model thread: it reads tensors).
pub fn encode(state: &State) -> Vec<u8> {
    let mut named: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = vec![(
        "policy".to_string(),
        safetensors::Dtype::U8,
        vec![state.policy.len()],
        state.policy.clone(),
    )];
    for (name, t) in &state.optimizer {
        let t = t.to_kind(Kind::Float).contiguous();
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let values = Vec::<f32>::try_from(t.flatten(0, -1)).expect("f32 tensor");
        named.push((
            format!("optimizer/{name}"),
            safetensors::Dtype::F32,
            shape,
            bytemuck::cast_slice(&values).to_vec(),
        ));
    }
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut metadata: BTreeMap<String, String> = [
        ("format", FORMAT.to_string()),
        ("version", state.version.to_string()),
        ("learner_step", state.learner_step.to_string()),
        ("frames", state.frames.to_string()),
        ("optimizer_steps", state.optimizer_steps.to_string()),
        ("rng_seed", state.rng_seed.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut hash = Sha256::new();
    hash_entries(
        &mut hash,
        &metadata,
        named
            .iter()
            .map(|(n, d, s, b)| (n.as_str(), format!("{d:?}{s:?}"), b.as_slice())),
    );
    metadata.insert("sha256".into(), hex::encode(hash.finalize()));
    let metadata: HashMap<String, String> = metadata.into_iter().collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = named
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("shape matches bytes"),
            )
        })
        .collect();
    safetensors::serialize(views, Some(metadata)).expect("serialize safetensors")
}

/// The checksum's input: every metadata entry but the checksum, then every tensor's name, dtype
/// and shape and bytes, each length-prefixed, in name order.
fn hash_entries<'a>(
    hash: &mut Sha256,
    metadata: &BTreeMap<String, String>,
    tensors: impl Iterator<Item = (&'a str, String, &'a [u8])>,
) {
    let mut put = |b: &[u8]| {
        hash.update((b.len() as u64).to_le_bytes());
        hash.update(b);
    };
    for (k, v) in metadata.iter().filter(|(k, _)| *k != "sha256") {
        put(k.as_bytes());
        put(v.as_bytes());
    }
    for (n, layout, b) in tensors {
        put(n.as_bytes());
        put(layout.as_bytes());
        put(b);
    }
}

/// Reads a checkpoint back, checking its format and checksum.
pub fn decode(path: &Path, bytes: &[u8]) -> anyhow::Result<Loaded> {
    let st =
        safetensors::SafeTensors::deserialize(bytes).map_err(|e| anyhow::anyhow!("not a safetensors file: {e}"))?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| anyhow::anyhow!("unreadable header: {e}"))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let get = |k: &str| {
        meta.get(k)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("metadata has no {k:?}"))
    };
    let num = |k: &str| -> anyhow::Result<u64> { get(k)?.parse().map_err(|e| anyhow::anyhow!("metadata {k:?}: {e}")) };
    if get("format")? != FORMAT {
        anyhow::bail!("format {:?}, expected {FORMAT}", get("format")?);
    }
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut views = Vec::new();
    for n in &names {
        views.push(st.tensor(n)?);
    }
    let sorted_meta: BTreeMap<String, String> = meta.clone().into_iter().collect();
    let mut hash = Sha256::new();
    hash_entries(
        &mut hash,
        &sorted_meta,
        names
            .iter()
            .zip(&views)
            .map(|(n, v)| (n.as_str(), format!("{:?}{:?}", v.dtype(), v.shape()), v.data())),
    );
    let mut policy = None;
    let mut optimizer = BTreeMap::new();
    for (n, view) in names.iter().zip(&views) {
        if n == "policy" {
            policy = Some(view.data().to_vec());
        } else if let Some(key) = n.strip_prefix("optimizer/") {
            let values: Vec<f32> = bytemuck::pod_collect_to_vec(view.data());
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            optimizer.insert(key.to_string(), Tensor::from_slice(&values).view(shape.as_slice()));
        }
    }
    if hex::encode(hash.finalize()) != get("sha256")? {
        anyhow::bail!("checksum mismatch: the file is damaged");
    }
    Ok(Loaded {
        path: path.to_path_buf(),
        version: num("version")?,
        learner_step: num("learner_step")?,
        frames: num("frames")?,
        optimizer_steps: num("optimizer_steps")?,
        rng_seed: num("rng_seed")?,
        policy: policy.ok_or_else(|| anyhow::anyhow!("no \"policy\" tensor"))?,
        optimizer,
    })
}

fn file_name(version: u64) -> String {
    format!("checkpoint-{version:012}.safetensors")
}

/// Checkpoint files in `dir`, newest version first.
fn list(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(v) = name
            .strip_prefix("checkpoint-")
            .and_then(|r| r.strip_suffix(".safetensors"))
            .and_then(|v| v.parse::<u64>().ok())
        {
            found.push((v, path));
        }
    }
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    Ok(found)
}

/// The newest checkpoint in `dir` that reads back whole; damaged ones are logged and skipped.
pub fn newest_valid(dir: &Path) -> anyhow::Result<Option<Loaded>> {
    for (_, path) in list(dir)? {
        match std::fs::read(&path)
            .map_err(anyhow::Error::from)
            .and_then(|b| decode(&path, &b))
        {
            Ok(l) => return Ok(Some(l)),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "skipping a damaged checkpoint"),
        }
    }
    Ok(None)
}

pub struct Checkpointer {
    dir: PathBuf,
    keep: usize,
}

impl Checkpointer {
    /// Creates `dir` if needed; an unwritable directory is an error at start-up, not later.
    pub fn new(dir: &Path, keep: usize) -> anyhow::Result<Checkpointer> {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("--checkpoint-dir {}: {e}", dir.display()))?;
        let probe = dir.join(".write-test");
        std::fs::write(&probe, b"")
            .map_err(|e| anyhow::anyhow!("--checkpoint-dir {}: not writable: {e}", dir.display()))?;
        let _ = std::fs::remove_file(probe);
        Ok(Checkpointer {
            dir: dir.to_path_buf(),
            keep: keep.max(1),
        })
    }

    /// Keep the newest `n` checkpoints (at least 1).
    pub fn keep(&mut self, n: usize) {
        self.keep = n.max(1);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes an encoded checkpoint of `version` atomically and durably, then deletes all but
    /// the newest `keep`. Blocking I/O: call it off the async workers.
    pub fn write(&self, version: u64, bytes: &[u8]) -> std::io::Result<PathBuf> {
        let result = self.write_inner(version, bytes);
        let label = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(names::LEARNER_CHECKPOINTS, "result" => label).increment(1);
        result
    }

    fn write_inner(&self, version: u64, bytes: &[u8]) -> std::io::Result<PathBuf> {
        let path = self.dir.join(file_name(version));
        let tmp = self.dir.join(format!(".{}.tmp", file_name(version)));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()?;
        for (_, old) in list(&self.dir)?.into_iter().skip(self.keep) {
            std::fs::remove_file(old)?;
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(version: u64) -> State {
        State {
            version,
            learner_step: version * 10,
            frames: version * 100,
            optimizer_steps: version * 40,
            rng_seed: 7,
            policy: vec![version as u8; 16],
            optimizer: vec![("a.0".into(), Tensor::from_slice(&[1.0f32, 2.0]))],
        }
    }

    #[test]
    fn keeps_the_newest_and_skips_a_damaged_one() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpointer::new(&dir.path().join("ckpt"), 2).unwrap();
        for v in 1..=3 {
            c.write(v, &encode(&state(v))).unwrap();
        }
        let names: Vec<u64> = list(c.dir()).unwrap().into_iter().map(|(v, _)| v).collect();
        assert_eq!(names, vec![3, 2], "retention keeps the newest two");
        let l = newest_valid(c.dir()).unwrap().unwrap();
        assert_eq!(
            (l.version, l.learner_step, l.frames, l.optimizer_steps),
            (3, 30, 300, 120)
        );
        assert_eq!(l.policy, vec![3u8; 16]);
        assert!(l.optimizer["a.0"].equal(&Tensor::from_slice(&[1.0f32, 2.0])));
        // Flip one byte of the newest: its checksum fails and the one before is used.
        let newest = c.dir().join(file_name(3));
        let mut b = std::fs::read(&newest).unwrap();
        let last = b.len() - 1;
        b[last] ^= 0xff;
        std::fs::write(&newest, b).unwrap();
        let l = newest_valid(c.dir()).unwrap().unwrap();
        assert_eq!(l.version, 2);
        // So is one whose header says another step than the state it holds.
        let v2 = c.dir().join(file_name(2));
        let b = std::fs::read(&v2).unwrap();
        let needle = b"\"frames\":\"200\"";
        let at = b
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("the header names the frames");
        let mut forged = b.clone();
        forged[at + needle.len() - 2] = b'1';
        std::fs::write(&v2, &forged).unwrap();
        assert!(
            newest_valid(c.dir()).unwrap().is_none(),
            "both damaged: nothing to resume from"
        );
        std::fs::write(&v2, &b).unwrap();
        // A truncated file is skipped too.
        std::fs::write(c.dir().join(file_name(9)), b"\x10\x00").unwrap();
        assert_eq!(newest_valid(c.dir()).unwrap().unwrap().version, 2);
    }

    #[test]
    fn an_unwritable_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let err = Checkpointer::new(&file.join("sub"), 1).err().unwrap();
        assert!(err.to_string().contains("--checkpoint-dir"), "{err}");
    }
}
