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
    // A native env's agents are known now: the config's mapping of them to policies must fit.
    if config.env.backend == troupe::config::EnvBackend::Native {
        if let Some(spec) = troupe::env::native_spec(&config.env.id) {
            if let Err(e) = troupe::policy_map::policy_specs(&config, &spec) {
                eprintln!("coordinator: {e}");
                std::process::exit(EXIT_USAGE);
            }
        }
    }
    let security = match troupe::security::Security::load(&args.tls, &args.auth) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("coordinator: {e}");
            std::process::exit(EXIT_USAGE);
        }
    };
    security.log("coordinator");
    let shutdown = shutdown_token();
    let metrics_addr = telemetry::start_metrics(args.metrics_listen, shutdown.clone()).await?;
    telemetry::set_build_info("coordinator");
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    coordinator::run(args, security, config, listener, metrics_addr, shutdown).await
}
