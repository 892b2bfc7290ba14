//! The client side of experience replay that actors and learners share: a rollout as a replay
//! item, and the writer that inserts items into a policy's table in batches.
//!
//! The writer never holds its caller up: its queue is bounded, a call that fails is counted and
//! backed off, and what arrives meanwhile is dropped (counted), never queued without bound.

use std::time::{Duration, Instant};

use prost::Message;
use proto::v1::replay_client::ReplayClient;
use proto::v1::{InsertRequest, NamedTensor, ReplayItem, Rollout, Tensor};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::process::{Backoff, GrpcChannel};
use crate::telemetry::names;

/// Rollouts waiting to be written; beyond it they are dropped (and counted).
const WRITE_QUEUE: usize = 16;
/// Rollouts in one insert call, at most, and their bytes (one rollout part is at most the
/// message cap, so pixel rollouts go one per call).
const WRITE_BATCH: usize = 16;
const WRITE_BYTES: usize = proto::MAX_MESSAGE_BYTES / 2;
/// The name of the one tensor of an item: the rollout's encoded bytes.
pub const ROLLOUT: &str = "rollout";

/// The counters a writer keeps, named for the process it runs in.
#[derive(Debug, Clone, Copy)]
pub struct WriterMetrics {
    pub inserted: &'static str,
    pub dropped: &'static str,
    pub write_errors: &'static str,
    /// Label them with the link's policy (an actor's; a learner's series carry its policy
    /// already, as a global label).
    pub policy_label: bool,
}

impl WriterMetrics {
    pub const LEARNER: WriterMetrics = WriterMetrics {
        inserted: names::LEARNER_REPLAY_INSERTED,
        dropped: names::LEARNER_REPLAY_DROPPED,
        write_errors: names::LEARNER_REPLAY_WRITE_ERRORS,
        policy_label: false,
    };
    pub const ACTOR: WriterMetrics = WriterMetrics {
        inserted: names::ACTOR_REPLAY_INSERTED,
        dropped: names::ACTOR_REPLAY_DROPPED,
        write_errors: names::ACTOR_REPLAY_WRITE_ERRORS,
        policy_label: true,
    };
}

/// Where a policy's replay table is.
#[derive(Clone)]
pub struct ReplayLink {
    pub client: ReplayClient<GrpcChannel>,
    pub table: String,
    pub policy: String,
}

impl ReplayLink {
    /// A link to `table` of `policy` on the replay service at `address`.
    pub fn connect(
        address: &str,
        security: &crate::security::Security,
        table: &str,
        policy: &str,
    ) -> Result<ReplayLink, crate::process::ChannelError> {
        let channel = crate::process::grpc_channel(address, security)?;
        Ok(ReplayLink {
            client: ReplayClient::new(channel)
                .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(proto::MAX_MESSAGE_BYTES),
            table: table.to_string(),
            policy: policy.to_string(),
        })
    }
}

/// An accepted rollout as a replay item: its encoded bytes, as one u8 tensor.
pub fn item_of(r: &Rollout) -> ReplayItem {
    item_with_priority(r, 1.0)
}

/// [`item_of`] with its initial priority (Ape-X's actors compute it).
pub fn item_with_priority(r: &Rollout, priority: f64) -> ReplayItem {
    let bytes = r.encode_to_vec();
    ReplayItem {
        tensors: vec![NamedTensor {
            name: ROLLOUT.into(),
            tensor: Some(Tensor::from_bytes(
                proto::v1::DType::DtypeU8,
                &[bytes.len()],
                bytes.into(),
            )),
        }],
        priority,
        policy_version: r.policy_version,
    }
}

/// Starts the writer; returns the queue the streaming edge hands accepted rollouts to, as
/// items ([`item_of`]).
/// Needs a Tokio runtime context.
pub fn spawn_writer(link: ReplayLink, m: WriterMetrics, shutdown: CancellationToken) -> mpsc::Sender<ReplayItem> {
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    tokio::spawn(write(link, rx, m, shutdown));
    tx
}

async fn write(
    mut link: ReplayLink,
    mut rx: mpsc::Receiver<ReplayItem>,
    m: WriterMetrics,
    shutdown: CancellationToken,
) {
    let labels: Vec<(&'static str, String)> = if m.policy_label {
        vec![("policy", link.policy.clone())]
    } else {
        Vec::new()
    };
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    // An item that would have made the last call too large: the next call's first.
    let mut held: Option<ReplayItem> = None;
    loop {
        let first = match held.take() {
            Some(item) => Some(item),
            None => tokio::select! {
                r = rx.recv() => r,
                _ = shutdown.cancelled() => None,
            },
        };
        let Some(first) = first else { return };
        let mut bytes = first.encoded_len();
        let mut items = vec![first];
        while items.len() < WRITE_BATCH {
            let Ok(item) = rx.try_recv() else { break };
            let more = item.encoded_len();
            if bytes + more > WRITE_BYTES {
                held = Some(item);
                break;
            }
            bytes += more;
            items.push(item);
        }
        let n = items.len() as u64;
        let req = InsertRequest {
            table: link.table.clone(),
            policy: link.policy.clone(),
            items,
            timeout_s: 5.0,
        };
        // The rate limiter holding inserts back (the learner behind) is backpressure, not a
        // failure: the same items go again, and what the caller sends waits for room.
        let mut result = link.client.insert(req.clone()).await;
        while matches!(&result, Err(s) if s.code() == tonic::Code::DeadlineExceeded) {
            if shutdown.is_cancelled() {
                return;
            }
            result = link.client.insert(req.clone()).await;
        }
        match result {
            Ok(_) => {
                backoff.reset();
                metrics::counter!(m.inserted, &labels).increment(n);
            }
            Err(status) => {
                metrics::counter!(m.write_errors, &labels).increment(1);
                tracing::warn!(code = ?status.code(), error = %status.message(), dropped = n, "could not write rollouts to replay; backing off");
                // What arrives meanwhile is dropped, not queued without bound.
                let until = Instant::now() + backoff.next_delay();
                while Instant::now() < until {
                    let wait = until.saturating_duration_since(Instant::now());
                    tokio::select! {
                        r = rx.recv() => match r {
                            Some(_) => metrics::counter!(m.dropped, &labels).increment(1),
                            None => return,
                        },
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }
}
