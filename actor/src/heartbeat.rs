//! Reports frames and finished episodes to the coordinator, and learns the learner's current
//! address from its answers. When the coordinator is away the counts wait (bounded) for the
//! next successful heartbeat.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::v1::coordinator_client::CoordinatorClient;
use proto::v1::HeartbeatRequest;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::Progress;

pub async fn run(
    channel: Channel,
    actor_id: u64,
    interval: Duration,
    progress: Arc<Mutex<Progress>>,
    learner_address: watch::Sender<String>,
    shutdown: CancellationToken,
) {
    let mut client = CoordinatorClient::new(channel);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_failing = false;
    let mut last = false;
    while !last {
        tokio::select! {
            _ = ticker.tick() => {}
            // One last report of what is left, then stop.
            _ = shutdown.cancelled() => last = true,
        }
        let req = {
            let mut p = progress.lock().expect("progress lock");
            let dropped = std::mem::take(&mut p.dropped_episodes);
            if dropped > 0 {
                tracing::warn!(dropped, "episode reports dropped while the coordinator was unreachable");
            }
            HeartbeatRequest {
                actor_id,
                frames: std::mem::take(&mut p.frames),
                episodes: p.episodes.drain(..).collect(),
                policy_version: p.policy_version,
                policy_loaded_ms_ago: p.policy_since.map_or(0, |t| t.elapsed().as_millis() as u64),
            }
        };
        let mut call = tonic::Request::new(req.clone());
        call.set_timeout(if last {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(5)
        });
        match client.heartbeat(call).await {
            Ok(resp) => {
                if was_failing {
                    tracing::info!("coordinator reachable again");
                    was_failing = false;
                }
                let addr = resp.into_inner().learner_address;
                if !addr.is_empty() && *learner_address.borrow() != addr {
                    tracing::info!(learner = %addr, "learner address changed");
                    learner_address.send_replace(addr);
                }
            }
            Err(status) => {
                if !was_failing {
                    tracing::warn!(code = ?status.code(), message = status.message(), "heartbeat failed, will retry");
                    was_failing = true;
                }
                // Put the counts back so they are reported later.
                let mut p = progress.lock().expect("progress lock");
                p.frames += req.frames;
                for e in req.episodes.into_iter().rev() {
                    if p.episodes.len() < crate::MAX_PENDING_EPISODES {
                        p.episodes.push_front(e);
                    } else {
                        p.dropped_episodes += 1;
                    }
                }
            }
        }
    }
}
