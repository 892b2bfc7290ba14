//! Benchmarks (b) and (c) on a real local cluster (Redis, coordinator, learner, actors as
//! processes). Prints one JSON line.
//!
//! (b) env steps/s of one actor streaming to the learner (from the coordinator's frame count);
//! (c) frames/s consumed by the learner with 2 actors, and the time and frames to solve
//!     CartPole-v1 (mean return of the last 100 episodes >= 475).
//!
//! Both use the throughput layout of v0's CartPole run (IMPALA, 16 envs per actor, 2 rollouts
//! in flight, a queue of 4, B = 64): the shipped APPO config trades learner frames/s for
//! sample efficiency (4 epochs of 4 minibatches on batches of 16), so it is benchmarked by
//! `scripts/bench_solve.py` instead.
//!
//!   cargo bench --workspace --bench cluster [-- SECONDS]

use std::time::{Duration, Instant};

use tests::{eventually, learner_frames, metric, scrape, throughput_config, Cluster};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let seconds: f64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(15.0);

    // (b) One actor streaming: measure after a short warm-up.
    let mut cluster = Cluster::start(&throughput_config()).await?;
    cluster.add_actor().await?;
    eventually("the actor streams", Duration::from_secs(60), || async {
        Ok((learner_frames(&cluster) > 0.0).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (f0, l0, t0) = (cluster.status().await?.frames, learner_frames(&cluster), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let (f1, l1, dt) = (
        cluster.status().await?.frames,
        learner_frames(&cluster),
        t0.elapsed().as_secs_f64(),
    );
    let one_actor_steps = (f1 - f0) as f64 / dt;
    let one_actor_learner = (l1 - l0) / dt;
    drop(cluster);

    // (c) The training run: 2 actors until solved.
    let mut cluster = Cluster::start(&throughput_config()).await?;
    cluster.add_actor().await?;
    cluster.add_actor().await?;
    let start = Instant::now();
    let solved = eventually("solved", Duration::from_secs(600), || async {
        let s = cluster.status().await?;
        Ok((s.episodes_in_mean == 100 && s.mean_return_100 >= 475.0).then_some(s))
    })
    .await?;
    let solve_s = start.elapsed().as_secs_f64();
    let consumed = learner_frames(&cluster);
    let m = scrape(&cluster.learner_metrics)?;
    let update_sum = metric(&m, "troupe_learner_update_seconds_sum").unwrap_or(0.0);
    let updates = metric(&m, "troupe_learner_updates_total").unwrap_or(0.0);
    println!(
        "{}",
        serde_json::json!({
            "bench": "cluster",
            "one_actor_env_steps_per_s": one_actor_steps,
            "one_actor_learner_frames_per_s": one_actor_learner,
            "two_actor_learner_frames_per_s": consumed / solve_s,
            "time_to_solve_s": solve_s,
            "frames_to_solve": solved.frames,
            "learner_updates": updates,
            "mean_update_ms": 1e3 * update_sum / updates.max(1.0),
            "policy_versions": solved.latest_version,
        })
    );
    Ok(())
}
