//! Benchmark (a): one actor's bare loop, env steps plus the batched CPU policy forward, in one
//! process with no network. Prints one JSON line.
//!
//!   cargo bench --workspace --bench bare_loop [-- SECONDS]

use std::time::Instant;

use actor::runner::{cpu_policy, EnvRunner};
use troupe::RunConfig;

fn main() {
    let seconds: f64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(5.0);
    tch::set_num_threads(1);
    tch::set_num_interop_threads(1);
    let config = RunConfig::from_file(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../configs/cartpole.toml"
    )))
    .expect("configs/cartpole.toml");
    let n = config.actor.num_envs;
    let seeds: Vec<u64> = (0..n as u64).collect();
    let mut runner = EnvRunner::new(&config, &seeds);
    let net = cpu_policy(&troupe::policy::PolicySpec::for_run(&config));
    let mut episodes = 0u64;
    // Warm up, then measure.
    for _ in 0..20 {
        runner.unroll(&net, 1, 1, &mut |_| {});
    }
    let start = Instant::now();
    let mut steps = 0u64;
    let mut bytes = 0usize;
    while start.elapsed().as_secs_f64() < seconds {
        let r = runner.unroll(&net, 1, 1, &mut |_| episodes += 1);
        bytes += prost::Message::encoded_len(&r);
        steps += (config.actor.unroll_length * n) as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "bench": "bare_loop",
            "num_envs": n,
            "unroll_length": config.actor.unroll_length,
            "seconds": secs,
            "env_steps_per_s": steps as f64 / secs,
            "rollout_bytes_per_step": bytes as f64 / steps as f64,
            "episodes": episodes,
        })
    );
}
