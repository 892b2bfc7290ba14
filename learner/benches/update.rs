//! The learner's cost: update time and frames/s of the shipped CartPole (APPO and IMPALA) and
//! MinAtar Breakout configs on random batches of their shapes, with 1 and 2 libtorch intra-op
//! threads (or those given), on the CPU and, when there is one, on CUDA.
//!
//!     cargo bench -p learner --bench update -- [SECONDS] [THREADS...]
//!
//! Prints one JSON line.

use std::time::Instant;

use learner::algorithms::TrainBatch;
use learner::trainer::Trainer;
use tch::{Device, Kind, Tensor};
use troupe::model::ModelSpec;
use troupe::spaces::{ActionSpace, EnvSpec, ObsDType, ObservationSpace, PolicySpec};
use troupe::RunConfig;

fn config(name: &str) -> RunConfig {
    RunConfig::from_file(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../configs/{name}.toml")))
        .expect("shipped config")
}

/// A random batch of B columns of T steps for `spec` (CPU tensors), no episode ends.
fn batch(spec: &ModelSpec, t: i64, b: i64) -> TrainBatch {
    let dims: Vec<i64> = spec.env.observation.shape.iter().map(|&d| d as i64).collect();
    let with = |lead: &[i64]| -> Vec<i64> { lead.iter().chain(dims.iter()).copied().collect() };
    let (obs, truncation_obs) = match spec.env.observation.dtype {
        ObsDType::F32 => (
            Tensor::randn(with(&[t + 1, b]).as_slice(), (Kind::Float, Device::Cpu)),
            Tensor::zeros(with(&[0]).as_slice(), (Kind::Float, Device::Cpu)),
        ),
        ObsDType::U8 => (
            Tensor::randint(2, with(&[t + 1, b]).as_slice(), (Kind::Uint8, Device::Cpu)),
            Tensor::zeros(with(&[0]).as_slice(), (Kind::Uint8, Device::Cpu)),
        ),
    };
    let n = spec.env.action.nvec()[0] as i64;
    let flags = || Tensor::zeros([t, b], (Kind::Float, Device::Cpu));
    TrainBatch {
        t,
        b,
        obs,
        actions: Tensor::randint(n, [t, b, 1], (Kind::Int64, Device::Cpu)),
        rewards: Tensor::randn([t, b], (Kind::Float, Device::Cpu)),
        terminated: flags(),
        truncated: flags(),
        valid: Tensor::ones([t, b], (Kind::Float, Device::Cpu)),
        any_absent: false,
        behaviour: Tensor::randn([t, b, n], (Kind::Float, Device::Cpu)),
        masks: None,
        state0: Tensor::zeros([b, 0], (Kind::Float, Device::Cpu)),
        truncation_obs,
        truncation_at: vec![],
        agents: Tensor::zeros([b], (Kind::Int64, Device::Cpu)),
        states: None,
        truncation_states: None,
    }
}

fn measure(run: &RunConfig, spec: &ModelSpec, device: Device, threads: i32, secs: f64) -> serde_json::Value {
    tch::set_num_threads(threads);
    let mut trainer = Trainer::new(run, spec, device).expect("trainer");
    let (t, b) = (run.actor.unroll_length as i64, run.learner.batch_size as i64);
    let tb = batch(spec, t, b);
    for _ in 0..3 {
        trainer.update(&tb);
    }
    let start = Instant::now();
    let mut updates = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        trainer.update(&tb);
        updates += 1;
    }
    let s = start.elapsed().as_secs_f64();
    serde_json::json!({
        "threads": threads,
        "device": format!("{device:?}"),
        "update_ms": s * 1e3 / updates as f64,
        "frames_per_s": (updates as f64) * (t * b) as f64 / s,
        "updates": updates,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let secs: f64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let threads: Vec<i32> = if args.len() > 1 {
        args[1..].iter().filter_map(|s| s.parse().ok()).collect()
    } else {
        vec![1, 2]
    };
    let mut devices = vec![Device::Cpu];
    if tch::Cuda::is_available() {
        devices.push(Device::Cuda(0));
    }
    let minatar = PolicySpec::single(&EnvSpec::single(
        "MinAtar/Breakout-v1",
        ObservationSpace::u8(&[10, 10, 4]),
        ActionSpace::Discrete { n: 3 },
        false,
    ));
    let cartpole = PolicySpec::single(&troupe::env::native_spec("CartPole-v1").expect("native CartPole"));
    let mut out = serde_json::Map::new();
    for (name, env) in [
        ("cartpole", &cartpole),
        ("cartpole-impala", &cartpole),
        ("minatar-breakout", &minatar),
    ] {
        let run = config(name);
        let spec = ModelSpec {
            env: env.clone(),
            model: run.model.clone(),
        };
        let mut rows = Vec::new();
        for &d in &devices {
            let ts: Vec<i32> = if d == Device::Cpu { threads.clone() } else { vec![1] };
            for &th in &ts {
                tch::manual_seed(0);
                rows.push(measure(&run, &spec, d, th, secs));
            }
        }
        out.insert(
            name.to_string(),
            serde_json::json!({
                "algorithm": run.learner.algorithm.name(),
                "t_b": [run.actor.unroll_length, run.learner.batch_size],
                "runs": rows,
            }),
        );
    }
    println!("{}", serde_json::Value::Object(out));
}
