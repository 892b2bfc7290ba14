//! Every process serves Prometheus metrics that `promtool check metrics` accepts, with the
//! series the dashboards need, and the right content type.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use tests::{cartpole_config, eventually, metric, scrape, Cluster};

fn promtool_check(name: &str, text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/test.sh installs it with Debian's prometheus package)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool on {name}'s /metrics:\n{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_serves_lint_clean_metrics() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&cartpole_config()).await?;
    cluster.add_actor().await?;
    // Wait until every series has a value: episodes finished, updates taken, status polled.
    eventually(
        "training has produced every series",
        Duration::from_secs(60),
        || async {
            let status = cluster.status().await?;
            let l = scrape(&cluster.learner_metrics)?;
            let a = scrape(&cluster.actor_metrics[0])?;
            let updates = metric(&l, "troupe_learner_updates_total").unwrap_or(0.0);
            let episodes = metric(&a, "troupe_actor_episodes_total").unwrap_or(0.0);
            Ok((updates > 20.0 && episodes > 10.0 && status.episodes > 10).then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", cluster.logs()))?;
    let _ = cluster.status().await?;

    let required: [(&str, &str, &[&str]); 3] = [
        (
            "actor",
            &cluster.actor_metrics[0],
            &[
                "troupe_actor_frames_total",
                "troupe_actor_episodes_total",
                "troupe_actor_episode_return_bucket",
                "troupe_actor_policy_version",
                "troupe_actor_outbox_depth",
            ],
        ),
        (
            "learner",
            &cluster.learner_metrics,
            &[
                "troupe_learner_frames_total",
                "troupe_learner_updates_total",
                "troupe_learner_update_seconds_bucket",
                "troupe_learner_loss",
                "troupe_learner_entropy",
                "troupe_learner_policy_version",
                "troupe_learner_policy_lag_bucket",
                "troupe_learner_rollout_queue_depth",
                "troupe_learner_device_info",
            ],
        ),
        (
            "coordinator",
            &cluster.coordinator_metrics,
            &[
                "troupe_coordinator_policy_version",
                "troupe_coordinator_frames_total",
                "troupe_coordinator_episodes_total",
                "troupe_coordinator_mean_return_100",
                "troupe_coordinator_actors",
            ],
        ),
    ];
    for (name, addr, names) in required {
        let raw = scrape(addr)?;
        let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/plain; version=0.0.4"),
            "{name}: {head}"
        );
        for n in names {
            assert!(metric(body, n).is_some(), "{name} exports {n}:\n{body}");
        }
        promtool_check(name, body);
    }
    Ok(())
}
