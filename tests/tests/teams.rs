//! A run of two policies (one per agent of native LBF, configs/lbf-two-teams.toml), each with
//! its own learner process, lease, versions and checkpoints: both policies' versions advance;
//! SIGKILL one policy's learner and the other keeps training; restarted on its checkpoint
//! directory, the killed one resumes from its checkpoint and its versions advance again.

use std::time::Duration;

use tests::{eventually, shipped_config, Cluster};

fn versions(s: &proto::v1::StatusResponse) -> (u64, u64) {
    let v = |name: &str| {
        s.policy_status
            .iter()
            .find(|p| p.policy == name)
            .map_or(0, |p| p.latest_version)
    };
    (v("agent_0"), v("agent_1"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_policies_train_and_fail_independently() -> anyhow::Result<()> {
    let mut config = shipped_config("lbf-two-teams");
    config.learner.checkpoint_every_s = 1.0;
    config.actor.num_envs = 4;
    let ckpt = tempfile::tempdir()?;
    let (dir0, dir1) = (ckpt.path().join("agent_0"), ckpt.path().join("agent_1"));
    let mut cluster = Cluster::start_with_learner_args(
        &config,
        &["--policy", "agent_0", "--checkpoint-dir", dir0.to_str().unwrap()],
    )
    .await?;
    let mut second = cluster
        .start_policy_learner("agent_1", &["--checkpoint-dir", dir1.to_str().unwrap()])
        .await?;
    cluster.add_actor().await?;
    let logs = |c: &Cluster, p: &tests::Proc| format!("{}\n--- learner-agent_1 ---\n{}", c.logs(), p.log_tail(30));

    // Both policies train: two version sequences, two learners, two epochs.
    let s = eventually("both policies' versions advance", Duration::from_secs(90), || async {
        let s = cluster.status().await?;
        let (a, b) = versions(&s);
        Ok((a >= 5 && b >= 5).then_some(s))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", logs(&cluster, &second)))?;
    assert_eq!(s.policy_status.len(), 2);
    for p in &s.policy_status {
        assert_eq!(p.agents, vec![p.policy.clone()], "one agent per policy");
        assert!(p.epoch >= 1 && !p.learner_address.is_empty(), "{p:?}");
        assert!(p.versions.iter().all(|m| m.policy == p.policy), "{p:?}");
    }
    // A checkpoint of agent_1 exists before its learner dies.
    eventually("agent_1 checkpointed", Duration::from_secs(20), || async {
        Ok((std::fs::read_dir(&dir1).map(|d| d.count()).unwrap_or(0) > 0).then_some(()))
    })
    .await?;

    second.kill9();
    let (a_killed, b_killed) = versions(&cluster.status().await?);
    // The other policy goes on while agent_1 has no learner.
    eventually(
        "agent_0 trains on without agent_1's learner",
        Duration::from_secs(60),
        || async {
            let (a, _) = versions(&cluster.status().await?);
            Ok((a >= a_killed + 10).then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", cluster.logs()))?;
    let (_, b_while_down) = versions(&cluster.status().await?);
    assert!(
        b_while_down <= b_killed + 1,
        "agent_1 published without a learner: {b_killed} -> {b_while_down}"
    );

    // Restarted on its checkpoints, agent_1 resumes and trains again.
    let second = cluster
        .start_policy_learner("agent_1", &["--checkpoint-dir", dir1.to_str().unwrap()])
        .await?;
    eventually("agent_1 trains again", Duration::from_secs(60), || async {
        let (_, b) = versions(&cluster.status().await?);
        Ok((b >= b_while_down + 5).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", logs(&cluster, &second)))?;
    let log = std::fs::read_to_string(&second.log)?;
    assert!(log.contains("resumed from checkpoint"), "{}", second.log_tail(30));
    Ok(())
}
