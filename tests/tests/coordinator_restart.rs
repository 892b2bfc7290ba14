//! The coordinator keeps policy versions in Redis: killed with SIGKILL and restarted, it still
//! serves the latest version, and the learner and actors reconnect and training goes on.
//! Also: a bad run config stops the coordinator at start-up with one line naming the key.

use std::process::Command;
use std::time::Duration;

use tests::{bin, cartpole_config, eventually, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_recovers_from_redis_and_the_cluster_carries_on() -> anyhow::Result<()> {
    let mut config = cartpole_config();
    config.coordinator.keep_versions = 3;
    let mut cluster = Cluster::start(&config).await?;
    cluster.add_actor().await?;
    let before = eventually("a few versions published", Duration::from_secs(60), || async {
        let s = cluster.status().await?;
        Ok((s.latest_version >= 10).then_some(s))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", cluster.logs()))?;
    // Retention: the newest 3 versions are kept.
    assert!(before.policies.len() <= 4, "kept {} versions", before.policies.len());

    // Pin the newest version: it outlives retention. (Versions come fast and only 3 are kept,
    // so the newest one can be dropped before the pin lands; then pin the next newest.)
    let pinned = eventually("a version is pinned", Duration::from_secs(10), || async {
        let v = cluster.status().await?.latest_version;
        let mut client = cluster.client().await?;
        match client
            .pin_policy(proto::v1::PinPolicyRequest {
                version: v,
                pinned: true,
                ..Default::default()
            })
            .await
        {
            Ok(meta) => {
                assert!(meta.get_ref().pinned && meta.get_ref().version == v);
                Ok(Some(v))
            }
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(s.into()),
        }
    })
    .await?;
    // Fetches are served from the coordinator's memory: the pin shows there, not only in Redis.
    let (pinned_meta, _) = troupe::client::fetch_policy(&mut cluster.client().await?, pinned).await?;
    assert!(
        pinned_meta.pinned,
        "GetPolicy of pinned version {pinned}: {pinned_meta:?}"
    );

    let mut client = cluster.client().await?;
    let (old_meta, _) = troupe::client::fetch_policy(&mut client, 0).await?;
    cluster.restart_coordinator().await?;

    // Straight after the restart, before anything new is published, it serves what it had.
    let mut client = cluster.client().await?;
    let s = cluster.status().await?;
    assert!(
        s.latest_version >= old_meta.version,
        "{} < {}",
        s.latest_version,
        old_meta.version
    );
    assert!(
        s.frames >= before.frames,
        "run totals survive: {} < {}",
        s.frames,
        before.frames
    );
    let (meta, blob) = troupe::client::fetch_policy(&mut client, old_meta.version).await?;
    assert_eq!(meta.version, old_meta.version);
    assert_eq!(meta.size_bytes as usize, blob.len());
    safetensors::SafeTensors::deserialize(&blob)?;

    // The learner and the actor find the new coordinator on their own; training goes on.
    eventually(
        "training resumes through the restarted coordinator",
        Duration::from_secs(60),
        || async {
            let s = cluster.status().await?;
            Ok(
                (s.latest_version > old_meta.version + 10 && s.actors.len() == 1 && s.frames > before.frames)
                    .then_some(()),
            )
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", cluster.logs()))?;
    let s = cluster.status().await?;
    assert!(
        s.policies.iter().any(|p| p.version == pinned && p.pinned),
        "pinned version {pinned} is kept: {:?}",
        s.policies.iter().map(|p| p.version).collect::<Vec<_>>()
    );
    Ok(())
}

#[test]
fn bad_config_stops_the_coordinator_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[learner]\nlerning_rate = 0.1\n",
            "learner.lerning_rate: unknown field `lerning_rate`",
        ),
        (
            "[actor]\nunroll_length = 0\n",
            "actor.unroll_length: expected a value in [1, 4096], got 0",
        ),
        (
            "[env]\nid = \"Pong\"\n",
            "env.id: expected a native env, one of [\"CartPole-v1\"",
        ),
    ];
    for (doc, want) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, doc).unwrap();
        let out = Command::new(bin("coordinator"))
            .arg("--config")
            .arg(&path)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--redis-url",
                "redis://127.0.0.1:1",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "exit code for {doc:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        assert!(lines[0].contains(want), "{:?} should name {want:?}", lines[0]);
    }
}
