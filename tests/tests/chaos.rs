//! Chaos, short: during a CartPole run (TLS and tokens on, Redis with AOF everysec), SIGKILL in
//! turn an actor, the learner, the coordinator and Redis (then Redis again, with its data lost),
//! restarting each. The run still solves;
//! the latest version never goes back and every version published stays stored; the learner
//! resumes from its checkpoint; and no actor's frames are counted more than it stepped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tests::{cartpole_config, eventually, metric, scrape, wait_solved, Cluster};

async fn wait_version(cluster: &Cluster, at_least: u64, what: &str) -> anyhow::Result<u64> {
    eventually(what, Duration::from_secs(90), || async {
        let s = cluster.status().await?;
        Ok((s.latest_version >= at_least).then_some(s.latest_version))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", cluster.logs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cartpole_solves_through_sigkills_of_every_part() -> anyhow::Result<()> {
    let mut config = cartpole_config();
    // Nothing is dropped by retention, so every version seen can be looked for at the end.
    config.coordinator.keep_versions = 1_000_000;
    config.learner.checkpoint_every_s = 1.0;
    let ckpt_dir = tempfile::tempdir()?;
    let ckpt = ckpt_dir.path().display().to_string();
    let learner_args = ["--checkpoint-dir", ckpt.as_str()];
    let mut cluster = Cluster::start_with_learner_args(&config, &learner_args).await?;
    // (index in the cluster's actors, actor id) of the running actors.
    let mut live = vec![(0, cluster.add_actor().await?), (1, cluster.add_actor().await?)];

    // Watch the latest version throughout: it must never go back.
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let watcher = {
        let seen = seen.clone();
        let mut client = cluster.client().await?;
        tokio::spawn(async move {
            loop {
                if let Ok(s) = client.status(proto::v1::StatusRequest {}).await {
                    seen.lock().unwrap().push(s.into_inner().latest_version);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let v = wait_version(&cluster, 10, "training started").await?;
    // 1. An actor.
    cluster.actors[0].kill9();
    live[0] = (2, cluster.add_actor().await?);
    let v = wait_version(&cluster, v + 10, "training goes on after an actor died").await?;

    // 2. The learner, once it has a checkpoint; the new one resumes from it.
    eventually("a checkpoint is written", Duration::from_secs(30), || async {
        Ok(std::fs::read_dir(ckpt_dir.path())?
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("checkpoint-"))
            .then_some(()))
    })
    .await?;
    cluster.learner.as_mut().unwrap().kill9();
    cluster.spawn_learner_with(&learner_args)?;
    cluster.wait_learner().await?;
    let log = std::fs::read_to_string(&cluster.learner.as_ref().unwrap().log)?;
    let resumed = log
        .lines()
        .find(|l| l.contains("resumed from checkpoint"))
        .unwrap_or_else(|| panic!("the new learner resumes from its checkpoint:\n{log}"));
    assert!(
        !resumed.contains("learner_step=0 "),
        "it resumed a trained learner: {resumed}"
    );
    let v = wait_version(&cluster, v + 10, "training goes on after the learner died").await?;

    // 3. The coordinator.
    cluster.restart_coordinator().await?;
    let v = wait_version(&cluster, v + 10, "training goes on after the coordinator died").await?;

    // 4. Redis (its append-only file keeps what was fsynced; the coordinator re-seeds the rest).
    cluster.restart_redis()?;
    let v = wait_version(&cluster, v + 10, "training goes on after Redis died").await?;

    // 5. Redis again, its data lost with it: the coordinator writes back what it holds.
    cluster.restart_redis_empty()?;
    wait_version(&cluster, v + 10, "training goes on after Redis lost its data").await?;
    eventually("the coordinator re-seeds Redis", Duration::from_secs(30), || async {
        Ok(cluster.logs().contains("Redis lost its data").then_some(()))
    })
    .await?;

    let solved = wait_solved(&cluster, 475.0, Duration::from_secs(300)).await;
    watcher.abort();

    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "the latest version went back: {seen:?}"
    );
    let stored: std::collections::BTreeSet<u64> = cluster.status().await?.policies.iter().map(|p| p.version).collect();
    let lost: Vec<u64> = seen.iter().copied().filter(|v| *v > 0 && !stored.contains(v)).collect();
    assert!(lost.is_empty(), "versions published and then lost: {lost:?}");

    // Frames: the coordinator's count for each running actor (from its applied reports) is at
    // most what the actor stepped, and not far below it.
    let status = cluster.status().await?;
    for (i, id) in &live {
        let counted = status
            .actors
            .iter()
            .find(|a| a.actor_id == *id)
            .unwrap_or_else(|| panic!("actor {id} in status"))
            .frames as f64;
        let stepped = metric(&scrape(&cluster.actor_metrics[*i])?, "troupe_actor_frames_total").unwrap();
        assert!(
            counted <= stepped,
            "actor {id}: {counted} frames counted, {stepped} stepped (double counting)"
        );
        assert!(
            counted >= 0.5 * stepped,
            "actor {id}: only {counted} of {stepped} counted"
        );
    }
    eprintln!(
        "solved at {} frames, version {}, {} versions seen",
        solved.frames,
        solved.latest_version,
        seen.len()
    );
    Ok(())
}
