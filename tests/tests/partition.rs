//! Partitions: a process on its own "host" (a network namespace joined by a veth pair) loses
//! its link for 10 s and gets it back. Nothing hangs: the cut-off process reconnects with
//! backoff and training goes on, both for an actor and for the learner (whose link to the
//! coordinator, and the actors' to it, are cut). Needs root for `ip netns`, as CI has.

use std::time::Duration;

use tests::{cartpole_config, eventually, Cluster, NetNs};

const CUT: Duration = Duration::from_secs(10);

/// The frames the coordinator has counted for `actor_id`.
async fn actor_frames(cluster: &Cluster, actor_id: u64) -> anyhow::Result<u64> {
    let s = cluster.status().await?;
    Ok(s.actors.iter().find(|a| a.actor_id == actor_id).map_or(0, |a| a.frames))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_cut_off_for_10_s_reconnects_and_training_goes_on() -> anyhow::Result<()> {
    let ns = NetNs::create(0)?;
    let mut cluster = Cluster::start_across(&cartpole_config(), &[], true, Some(&ns), None).await?;
    let id = cluster.add_actor_in(Some(&ns)).await?;
    let before = eventually(
        "the namespaced actor's frames arrive",
        Duration::from_secs(60),
        || async {
            let f = actor_frames(&cluster, id).await?;
            Ok((f > 10_000).then_some(f))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", cluster.logs()))?;

    ns.cut()?;
    tokio::time::sleep(CUT).await;
    let version_during = cluster.status().await?.latest_version;
    ns.restore()?;

    // Heartbeats resume (its frames grow again), the learner trains on its rollouts again (new
    // versions), and the actor process never stopped.
    eventually("the actor's reports resume", Duration::from_secs(60), || async {
        let f = actor_frames(&cluster, id).await?;
        Ok((f > before + 10_000).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", cluster.logs()))?;
    eventually("training goes on", Duration::from_secs(60), || async {
        Ok((cluster.status().await?.latest_version > version_during + 10).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", cluster.logs()))?;
    assert!(
        cluster.actors[0].child.try_wait()?.is_none(),
        "the actor kept running through the cut:\n{}",
        cluster.logs()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_cut_off_for_10_s_keeps_its_lease_and_training_goes_on() -> anyhow::Result<()> {
    let ns = NetNs::create(1)?;
    let mut cluster = Cluster::start_across(&cartpole_config(), &[], true, None, Some(&ns)).await?;
    cluster.add_actor().await?;
    let before = eventually("training started", Duration::from_secs(60), || async {
        let v = cluster.status().await?.latest_version;
        Ok((v >= 10).then_some(v))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", cluster.logs()))?;

    ns.cut()?;
    tokio::time::sleep(CUT).await;
    let during = cluster.status().await?.latest_version;
    // Publishing needs the coordinator: nothing (or a publish already in flight) got through.
    assert!(
        during <= before + 2,
        "published across a cut link: {before} -> {during}"
    );
    ns.restore()?;

    // The learner's publishes and lease renewals get through again (no other learner took the
    // lease, so its epoch is still current), actors stream to it again, and training goes on.
    eventually("training goes on", Duration::from_secs(60), || async {
        Ok((cluster.status().await?.latest_version > during + 10).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", cluster.logs()))?;
    assert!(
        cluster.learner.as_mut().unwrap().child.try_wait()?.is_none(),
        "the learner kept running through the cut:\n{}",
        cluster.logs()
    );
    assert!(cluster.actors[0].child.try_wait()?.is_none(), "{}", cluster.logs());
    Ok(())
}
