//! A dead model thread is not hidden: the learner fails `/healthz` with the reason and exits
//! non-zero, so that a supervisor restarts it. (It used to go on serving streams that nothing
//! trained on, with `/healthz` answering ok.)

use std::time::Duration;

use tests::{cartpole_config, eventually, http_get, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_model_thread_fails_health_and_exits_non_zero() -> anyhow::Result<()> {
    let mut cluster =
        Cluster::start_with_learner_args(&cartpole_config(), &["--fault-model-panic-after", "20"]).await?;
    let healthz = cluster.learner_metrics.clone();
    assert!(http_get(&healthz, "/healthz")?.starts_with("HTTP/1.0 200"));
    cluster.add_actor().await?;
    let answer = eventually("/healthz fails", Duration::from_secs(60), || async {
        let r = http_get(&healthz, "/healthz").unwrap_or_default();
        Ok(r.contains(" 503 ").then_some(r))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", cluster.logs()))?;
    assert!(
        answer.contains("unhealthy: the model thread died: injected fault after 20 updates"),
        "{answer}"
    );
    let learner = cluster.learner.as_mut().unwrap();
    let status = eventually("the learner exits", Duration::from_secs(30), || {
        let s = learner.child.try_wait();
        async move { Ok(s?) }
    })
    .await?;
    assert!(!status.success(), "exit status {status:?}");
    Ok(())
}
