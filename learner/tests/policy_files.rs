//! Policy files: for every torso and head (with and without an LSTM core),
//! `scripts/load_policy.py` rebuilds the model in PyTorch from the file alone (strict names and
//! shapes), and it gives the same outputs as Troupe's model on the same inputs.
//!
//! Runs `python3` with torch (scripts/test.sh puts the torch venv first on PATH).

use tch::{Device, Kind, Tensor};
use troupe::config::{ModelConfig, TorsoKind};
use troupe::model::{Model, ModelSpec};
use troupe::spaces::{ActionSpace, EnvSpec, ObsDType, ObservationSpace, PolicySpec};

fn to_nested(t: &Tensor) -> serde_json::Value {
    let size = t.size();
    let flat = Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap();
    fn build(flat: &[f64], size: &[i64]) -> serde_json::Value {
        if size.is_empty() {
            return serde_json::json!(flat[0]);
        }
        let step = flat.len() / size[0].max(1) as usize;
        serde_json::Value::Array(
            (0..size[0] as usize)
                .map(|i| build(&flat[i * step..(i + 1) * step], &size[1..]))
                .collect(),
        )
    }
    build(&flat, &size)
}

fn flat(v: &serde_json::Value, out: &mut Vec<f64>) {
    match v {
        serde_json::Value::Array(a) => a.iter().for_each(|x| flat(x, out)),
        x => out.push(x.as_f64().unwrap()),
    }
}

#[test]
fn load_policy_rebuilds_every_model_with_the_same_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let actions = [
        ActionSpace::Discrete { n: 3 },
        ActionSpace::MultiDiscrete { nvec: vec![2, 4] },
        ActionSpace::Box {
            low: vec![-1.0; 2],
            high: vec![1.0; 2],
        },
    ];
    let mut checked = 0;
    for torso in [
        TorsoKind::Mlp,
        TorsoKind::NatureCnn,
        TorsoKind::Cnn,
        TorsoKind::ImpalaResnet,
    ] {
        for (ai, action) in actions.iter().enumerate() {
            for lstm in [0, 5] {
                let observation = match torso {
                    TorsoKind::Mlp => ObservationSpace::f32(&[3, 2]),
                    TorsoKind::NatureCnn => ObservationSpace::u8(&[2, 44, 40]),
                    _ => ObservationSpace::u8(&[10, 10, 3]),
                };
                let model = ModelConfig {
                    torso,
                    hidden_sizes: vec![7, 5],
                    conv_channels: vec![4, 6],
                    conv_kernels: vec![3, 2],
                    conv_strides: vec![2, 1],
                    impala_channels: vec![4, 8],
                    dense_size: 9,
                    channels_last: matches!(torso, TorsoKind::Cnn | TorsoKind::ImpalaResnet),
                    lstm_size: lstm,
                    // Both layouts of encoders, across the cases.
                    share_torso: (ai + lstm) % 2 == 0,
                    init_log_std: -0.5,
                    // Running statistics on the MLP cases: observations in, values out.
                    normalize_observations: torso == TorsoKind::Mlp,
                    observation_clip: 3.0,
                    ..ModelConfig::default()
                };
                let spec = ModelSpec {
                    env: PolicySpec::single(&EnvSpec::single("Test-v0", observation.clone(), action.clone(), false)),
                    model,
                };
                tch::manual_seed(checked);
                let mut net = Model::new(&spec, Device::Cpu).unwrap();
                if torso == TorsoKind::Mlp {
                    let seen = Tensor::randn([50, 3, 2], (Kind::Float, Device::Cpu)) * 2.0 + 0.5;
                    net.obs_norm_mut()
                        .unwrap()
                        .update(&seen, &Tensor::ones([50], (Kind::Float, Device::Cpu)));
                    net.enable_value_norm();
                    net.value_norm_mut().unwrap().update(3.0, 16.0, 0.1);
                }
                let m = 3i64;
                let mut shape = vec![m];
                shape.extend(observation.shape.iter().map(|&d| d as i64));
                let obs = match observation.dtype {
                    ObsDType::F32 => Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu)),
                    ObsDType::U8 => Tensor::randint(256, shape.as_slice(), (Kind::Uint8, Device::Cpu)),
                };
                let state = Tensor::randn([m, net.state_size() as i64], (Kind::Float, Device::Cpu));
                let out = tch::no_grad(|| net.step(&net.prepare(&obs), &state));
                // Python gives values in return units.
                let value = net.denormalize_values(&out.value);
                let file = dir.path().join(format!("p{checked}.safetensors"));
                std::fs::write(&file, net.to_safetensors()).unwrap();
                let input = dir.path().join(format!("in{checked}.json"));
                std::fs::write(
                    &input,
                    serde_json::json!({"obs": to_nested(&obs), "state": to_nested(&state)}).to_string(),
                )
                .unwrap();
                let run = std::process::Command::new("python3")
                    .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/load_policy.py"))
                    .arg(&file)
                    .arg("--eval")
                    .arg(&input)
                    .output()
                    .expect("python3 with torch on PATH (scripts/test.sh sets it up)");
                assert!(
                    run.status.success(),
                    "{torso:?} {action:?} lstm {lstm}: {}",
                    String::from_utf8_lossy(&run.stderr)
                );
                let got: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
                for (name, want) in [("params", &out.params), ("value", &value), ("state", &out.state)] {
                    let mut g = Vec::new();
                    flat(&got[name], &mut g);
                    let w = Vec::<f64>::try_from(want.to_kind(Kind::Double).flatten(0, -1)).unwrap();
                    assert_eq!(g.len(), w.len(), "{name} of {torso:?} {action:?} lstm {lstm}");
                    let diff = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
                    assert!(
                        diff < 1e-4,
                        "{name} of {torso:?} {action:?} lstm {lstm}: max diff {diff}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 24);
}
