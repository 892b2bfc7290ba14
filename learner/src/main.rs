use clap::Parser;
use troupe::process::{shutdown_token, EXIT_USAGE};
use troupe::security::Security;
use troupe::telemetry;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = learner::Args::parse();
    telemetry::init_tracing(args.log_json);
    let security = match Security::load(&args.tls, &args.auth) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("learner: {e}");
            std::process::exit(EXIT_USAGE);
        }
    };
    security.log("learner");
    let shutdown = shutdown_token();
    let metrics_addr = telemetry::start_learner_metrics(
        args.metrics_listen,
        args.policy.as_deref().unwrap_or(troupe::spaces::DEFAULT_POLICY),
        shutdown.clone(),
    )
    .await?;
    telemetry::set_build_info("learner");
    loop {
        // Health first: a learner standing by for the lease is live (not ready) to probes.
        let this_run = shutdown.child_token();
        let plain_health = match args.health_listen {
            Some(addr) => {
                let (health, addr) =
                    troupe::health::serve_health_only(addr, troupe::health::LEARNER, this_run.clone()).await?;
                Some(learner::PlainHealth { health, addr })
            }
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(args.listen).await?;
        match learner::run(
            args.clone(),
            security.clone(),
            listener,
            metrics_addr,
            plain_health,
            shutdown.clone(),
        )
        .await?
        {
            learner::Ended::Shutdown => return Ok(()),
            learner::Ended::Fenced if args.on_fenced == learner::OnFenced::Wait && !shutdown.is_cancelled() => {
                tracing::warn!("fenced: standing by for the lease (--on-fenced wait)");
                // This run's servers give their ports back before the next run binds them.
                this_run.cancel();
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            learner::Ended::Fenced => {
                eprintln!(
                    "learner: another learner holds the lease (exit status {})",
                    learner::EXIT_FENCED
                );
                std::process::exit(learner::EXIT_FENCED);
            }
        }
    }
}
