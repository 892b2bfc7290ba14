//! Client calls more than one binary makes against the coordinator.

use std::time::Duration;

use crate::process::GrpcChannel;
use bytes::BytesMut;
use proto::v1::coordinator_client::CoordinatorClient;
use proto::v1::{GetPolicyRequest, PolicyMeta};

/// Fetches one version (0 = latest) of the run's first policy, and its metadata.
pub async fn fetch_policy(
    client: &mut CoordinatorClient<GrpcChannel>,
    version: u64,
) -> Result<(PolicyMeta, bytes::Bytes), tonic::Status> {
    fetch_policy_of(client, "", version).await
}

/// Fetches one version (0 = latest) of `policy` ("" for the run's first) and its metadata; a
/// fetch that takes over 30 s is abandoned.
pub async fn fetch_policy_of(
    client: &mut CoordinatorClient<GrpcChannel>,
    policy: &str,
    version: u64,
) -> Result<(PolicyMeta, bytes::Bytes), tonic::Status> {
    let work = async {
        let req = GetPolicyRequest {
            version,
            policy: policy.to_string(),
        };
        let mut stream = client.get_policy(req).await?.into_inner();
        let mut blob = BytesMut::new();
        let mut meta: Option<PolicyMeta> = None;
        while let Some(chunk) = stream.message().await? {
            if let Some(m) = chunk.meta {
                blob.reserve(m.size_bytes as usize);
                meta = Some(m);
            }
            blob.extend_from_slice(&chunk.data);
        }
        match meta {
            Some(m) if m.size_bytes as usize == blob.len() => Ok((m, blob.freeze())),
            Some(m) => Err(tonic::Status::data_loss(format!(
                "policy {}: got {} bytes, expected {}",
                m.version,
                blob.len(),
                m.size_bytes
            ))),
            None => Err(tonic::Status::data_loss(format!("policy {version}: no metadata chunk"))),
        }
    };
    tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .map_err(|_| tonic::Status::deadline_exceeded(format!("fetching policy {version} took over 30 s")))?
}
