//! A Python-hosted env that raises mid-episode does not take its actor down: the actor logs a
//! clear error naming the env, the call and the field, rebuilds the env, drops the broken
//! unroll and goes on; the learner keeps training on what it sends.

use std::time::Duration;

use tests::{eventually, metric, scrape, shipped_config, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_rebuilds_a_failing_python_env_and_training_goes_on() -> anyhow::Result<()> {
    let _ = tests::envs_site_packages();
    let mut config = shipped_config("cartpole-gymnasium");
    config.env.id = "FaultyCartPole".into();
    config.env.backend = troupe::config::EnvBackend::Factory;
    config.env.factory = "faulty_env:make".into();
    // Each env instance raises on its 300th step: every rebuild fails again a little later.
    config.env.kwargs.insert("mode".into(), "raise".into());
    config.env.kwargs.insert("at".into(), 300.into());
    config.env.python_path = vec![tests::repo_root().join("actor/tests/fixtures").display().to_string()];
    let mut cluster = Cluster::start(&config).await?;
    cluster.add_actor().await?;
    cluster.wait_learner().await?;
    let actor_metrics = cluster.actor_metrics[0].clone();
    let errors = |m: &str| metric(m, "troupe_actor_env_errors_total").unwrap_or(0.0);
    eventually(
        "the env failed and was rebuilt twice",
        Duration::from_secs(120),
        || async { Ok((errors(&scrape(&actor_metrics)?) >= 2.0).then_some(())) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", cluster.logs()))?;
    let updates = |c: &Cluster| {
        metric(
            &scrape(&c.learner_metrics).unwrap_or_default(),
            "troupe_learner_updates_total",
        )
        .unwrap_or(0.0)
    };
    let before = updates(&cluster);
    eventually(
        "the learner keeps training after the failures",
        Duration::from_secs(60),
        || async { Ok((updates(&cluster) > before + 10.0).then_some(())) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", cluster.logs()))?;
    assert!(
        cluster.actors[0].child.try_wait()?.is_none(),
        "the actor is still running{}",
        cluster.logs()
    );
    let logs = cluster.logs();
    assert!(
        logs.contains("env FaultyCartPole: step: exception: RuntimeError: the physics engine exploded"),
        "the error names the env, the call and the field:{logs}"
    );
    Ok(())
}
