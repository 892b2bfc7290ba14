//! Logs and metrics. Every metric Troupe exports is named here, with its description; each
//! process serves them in Prometheus text format on its own port (`/metrics`).
//!
//! Names follow Prometheus habits: snake_case with a unit, counters end in `_total`, labels come
//! from small fixed sets (never an actor id).

use std::net::SocketAddr;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod names {
    // Actor.
    pub const ACTOR_FRAMES: &str = "troupe_actor_frames_total";
    pub const ACTOR_EPISODES: &str = "troupe_actor_episodes_total";
    pub const ACTOR_EPISODE_RETURN: &str = "troupe_actor_episode_return";
    pub const ACTOR_EPISODE_LENGTH: &str = "troupe_actor_episode_length";
    pub const ACTOR_POLICY_VERSION: &str = "troupe_actor_policy_version";
    pub const ACTOR_ROLLOUTS_SENT: &str = "troupe_actor_rollouts_sent_total";
    pub const ACTOR_ROLLOUTS_DROPPED: &str = "troupe_actor_rollouts_dropped_total";
    pub const ACTOR_SEND_WAIT_SECONDS: &str = "troupe_actor_send_wait_seconds";
    pub const ACTOR_OUTBOX_DEPTH: &str = "troupe_actor_outbox_depth";
    pub const ACTOR_RECONNECTS: &str = "troupe_actor_reconnects_total";
    pub const ACTOR_POLICY_SWITCHES: &str = "troupe_actor_policy_switches_total";
    pub const ACTOR_REPLAY_INSERTED: &str = "troupe_actor_replay_inserted_total";
    pub const ACTOR_REPLAY_DROPPED: &str = "troupe_actor_replay_dropped_total";
    pub const ACTOR_REPLAY_WRITE_ERRORS: &str = "troupe_actor_replay_write_errors_total";
    pub const ACTOR_ENV_ERRORS: &str = "troupe_actor_env_errors_total";
    pub const ACTOR_POLICIES_REFUSED: &str = "troupe_actor_policies_refused_total";
    // Learner.
    pub const LEARNER_ROLLOUTS: &str = "troupe_learner_rollouts_total";
    pub const LEARNER_ROLLOUTS_REJECTED: &str = "troupe_learner_rollouts_rejected_total";
    pub const LEARNER_FRAMES: &str = "troupe_learner_frames_total";
    pub const LEARNER_QUEUE_DEPTH: &str = "troupe_learner_rollout_queue_depth";
    pub const LEARNER_QUEUE_CAPACITY: &str = "troupe_learner_rollout_queue_capacity";
    pub const LEARNER_BATCHER_BYTES: &str = "troupe_learner_batcher_backlog_bytes";
    pub const LEARNER_QUEUE_BYTES: &str = "troupe_learner_rollout_queue_bytes";
    pub const LEARNER_PREFETCH_BYTES: &str = "troupe_learner_prefetched_batch_bytes";
    pub const LEARNER_LEARNING_RATE: &str = "troupe_learner_learning_rate";
    pub const LEARNER_OBS_NORM_SAMPLES: &str = "troupe_learner_observation_norm_samples";
    pub const LEARNER_VALUE_NORM: &str = "troupe_learner_value_norm";
    pub const LEARNER_STREAMS: &str = "troupe_learner_rollout_streams";
    pub const LEARNER_UPDATES: &str = "troupe_learner_updates_total";
    pub const LEARNER_UPDATES_SKIPPED: &str = "troupe_learner_updates_skipped_total";
    pub const LEARNER_UPDATE_SECONDS: &str = "troupe_learner_update_seconds";
    pub const LEARNER_LOSS: &str = "troupe_learner_loss";
    pub const LEARNER_ENTROPY: &str = "troupe_learner_entropy";
    pub const LEARNER_GRAD_NORM: &str = "troupe_learner_grad_norm";
    pub const LEARNER_EXPLAINED_VARIANCE: &str = "troupe_learner_value_explained_variance";
    pub const LEARNER_POLICY_VERSION: &str = "troupe_learner_policy_version";
    pub const LEARNER_POLICY_LAG: &str = "troupe_learner_policy_lag";
    pub const LEARNER_DEVICE: &str = "troupe_learner_device_info";
    pub const LEARNER_PUBLISH_FAILURES: &str = "troupe_learner_publish_failures_total";
    // Coordinator.
    pub const COORD_POLICY_VERSION: &str = "troupe_coordinator_policy_version";
    pub const COORD_POLICIES_PUBLISHED: &str = "troupe_coordinator_policies_published_total";
    pub const COORD_POLICIES_STORED: &str = "troupe_coordinator_policies_stored";
    pub const COORD_ACTORS: &str = "troupe_coordinator_actors";
    pub const COORD_REGISTRATIONS: &str = "troupe_coordinator_registrations_total";
    pub const COORD_FRAMES: &str = "troupe_coordinator_frames_total";
    pub const COORD_EPISODES: &str = "troupe_coordinator_episodes_total";
    pub const COORD_MEAN_RETURN_100: &str = "troupe_coordinator_mean_return_100";
    pub const COORD_POLICY_MEAN_RETURN_100: &str = "troupe_coordinator_policy_mean_return_100";
    pub const COORD_WATCHERS: &str = "troupe_coordinator_policy_watchers";
    pub const COORD_REDIS_ERRORS: &str = "troupe_coordinator_redis_errors_total";
    pub const COORD_REDIS_UP: &str = "troupe_coordinator_redis_up";
    pub const COORD_POLICY_DISTRIBUTION_SECONDS: &str = "troupe_coordinator_policy_distribution_seconds";
    pub const COORD_LEARNER_EPOCH: &str = "troupe_coordinator_learner_epoch";
    pub const COORD_POLICY_FETCHES: &str = "troupe_coordinator_policy_fetches_total";
    pub const COORD_DUPLICATE_HEARTBEATS: &str = "troupe_coordinator_duplicate_heartbeats_total";
    pub const AUTH_REFUSED: &str = "troupe_auth_refused_total";
    pub const LEARNER_FENCED: &str = "troupe_learner_fenced_total";
    pub const LEARNER_CHECKPOINTS: &str = "troupe_learner_checkpoints_total";
    pub const ACTOR_EPISODES_DROPPED: &str = "troupe_actor_episode_reports_dropped_total";
    pub const LEARNER_GPU_MEMORY_USED: &str = "troupe_learner_gpu_memory_used_bytes";
    pub const LEARNER_GPU_MEMORY_TOTAL: &str = "troupe_learner_gpu_memory_total_bytes";
    // Learner, with replay (`learner.replay_ratio`).
    pub const LEARNER_REPLAYED_FRACTION: &str = "troupe_learner_replayed_fraction";
    pub const LEARNER_REPLAY_SAMPLE_AGE: &str = "troupe_learner_replay_sample_age";
    pub const LEARNER_REPLAY_INSERTED: &str = "troupe_learner_replay_inserted_total";
    pub const LEARNER_REPLAY_DROPPED: &str = "troupe_learner_replay_dropped_total";
    pub const LEARNER_REPLAY_WRITE_ERRORS: &str = "troupe_learner_replay_write_errors_total";
    pub const LEARNER_REPLAY_SAMPLE_FAILURES: &str = "troupe_learner_replay_sample_failures_total";
    // Learner, with Ape-X DQN (replay its only source).
    pub const LEARNER_REPLAY_WAIT_SECONDS: &str = "troupe_learner_replay_wait_seconds";
    pub const LEARNER_REPLAY_WAITING: &str = "troupe_learner_replay_waiting";
    pub const LEARNER_PRIORITY_UPDATES: &str = "troupe_learner_priority_updates_total";
    pub const LEARNER_PRIORITY_UPDATE_ERRORS: &str = "troupe_learner_priority_update_errors_total";
    // Replay (the replay service: the coordinator, or `coordinator --role replay`).
    pub const REPLAY_ITEMS: &str = "troupe_replay_items";
    pub const REPLAY_BYTES: &str = "troupe_replay_bytes";
    pub const REPLAY_INSERTS: &str = "troupe_replay_inserts_total";
    pub const REPLAY_SAMPLES: &str = "troupe_replay_samples_total";
    pub const REPLAY_EVICTIONS: &str = "troupe_replay_removed_total";
    pub const REPLAY_WAIT_SECONDS: &str = "troupe_replay_rate_limiter_wait_seconds";
    pub const REPLAY_TIMEOUTS: &str = "troupe_replay_rate_limiter_timeouts_total";
    pub const REPLAY_PRIORITY: &str = "troupe_replay_priority";
    pub const REPLAY_REDIS_ERRORS: &str = "troupe_replay_redis_errors_total";
    pub const REPLAY_ITEMS_LOST: &str = "troupe_replay_items_lost_total";

    pub const BUILD_INFO: &str = "troupe_build_info";
    pub const GRPC_SERVER_STARTED: &str = "troupe_grpc_server_started_total";
    pub const GRPC_SERVER_HANDLED: &str = "troupe_grpc_server_handled_total";
    pub const GRPC_SERVER_RECEIVED_BYTES: &str = "troupe_grpc_server_received_bytes_total";
    pub const GRPC_SERVER_SENT_BYTES: &str = "troupe_grpc_server_sent_bytes_total";
}

fn describe_all() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    use names::*;
    describe_counter!(ACTOR_FRAMES, Unit::Count, "environment steps taken by this actor");
    describe_counter!(ACTOR_EPISODES, Unit::Count, "episodes finished by this actor");
    describe_histogram!(ACTOR_EPISODE_RETURN, "undiscounted return of finished episodes");
    describe_histogram!(
        ACTOR_EPISODE_LENGTH,
        Unit::Count,
        "length of finished episodes, in steps"
    );
    describe_gauge!(ACTOR_POLICY_VERSION, "policy version the actor is acting with");
    describe_counter!(
        ACTOR_ROLLOUTS_SENT,
        Unit::Count,
        "rollouts handed to the learner stream"
    );
    describe_counter!(
        ACTOR_ROLLOUTS_DROPPED,
        Unit::Count,
        "rollouts a multi-policy actor dropped because their policy's outbox stayed full (that learner gone or far behind)"
    );
    describe_counter!(
        ACTOR_REPLAY_INSERTED,
        Unit::Count,
        "rollouts the actor wrote to replay (learner.replay_inserter = \"actors\")"
    );
    describe_counter!(
        ACTOR_REPLAY_DROPPED,
        Unit::Count,
        "rollouts the actor did not write to replay: its writer was backing off or behind"
    );
    describe_counter!(
        ACTOR_REPLAY_WRITE_ERRORS,
        Unit::Count,
        "failed replay insert calls of the actor"
    );
    describe_histogram!(
        ACTOR_SEND_WAIT_SECONDS,
        Unit::Seconds,
        "time the actor waited for room to send a rollout (backpressure)"
    );
    describe_gauge!(ACTOR_OUTBOX_DEPTH, "rollouts waiting in the actor's bounded send queue");
    describe_counter!(
        ACTOR_RECONNECTS,
        Unit::Count,
        "times the actor reconnected to a peer, by peer"
    );
    describe_counter!(
        ACTOR_POLICIES_REFUSED,
        Unit::Count,
        "policy versions the actor refused to load (malformed or non-finite weights)"
    );
    describe_counter!(
        ACTOR_ENV_ERRORS,
        Unit::Count,
        "env failures (exceptions, bad shapes or values) after which the actor rebuilt the env"
    );
    describe_counter!(
        ACTOR_POLICY_SWITCHES,
        Unit::Count,
        "times the actor switched to a newer policy version"
    );
    describe_counter!(LEARNER_ROLLOUTS, Unit::Count, "rollouts accepted by the learner");
    describe_counter!(
        LEARNER_ROLLOUTS_REJECTED,
        Unit::Count,
        "malformed rollouts rejected, by reason"
    );
    describe_counter!(
        LEARNER_FRAMES,
        Unit::Count,
        "environment steps consumed by learner updates"
    );
    describe_gauge!(LEARNER_QUEUE_DEPTH, "rollouts waiting in the learner's bounded queue");
    describe_gauge!(LEARNER_QUEUE_CAPACITY, "capacity of the learner's rollout queue");
    describe_gauge!(
        LEARNER_BATCHER_BYTES,
        Unit::Bytes,
        "bytes of rollout columns held back by the batcher for the next batch"
    );
    describe_gauge!(
        LEARNER_QUEUE_BYTES,
        Unit::Bytes,
        "bytes of validated rollouts waiting in the learner's queue for the batcher"
    );
    describe_gauge!(
        LEARNER_PREFETCH_BYTES,
        Unit::Bytes,
        "bytes of the batch assembled ahead, waiting for the model thread (0 or 1 batch)"
    );
    describe_gauge!(
        LEARNER_LEARNING_RATE,
        "learning rate of the last update (learner.lr_schedule)"
    );
    describe_gauge!(
        LEARNER_OBS_NORM_SAMPLES,
        "observations folded into the running observation statistics"
    );
    describe_gauge!(
        LEARNER_VALUE_NORM,
        "value-target statistics, by stat (mean, std), with value normalisation"
    );
    describe_gauge!(LEARNER_STREAMS, "open actor rollout streams");
    describe_counter!(LEARNER_UPDATES, Unit::Count, "optimizer steps taken");
    describe_counter!(
        LEARNER_UPDATES_SKIPPED,
        Unit::Count,
        "updates or snapshots skipped for non-finite values, by reason"
    );
    describe_histogram!(
        LEARNER_UPDATE_SECONDS,
        Unit::Seconds,
        "wall time of one update (batch to tensors, forward, backward, step)"
    );
    describe_gauge!(
        LEARNER_LOSS,
        "the algorithm's loss terms and statistics, last update, by algorithm and term (IMPALA: total, pg, baseline, entropy; APPO: total, policy, baseline, entropy, kl, clip_fraction)"
    );
    describe_gauge!(LEARNER_ENTROPY, "mean policy entropy of the last batch, in nats");
    describe_gauge!(LEARNER_GRAD_NORM, "gradient norm before clipping, last update");
    describe_gauge!(
        LEARNER_EXPLAINED_VARIANCE,
        "share of the value targets' variance the value net explains, last update (1 is perfect)"
    );
    describe_gauge!(LEARNER_POLICY_VERSION, "latest policy version the learner published");
    describe_histogram!(
        LEARNER_POLICY_LAG,
        "learner version minus the version that produced a rollout"
    );
    describe_gauge!(LEARNER_DEVICE, "1, labelled with the device the learner trains on");
    describe_counter!(
        LEARNER_PUBLISH_FAILURES,
        Unit::Count,
        "failed attempts to publish a policy version"
    );
    describe_gauge!(COORD_POLICY_VERSION, "latest stored policy version, by policy");
    describe_counter!(
        COORD_POLICIES_PUBLISHED,
        Unit::Count,
        "policy versions stored, by policy"
    );
    describe_gauge!(
        COORD_POLICIES_STORED,
        "policy versions currently kept in Redis, by policy"
    );
    describe_gauge!(COORD_ACTORS, "actors that sent a heartbeat within the timeout");
    describe_counter!(COORD_REGISTRATIONS, Unit::Count, "registrations, by role");
    describe_counter!(COORD_FRAMES, Unit::Count, "environment steps reported by all actors");
    describe_counter!(COORD_EPISODES, Unit::Count, "episodes reported by all actors");
    describe_gauge!(
        COORD_MEAN_RETURN_100,
        "mean return of the last 100 episodes over all actors (the team's: every agent's rewards summed)"
    );
    describe_gauge!(
        COORD_POLICY_MEAN_RETURN_100,
        "mean return of the last 100 episodes of each policy's agents (multi-policy runs), by policy"
    );
    describe_gauge!(COORD_WATCHERS, "open policy-version watch streams");
    describe_counter!(COORD_REDIS_ERRORS, Unit::Count, "failed Redis commands");
    describe_gauge!(
        LEARNER_REPLAYED_FRACTION,
        "share of the last batch's columns drawn from replay (0 when replay could not give them)"
    );
    describe_histogram!(
        LEARNER_REPLAY_SAMPLE_AGE,
        "age of replayed rollouts, in policy versions: the newest version minus the rollout's"
    );
    describe_counter!(
        LEARNER_REPLAY_INSERTED,
        Unit::Count,
        "accepted rollouts the learner wrote to replay"
    );
    describe_counter!(
        LEARNER_REPLAY_DROPPED,
        Unit::Count,
        "accepted rollouts not written to replay: its writer was backing off or behind"
    );
    describe_counter!(
        LEARNER_REPLAY_WRITE_ERRORS,
        Unit::Count,
        "failed replay insert calls of the learner"
    );
    describe_counter!(
        LEARNER_REPLAY_SAMPLE_FAILURES,
        Unit::Count,
        "batches whose replayed share replay could not give (filled from the stream instead)"
    );
    describe_histogram!(
        LEARNER_REPLAY_WAIT_SECONDS,
        Unit::Seconds,
        "how long an Ape-X learner waited for replay to give each batch (unreachable, below its minimum size, rate-limited)"
    );
    describe_gauge!(
        LEARNER_REPLAY_WAITING,
        "1 while an Ape-X learner has waited past apex.sample_deadline_s for a batch from replay"
    );
    describe_counter!(
        LEARNER_PRIORITY_UPDATES,
        Unit::Count,
        "replay items whose priority the learner updated from its loss"
    );
    describe_counter!(
        LEARNER_PRIORITY_UPDATE_ERRORS,
        Unit::Count,
        "priority updates that failed or were dropped (their items keep their old priorities)"
    );
    describe_gauge!(REPLAY_ITEMS, "items a replay table holds, by policy and table");
    describe_gauge!(REPLAY_BYTES, "payload bytes a replay table holds, by policy and table");
    describe_counter!(
        REPLAY_INSERTS,
        Unit::Count,
        "items inserted into a replay table, by policy and table"
    );
    describe_counter!(
        REPLAY_SAMPLES,
        Unit::Count,
        "items sampled from a replay table (each draw of a batch), by policy and table"
    );
    describe_counter!(
        REPLAY_EVICTIONS,
        Unit::Count,
        "items removed from a replay table, by policy, table and reason (evicted: beyond max_size; max_times_sampled)"
    );
    describe_histogram!(
        REPLAY_WAIT_SECONDS,
        Unit::Seconds,
        "time an insert or a sample waited on its table's rate limiter, by policy, table and side"
    );
    describe_counter!(
        REPLAY_TIMEOUTS,
        Unit::Count,
        "inserts and samples whose rate-limiter wait ran past its deadline (DEADLINE_EXCEEDED), by policy, table and side"
    );
    describe_histogram!(
        REPLAY_PRIORITY,
        "priorities given to replay items (inserted or updated), by policy and table"
    );
    describe_counter!(
        REPLAY_REDIS_ERRORS,
        Unit::Count,
        "failed Redis commands of the replay service"
    );
    describe_counter!(
        REPLAY_ITEMS_LOST,
        Unit::Count,
        "sampled items whose payload Redis no longer held (a Redis that lost its data): dropped from the table"
    );
    describe_gauge!(
        COORD_REDIS_UP,
        "1 if the coordinator's last Redis command or ping (every 5 s) succeeded, else 0"
    );
    describe_histogram!(
        COORD_POLICY_DISTRIBUTION_SECONDS,
        Unit::Seconds,
        "time from storing a policy version to the last live actor acting with it (or a newer one)"
    );
    describe_gauge!(COORD_LEARNER_EPOCH, "the newest learner lease epoch granted, by policy");
    describe_counter!(
        COORD_POLICY_FETCHES,
        Unit::Count,
        "GetPolicy calls served, by source (memory or redis)"
    );
    describe_counter!(
        COORD_DUPLICATE_HEARTBEATS,
        Unit::Count,
        "heartbeats whose sequence number was applied before (retries, not counted again)"
    );
    describe_counter!(
        AUTH_REFUSED,
        Unit::Count,
        "calls refused for a missing or unknown token or a role that may not call the method, by code"
    );
    describe_counter!(
        LEARNER_FENCED,
        Unit::Count,
        "times the coordinator refused this learner's epoch (another learner took the lease)"
    );
    describe_counter!(
        LEARNER_CHECKPOINTS,
        Unit::Count,
        "checkpoints written, by result (ok or error)"
    );
    describe_counter!(
        ACTOR_EPISODES_DROPPED,
        Unit::Count,
        "episode reports dropped because the pending buffer was full while the coordinator was unreachable"
    );
    describe_gauge!(
        LEARNER_GPU_MEMORY_USED,
        Unit::Bytes,
        "memory in use on the learner's GPU, all processes (CUDA only)"
    );
    describe_gauge!(
        LEARNER_GPU_MEMORY_TOTAL,
        Unit::Bytes,
        "memory of the learner's GPU (CUDA only)"
    );

    describe_gauge!(
        BUILD_INFO,
        "1, labelled with the process and the Troupe version it runs"
    );
    describe_counter!(
        GRPC_SERVER_STARTED,
        Unit::Count,
        "gRPC calls started on this server, by method"
    );
    describe_counter!(
        GRPC_SERVER_HANDLED,
        Unit::Count,
        "gRPC calls finished on this server, by method and status code"
    );
    describe_counter!(
        GRPC_SERVER_RECEIVED_BYTES,
        Unit::Bytes,
        "bytes of gRPC request bodies received by this server, by method"
    );
    describe_counter!(
        GRPC_SERVER_SENT_BYTES,
        Unit::Bytes,
        "bytes of gRPC response bodies sent by this server, by method"
    );
}

/// Sets `troupe_build_info{process, version}` to 1 (after the recorder is installed).
pub fn set_build_info(process: &'static str) {
    metrics::gauge!(names::BUILD_INFO, "process" => process, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// Installs the global Prometheus recorder (before any metric is described or touched).
/// `episode_returns` are the return histogram's buckets (the env's range; see
/// `EnvConfig::return_buckets`).
pub fn install_metrics(
    episode_returns: &[f64],
    global_labels: &[(&'static str, String)],
) -> anyhow::Result<PrometheusHandle> {
    let mut builder = PrometheusBuilder::new();
    for (key, value) in global_labels {
        builder = builder.add_global_label(*key, value.clone());
    }
    let handle = builder
        .set_buckets_for_metric(
            Matcher::Full(names::LEARNER_UPDATE_SECONDS.to_string()),
            &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0],
        )?
        .set_buckets_for_metric(
            Matcher::Full(names::ACTOR_SEND_WAIT_SECONDS.to_string()),
            &[0.0001, 0.001, 0.01, 0.1, 1.0, 10.0],
        )?
        .set_buckets_for_metric(Matcher::Full(names::ACTOR_EPISODE_RETURN.to_string()), episode_returns)?
        .set_buckets_for_metric(
            Matcher::Full(names::ACTOR_EPISODE_LENGTH.to_string()),
            &[
                1.0, 10.0, 25.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 27000.0, 100000.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full(names::COORD_POLICY_DISTRIBUTION_SECONDS.to_string()),
            &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
        )?
        .set_buckets_for_metric(
            Matcher::Full(names::LEARNER_REPLAY_SAMPLE_AGE.to_string()),
            &[0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0],
        )?
        .set_buckets_for_metric(
            Matcher::Full(names::LEARNER_REPLAY_WAIT_SECONDS.to_string()),
            &[0.0, 0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0],
        )?
        .set_buckets_for_metric(
            Matcher::Full(names::REPLAY_WAIT_SECONDS.to_string()),
            &[0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0],
        )?
        .set_buckets_for_metric(
            Matcher::Full(names::REPLAY_PRIORITY.to_string()),
            &[0.0, 0.001, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 100.0],
        )?
        .set_buckets_for_metric(
            Matcher::Full(names::LEARNER_POLICY_LAG.to_string()),
            &[0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
        )?
        .install_recorder()?;
    describe_all();
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(5));
            upkeep.run_upkeep();
        })?;
    Ok(handle)
}

/// Why this process is unhealthy, once something has made it so (`/healthz` then answers 503).
static UNHEALTHY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Marks the process unhealthy for good (the first reason is kept): a worker it cannot do
/// without has died, and a supervisor should restart it.
pub fn mark_unhealthy(reason: &str) {
    let _ = UNHEALTHY.set(reason.to_string());
}

/// Serves `/metrics` (Prometheus text format 0.0.4) and `/healthz` until `shutdown` fires.
/// `/healthz` answers 200 `ok`, or 503 with the reason after [`mark_unhealthy`].
pub async fn serve_metrics(
    listener: TcpListener,
    handle: PrometheusHandle,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::{http::header, routing::get, Router};
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = handle.render();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
            }),
        )
        .route(
            "/healthz",
            get(|| async {
                match UNHEALTHY.get() {
                    None => (axum::http::StatusCode::OK, "ok\n".to_string()),
                    Some(why) => (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        format!("unhealthy: {why}\n"),
                    ),
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Structured logs to stderr, filtered by `RUST_LOG` (default `info`), as text or JSON lines.
pub fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Installs the recorder, binds `addr` and serves `/metrics` there until `shutdown`; returns the
/// bound address (port 0 picks a free one).
pub async fn start_metrics(addr: SocketAddr, shutdown: CancellationToken) -> anyhow::Result<SocketAddr> {
    start_metrics_with(
        addr,
        &crate::config::EnvConfig::default().return_buckets(),
        &[],
        shutdown,
    )
    .await
}

/// [`start_metrics`] for a learner: every series it exports carries `policy="NAME"`, the
/// policy it trains (one learner process per policy, so the label's values are the run's
/// policies: low cardinality).
pub async fn start_learner_metrics(
    addr: SocketAddr,
    policy: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let buckets = crate::config::EnvConfig::default().return_buckets();
    start_metrics_with(addr, &buckets, &[("policy", policy.to_string())], shutdown).await
}

/// [`start_metrics`] with the env's episode-return buckets (the actor, once it knows its env).
pub async fn start_metrics_with(
    addr: SocketAddr,
    episode_returns: &[f64],
    global_labels: &[(&'static str, String)],
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let handle = install_metrics(episode_returns, global_labels)?;
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve_metrics(listener, handle, shutdown));
    Ok(bound)
}
