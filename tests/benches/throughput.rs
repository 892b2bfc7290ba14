//! End-to-end throughput of any run config on a real local cluster (Redis, coordinator,
//! learner on the CPU, actors as processes): frames/s the learner consumes and env steps/s the
//! actors report, over SECONDS after a warm-up. Prints one JSON line.
//!
//!   cargo bench -p tests --bench throughput -- SECONDS CONFIG [ACTORS]
//!
//! Python-hosted configs need TROUPE_PYTHON_PATH (scripts/env.sh sets it).

use std::time::{Duration, Instant};

use tests::{eventually, metric, scrape, Cluster};

fn learner(c: &Cluster, name: &str) -> f64 {
    metric(&scrape(&c.learner_metrics).unwrap_or_default(), name).unwrap_or(0.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let seconds: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(30.0);
    let path = args.get(1).cloned().unwrap_or_else(|| "configs/cartpole.toml".into());
    let actors: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2);
    let path = if std::path::Path::new(&path).is_absolute() {
        path.into()
    } else {
        tests::repo_root().join(path)
    };
    let config = troupe::RunConfig::from_file(&path)?;
    let mut cluster = Cluster::start(&config).await?;
    for _ in 0..actors {
        cluster.add_actor().await?;
    }
    cluster.wait_learner().await?;
    eventually("the learner trains", Duration::from_secs(120), || async {
        Ok((learner(&cluster, "troupe_learner_updates_total") > 0.0).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t0 = Instant::now();
    let (f0, s0) = (
        learner(&cluster, "troupe_learner_frames_total"),
        cluster.status().await?.frames,
    );
    let (u0, us0) = (
        learner(&cluster, "troupe_learner_updates_total"),
        learner(&cluster, "troupe_learner_update_seconds_sum"),
    );
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let dt = t0.elapsed().as_secs_f64();
    let (f1, s1) = (
        learner(&cluster, "troupe_learner_frames_total"),
        cluster.status().await?.frames,
    );
    let (u1, us1) = (
        learner(&cluster, "troupe_learner_updates_total"),
        learner(&cluster, "troupe_learner_update_seconds_sum"),
    );
    println!(
        "{}",
        serde_json::json!({
            "bench": "throughput",
            "config": path.display().to_string(),
            "env": config.env.id,
            "torso": config.model.torso,
            "actors": actors,
            "seconds": dt,
            "learner_frames_per_s": (f1 - f0) / dt,
            "actor_env_steps_per_s": (s1 - s0) as f64 / dt,
            "mean_update_s": if u1 > u0 { (us1 - us0) / (u1 - u0) } else { f64::NAN },
            "batch": [config.actor.unroll_length, config.learner.batch_size],
        })
    );
    Ok(())
}
