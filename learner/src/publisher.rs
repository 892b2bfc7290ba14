//! Publishes weight snapshots to the coordinator as policy versions (a client stream of 1 MiB
//! chunks). Only the newest snapshot matters: if publishing falls behind, older ones are
//! skipped. Retries with backoff while the coordinator is away.

use std::sync::Arc;
use std::time::Duration;

use proto::v1::coordinator_client::CoordinatorClient;
use proto::v1::{PolicyChunk, PolicyMeta};
use tokio::sync::watch;
use tonic::transport::Channel;
use troupe::process::Backoff;
use troupe::telemetry::names;

use crate::trainer::Snapshot;

/// Chunks of a snapshot: metadata first, then the blob in order.
pub fn chunks(s: &Snapshot) -> Vec<PolicyChunk> {
    let meta = PolicyMeta {
        version: s.version,
        learner_step: s.learner_step,
        frames: s.frames,
        parent_version: s.parent_version,
        size_bytes: s.blob.len() as u64,
        ..Default::default()
    };
    let mut out: Vec<PolicyChunk> = s
        .blob
        .chunks(proto::POLICY_CHUNK_BYTES)
        .map(|c| PolicyChunk {
            meta: None,
            data: bytes::Bytes::copy_from_slice(c),
        })
        .collect();
    if out.is_empty() {
        out.push(PolicyChunk::default());
    }
    out[0].meta = Some(meta);
    out
}

/// Runs until the trainer drops its sender and the last snapshot is published (or given up).
pub async fn run(
    channel: Channel,
    mut snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    mut published: u64,
    mut checkpoint: Option<crate::checkpoint::Checkpointer>,
) {
    let mut client = CoordinatorClient::new(channel).max_encoding_message_size(proto::MAX_MESSAGE_BYTES);
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    loop {
        // Wait for a snapshot we have not published; stop once the trainer is gone.
        let closed = snapshots.changed().await.is_err();
        let Some(snap) = snapshots.borrow_and_update().clone() else {
            if closed {
                return;
            }
            continue;
        };
        if snap.version <= published {
            if closed {
                return;
            }
            continue;
        }
        if let Some(c) = checkpoint.as_mut() {
            c.offer(&snap, closed).await;
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut req = tonic::Request::new(tokio_stream::iter(chunks(&snap)));
            req.set_timeout(Duration::from_secs(10));
            match client.publish_policy(req).await {
                Ok(_) => {
                    published = snap.version;
                    metrics::gauge!(names::LEARNER_POLICY_VERSION).set(snap.version as f64);
                    tracing::debug!(version = snap.version, "published policy");
                    backoff.reset();
                    break;
                }
                Err(status) => {
                    metrics::counter!(names::LEARNER_PUBLISH_FAILURES).increment(1);
                    if status.code() == tonic::Code::FailedPrecondition {
                        // The coordinator already has this version or newer: another learner?
                        tracing::error!(
                            version = snap.version,
                            message = status.message(),
                            "coordinator refused the version"
                        );
                        break;
                    }
                    tracing::warn!(version = snap.version, attempts, code = ?status.code(), message = status.message(), "publish failed, retrying");
                    // A newer snapshot replaces this one; after the trainer is gone, give up
                    // after a bounded number of tries rather than hang the drain.
                    let trainer_gone = closed || snapshots.has_changed().is_err();
                    if trainer_gone && attempts >= 10 {
                        tracing::error!(version = snap.version, "giving up on the final publish");
                        return;
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                    if snapshots.has_changed().unwrap_or(false) {
                        break;
                    }
                }
            }
        }
        if closed {
            return;
        }
    }
}
