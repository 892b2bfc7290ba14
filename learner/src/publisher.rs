//! Publishes weight snapshots to the coordinator as policy versions (a client stream of 1 MiB
//! chunks), under the learner's lease epoch. Only the newest snapshot matters: if publishing falls behind, older ones are skipped.
//! Retries with backoff while the coordinator is away; a refused epoch means another learner
//! holds the lease, and fences this one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proto::v1::coordinator_client::CoordinatorClient;
use proto::v1::{PolicyChunk, PolicyMeta};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use troupe::process::{Backoff, GrpcChannel};
use troupe::telemetry::names;

use crate::trainer::Snapshot;

/// Chunks of a snapshot: metadata and the epoch first, then the blob in order.
pub fn chunks(s: &Snapshot, epoch: u64, policy: &str) -> Vec<PolicyChunk> {
    let meta = PolicyMeta {
        policy: policy.to_string(),
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
            epoch: 0,
        })
        .collect();
    if out.is_empty() {
        out.push(PolicyChunk::default());
    }
    out[0].meta = Some(meta);
    out[0].epoch = epoch;
    out
}

/// What the publisher shares with the rest of the learner.
pub struct Publisher {
    pub channel: GrpcChannel,
    /// The policy whose versions these are.
    pub policy: String,
    pub snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    /// The newest version already stored.
    pub published: u64,
    pub epoch: u64,
    /// Cancelled when the coordinator refuses our epoch.
    pub fenced: CancellationToken,
    /// The newest version the coordinator minted for us.
    pub minted: Arc<AtomicU64>,
    /// The newest version rollouts may carry (shared with ingest).
    pub known_version: Arc<AtomicU64>,
}

impl Publisher {
    /// Runs until the trainer drops its sender and the last snapshot is published (or given up).
    pub async fn run(self) {
        let Publisher {
            channel,
            policy,
            mut snapshots,
            mut published,
            epoch,
            fenced,
            minted,
            known_version,
        } = self;
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
            if fenced.is_cancelled() {
                return;
            }
            let mut attempts = 0;
            loop {
                attempts += 1;
                let mut req = tonic::Request::new(tokio_stream::iter(chunks(&snap, epoch, &policy)));
                req.set_timeout(Duration::from_secs(10));
                match client.publish_policy(req).await {
                    Ok(resp) => {
                        let version = resp.into_inner().meta.map_or(snap.version, |m| m.version);
                        if version != snap.version {
                            tracing::warn!(
                                expected = snap.version,
                                minted = version,
                                "the coordinator minted another version number; continuing from it"
                            );
                        }
                        minted.fetch_max(version, Ordering::AcqRel);
                        known_version.fetch_max(version, Ordering::AcqRel);
                        published = snap.version.max(version);
                        metrics::gauge!(names::LEARNER_POLICY_VERSION).set(version as f64);
                        tracing::debug!(version, "published policy");
                        backoff.reset();
                        break;
                    }
                    Err(status) => {
                        metrics::counter!(names::LEARNER_PUBLISH_FAILURES).increment(1);
                        if status.code() == tonic::Code::FailedPrecondition {
                            tracing::error!(
                                version = snap.version,
                                epoch,
                                message = status.message(),
                                "the coordinator refused this learner's publish: fenced"
                            );
                            metrics::counter!(names::LEARNER_FENCED).increment(1);
                            fenced.cancel();
                            return;
                        }
                        if matches!(
                            status.code(),
                            tonic::Code::InvalidArgument | tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
                        ) {
                            // Retrying the same request cannot help; the next snapshot may.
                            tracing::error!(version = snap.version, code = ?status.code(), message = status.message(), "the coordinator refused the version");
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
}

/// Keeps the lease: renews every third of its length. A refused epoch cancels `fenced`; an
/// unreachable coordinator is retried (publishes would find out if the lease ran out meanwhile).
pub async fn keep_lease(
    channel: GrpcChannel,
    policy: String,
    epoch: u64,
    lease_s: f64,
    fenced: CancellationToken,
    stop: CancellationToken,
) {
    let mut client = CoordinatorClient::new(channel);
    let every = Duration::from_secs_f64((lease_s / 3.0).max(0.05));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
            _ = fenced.cancelled() => return,
        }
        let mut req = tonic::Request::new(proto::v1::RenewLearnerLeaseRequest {
            epoch,
            policy: policy.clone(),
        });
        req.set_timeout(every);
        match client.renew_learner_lease(req).await {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                tracing::error!(epoch, message = s.message(), "lost the learner lease: fenced");
                metrics::counter!(names::LEARNER_FENCED).increment(1);
                fenced.cancel();
                return;
            }
            Err(s) => {
                tracing::warn!(epoch, code = ?s.code(), message = s.message(), "renewing the lease failed, retrying")
            }
        }
    }
}
