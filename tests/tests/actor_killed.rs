//! An actor killed with SIGKILL mid-run: training goes on with the other, the coordinator stops
//! listing the dead one, and a restarted actor registers and contributes.

use std::time::Duration;

use tests::{cartpole_config, eventually, metric, scrape, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_survives_a_killed_actor_and_a_new_one_rejoins() -> anyhow::Result<()> {
    let mut config = cartpole_config();
    config.coordinator.actor_timeout_s = 2.0;
    let mut cluster = Cluster::start(&config).await?;
    let first = cluster.add_actor().await?;
    let second = cluster.add_actor().await?;
    eventually(
        "both actors report and training runs",
        Duration::from_secs(60),
        || async {
            let s = cluster.status().await?;
            Ok((s.actors.len() == 2 && s.actors.iter().all(|a| a.frames > 0) && s.latest_version >= 5).then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", cluster.logs()))?;

    cluster.actors[0].kill9();
    let updates_at_kill = metric(&scrape(&cluster.learner_metrics)?, "troupe_learner_updates_total").unwrap_or(0.0);
    let version_at_kill = cluster.status().await?.latest_version;

    // The dead actor drops out of the status; the live one goes on; the learner keeps updating.
    let s = eventually(
        "the killed actor is gone from the status",
        Duration::from_secs(20),
        || async {
            let s = cluster.status().await?;
            Ok((s.actors.len() == 1).then_some(s))
        },
    )
    .await?;
    assert_eq!(s.actors[0].actor_id, second);
    eventually(
        "the learner keeps training after the kill",
        Duration::from_secs(30),
        || async {
            let u = metric(&scrape(&cluster.learner_metrics)?, "troupe_learner_updates_total").unwrap_or(0.0);
            let v = cluster.status().await?.latest_version;
            Ok((u > updates_at_kill + 50.0 && v > version_at_kill + 5).then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", cluster.logs()))?;

    // A restarted actor gets a new id, the latest policy, and its rollouts are trained on.
    let third = cluster.add_actor().await?;
    assert!(
        third != first && third != second,
        "ids are never reused: {first} {second} {third}"
    );
    let version_at_rejoin = cluster.status().await?.latest_version;
    eventually(
        "the new actor acts with a current policy and reports frames",
        Duration::from_secs(30),
        || async {
            let s = cluster.status().await?;
            let a = s.actors.iter().find(|a| a.actor_id == third);
            Ok(
                a.filter(|a| a.frames > 0 && a.policy_version >= version_at_rejoin && s.actors.len() == 2)
                    .map(|_| ()),
            )
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", cluster.logs()))?;
    let m = scrape(&cluster.learner_metrics)?;
    assert_eq!(
        metric(&m, "troupe_learner_rollout_streams"),
        Some(2.0),
        "two live streams at the learner"
    );
    Ok(())
}
