//! Benchmark (a): one actor's bare loop, env steps plus the batched CPU policy forward, in one
//! process with no network. Prints one JSON line.
//!
//!   cargo bench -p actor --bench bare_loop [-- SECONDS [CONFIG]]
//!
//! CONFIG defaults to configs/cartpole.toml; with a Python-hosted env config (PYTHONPATH at
//! the envs venv) it measures the host's overhead.

use std::time::Instant;

use actor::runner::EnvRunner;
use troupe::model::{Model, ModelSpec};
use troupe::RunConfig;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let seconds: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(5.0);
    let path = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/cartpole.toml").to_string());
    tch::set_num_threads(1);
    tch::set_num_interop_threads(1);
    let config = RunConfig::from_file(std::path::Path::new(&path)).expect("run config");
    let n = config.actor.num_envs;
    let seeds: Vec<u64> = (0..n as u64).collect();
    let env = actor::envs::make(&config.env, &seeds, &python_path()).expect("env");
    let spec = ModelSpec {
        env: troupe::spaces::PolicySpec::single(env.spec()),
        model: config.model.clone(),
    };
    let net = Model::new(&spec, tch::Device::Cpu).expect("model");
    let mut runner = EnvRunner::single(env, config.actor.unroll_length, net.state_size(), 1).expect("runner");
    let mut episodes = 0u64;
    // Warm up, then measure.
    for _ in 0..20 {
        runner.unroll_one(&net, 1, 1, &mut |_| {}).expect("unroll");
    }
    let start = Instant::now();
    let mut steps = 0u64;
    let mut bytes = 0usize;
    while start.elapsed().as_secs_f64() < seconds {
        let parts = runner.unroll_one(&net, 1, 1, &mut |_| episodes += 1).expect("unroll");
        bytes += parts.iter().map(prost::Message::encoded_len).sum::<usize>();
        steps += (config.actor.unroll_length * n) as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "bench": "bare_loop",
            "env": config.env.id,
            "backend": config.env.backend,
            "num_envs": n,
            "unroll_length": config.actor.unroll_length,
            "seconds": secs,
            "env_steps_per_s": steps as f64 / secs,
            "rollout_bytes_per_step": bytes as f64 / steps as f64,
            "episodes": episodes,
        })
    );
}

/// Where hosted envs import gymnasium from (scripts/env.sh exports TROUPE_PYTHON_PATH).
fn python_path() -> Vec<String> {
    std::env::var("TROUPE_PYTHON_PATH")
        .map(|s| s.split(':').filter(|p| !p.is_empty()).map(String::from).collect())
        .unwrap_or_default()
}
