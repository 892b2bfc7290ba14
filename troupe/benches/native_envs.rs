//! Raw env steps/s of each native env: one env, uniform random actions, reset on episode end,
//! no policy. Prints one JSON line; scripts/bench.sh puts it beside Gymnasium's Python loop on
//! the same envs (scripts/bench_envs.py).
//!
//!   cargo bench -p troupe --bench native_envs [-- SECONDS_PER_ENV]

use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use troupe::env::{make_native, Action, CLASSIC_CONTROL_IDS};
use troupe::spaces::ActionSpace;

fn main() {
    let seconds: f64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(2.0);
    let mut out = serde_json::Map::new();
    for &id in CLASSIC_CONTROL_IDS {
        let mut env = make_native(id, 1).expect("native id");
        let env_spec = env.spec();
        let spec = &env_spec.agents[0];
        let mut obs = vec![0f32; spec.observation.size()];
        let mut rng = StdRng::seed_from_u64(2);
        // Pre-drawn actions, so the loop measures the env, not the RNG.
        let (discrete, continuous): (Vec<i64>, Vec<f32>) = match &spec.action {
            ActionSpace::Discrete { n } => ((0..4096).map(|_| rng.random_range(0..*n as i64)).collect(), vec![]),
            ActionSpace::Box { low, high } => (vec![], (0..4096).map(|_| rng.random_range(low[0]..high[0])).collect()),
            ActionSpace::MultiDiscrete { .. } => unreachable!("no native MultiDiscrete env"),
        };
        env.reset(&mut obs);
        let start = Instant::now();
        let mut steps = 0u64;
        while start.elapsed().as_secs_f64() < seconds {
            for i in 0..4096 {
                let a = if discrete.is_empty() {
                    Action::Continuous(std::slice::from_ref(&continuous[i]))
                } else {
                    Action::Discrete(std::slice::from_ref(&discrete[i]))
                };
                let s = env.step(a, &mut obs);
                if s.terminated || s.truncated {
                    env.reset(&mut obs);
                }
            }
            steps += 4096;
        }
        out.insert(
            id.to_string(),
            serde_json::json!(steps as f64 / start.elapsed().as_secs_f64()),
        );
    }
    // Level-Based Foraging: env steps (every agent acting) of one env, random actions.
    for id in ["Foraging-8x8-2p-2f-coop-v3", "Foraging-8x8-3p-3f-v3"] {
        let mut env = troupe::env::make_native_multi(id, 1).expect("native LBF");
        let agents = env.spec().agents.len();
        let mut rng = StdRng::seed_from_u64(2);
        let actions: Vec<i64> = (0..4096 * agents).map(|_| rng.random_range(0..6)).collect();
        let mut steps_out = vec![troupe::env::AgentStep::default(); agents];
        env.reset();
        let start = Instant::now();
        let mut steps = 0u64;
        while start.elapsed().as_secs_f64() < seconds {
            for i in 0..4096 {
                let acts: Vec<Action<'_>> = (0..agents)
                    .map(|k| Action::Discrete(std::slice::from_ref(&actions[i * agents + k])))
                    .collect();
                env.step(&acts, &mut steps_out);
                if !env.is_live(0) {
                    env.reset();
                }
            }
            steps += 4096;
        }
        out.insert(
            id.to_string(),
            serde_json::json!(steps as f64 / start.elapsed().as_secs_f64()),
        );
    }
    println!(
        "{}",
        serde_json::json!({"bench": "native_envs", "env_steps_per_s": out})
    );
}
