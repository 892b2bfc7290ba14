use clap::Parser;
use troupe::process::{shutdown_token, EXIT_USAGE};
use troupe::{telemetry, RunConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = coordinator::Args::parse();
    telemetry::init_tracing(args.log_json);
    // Validate the run config before binding anything.
    let config = match RunConfig::from_file(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("coordinator: {e}");
            std::process::exit(EXIT_USAGE);
        }
    };
    let metrics = telemetry::install_metrics()?;
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_listen).await?;
    let metrics_addr = metrics_listener.local_addr()?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let shutdown = shutdown_token();
    tokio::spawn(telemetry::serve_metrics(metrics_listener, metrics, shutdown.clone()));
    coordinator::run(args, config, listener, metrics_addr, shutdown).await
}
