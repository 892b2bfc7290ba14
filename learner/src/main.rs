use clap::Parser;
use troupe::process::shutdown_token;
use troupe::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = learner::Args::parse();
    telemetry::init_tracing(args.log_json);
    let metrics = telemetry::install_metrics()?;
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_listen).await?;
    let metrics_addr = metrics_listener.local_addr()?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let shutdown = shutdown_token();
    tokio::spawn(telemetry::serve_metrics(metrics_listener, metrics, shutdown.clone()));
    learner::run(args, listener, metrics_addr, shutdown).await
}
