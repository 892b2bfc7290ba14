//! Reports frames and finished episodes to the coordinator, and learns the learner's current
//! address from its answers.
//!
//! Each report carries a sequence number: a report that failed (or timed out after the
//! coordinator applied it) is sent again as it was, same number and same counts, and the
//! coordinator applies each number once. While a report is outstanding, new counts wait in
//! [`Progress`]; only past [`crate::MAX_PENDING_EPISODES`] waiting reports are episodes dropped,
//! and then the log and `troupe_actor_episode_reports_dropped_total` say so. When more episodes
//! are waiting than one report carries, the next report goes at once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proto::v1::coordinator_client::CoordinatorClient;
use proto::v1::HeartbeatRequest;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use troupe::process::GrpcChannel;
use troupe::telemetry::names;

use crate::{LearnerAddresses, Progress};

/// Episode reports one heartbeat carries at most (about 10 bytes each on the wire).
pub const MAX_EPISODES_PER_HEARTBEAT: usize = 20_000;

pub async fn run(
    channel: GrpcChannel,
    actor_id: u64,
    secret: String,
    interval: Duration,
    progress: Arc<Mutex<Progress>>,
    learner_addresses: watch::Sender<LearnerAddresses>,
    shutdown: CancellationToken,
) {
    let mut client = CoordinatorClient::new(channel);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let secret: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> =
        (!secret.is_empty()).then(|| secret.parse().expect("a hex secret is a valid header"));
    let mut failing_since: Option<Instant> = None;
    let mut last = false;
    let mut seq = 0u64;
    // A report the coordinator has not confirmed: sent again, unchanged, until it is.
    let mut unconfirmed: Option<HeartbeatRequest> = None;
    let mut more_waiting = false;
    while !last {
        if !more_waiting {
            tokio::select! {
                _ = ticker.tick() => {}
                // One last report of what is left, then stop.
                _ = shutdown.cancelled() => last = true,
            }
        }
        let req = match unconfirmed.take() {
            Some(r) => r,
            None => {
                let mut p = progress.lock().expect("progress lock");
                let dropped = std::mem::take(&mut p.dropped_episodes);
                if dropped > 0 {
                    metrics::counter!(names::ACTOR_EPISODES_DROPPED).increment(dropped);
                    tracing::warn!(
                        dropped,
                        waiting = p.episodes.len(),
                        unreachable_s = failing_since.map(|t| t.elapsed().as_secs_f64()),
                        "episode reports dropped: the buffer of reports waiting for the coordinator was full"
                    );
                }
                seq += 1;
                let take = p.episodes.len().min(MAX_EPISODES_PER_HEARTBEAT);
                HeartbeatRequest {
                    actor_id,
                    frames: std::mem::take(&mut p.frames),
                    episodes: p.episodes.drain(..take).collect(),
                    policy_version: p.policy_version,
                    policy_loaded_ms_ago: p.policy_since.map_or(0, |t| t.elapsed().as_millis() as u64),
                    seq,
                    acting: p
                        .acting
                        .iter()
                        .map(|(policy, &(version, since))| proto::v1::ActingVersion {
                            policy: policy.clone(),
                            version,
                            loaded_ms_ago: since.elapsed().as_millis() as u64,
                        })
                        .collect(),
                }
            }
        };
        let mut call = tonic::Request::new(req.clone());
        if let Some(s) = &secret {
            call.metadata_mut()
                .insert(troupe::security::ACTOR_SECRET_HEADER, s.clone());
        }
        call.set_timeout(if last {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(5)
        });
        match client.heartbeat(call).await {
            Ok(resp) => {
                if let Some(t) = failing_since.take() {
                    tracing::info!(after_s = t.elapsed().as_secs_f64(), "coordinator reachable again");
                }
                let resp = resp.into_inner();
                let mut known = learner_addresses.borrow().clone();
                let heard = std::iter::once((String::new(), resp.learner_address)).chain(resp.learner_addresses);
                let mut changed = false;
                for (policy, addr) in heard {
                    if !addr.is_empty() && known.get(&policy) != Some(&addr) {
                        tracing::info!(policy = %policy, learner = %addr, "learner address changed");
                        known.insert(policy, addr);
                        changed = true;
                    }
                }
                if changed {
                    learner_addresses.send_replace(known);
                }
                more_waiting = progress.lock().expect("progress lock").episodes.len() >= MAX_EPISODES_PER_HEARTBEAT;
            }
            Err(status) => {
                if failing_since.is_none() {
                    tracing::warn!(code = ?status.code(), message = status.message(), "heartbeat failed, will retry");
                    failing_since = Some(Instant::now());
                }
                more_waiting = false;
                if matches!(status.code(), tonic::Code::NotFound | tonic::Code::PermissionDenied) {
                    // The coordinator does not know this id: retrying cannot help.
                    tracing::error!(code = ?status.code(), message = status.message(), "the coordinator refused this actor's reports");
                    return;
                }
                unconfirmed = Some(req);
            }
        }
    }
}
