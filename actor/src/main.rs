use clap::Parser;
use troupe::process::{shutdown_token, write_ready_file, EXIT_USAGE};
use troupe::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = actor::Args::parse();
    telemetry::init_tracing(args.log_json);
    let metrics = telemetry::install_metrics()?;
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_listen).await?;
    let metrics_addr = metrics_listener.local_addr()?;
    let shutdown = shutdown_token();
    tokio::spawn(telemetry::serve_metrics(metrics_listener, metrics, shutdown.clone()));

    let reg = match actor::register(&args.coordinator, &shutdown).await {
        Ok(Some(reg)) => reg,
        Ok(None) => return Ok(()),
        Err(e) => {
            eprintln!("actor: {e:#}");
            std::process::exit(EXIT_USAGE);
        }
    };
    if let Some(path) = &args.ready_file {
        write_ready_file(
            path,
            &serde_json::json!({"actor_id": reg.actor_id, "metrics": metrics_addr.to_string()}),
        )?;
    }
    actor::run(args, reg, shutdown).await
}
