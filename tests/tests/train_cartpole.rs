//! Learning is tested: the shipped config (APPO) trains CartPole-v1 on a real cluster (Redis,
//! the coordinator, the learner and 2 actors as processes) to a mean return of at least 475
//! over the last 100 episodes, within a time bound that holds on 2 cores.

use std::time::{Duration, Instant};

use tests::{cartpole_config, metric, scrape, Cluster};

/// Measured here at 4-6 s (about 100k frames) on 2 cores; the bound leaves room for a slow CI
/// machine.
const SOLVE_WITHIN: Duration = Duration::from_secs(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cartpole_is_solved_by_a_local_cluster() -> anyhow::Result<()> {
    let config = cartpole_config();
    let mut cluster = Cluster::start(&config).await?;
    cluster.add_actor().await?;
    cluster.add_actor().await?;
    let start = Instant::now();
    let s = tests::wait_solved(&cluster, 475.0, SOLVE_WITHIN).await;
    println!(
        "solved in {:.1}s: {} frames, mean return {:.1}, policy v{}",
        start.elapsed().as_secs_f64(),
        s.frames,
        s.mean_return_100,
        s.latest_version
    );
    assert!(s.mean_return_100 <= 500.0, "CartPole-v1 returns are capped at 500");
    assert_eq!(s.actors.len(), 2);
    assert!(s.latest_version > 1, "the learner published trained versions");

    // The learner trained on what the actors sent, on the CPU, and says so in its metrics.
    let m = scrape(&cluster.learner_metrics)?;
    let updates = metric(&m, "troupe_learner_updates_total").unwrap_or(0.0);
    let frames = metric(&m, "troupe_learner_frames_total").unwrap_or(0.0);
    assert!(updates > 10.0, "{updates}");
    let per_update = (config.actor.unroll_length * config.learner.batch_size) as f64;
    assert!(
        (frames - updates * per_update).abs() <= per_update,
        "each update consumes T x B frames: {frames} frames, {updates} updates"
    );
    assert!(
        m.contains("troupe_learner_device_info{policy=\"default\",device=\"cpu\"} 1"),
        "{m}"
    );
    // APPO's own terms are in the metrics.
    assert_eq!(config.learner.algorithm, troupe::config::AlgorithmKind::Appo);
    for term in ["policy", "baseline", "entropy", "kl", "clip_fraction"] {
        let series = format!("troupe_learner_loss{{policy=\"default\",algorithm=\"appo\",term=\"{term}\"}}");
        assert!(m.contains(&series), "{series} missing: {m}");
    }

    // The solved policy is a safetensors blob with the documented tensor names.
    let mut client = cluster.client().await?;
    let (meta, blob) = troupe::client::fetch_policy(&mut client, 0).await?;
    assert!(meta.version >= s.latest_version);
    assert!(meta.learner_step > 0 && meta.frames > 0 && meta.parent_version + 1 == meta.version);
    let st = safetensors::SafeTensors::deserialize(&blob)?;
    let mut names: Vec<&str> = st.names().into_iter().collect();
    names.sort();
    let mut want = Vec::new();
    for net in ["policy", "value"] {
        want.extend([format!("{net}.head.bias"), format!("{net}.head.weight")]);
        for i in 0..2 {
            want.extend([
                format!("{net}.encoder.torso.layers.{i}.bias"),
                format!("{net}.encoder.torso.layers.{i}.weight"),
            ]);
        }
    }
    // The shipped config normalises observations: the statistics travel in the file.
    want.extend(["obs_norm.count".into(), "obs_norm.mean".into(), "obs_norm.var".into()]);
    want.sort();
    assert_eq!(names, want);
    let count = st.tensor("obs_norm.count")?;
    let count = f32::from_le_bytes(count.data()[..4].try_into()?);
    assert!(count > 1000.0, "the learner folded its observations in: count {count}");
    assert_eq!(st.tensor("policy.encoder.torso.layers.0.weight")?.shape(), &[64, 4]);
    assert_eq!(st.tensor("policy.head.weight")?.shape(), &[2, 64]);
    // The file carries the model's spec: the env's spaces and the model config.
    let (_, header) = safetensors::SafeTensors::read_metadata(&blob)?;
    let meta = header.metadata().clone().unwrap_or_default();
    let spec: serde_json::Value = serde_json::from_str(&meta["spec"])?;
    let env: troupe::spaces::PolicySpec = serde_json::from_value(spec["env"].clone())?;
    assert_eq!(
        env,
        troupe::spaces::PolicySpec::single(&troupe::env::native_spec("CartPole-v1").unwrap())
    );
    assert_eq!(spec["model"]["hidden_sizes"], serde_json::json!([64, 64]));

    // A user can load it in PyTorch (strict names and shapes) and it plays Gymnasium's
    // CartPole-v1 well.
    let path = cluster.dir.path().join("policy.safetensors");
    std::fs::write(&path, &blob)?;
    let report = tests::load_policy(&path, &["--episodes", "20"])?;
    let greedy = report["mean_return"].as_f64().unwrap_or(0.0);
    println!("greedy return of the solved policy in PyTorch: {greedy}");
    assert!(greedy >= 300.0, "{report}");

    // Every process drains on SIGTERM and exits cleanly.
    for a in &mut cluster.actors {
        assert_eq!(
            a.terminate(Duration::from_secs(15)).map(|s| s.success()),
            Some(true),
            "{} exits 0",
            a.name
        );
    }
    let learner = cluster.learner.as_mut().unwrap();
    assert_eq!(
        learner.terminate(Duration::from_secs(30)).map(|s| s.success()),
        Some(true),
        "learner exits 0"
    );
    assert_eq!(
        cluster
            .coordinator
            .terminate(Duration::from_secs(15))
            .map(|s| s.success()),
        Some(true),
        "coordinator exits 0"
    );
    Ok(())
}
