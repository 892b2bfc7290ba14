//! Issue 8's benchmarks on real local clusters. Each prints one JSON line.
//!
//!   cargo bench -p tests --bench hardening -- tls SECONDS    frames/s with TLS + tokens vs without
//!   cargo bench -p tests --bench hardening -- wan SECONDS    frames/s with 20 ms added on the actors' links vs 0
//!   cargo bench -p tests --bench hardening -- chaos MINUTES  SIGKILL a random part every 30 s
//!   cargo bench -p tests --bench hardening -- soak MINUTES   RSS and open files per process over a long run
//!
//! Throughput uses the throughput layout of `benches/cluster.rs` (IMPALA, 16 envs per actor, 2
//! actors). Pairs are measured in one run, alternating, so the ratio holds on a noisy machine.
//! `wan` and the network parts need root (`ip netns`, `tc netem`).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use rand::Rng;
use tests::{cartpole_config, eventually, learner_frames, metric, scrape, throughput_config, Cluster, NetNs};

/// Learner frames/s over `seconds`, after the actors have streamed for a few seconds.
async fn rate(cluster: &Cluster, seconds: f64) -> anyhow::Result<f64> {
    eventually("the actors stream", Duration::from_secs(60), || async {
        Ok((learner_frames(cluster) > 0.0).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (f0, t0) = (learner_frames(cluster), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    Ok((learner_frames(cluster) - f0) / t0.elapsed().as_secs_f64())
}

async fn tls(seconds: f64) -> anyhow::Result<serde_json::Value> {
    let (mut plain, mut secure) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        for secure_run in [false, true] {
            let mut c = Cluster::start_with(&throughput_config(), &[], secure_run).await?;
            c.add_actor().await?;
            c.add_actor().await?;
            let r = rate(&c, seconds).await?;
            if secure_run { &mut secure } else { &mut plain }.push(r);
        }
    }
    Ok(serde_json::json!({
        "bench": "tls",
        "plain_frames_per_s": plain,
        "tls_tokens_frames_per_s": secure,
        "ratio_of_medians": median(&secure) / median(&plain),
    }))
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn tc(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("tc").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "tc {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

async fn wan(seconds: f64) -> anyhow::Result<serde_json::Value> {
    {
        let probe = NetNs::create(6)?;
        if let Err(e) = tc(&["qdisc", "add", "dev", &probe.host_if, "root", "netem", "delay", "20ms"]) {
            return Ok(serde_json::json!({
                "bench": "wan",
                "unavailable": format!("this kernel has no tc netem: {e}"),
            }));
        }
    }
    let (mut near, mut far) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        for delayed in [false, true] {
            let ns = NetNs::create(5)?;
            if delayed {
                // 20 ms each way on the actors' link (the namespace's side and ours).
                tc(&["qdisc", "add", "dev", &ns.host_if, "root", "netem", "delay", "20ms"])?;
                tc(&[
                    "-n", &ns.name, "qdisc", "add", "dev", &ns.ns_if, "root", "netem", "delay", "20ms",
                ])?;
            }
            let mut c = Cluster::start_across(&throughput_config(), &[], true, Some(&ns), None).await?;
            c.add_actor_in(Some(&ns)).await?;
            c.add_actor_in(Some(&ns)).await?;
            let r = rate(&c, seconds).await?;
            if delayed { &mut far } else { &mut near }.push(r);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    Ok(serde_json::json!({
        "bench": "wan",
        "rtt_added_ms": 40,
        "near_frames_per_s": near,
        "wan_frames_per_s": far,
        "ratio": mean(&far) / mean(&near),
    }))
}

async fn chaos(minutes: f64) -> anyhow::Result<serde_json::Value> {
    let mut config = cartpole_config();
    config.coordinator.keep_versions = 1_000_000;
    config.learner.checkpoint_every_s = 5.0;
    let ckpt = tempfile::tempdir()?;
    let ckpt_arg = ckpt.path().display().to_string();
    let learner_args = ["--checkpoint-dir", ckpt_arg.as_str()];
    let mut cluster = Cluster::start_with_learner_args(&config, &learner_args).await?;
    let mut live = vec![(0usize, cluster.add_actor().await?), (1, cluster.add_actor().await?)];
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(minutes * 60.0);
    let mut next_kill = start + Duration::from_secs(5);
    let mut seen = Vec::<u64>::new();
    let mut solved_s = None;
    let mut kills = Vec::new();
    let mut status_failures = 0u64;
    while Instant::now() < end {
        match cluster.status().await {
            Ok(s) => {
                seen.push(s.latest_version);
                if solved_s.is_none() && s.episodes_in_mean == 100 && s.mean_return_100 >= 475.0 {
                    solved_s = Some(start.elapsed().as_secs_f64());
                }
            }
            Err(_) => status_failures += 1,
        }
        if Instant::now() >= next_kill {
            let part = ["actor", "learner", "coordinator", "redis"][rand::rng().random_range(0..4)];
            match part {
                "actor" => {
                    let k = rand::rng().random_range(0..live.len());
                    cluster.actors[live[k].0].kill9();
                    let id = cluster.add_actor().await?;
                    live[k] = (cluster.actors.len() - 1, id);
                }
                "learner" => {
                    cluster.learner.as_mut().unwrap().kill9();
                    cluster.spawn_learner_with(&learner_args)?;
                    cluster.wait_learner().await?;
                }
                "coordinator" => cluster.restart_coordinator().await?,
                _ => cluster.restart_redis()?,
            }
            kills.push(part);
            next_kill += Duration::from_secs(30);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = cluster.status().await?;
    let stored: BTreeSet<u64> = status.policies.iter().map(|p| p.version).collect();
    let lost: BTreeSet<u64> = seen.iter().copied().filter(|v| *v > 0 && !stored.contains(v)).collect();
    let went_back = seen.windows(2).filter(|w| w[1] < w[0]).count();
    let mut double_counted = 0.0;
    for (i, id) in &live {
        let counted = status
            .actors
            .iter()
            .find(|a| a.actor_id == *id)
            .map_or(0.0, |a| a.frames as f64);
        let stepped = metric(&scrape(&cluster.actor_metrics[*i])?, "troupe_actor_frames_total").unwrap_or(0.0);
        double_counted += (counted - stepped).max(0.0);
    }
    Ok(serde_json::json!({
        "bench": "chaos",
        "minutes": minutes,
        "kills": kills,
        "time_to_solve_s": solved_s,
        "final_mean_return_100": status.mean_return_100,
        "versions_seen": seen.len(),
        "latest_version": status.latest_version,
        "lost_versions": lost.len(),
        "latest_went_back": went_back,
        "double_counted_frames": double_counted,
        "status_calls_failed": status_failures,
    }))
}

/// (RSS kB, open files) of a process.
fn usage(pid: u32) -> (f64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(f64::NAN);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (rss, fds)
}

async fn soak(minutes: f64) -> anyhow::Result<serde_json::Value> {
    let mut cluster = Cluster::start(&cartpole_config()).await?;
    cluster.add_actor().await?;
    cluster.add_actor().await?;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(minutes * 60.0);
    let names: Vec<String> = std::iter::once("coordinator".to_string())
        .chain(std::iter::once("learner".to_string()))
        .chain((0..cluster.actors.len()).map(|i| format!("actor-{}", i + 1)))
        .collect();
    let pids = |c: &Cluster| -> Vec<u32> {
        std::iter::once(c.coordinator.child.id())
            .chain(c.learner.iter().map(|l| l.child.id()))
            .chain(c.actors.iter().map(|a| a.child.id()))
            .collect()
    };
    let mut samples: Vec<(f64, Vec<(f64, usize)>)> = Vec::new();
    let mut slow_status = 0u64;
    let mut last_frames = 0u64;
    let mut stalls = 0u64;
    while Instant::now() < end {
        let t = Instant::now();
        match tokio::time::timeout(Duration::from_secs(5), cluster.status()).await {
            Ok(Ok(s)) => {
                if s.frames == last_frames {
                    stalls += 1;
                }
                last_frames = s.frames;
            }
            _ => slow_status += 1,
        }
        if t.elapsed() > Duration::from_secs(1) {
            slow_status += 1;
        }
        samples.push((
            start.elapsed().as_secs_f64(),
            pids(&cluster).into_iter().map(usage).collect(),
        ));
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    // Drift: the last sample against the one at 10 % of the run (after start-up and warm-up).
    let base = &samples[samples.len() / 10].1;
    let last = &samples[samples.len() - 1].1;
    let per_process: Vec<serde_json::Value> = names
        .iter()
        .zip(base.iter().zip(last))
        .map(|(n, (b, l))| {
            serde_json::json!({
                "process": n,
                "rss_kb_start": b.0,
                "rss_kb_end": l.0,
                "rss_drift": l.0 / b.0 - 1.0,
                "fds_start": b.1,
                "fds_end": l.1,
            })
        })
        .collect();
    let alive = cluster
        .actors
        .iter_mut()
        .all(|a| a.child.try_wait().ok().flatten().is_none());
    Ok(serde_json::json!({
        "bench": "soak",
        "minutes": minutes,
        "frames": last_frames,
        "processes": per_process,
        "status_slow_or_failed": slow_status,
        "samples_without_new_frames": stalls,
        "all_alive": alive,
    }))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let what = args.first().map(String::as_str).unwrap_or("tls");
    let n: f64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(15.0);
    let out = match what {
        "tls" => tls(n).await?,
        "wan" => wan(n).await?,
        "chaos" => chaos(n).await?,
        "soak" => soak(n).await?,
        other => anyhow::bail!("unknown benchmark {other:?}: expected tls, wan, chaos or soak"),
    };
    println!("{out}");
    Ok(())
}
