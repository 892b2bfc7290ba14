//! Follows the coordinator's policy versions (a server stream) and fetches each new version's
//! weights, chunk by chunk. Reconnects with backoff when the coordinator goes away. A slow
//! actor skips versions: only the newest matters.

use std::sync::Arc;

use proto::v1::coordinator_client::CoordinatorClient;
use proto::v1::WatchPoliciesRequest;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use troupe::process::{Backoff, GrpcChannel};
use troupe::telemetry::names;

use crate::PolicyUpdate;

/// Follows `policy`'s versions ("" for the run's first policy) into `tx`.
pub async fn run(
    channel: GrpcChannel,
    policy: String,
    tx: watch::Sender<Option<Arc<PolicyUpdate>>>,
    shutdown: CancellationToken,
) {
    let mut client = CoordinatorClient::new(channel).max_decoding_message_size(proto::MAX_MESSAGE_BYTES);
    let mut backoff = Backoff::default();
    let mut current = 0u64;
    loop {
        let result = tokio::select! {
            r = follow(&mut client, &policy, &tx, &mut current, &mut backoff) => r,
            _ = shutdown.cancelled() => return,
        };
        if let Err(status) = result {
            tracing::warn!(code = ?status.code(), message = status.message(), "policy watch broke, reconnecting");
            metrics::counter!(names::ACTOR_RECONNECTS, "peer" => "coordinator").increment(1);
        }
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}

async fn follow(
    client: &mut CoordinatorClient<GrpcChannel>,
    policy: &str,
    tx: &watch::Sender<Option<Arc<PolicyUpdate>>>,
    current: &mut u64,
    backoff: &mut Backoff,
) -> Result<(), tonic::Status> {
    let mut stream = client
        .watch_policies(WatchPoliciesRequest {
            policy: policy.to_string(),
        })
        .await?
        .into_inner();
    backoff.reset();
    // Each message says "version V exists". Fetch the newest we have heard of.
    while let Some(meta) = stream.message().await? {
        if meta.version <= *current {
            continue;
        }
        // Ask for the latest (version 0), not the one announced: the latest always exists,
        // however far retention has moved on while this actor was slow.
        let (meta, blob) = troupe::client::fetch_policy_of(client, policy, 0).await?;
        if meta.version <= *current {
            continue;
        }
        *current = meta.version;
        tracing::debug!(version = meta.version, bytes = blob.len(), "fetched policy");
        tx.send_replace(Some(Arc::new(PolicyUpdate {
            version: meta.version,
            blob,
        })));
    }
    Err(tonic::Status::unavailable("policy watch stream ended"))
}
