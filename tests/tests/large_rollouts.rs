//! A valid config whose unrolls are far over the 16 MiB message cap (4096 CartPole envs x 128
//! steps, ~25 MB a rollout) trains: the actor splits each rollout by columns into messages
//! under the cap. (It used to loop on "h2 protocol error" and never train.)

use std::time::Duration;

use tests::{cartpole_config, eventually, metric, scrape, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_over_the_message_cap_are_split_and_train() -> anyhow::Result<()> {
    let mut config = cartpole_config();
    config.actor.num_envs = 4096;
    config.actor.unroll_length = 128;
    config.learner.batch_size = 512;
    let mut cluster = Cluster::start(&config).await?;
    cluster.add_actor().await?;
    let actor_metrics = cluster.actor_metrics[0].clone();
    // One unroll is 4096 columns: several messages, every column trained on.
    eventually(
        "the learner trains on a whole split unroll",
        Duration::from_secs(180),
        || async {
            let m = scrape(&cluster.learner_metrics)?;
            Ok((metric(&m, "troupe_learner_updates_total").unwrap_or(0.0) >= 8.0).then_some(m))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", cluster.logs()))?;
    let actor = scrape(&actor_metrics)?;
    let sent = metric(&actor, "troupe_actor_rollouts_sent_total").unwrap_or(0.0);
    let learner = scrape(&cluster.learner_metrics)?;
    let accepted = metric(&learner, "troupe_learner_rollouts_total").unwrap_or(0.0);
    assert!(sent >= 2.0, "an unroll goes out as several messages: {sent}");
    assert!(accepted >= 2.0, "{accepted}");
    let rejected: f64 = learner
        .lines()
        .filter(|l| l.starts_with("troupe_learner_rollouts_rejected_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(rejected, 0.0, "{learner}");
    assert!(!cluster.logs().contains("h2 protocol error"), "{}", cluster.logs());
    Ok(())
}
