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
            let c = scrape(&cluster.coordinator_metrics)?;
            let distributed = metric(&c, "troupe_coordinator_policy_distribution_seconds_count").unwrap_or(0.0);
            Ok((updates > 20.0 && episodes > 10.0 && status.episodes > 10 && distributed > 0.0).then_some(()))
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
                "troupe_build_info",
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
                "troupe_learner_rollout_queue_bytes",
                "troupe_learner_batcher_backlog_bytes",
                "troupe_build_info",
                "troupe_grpc_server_started_total",
                "troupe_grpc_server_received_bytes_total",
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
                "troupe_coordinator_redis_up",
                "troupe_coordinator_policy_distribution_seconds_bucket",
                "troupe_build_info",
                "troupe_grpc_server_handled_total",
                "troupe_grpc_server_sent_bytes_total",
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
        // Per-policy series: every learner series names the policy it trains; the actor's
        // version gauge names the policy it acts with.
        let labelled: &[&str] = match name {
            "learner" => &["troupe_"],
            "actor" => &["troupe_actor_policy_version", "troupe_actor_rollouts_sent_total"],
            _ => &[],
        };
        for line in body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            if labelled.iter().any(|p| line.starts_with(p)) {
                assert!(line.contains("policy=\"default\""), "{name}: no policy label: {line}");
            }
        }
    }
    Ok(())
}

/// Every process answers the standard gRPC health service: SERVING for itself and for its role
/// once ready; unknown services are NOT_FOUND. The calls are counted by method and status code,
/// with their bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_serves_grpc_health_and_counts_its_calls() -> anyhow::Result<()> {
    use troupe::health::{check, ServingStatus};
    let mut cluster = Cluster::start(&cartpole_config()).await?;
    cluster.add_actor().await?;
    cluster.wait_learner().await?;
    let t = Duration::from_secs(3);
    // With TLS on, health is served in plain text on its own port (Kubernetes' gRPC probes
    // speak no TLS); the TLS port answers health too, for clients that do.
    let coordinator = cluster.coordinator_health.clone();
    let learner = cluster.learner_health.clone();
    let actor = cluster.actor_health[0].clone();
    for (addr, role) in [
        (&coordinator, troupe::health::COORDINATOR),
        (&learner, troupe::health::LEARNER),
        (&actor, troupe::health::ACTOR),
    ] {
        assert_eq!(check(addr, "", t).await?, ServingStatus::Serving, "{addr}");
        assert_eq!(check(addr, role, t).await?, ServingStatus::Serving, "{addr} {role}");
        let unknown = check(addr, "troupe.v1.Nope", t).await.unwrap_err();
        assert!(
            format!("{unknown:#}").contains("NotFound") || format!("{unknown:#}").contains("not found"),
            "{unknown:#}"
        );
    }
    // The CLI a container HEALTHCHECK runs.
    let out = Command::new(tests::bin("troupe-health"))
        .args(["--address", &learner, "--service", troupe::health::LEARNER])
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(tests::bin("troupe-health"))
        .args(["--address", "127.0.0.1:1", "--timeout-s", "1"])
        .output()?;
    assert!(!out.status.success(), "troupe-health on a closed port must fail");

    eventually("the actor heartbeats are counted", Duration::from_secs(30), || async {
        let c = scrape(&cluster.coordinator_metrics)?;
        let ok = labelled(
            &c,
            "troupe_grpc_server_handled_total",
            &["method=\"troupe.v1.Coordinator/Heartbeat\"", "code=\"OK\""],
        );
        Ok((ok > 0.0).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", cluster.logs()))?;
    let c = scrape(&cluster.coordinator_metrics)?;
    let health = |code: &str| {
        labelled(
            &c,
            "troupe_grpc_server_handled_total",
            &["method=\"grpc.health.v1.Health/Check\"", &format!("code=\"{code}\"")],
        )
    };
    assert_eq!((health("OK"), health("NOT_FOUND")), (2.0, 1.0), "{c}");
    assert!(
        labelled(
            &c,
            "troupe_grpc_server_sent_bytes_total",
            &["method=\"troupe.v1.Coordinator/GetPolicy\""]
        ) > 0.0,
        "{c}"
    );
    let l = scrape(&cluster.learner_metrics)?;
    assert!(
        labelled(
            &l,
            "troupe_grpc_server_received_bytes_total",
            &["method=\"troupe.v1.Learner/StreamRollouts\""]
        ) > 1000.0,
        "{l}"
    );
    assert_eq!(
        labelled(
            &l,
            "troupe_grpc_server_started_total",
            &["method=\"troupe.v1.Learner/StreamRollouts\""]
        ),
        1.0,
        "{l}"
    );
    Ok(())
}

/// The value of the first sample of `name` whose labels contain every one of `labels`.
fn labelled(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .find(|l| labels.iter().all(|x| l.contains(x)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}
