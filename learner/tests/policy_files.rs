//! Policy files: for every torso and head (with and without an LSTM core), and for the inputs of
//! multi-agent policies (the agent one-hot, a centralized critic over the env's state),
//! `scripts/load_policy.py` rebuilds the model in PyTorch from the file alone (strict names and
//! shapes), and it gives the same outputs as Troupe's model on the same inputs.
//!
//! Runs `python3` with torch (scripts/test.sh puts the torch venv first on PATH).

use tch::{Device, Kind, Tensor};
use troupe::config::{ModelConfig, TorsoKind};
use troupe::model::{Model, ModelSpec, StepOutput};
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

/// Runs `load_policy.py FILE --eval INPUT` and checks its params, values and next state against
/// Troupe's (`value` in return units).
fn compare_with_python(file: &std::path::Path, input: &std::path::Path, out: &StepOutput, value: &Tensor, label: &str) {
    let run = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/load_policy.py"))
        .arg(file)
        .arg("--eval")
        .arg(input)
        .output()
        .expect("python3 with torch on PATH (scripts/test.sh sets it up)");
    assert!(
        run.status.success(),
        "{label}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    for (name, want) in [("params", &out.params), ("value", value), ("state", &out.state)] {
        let mut g = Vec::new();
        flat(&got[name], &mut g);
        let w = Vec::<f64>::try_from(want.to_kind(Kind::Double).flatten(0, -1)).unwrap();
        assert_eq!(g.len(), w.len(), "{name} of {label}");
        let diff = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(diff < 1e-4, "{name} of {label}: max diff {diff}");
    }
}

/// Running statistics on the MLP cases (observations in a [3, 2] space): observations in,
/// values out, so the file's statistics are checked too.
fn seed_statistics(net: &mut Model) {
    let seen = Tensor::randn([50, 3, 2], (Kind::Float, Device::Cpu)) * 2.0 + 0.5;
    net.obs_norm_mut()
        .unwrap()
        .update(&seen, &Tensor::ones([50], (Kind::Float, Device::Cpu)));
    net.enable_value_norm();
    net.value_norm_mut().unwrap().update(3.0, 16.0, 0.1);
}

/// `m` random observations of the space.
fn random_obs(observation: &ObservationSpace, m: i64) -> Tensor {
    let mut shape = vec![m];
    shape.extend(observation.shape.iter().map(|&d| d as i64));
    match observation.dtype {
        ObsDType::F32 => Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu)),
        ObsDType::U8 => Tensor::randint(256, shape.as_slice(), (Kind::Uint8, Device::Cpu)),
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
                    seed_statistics(&mut net);
                }
                let m = 3i64;
                let obs = random_obs(&observation, m);
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
                let label = format!("{torso:?} {action:?} lstm {lstm}");
                compare_with_python(&file, &input, &out, &value, &label);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 24);
}

/// Multi-agent policies: a shared policy's agent one-hot (into an MLP's first layer, beside a
/// conv torso's features) and a centralized critic (an MLP over the env's state, with the
/// one-hot), each alone and together, with and without an LSTM core. The packed input is built
/// with `Model::input`, as the actors and the learner build it; Python gets its parts
/// (`agents`, `env_state`).
#[test]
fn load_policy_rebuilds_multi_agent_models_with_the_same_outputs() {
    let dir = tempfile::tempdir().unwrap();
    // (torso, agents, agent_id_input, critic's state width, share_torso, lstm)
    let cases = [
        (TorsoKind::Mlp, 3, true, Some(7), false, 0),
        (TorsoKind::Mlp, 3, true, Some(7), false, 5),
        (TorsoKind::Mlp, 2, true, None, false, 0),
        (TorsoKind::Mlp, 2, true, None, true, 5),
        (TorsoKind::Mlp, 1, false, Some(4), false, 5),
        (TorsoKind::Cnn, 2, true, Some(6), false, 5),
        (TorsoKind::Cnn, 2, true, None, false, 0),
        // A conv torso without an LSTM beside a critic MLP of another width: the value head
        // reads the critic's features, not the torso's.
        (TorsoKind::Cnn, 2, true, Some(6), false, 0),
        (TorsoKind::NatureCnn, 3, true, Some(5), false, 5),
        (TorsoKind::ImpalaResnet, 2, true, None, true, 0),
    ];
    for (i, &(torso, n_agents, agent_id_input, state_width, share_torso, lstm)) in cases.iter().enumerate() {
        let observation = match torso {
            TorsoKind::Mlp => ObservationSpace::f32(&[3, 2]),
            TorsoKind::NatureCnn => ObservationSpace::u8(&[2, 44, 40]),
            _ => ObservationSpace::u8(&[10, 10, 3]),
        };
        let action = match i % 3 {
            0 => ActionSpace::Discrete { n: 4 },
            1 => ActionSpace::MultiDiscrete { nvec: vec![2, 3] },
            _ => ActionSpace::Box {
                low: vec![-1.0; 2],
                high: vec![1.0; 2],
            },
        };
        let mut env = PolicySpec::single(&EnvSpec::single("Team-v0", observation.clone(), action.clone(), false));
        env.policy = "team".into();
        env.agents = (0..n_agents).map(|k| format!("agent_{k}")).collect();
        env.agent_id_input = agent_id_input;
        env.state = state_width.map(|w| ObservationSpace::f32(&[w]));
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
            share_torso,
            central_critic: state_width.is_some(),
            init_log_std: -0.5,
            normalize_observations: torso == TorsoKind::Mlp,
            observation_clip: 3.0,
            ..ModelConfig::default()
        };
        let label = format!("{torso:?} {action:?} agents {n_agents} ids {agent_id_input} state {state_width:?} shared {share_torso} lstm {lstm}");
        let spec = ModelSpec { env, model };
        tch::manual_seed(100 + i as i64);
        let mut net = Model::new(&spec, Device::Cpu).unwrap();
        assert!(net.is_packed(), "{label}");
        if torso == TorsoKind::Mlp {
            seed_statistics(&mut net);
        }
        let m = 5i64;
        let obs = random_obs(&observation, m);
        let agent_ids: Vec<i64> = (0..m).map(|r| r % n_agents as i64).collect();
        let agents = Tensor::from_slice(&agent_ids);
        let states = state_width.map(|w| Tensor::randn([m, w as i64], (Kind::Float, Device::Cpu)));
        let x = net.input(&obs, agent_id_input.then_some(&agents), states.as_ref());
        let state = Tensor::randn([m, net.state_size() as i64], (Kind::Float, Device::Cpu));
        let out = tch::no_grad(|| net.step(&x, &state));
        let value = net.denormalize_values(&out.value);
        let file = dir.path().join(format!("ma{i}.safetensors"));
        std::fs::write(&file, net.to_safetensors()).unwrap();
        let mut inp = serde_json::json!({"obs": to_nested(&obs), "state": to_nested(&state)});
        if agent_id_input {
            inp["agents"] = serde_json::json!(agent_ids);
        }
        if let Some(s) = &states {
            inp["env_state"] = to_nested(s);
        }
        let input = dir.path().join(format!("ma-in{i}.json"));
        std::fs::write(&input, inp.to_string()).unwrap();
        compare_with_python(&file, &input, &out, &value, &label);
    }
}
