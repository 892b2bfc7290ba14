//! Learning tests on real clusters (Redis, the coordinator, the learner and 2 actors as
//! processes) with the shipped configs: Acrobot-v1 to a mean return of -100, Pendulum-v1
//! (continuous actions) to -200, and MinAtar Breakout (pixels through the Python host) well
//! above a random policy. Bounds are several times what 2 cores take here.

use std::time::{Duration, Instant};

use tests::{shipped_config, Cluster};

/// One cluster at a time: three side by side on 2 cores take 3-7 times as long each.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn solve(name: &str, target: f64, within: Duration) -> anyhow::Result<f64> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let config = shipped_config(name);
    let mut cluster = Cluster::start(&config).await?;
    cluster.add_actor().await?;
    cluster.add_actor().await?;
    cluster.wait_learner().await?;
    let start = Instant::now();
    let s = tests::wait_solved(&cluster, target, within).await;
    println!(
        "{name}: mean return {:.2} after {:.1}s, {} frames, policy v{}",
        s.mean_return_100,
        start.elapsed().as_secs_f64(),
        s.frames,
        s.latest_version
    );
    Ok(s.mean_return_100)
}

/// Measured here: 6-8 s, 100-150k frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acrobot_reaches_minus_100() -> anyhow::Result<()> {
    let r = solve("acrobot", -100.0, Duration::from_secs(240)).await?;
    assert!((-100.0..=0.0).contains(&r), "{r}");
    Ok(())
}

/// Measured here over 38 seeds (`train.sh --seed 1..38`): all solved, in 6-28 s and 116-432k
/// frames (median 160k). APPO on Pendulum can still settle in a local optimum with a narrow
/// Gaussian: one CI run stayed at -312 for 4.9M frames. So a run gets 120 s (4x the slowest
/// seed measured), and a stuck run is followed by one more on the next seed; both must not fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pendulum_reaches_minus_200() -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut first_failure = None;
    for attempt in 0..2u64 {
        let mut config = shipped_config("pendulum");
        config.env.seed += attempt;
        let mut cluster = Cluster::start(&config).await?;
        cluster.add_actor().await?;
        cluster.add_actor().await?;
        cluster.wait_learner().await?;
        let start = Instant::now();
        match tests::try_solved(&cluster, -200.0, Duration::from_secs(120)).await {
            Ok(s) => {
                println!(
                    "pendulum (seed {}): mean return {:.2} after {:.1}s, {} frames",
                    config.env.seed,
                    s.mean_return_100,
                    start.elapsed().as_secs_f64(),
                    s.frames
                );
                assert!((-200.0..=0.0).contains(&s.mean_return_100), "{}", s.mean_return_100);
                if let Some(e) = first_failure {
                    println!("the first seed did not solve:\n{e}");
                }
                return Ok(());
            }
            Err(e) => match first_failure {
                None => first_failure = Some(e),
                Some(first) => panic!("two seeds in a row did not solve Pendulum-v1\nfirst:\n{first}\nsecond:\n{e}"),
            },
        }
    }
    unreachable!("the loop returns or panics")
}

/// A random policy scores 0.41 on MinAtar Breakout (200 episodes of uniform actions in
/// MinAtar's own env, below); the CNN must reach 10 times that. Measured here: about 20 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minatar_breakout_beats_random_play_tenfold() -> anyhow::Result<()> {
    let out = std::process::Command::new("python3")
        .env("PYTHONPATH", tests::envs_site_packages())
        .args([
            "-c",
            "import gymnasium as gym, minatar.gym, numpy as np\n\
             minatar.gym.register_envs()\n\
             env = gym.make('MinAtar/Breakout-v1'); rng = np.random.default_rng(0); total = 0.0\n\
             for e in range(200):\n    env.reset(seed=e); done = False\n    while not done:\n        \
             _, r, te, tr, _ = env.step(int(rng.integers(env.action_space.n))); total += r; done = te or tr\n\
             print(total / 200)",
        ])
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let random: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    println!("random play: {random}");
    assert!(random > 0.1 && random < 1.0, "{random}");
    let r = solve("minatar-breakout", 10.0 * random, Duration::from_secs(300)).await?;
    assert!(r >= 10.0 * random, "{r} vs random {random}");
    Ok(())
}
