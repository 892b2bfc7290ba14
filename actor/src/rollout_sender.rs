//! The long-lived rollout stream to the learner.
//!
//! Rollouts come from the runner through a bounded outbox. For each connection the sender opens
//! one client stream and forwards rollouts into it only when the stream has room (a one-slot
//! channel in front of HTTP/2 flow control), so a learner that falls behind makes the runner
//! wait instead of piling rollouts up. When the stream breaks, the rollout in hand is kept for
//! the next connection and the sender reconnects with backoff.

use proto::v1::learner_client::LearnerClient;
use proto::v1::Rollout;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use troupe::process::{grpc_channel, Backoff};
use troupe::telemetry::names;

pub async fn run(
    mut learner_address: watch::Receiver<String>,
    mut outbox: mpsc::Receiver<Rollout>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::default();
    let mut pending: Option<Rollout> = None;
    loop {
        let address = learner_address.borrow_and_update().clone();
        let channel = match grpc_channel(&address) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(learner = %address, error = %e, "bad learner address");
                if !backoff.wait(&shutdown).await {
                    return;
                }
                continue;
            }
        };
        let mut client = LearnerClient::new(channel)
            .max_encoding_message_size(proto::MAX_MESSAGE_BYTES)
            .max_decoding_message_size(proto::MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel::<Rollout>(1);
        let mut call = tokio::spawn(async move { client.stream_rollouts(ReceiverStream::new(rx)).await });
        let mut sent_on_this_stream = 0u64;
        let ended = loop {
            let rollout = match pending.take() {
                Some(r) => r,
                None => tokio::select! {
                    r = outbox.recv() => match r {
                        Some(r) => r,
                        None => { call.abort(); return; }
                    },
                    res = &mut call => break Some(res),
                    _ = shutdown.cancelled() => {
                        drop(tx);
                        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), call).await;
                        return;
                    }
                },
            };
            let stop = tokio::select! {
                permit = tx.reserve() => match permit {
                    Ok(p) => {
                        p.send(rollout);
                        sent_on_this_stream += 1;
                        if sent_on_this_stream == 2 {
                            backoff.reset();
                        }
                        false
                    }
                    Err(_) => {
                        // The stream is gone; its call says why.
                        pending = Some(rollout);
                        break tokio::time::timeout(std::time::Duration::from_secs(2), &mut call).await.ok();
                    }
                },
                res = &mut call => { pending = Some(rollout); break Some(res); }
                _ = learner_address.changed() => {
                    pending = Some(rollout);
                    tracing::info!("learner moved, reconnecting");
                    call.abort();
                    break None;
                }
                _ = shutdown.cancelled() => true,
            };
            if stop {
                // Close our side so the learner ends the stream, and wait for it briefly.
                drop(tx);
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), call).await;
                return;
            }
        };
        match ended {
            Some(Ok(Ok(summary))) => tracing::info!(
                accepted = summary.into_inner().accepted,
                "learner closed the rollout stream"
            ),
            Some(Ok(Err(status))) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "rollout stream ended")
            }
            Some(Err(e)) => tracing::warn!(error = %e, "rollout stream task failed"),
            None => tracing::warn!("rollout stream closed"),
        }
        metrics::counter!(names::ACTOR_RECONNECTS, "peer" => "learner").increment(1);
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}
