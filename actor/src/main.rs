use clap::Parser;
use troupe::process::{shutdown_token, write_ready_file, EXIT_USAGE};
use troupe::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = actor::Args::parse();
    telemetry::init_tracing(args.log_json);
    let security = match troupe::security::Security::load(&args.tls, &args.auth) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("actor: {e}");
            std::process::exit(EXIT_USAGE);
        }
    };
    let shutdown = shutdown_token();
    let (health, health_addr) =
        troupe::health::serve_health_only(args.health_listen, troupe::health::ACTOR, shutdown.clone()).await?;
    let reg = match actor::register(&args.coordinator, &security, &shutdown).await {
        Ok(Some(reg)) => reg,
        Ok(None) => return Ok(()),
        Err(e) => {
            eprintln!("actor: {e:#}");
            std::process::exit(EXIT_USAGE);
        }
    };
    // Metrics start once the run config is known: the return histogram follows the env's range.
    let buckets = reg.config.env.return_buckets();
    let metrics_addr = telemetry::start_metrics_with(args.metrics_listen, &buckets, &[], shutdown.clone()).await?;
    telemetry::set_build_info("actor");
    health.set(troupe::health::ServingStatus::Serving).await;
    if let Some(path) = &args.ready_file {
        write_ready_file(
            path,
            &serde_json::json!({
                "actor_id": reg.actor_id,
                "metrics": metrics_addr.to_string(),
                "health": health_addr.to_string(),
            }),
        )?;
    }
    actor::run(args, security, reg, shutdown).await
}
