//! The long-lived rollout stream to the learner, with credit-based flow control.
//!
//! Rollouts come from the runner through a bounded outbox. On each connection the sender opens
//! one bidirectional stream and keeps at most `max_in_flight` rollouts unacknowledged: the
//! learner acks a rollout once it has room for it, so a learner that falls behind makes the
//! runner wait, and no rollout grows stale in transport buffers. When the stream breaks, the
//! rollout in hand is kept for the next connection (up to `max_in_flight` unacknowledged ones
//! may be lost with the stream) and the sender reconnects with backoff.

use std::time::Duration;

use proto::v1::learner_client::LearnerClient;
use proto::v1::Rollout;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use troupe::process::{grpc_channel, Backoff, GrpcChannel};
use troupe::security::Security;
use troupe::telemetry::names;

/// How one stream ended.
enum Ended {
    Status(tonic::Status),
    Closed,
    Moved,
    /// Shutdown, or the runner is gone: stop for good.
    Stop,
}

/// Who this actor is, as its streams tell the learner.
#[derive(Debug, Clone)]
pub struct Identity {
    pub actor_id: u64,
    /// The binding secret from registration (empty with tokens off).
    pub secret: String,
}

pub async fn run(
    security: Security,
    identity: Identity,
    mut learner_address: watch::Receiver<String>,
    mut outbox: mpsc::Receiver<Rollout>,
    max_in_flight: usize,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::default();
    let mut pending: Option<Rollout> = None;
    loop {
        let address = learner_address.borrow_and_update().clone();
        if address.is_empty() {
            // No learner has registered yet: heartbeats will bring its address.
            tokio::select! {
                r = learner_address.changed() => if r.is_err() { return },
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        let ended = match grpc_channel(&address, &security) {
            Ok(channel) => {
                let client = LearnerClient::new(channel)
                    .max_encoding_message_size(proto::MAX_MESSAGE_BYTES)
                    .max_decoding_message_size(proto::MAX_MESSAGE_BYTES);
                let stream = Stream {
                    outbox: &mut outbox,
                    pending: &mut pending,
                    max_in_flight: max_in_flight as u64,
                    identity: &identity,
                };
                stream.run(client, &mut learner_address, &mut backoff, &shutdown).await
            }
            Err(e) => Ended::Status(tonic::Status::invalid_argument(format!(
                "learner address {address:?}: {e}"
            ))),
        };
        match ended {
            Ended::Stop => return,
            Ended::Status(s) => tracing::warn!(code = ?s.code(), message = s.message(), "rollout stream ended"),
            Ended::Closed => tracing::warn!("learner closed the rollout stream"),
            Ended::Moved => tracing::info!("learner moved, reconnecting"),
        }
        metrics::counter!(names::ACTOR_RECONNECTS, "peer" => "learner").increment(1);
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}

struct Stream<'a> {
    outbox: &'a mut mpsc::Receiver<Rollout>,
    pending: &'a mut Option<Rollout>,
    max_in_flight: u64,
    identity: &'a Identity,
}

impl Stream<'_> {
    async fn run(
        self,
        mut client: LearnerClient<GrpcChannel>,
        learner_address: &mut watch::Receiver<String>,
        backoff: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Ended {
        // Never more than max_in_flight rollouts are unacked, so this never fills.
        let (tx, rx) = mpsc::channel::<Rollout>(self.max_in_flight as usize);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request.metadata_mut().insert(
            troupe::security::ACTOR_ID_HEADER,
            self.identity.actor_id.to_string().parse().expect("digits"),
        );
        if !self.identity.secret.is_empty() {
            match self.identity.secret.parse() {
                Ok(v) => {
                    request.metadata_mut().insert(troupe::security::ACTOR_SECRET_HEADER, v);
                }
                Err(_) => return Ended::Status(tonic::Status::internal("the actor secret is not a valid header")),
            }
        }
        let open = tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(10), client.stream_rollouts(request)) => r,
            _ = shutdown.cancelled() => return Ended::Stop,
        };
        let mut acks = match open {
            Ok(Ok(resp)) => resp.into_inner(),
            Ok(Err(status)) => return Ended::Status(status),
            Err(_) => {
                return Ended::Status(tonic::Status::deadline_exceeded(
                    "opening the rollout stream took over 10 s",
                ))
            }
        };
        let (mut sent, mut acked) = (0u64, 0u64);
        let pending = self.pending;
        let outbox = self.outbox;
        loop {
            let has_credit = sent - acked < self.max_in_flight;
            tokio::select! {
                ack = acks.message() => match ack {
                    Ok(Some(a)) => {
                        acked = a.accepted.min(sent);
                        if acked >= 2 {
                            backoff.reset();
                        }
                    }
                    Ok(None) => return Ended::Closed,
                    Err(status) => return Ended::Status(status),
                },
                next = async { match pending.take() { Some(r) => Some(r), None => outbox.recv().await } }, if has_credit => {
                    let Some(rollout) = next else { return Ended::Stop };
                    if let Err(e) = tx.try_send(rollout) {
                        *pending = Some(e.into_inner());
                        return Ended::Closed;
                    }
                    sent += 1;
                }
                _ = learner_address.changed() => return Ended::Moved,
                _ = shutdown.cancelled() => {
                    // Close our side and let the learner take what it has.
                    drop(tx);
                    let _ = tokio::time::timeout(Duration::from_secs(2), async { while let Ok(Some(_)) = acks.message().await {} }).await;
                    return Ended::Stop;
                }
            }
        }
    }
}
