//! The coordinator: owns the run config, policy versions (in Redis), actor registration and the
//! run's progress.
//!
//! - [`service`]: the gRPC service, which hands each call to the piece owning its state:
//! - [`actors`]: the actor registry and liveness;
//! - [`run_policies`]: the env's spaces and the run's policies (the config's mapping applied);
//! - [`policies`]: one policy's versions (minting, retention, the in-memory copies), its
//!   learner [`lease`] and address, and its recent returns;
//! - [`stats`]: the run's totals and the team's returns;
//! - [`recovery`]: Redis losing its data, and writing it back;
//! - [`store`]: Redis keys and the retention rule;
//! - [`distribution`]: policy-distribution latency from the actors' heartbeats;
//! - [`report`]: summary.json and the learning curve (used by `troupe-watch`);
//! - [`replay`]: the replay service (tables in Redis), served beside the coordinator or alone
//!   (`--role replay`).

pub mod actors;
pub mod distribution;
pub mod lease;
pub mod policies;
pub mod recovery;
pub mod replay;
pub mod report;
pub mod run_policies;
pub mod service;
pub mod stats;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use proto::v1::coordinator_server::CoordinatorServer;
use proto::v1::replay_server::ReplayServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use troupe::RunConfig;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "coordinator",
    about = "Troupe coordinator: run config, policy versions in Redis, registration, status"
)]
pub struct Args {
    /// The run config (TOML). See docs/CONFIG.md.
    #[arg(long, env = "TROUPE_CONFIG")]
    pub config: PathBuf,
    /// gRPC listen address; port 0 picks a free port.
    #[arg(long, env = "TROUPE_COORDINATOR_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    #[arg(long, env = "TROUPE_METRICS_LISTEN", default_value = "127.0.0.1:9100")]
    pub metrics_listen: SocketAddr,
    /// Redis URL: redis://host:port/db or redis+unix:///path/to/socket.
    #[arg(long, env = "TROUPE_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// How long to keep trying to reach Redis at start-up, in seconds.
    #[arg(long, env = "TROUPE_REDIS_PATIENCE_S", default_value_t = 30.0)]
    pub redis_patience_s: f64,
    /// Once serving, write {"grpc", "metrics"} as JSON here.
    #[arg(long, env = "TROUPE_READY_FILE")]
    pub ready_file: Option<PathBuf>,
    #[arg(long, env = "TROUPE_LOG_JSON")]
    pub log_json: bool,
    /// Also serve gRPC health in plain text here (for probes when TLS is on); port 0 picks one.
    #[arg(long, env = "TROUPE_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// What this process serves: the coordinator and the replay service (`all`), or one of
    /// them (large runs put replay on nodes of its own).
    #[arg(long, env = "TROUPE_ROLE", value_enum, default_value_t = ServeRole::All)]
    pub role: ServeRole,
    /// The replay tables' Redis instances (shards), repeated or comma-separated; default: the
    /// coordinator's `--redis-url`.
    #[arg(long = "replay-redis-url", env = "TROUPE_REPLAY_REDIS_URLS", value_delimiter = ',')]
    pub replay_redis_urls: Vec<String>,
    #[command(flatten)]
    pub tls: troupe::security::TlsArgs,
    #[command(flatten)]
    pub auth: troupe::security::AuthArgs,
}

/// What a coordinator process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServeRole {
    /// The coordinator and the replay service.
    All,
    /// The coordinator alone.
    Coordinator,
    /// The replay service alone.
    Replay,
}

/// Who may call what: actors register, report and fetch; the learner registers, keeps its lease
/// and publishes; an evaluator reads; the admin may do all of it and pin.
pub fn method_roles(path: &str) -> Option<&'static [troupe::security::Role]> {
    use troupe::security::Role::{self, *};
    if let Some(method) = path.strip_prefix("/troupe.v1.Replay/") {
        // Actors or learners insert (either may, by config); learners sample and reprioritize.
        return Some(match method {
            "Insert" => &[Actor, Learner, Admin],
            "Sample" | "UpdatePriorities" => &[Learner, Admin],
            "TableInfo" => &[Actor, Learner, Evaluator, Admin],
            _ => return None,
        });
    }
    const ACTOR: &[Role] = &[Actor, Admin];
    const LEARNER: &[Role] = &[Learner, Admin];
    const READ: &[Role] = &[Actor, Learner, Evaluator, Admin];
    const STATUS: &[Role] = &[Learner, Evaluator, Admin];
    const ADMIN: &[Role] = &[Admin];
    let method = path.strip_prefix("/troupe.v1.Coordinator/")?;
    Some(match method {
        "RegisterActor" | "ReportEnvSpec" | "Heartbeat" => ACTOR,
        "RegisterLearner" | "RenewLearnerLease" | "PublishPolicy" => LEARNER,
        "WatchPolicies" | "GetPolicy" => READ,
        "Status" => STATUS,
        "PinPolicy" => ADMIN,
        _ => return None,
    })
}

/// How long the coordinator waits for open calls (policy watches, fetches) after a signal.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

pub async fn run(
    args: Args,
    security: troupe::security::Security,
    config: RunConfig,
    listener: TcpListener,
    metrics_addr: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let coordinator = match args.role {
        ServeRole::All | ServeRole::Coordinator => {
            let store = store::Store::connect(
                &args.redis_url,
                &config.name,
                Duration::from_secs_f64(args.redis_patience_s),
            )
            .await?;
            let service = std::sync::Arc::new(
                service::CoordinatorService::recover(config.clone(), store, security.actor_binding(), shutdown.clone())
                    .await?,
            );
            tokio::spawn({
                let service = service.clone();
                let shutdown = shutdown.clone();
                async move { service.upkeep(shutdown).await }
            });
            Some(
                CoordinatorServer::from_arc(service)
                    .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(proto::MAX_MESSAGE_BYTES),
            )
        }
        ServeRole::Replay => None,
    };
    let replay = match args.role {
        ServeRole::All | ServeRole::Replay => {
            let urls = if args.replay_redis_urls.is_empty() {
                vec![args.redis_url.clone()]
            } else {
                args.replay_redis_urls.clone()
            };
            let shards =
                replay::storage::Shards::connect(&urls, &config.name, Duration::from_secs_f64(args.redis_patience_s))
                    .await?;
            tracing::info!(
                shards = shards.len(),
                tables = config.replay.tables.len(),
                "replay serving"
            );
            Some(
                ReplayServer::new(replay::ReplayService::new(config.replay.clone(), shards))
                    .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(proto::MAX_MESSAGE_BYTES),
            )
        }
        ServeRole::Coordinator => None,
    };
    let health_role = match args.role {
        ServeRole::Replay => troupe::health::REPLAY,
        _ => troupe::health::COORDINATOR,
    };
    let (mut health, health_service) = troupe::health::health_service(health_role).await;
    let plain_health = match args.health_listen {
        Some(addr) => Some(health.serve_plain(addr, shutdown.clone()).await?),
        None => None,
    };
    let local = listener.local_addr()?;
    if let Some(path) = &args.ready_file {
        troupe::process::write_ready_file(
            path,
            &serde_json::json!({
                "grpc": local.to_string(),
                "metrics": metrics_addr.to_string(),
                "health": plain_health.map(|a| a.to_string()),
            }),
        )?;
    }
    tracing::info!(listen = %local, "coordinator serving");
    health.set(troupe::health::ServingStatus::Serving).await;
    let server = troupe::process::service_server(&security, method_roles)?
        .add_service(health_service)
        .add_optional_service(coordinator)
        .add_optional_service(replay)
        .serve_with_incoming_shutdown(troupe::process::incoming(listener), shutdown.clone().cancelled_owned());
    let mut server = std::pin::pin!(server);
    tokio::select! {
        r = &mut server => r?,
        _ = shutdown.cancelled() => {
            // Open calls get a bounded time to finish.
            match tokio::time::timeout(DRAIN_DEADLINE, &mut server).await {
                Ok(r) => r?,
                Err(_) => tracing::warn!("calls still open after {DRAIN_DEADLINE:?}; exiting"),
            }
        }
    }
    tracing::info!("drained");
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Every Coordinator RPC in the protocol has roles: a new one cannot be silently refused
    /// when tokens are on (the table is hand-written; this keeps it true to the generated list).
    #[test]
    fn every_coordinator_method_has_roles() {
        let ours: Vec<&str> = proto::methods::GRPC_METHODS
            .iter()
            .copied()
            .filter(|m| m.starts_with("troupe.v1.Coordinator/") || m.starts_with("troupe.v1.Replay/"))
            .collect();
        assert!(ours.len() >= 14, "{ours:?}");
        for m in ours {
            let roles = super::method_roles(&format!("/{m}")).unwrap_or_else(|| panic!("{m}: no roles"));
            assert!(
                roles.contains(&troupe::security::Role::Admin),
                "{m}: admin may call every method"
            );
        }
        assert!(super::method_roles("/troupe.v1.Coordinator/NoSuchMethod").is_none());
    }
}
