use clap::Parser;
use troupe::process::shutdown_token;
use troupe::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = learner::Args::parse();
    telemetry::init_tracing(args.log_json);
    let shutdown = shutdown_token();
    let metrics_addr = telemetry::start_metrics(args.metrics_listen, shutdown.clone()).await?;
    telemetry::set_build_info("learner");
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    learner::run(args, listener, metrics_addr, shutdown).await
}
