//! Learning through the Python host: Gymnasium's own CartPole-v1 (Python, not the native Rust
//! env), stepped inside each actor through PyO3 with same-step autoreset, trains on a real
//! cluster to a mean return of at least 475 over the last 100 episodes.
//!
//! If the host handed the learner Gymnasium's NEXT_STEP reset steps (action ignored, reward 0,
//! no done flag) as transitions, every episode would look one step longer with a 0 reward and
//! a jump to a new start state; the reward check below and the training would both fail.

use std::time::{Duration, Instant};

use tests::{metric, scrape, shipped_config, Cluster};

/// Measured here at about 20 s on 2 cores; the bound leaves room for a slow CI machine.
const SOLVE_WITHIN: Duration = Duration::from_secs(420);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gymnasium_cartpole_is_solved_through_the_python_host() -> anyhow::Result<()> {
    let config = shipped_config("cartpole-gymnasium");
    assert_eq!(config.env.backend, troupe::config::EnvBackend::Gymnasium);
    let _ = tests::envs_site_packages(); // fails clearly when the envs venv is not set up
    let mut cluster = Cluster::start(&config).await?;
    cluster.add_actor().await?;
    cluster.add_actor().await?;
    // The learner registers once an actor has reported the env's spaces.
    cluster.wait_learner().await?;
    let start = Instant::now();
    let s = tests::wait_solved(&cluster, 475.0, SOLVE_WITHIN).await;
    println!(
        "hosted CartPole solved in {:.1}s: {} frames, mean return {:.1}",
        start.elapsed().as_secs_f64(),
        s.frames,
        s.mean_return_100
    );
    assert!(s.mean_return_100 <= 500.0);
    // Every real CartPole step pays exactly 1: the episode returns the actors saw equal their
    // lengths (a reset step would add a step worth 0).
    for m in &cluster.actor_metrics {
        let text = scrape(m)?;
        let ret = metric(&text, "troupe_actor_episode_return_sum").unwrap_or(-1.0);
        let len = metric(&text, "troupe_actor_episode_length_sum").unwrap_or(-2.0);
        assert!(
            ret > 0.0 && (ret - len).abs() < 1e-6 * len.max(1.0),
            "return sum {ret} vs length sum {len}"
        );
        assert_eq!(metric(&text, "troupe_actor_env_errors_total").unwrap_or(0.0), 0.0);
    }
    Ok(())
}
