use super::*;
use crate::config::{ModelConfig, TorsoKind};
use crate::spaces::{ActionSpace, EnvSpec, ObservationSpace, PolicySpec};

fn spec(obs: ObservationSpace, action: ActionSpace, model: ModelConfig) -> ModelSpec {
    ModelSpec {
        env: PolicySpec::single(&EnvSpec::single("Test-v0", obs, action, false)),
        model,
    }
}

fn small(torso: TorsoKind) -> ModelConfig {
    ModelConfig {
        torso,
        hidden_sizes: vec![8, 6],
        conv_channels: vec![4, 8],
        conv_kernels: vec![3, 3],
        conv_strides: vec![1, 2],
        impala_channels: vec![4, 8],
        dense_size: 16,
        ..ModelConfig::default()
    }
}

fn obs_for(torso: TorsoKind) -> ObservationSpace {
    match torso {
        TorsoKind::Mlp => ObservationSpace::f32(&[5]),
        TorsoKind::NatureCnn => ObservationSpace::u8(&[4, 84, 84]),
        _ => ObservationSpace::u8(&[10, 10, 3]),
    }
}

fn cfg_for(torso: TorsoKind) -> ModelConfig {
    let mut m = small(torso);
    m.channels_last = matches!(torso, TorsoKind::Cnn | TorsoKind::ImpalaResnet);
    m
}

fn random_obs(s: &ModelSpec, m: i64) -> Tensor {
    let mut shape = vec![m];
    shape.extend(s.env.observation.shape.iter().map(|&d| d as i64));
    match s.env.observation.dtype {
        ObsDType::F32 => Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu)),
        ObsDType::U8 => Tensor::randint(256, shape.as_slice(), (Kind::Uint8, Device::Cpu)),
    }
}

#[test]
fn every_torso_and_head_has_the_right_shapes_and_round_trips() {
    let actions = [
        ActionSpace::Discrete { n: 3 },
        ActionSpace::MultiDiscrete { nvec: vec![2, 4] },
        ActionSpace::Box {
            low: vec![-1.0; 2],
            high: vec![1.0; 2],
        },
    ];
    for torso in [
        TorsoKind::Mlp,
        TorsoKind::NatureCnn,
        TorsoKind::Cnn,
        TorsoKind::ImpalaResnet,
    ] {
        for action in &actions {
            for lstm in [0, 7] {
                let mut m = cfg_for(torso);
                m.lstm_size = lstm;
                m.share_torso = torso != TorsoKind::Mlp;
                let s = spec(obs_for(torso), action.clone(), m);
                tch::manual_seed(1);
                let a = Model::new(&s, Device::Cpu).unwrap();
                let obs = a.prepare(&random_obs(&s, 3));
                let out = a.step(&obs, &a.initial_state(3));
                assert_eq!(
                    out.params.size(),
                    vec![3, action.dist_params() as i64],
                    "{torso:?} {action:?}"
                );
                assert_eq!(out.value.size(), vec![3]);
                assert_eq!(out.state.size(), vec![3, a.state_size() as i64]);
                tch::manual_seed(2);
                let mut b = Model::new(&s, Device::Cpu).unwrap();
                let blob = a.to_safetensors();
                assert_eq!(spec_of_blob(&blob).unwrap(), s);
                b.load_safetensors(&blob).unwrap();
                let out_b = b.step(&obs, &b.initial_state(3));
                assert!(out.params.equal(&out_b.params) && out.value.equal(&out_b.value));
            }
        }
    }
}

#[test]
fn a_cnn_on_a_flat_observation_is_an_error_naming_the_env() {
    let s = spec(
        ObservationSpace::f32(&[4]),
        ActionSpace::Discrete { n: 2 },
        small(TorsoKind::NatureCnn),
    );
    let err = Model::new(&s, Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("Test-v0") && err.contains("3-D image"), "{err}");
}

#[test]
fn wrong_shapes_and_garbage_are_rejected_by_name() {
    let s = spec(
        ObservationSpace::f32(&[4]),
        ActionSpace::Discrete { n: 2 },
        small(TorsoKind::Mlp),
    );
    let a = Model::new(&s, Device::Cpu).unwrap();
    let mut other = s.clone();
    other.model.hidden_sizes = vec![8, 5];
    let mut b = Model::new(&other, Device::Cpu).unwrap();
    let err = b.load_safetensors(&a.to_safetensors()).unwrap_err().to_string();
    assert!(err.contains("expected shape"), "{err}");
    assert!(b.load_safetensors(b"not a blob").is_err());
}

/// A blob with a NaN weight is refused, naming the tensor, and the model keeps its weights.
#[test]
fn a_non_finite_blob_is_refused_and_the_model_is_unchanged() {
    let s = spec(
        ObservationSpace::f32(&[4]),
        ActionSpace::Discrete { n: 2 },
        small(TorsoKind::Mlp),
    );
    tch::manual_seed(1);
    let a = Model::new(&s, Device::Cpu).unwrap();
    tch::manual_seed(2);
    let mut b = Model::new(&s, Device::Cpu).unwrap();
    tch::no_grad(|| {
        for (name, mut v) in a.var_store().variables() {
            if name == "value.head.bias" {
                let _ = v.fill_(f64::NAN);
            }
        }
    });
    let before = b.to_safetensors();
    let err = b.load_safetensors(&a.to_safetensors()).unwrap_err().to_string();
    assert_eq!(
        err,
        "weights blob: tensor value.head.bias: element 0 is NaN, expected finite weights"
    );
    assert_eq!(weights(&b.to_safetensors()), weights(&before), "nothing was copied");
}

/// The learner's replay of an unroll from the stored start state reproduces what stepping one
/// step at a time (as the actor does, zeroing the state where an episode ended) gave, episode
/// starts in the middle of the unroll included.
#[test]
fn lstm_replay_reproduces_step_by_step_outputs_with_resets() {
    for share in [false, true] {
        let mut m = small(TorsoKind::Mlp);
        m.lstm_size = 6;
        m.share_torso = share;
        let s = spec(ObservationSpace::f32(&[5]), ActionSpace::Discrete { n: 3 }, m);
        tch::manual_seed(4);
        let model = Model::new(&s, Device::Cpu).unwrap();
        let (t1, b) = (9i64, 4i64);
        let obs = Tensor::randn([t1, b, 5], (Kind::Float, Device::Cpu));
        // Episodes end (so the next step starts one) at a few places.
        let mut starts = vec![0f32; (t1 * b) as usize];
        for &(t, c) in &[(2usize, 0usize), (3, 1), (5, 0), (8, 3)] {
            starts[t * b as usize + c] = 1.0;
        }
        let starts = Tensor::from_slice(&starts).view([t1, b]);
        let state0 = Tensor::randn([b, model.state_size() as i64], (Kind::Float, Device::Cpu));
        let (mut params, mut values) = (Vec::new(), Vec::new());
        let mut state = state0.shallow_clone();
        tch::no_grad(|| {
            for t in 0..t1 {
                if t > 0 {
                    for c in 0..b {
                        if starts.double_value(&[t, c]) == 1.0 {
                            let _ = state.get(c).zero_();
                        }
                    }
                }
                let out = model.step(&obs.get(t), &state);
                params.push(out.params);
                values.push(out.value);
                state = out.state;
            }
        });
        let (p, v, states) = tch::no_grad(|| model.unroll(&obs, &state0, &starts));
        assert!(p.allclose(&Tensor::stack(&params, 0), 1e-6, 1e-6, false));
        assert!(v.allclose(&Tensor::stack(&values, 0), 1e-6, 1e-6, false));
        assert!(states.get(t1 - 1).allclose(&state, 1e-6, 1e-6, false));
        // Each step's state after it is kept as it was, also where the next step starts a new
        // episode (the learner feeds it with a truncated episode's final observation).
        let mut replay = state0.shallow_clone();
        tch::no_grad(|| {
            for t in 0..t1 {
                if t > 0 {
                    let keep = (Tensor::ones_like(&starts.get(t)) - starts.get(t)).unsqueeze(-1);
                    replay = &replay * keep;
                }
                replay = model.step(&obs.get(t), &replay).state;
                assert!(
                    states.get(t).allclose(&replay, 1e-6, 1e-6, false),
                    "state after step {t}"
                );
                assert!(replay.abs().sum(Kind::Float).double_value(&[]) > 0.0);
            }
        });
        // Without the resets the outputs differ: the test can tell.
        let (p2, _, _) = tch::no_grad(|| model.unroll(&obs, &state0, &starts.zeros_like()));
        assert!(!p2.allclose(&p, 1e-6, 1e-6, false));
    }
}

/// Absent steps (an agent that finished, or whose turn it was not) keep no state: the replay
/// carries a column's state through them to its next present step, as the actor does, and an
/// episode's start still zeroes it.
#[test]
fn lstm_replay_carries_state_through_absent_steps() {
    let mut m = small(TorsoKind::Mlp);
    m.lstm_size = 6;
    let s = spec(ObservationSpace::f32(&[5]), ActionSpace::Discrete { n: 3 }, m);
    tch::manual_seed(5);
    let model = Model::new(&s, Device::Cpu).unwrap();
    let (t1, b) = (10i64, 3i64);
    let obs = Tensor::randn([t1, b, 5], (Kind::Float, Device::Cpu));
    // Column 0 takes every other step (turns), column 1 finishes at step 3 and is absent until
    // its env resets at step 7, column 2 acts throughout.
    let mut present = vec![1f32; (t1 * b) as usize];
    let mut starts = vec![0f32; (t1 * b) as usize];
    for t in 0..t1 as usize {
        if t % 2 == 1 {
            present[t * b as usize] = 0.0;
        }
        if (4..7).contains(&t) {
            present[t * b as usize + 1] = 0.0;
        }
    }
    starts[4 * b as usize + 1] = 1.0;
    starts[7 * b as usize + 1] = 1.0;
    let present = Tensor::from_slice(&present).view([t1, b]);
    let starts = Tensor::from_slice(&starts).view([t1, b]);
    let state0 = Tensor::randn([b, model.state_size() as i64], (Kind::Float, Device::Cpu));
    let mut params = Vec::new();
    let state = state0.copy();
    tch::no_grad(|| {
        for t in 0..t1 {
            for c in 0..b {
                if t > 0 && starts.double_value(&[t, c]) == 1.0 {
                    let _ = state.get(c).zero_();
                }
            }
            let out = model.step(&obs.get(t), &state);
            params.push(out.params);
            for c in 0..b {
                if present.double_value(&[t, c]) == 1.0 {
                    let _ = state.get(c).copy_(&out.state.get(c));
                }
            }
        }
    });
    let (p, _, states) = tch::no_grad(|| model.unroll_present(&obs, &state0, &starts, Some(&present)));
    assert!(p.allclose(&Tensor::stack(&params, 0), 1e-6, 1e-6, false));
    assert!(states.get(t1 - 1).allclose(&state, 1e-6, 1e-6, false));
    // Column 0's state after its absent step 1 is its state after step 0.
    assert!(states.get(1).get(0).allclose(&states.get(0).get(0), 0.0, 0.0, false));
    // Dropping the states of absent steps changes what the next present step computes.
    let (p2, _, _) = tch::no_grad(|| model.unroll(&obs, &state0, &starts));
    assert!(!p2.get(2).get(0).allclose(&p.get(2).get(0), 1e-6, 1e-6, false));
}

fn weights(blob: &[u8]) -> Vec<(String, Vec<u8>)> {
    crate::policy_file::tensors_by_name(blob).unwrap()
}

/// PopArt: after the value statistics move, the rescaled head gives the same values in return
/// units; without the rescale ("running") they change.
#[test]
fn popart_preserves_value_outputs_when_the_statistics_move() {
    let s = spec(
        ObservationSpace::f32(&[5]),
        ActionSpace::Discrete { n: 2 },
        small(TorsoKind::Mlp),
    );
    let mut net = Model::new(&s, Device::Cpu).unwrap();
    net.enable_value_norm();
    let obs = random_obs(&s, 7);
    let state = net.initial_state(7);
    let values = |net: &Model| tch::no_grad(|| net.denormalize_values(&net.step(&obs, &state).value));
    let before = values(&net);
    // Returns around -300 with spread 40.
    let (old, new) = net.value_norm_mut().unwrap().update(-300.0, 1_600.0, 0.001);
    assert_eq!((old.mean, old.std), (0.0, 1.0));
    assert!(
        (new.mean + 300.0).abs() < 1e-3 && (new.std - 40.0).abs() < 1e-2,
        "{new:?}"
    );
    let moved = values(&net);
    assert!(
        f64::try_from((&moved - &before).abs().max()).unwrap() > 1.0,
        "the raw outputs move"
    );
    net.preserve_value_outputs(old, new);
    let after = values(&net);
    let diff = f64::try_from((&after - &before).abs().max()).unwrap();
    assert!(diff < 1e-3, "PopArt keeps the outputs: max diff {diff}");
}

/// Observation statistics merge batches exactly (the mean and variance of everything seen),
/// skip rows of weight 0, travel in the policy file, and normalise the model's input.
#[test]
fn observation_statistics_merge_exactly_and_travel_in_the_file() {
    let mut m = small(TorsoKind::Mlp);
    m.normalize_observations = true;
    let s = spec(ObservationSpace::f32(&[3]), ActionSpace::Discrete { n: 2 }, m);
    let mut net = Model::new(&s, Device::Cpu).unwrap();
    let a = Tensor::randn([40, 3], (Kind::Float, Device::Cpu)) * 3.0 + 1.0;
    let b = Tensor::randn([25, 3], (Kind::Float, Device::Cpu)) * 0.5 - 2.0;
    let junk = Tensor::full([5, 3], 1e6, (Kind::Float, Device::Cpu));
    let ones = |n: i64| Tensor::ones([n], (Kind::Float, Device::Cpu));
    let norm = net.obs_norm_mut().unwrap();
    norm.update(&a, &ones(40));
    norm.update(
        &Tensor::cat(&[&b, &junk], 0),
        &Tensor::cat(&[ones(25), Tensor::zeros([5], (Kind::Float, Device::Cpu))], 0),
    );
    assert_eq!(norm.count(), 65.0);
    // A batch with a NaN is refused whole.
    let bad = Tensor::randn([2, 3], (Kind::Float, Device::Cpu));
    let _ = bad.get(1).get(2).fill_(f64::NAN);
    assert!(!norm.update(&bad, &ones(2)));
    assert_eq!(norm.count(), 65.0);
    let all = Tensor::cat(&[&a, &b], 0).to_kind(Kind::Double);
    let blob = net.to_safetensors();
    let st = safetensors::SafeTensors::deserialize(&blob).unwrap();
    let read = |name: &str| -> Vec<f64> {
        bytemuck::pod_collect_to_vec::<u8, f32>(st.tensor(name).unwrap().data())
            .into_iter()
            .map(f64::from)
            .collect()
    };
    let want_mean = Vec::<f64>::try_from(all.mean_dim(0, false, Kind::Double)).unwrap();
    let want_var = Vec::<f64>::try_from(all.var_dim(0, false, false)).unwrap();
    for (g, w) in read("obs_norm.mean").iter().zip(&want_mean) {
        assert!((g - w).abs() < 1e-4, "mean {g} vs {w}");
    }
    for (g, w) in read("obs_norm.var").iter().zip(&want_var) {
        assert!((g - w).abs() < 1e-3 * w.max(1.0), "var {g} vs {w}");
    }
    // An actor's model loads the statistics with the weights and acts as the learner's does.
    let mut actor = Model::new(&s, Device::Cpu).unwrap();
    actor.load_safetensors(&blob).unwrap();
    let x = Tensor::randn([4, 3], (Kind::Float, Device::Cpu));
    let state = actor.initial_state(4);
    let p1 = tch::no_grad(|| actor.act(&x, &state).0);
    let p0 = tch::no_grad(|| net.act(&x, &state).0);
    assert!(p1.allclose(&p0, 1e-6, 1e-6, false));
    // The same weights without the statistics act differently: the normalisation is applied.
    let mut plain_spec = s.clone();
    plain_spec.model.normalize_observations = false;
    let mut plain = Model::new(&plain_spec, Device::Cpu).unwrap();
    plain.load_safetensors(&blob).unwrap();
    let p2 = tch::no_grad(|| plain.act(&x, &state).0);
    assert!(!p2.allclose(&p0, 1e-3, 1e-3, false));
}

/// A shared multi-agent policy reads the agent one-hot; a centralized critic reads the env
/// state (with the one-hot) and not the agent's observation. Both survive a policy file.
#[test]
fn agent_ids_and_a_central_critic_enter_the_model() {
    let mut env = PolicySpec::single(&EnvSpec::single(
        "Team-v0",
        ObservationSpace::f32(&[3]),
        ActionSpace::Discrete { n: 4 },
        false,
    ));
    env.agents = vec!["a".into(), "b".into()];
    env.agent_id_input = true;
    env.state = Some(ObservationSpace::f32(&[5]));
    let model = ModelConfig {
        hidden_sizes: vec![16],
        ..ModelConfig::default()
    };
    let net = Model::new(&ModelSpec { env, model }, Device::Cpu).unwrap();
    assert!(net.is_packed());
    let obs = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.5, -1.0, 2.0]).view([2, 3]);
    let agents = Tensor::from_slice(&[0i64, 1]);
    let states = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 1.0, 2.0, 3.0, 4.0, 5.0]).view([2, 5]);
    let x = net.input(&obs, Some(&agents), Some(&states));
    assert_eq!(x.size(), vec![2, 3 + 2 + 5]);
    let out = tch::no_grad(|| net.step(&x, &net.initial_state(2)));
    // Same observation and state, different agents: different actions and values.
    assert!(!out.params.get(0).equal(&out.params.get(1)));
    assert!(!out.value.get(0).equal(&out.value.get(1)));
    // The critic ignores the observation; the policy does not.
    let other_obs = Tensor::from_slice(&[9.0f32, 9.0, 9.0, 9.0, 9.0, 9.0]).view([2, 3]);
    let y = net.input(&other_obs, Some(&agents), Some(&states));
    let out2 = tch::no_grad(|| net.step(&y, &net.initial_state(2)));
    assert!(out2.value.equal(&out.value));
    assert!(!out2.params.equal(&out.params));
    let z = net.input(&obs, Some(&agents), Some(&(&states * 2.0)));
    let out3 = tch::no_grad(|| net.step(&z, &net.initial_state(2)));
    assert!(!out3.value.equal(&out.value));
    assert!(out3.params.equal(&out.params));
    // A policy file round trip rebuilds the same model.
    let blob = net.to_safetensors();
    let spec = spec_of_blob(&blob).unwrap();
    let mut back = Model::new(&spec, Device::Cpu).unwrap();
    back.load_safetensors(&blob).unwrap();
    let out4 = tch::no_grad(|| back.step(&x, &back.initial_state(2)));
    assert!(out4.params.equal(&out.params) && out4.value.equal(&out.value));
}
