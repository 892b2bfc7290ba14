//! The coordinator: owns the run config, policy versions (in Redis), actor registration and the
//! run's progress.
//!
//! - [`store`]: Redis keys and the retention rule.
//! - [`service`]: the gRPC service.
//! - [`distribution`]: policy-distribution latency from the actors' heartbeats.
//! - [`report`]: summary.json and the learning curve (used by `troupe-watch`).

pub mod distribution;
pub mod report;
pub mod service;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use proto::v1::coordinator_server::CoordinatorServer;
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
}

pub async fn run(
    args: Args,
    config: RunConfig,
    listener: TcpListener,
    metrics_addr: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let store = store::Store::connect(
        &args.redis_url,
        &config.name,
        Duration::from_secs_f64(args.redis_patience_s),
    )
    .await?;
    let service = std::sync::Arc::new(service::CoordinatorService::recover(config, store, shutdown.clone()).await?);
    tokio::spawn({
        let service = service.clone();
        let shutdown = shutdown.clone();
        async move { service.upkeep(shutdown).await }
    });
    let (health, health_service) = troupe::health::health_service(troupe::health::COORDINATOR).await;
    let local = listener.local_addr()?;
    if let Some(path) = &args.ready_file {
        troupe::process::write_ready_file(
            path,
            &serde_json::json!({"grpc": local.to_string(), "metrics": metrics_addr.to_string()}),
        )?;
    }
    tracing::info!(listen = %local, "coordinator serving");
    health.set(troupe::health::ServingStatus::Serving).await;
    troupe::process::grpc_server()
        .layer(troupe::grpc_metrics::GrpcMetricsLayer::new(&[
            proto::methods::GRPC_METHODS,
            troupe::grpc_metrics::HEALTH_METHODS,
        ]))
        .add_service(health_service)
        .add_service(
            CoordinatorServer::from_arc(service)
                .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(proto::MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(troupe::process::incoming(listener), shutdown.cancelled_owned())
        .await?;
    tracing::info!("drained");
    Ok(())
}
