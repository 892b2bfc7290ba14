use super::*;
use proto::TensorView;
use troupe::config::ModelConfig;
use troupe::env::NativeVecEnv;
use troupe::model::ModelSpec;

fn model_for(spec: &EnvSpec, lstm: usize) -> Model {
    let model = ModelConfig {
        lstm_size: lstm,
        ..ModelConfig::default()
    };
    Model::new(
        &ModelSpec {
            env: PolicySpec::single(spec),
            model,
        },
        tch::Device::Cpu,
    )
    .unwrap()
}

#[test]
fn unroll_has_the_protocol_shapes_and_consistent_episode_ends() {
    let env = NativeVecEnv::new("CartPole-v1", &[1, 2, 3]).unwrap();
    let spec = env.spec().clone();
    let net = model_for(&spec, 0);
    let mut runner = EnvRunner::single(Box::new(env), 64, 0, 5).unwrap();
    let mut episodes = Vec::new();
    let parts = runner.unroll_one(&net, 7, 3, &mut |e| episodes.push(e)).unwrap();
    assert_eq!(parts.len(), 1);
    let r = &parts[0];
    assert_eq!((r.actor_id, r.policy_version), (7, 3));
    let obs = TensorView::new::<f32>("observations", r.observations.as_ref()).unwrap();
    obs.expect_shape(&[Some(65), Some(3), Some(4)]).unwrap();
    let term = TensorView::new::<u8>("terminated", r.terminated.as_ref())
        .unwrap()
        .to_flags()
        .unwrap();
    let trunc = TensorView::new::<u8>("truncated", r.truncated.as_ref())
        .unwrap()
        .to_flags()
        .unwrap();
    let ends = term.iter().zip(&trunc).filter(|(a, b)| **a || **b).count();
    // A random policy ends CartPole episodes within ~10-40 steps.
    assert!(ends >= 3, "{ends}");
    assert_eq!(episodes.len(), ends);
    let params = TensorView::new::<f32>("behaviour_params", r.behaviour_params.as_ref()).unwrap();
    params.expect_shape(&[Some(64), Some(3), Some(2)]).unwrap();
    let actions = TensorView::new::<i64>("actions", r.actions.as_ref()).unwrap();
    actions.expect_shape(&[Some(64), Some(3), Some(1)]).unwrap();
    assert!(r.action_masks.is_none() && r.initial_state.is_none());
    // The observation at t+1 after a termination is a fresh reset state (all |x| < 0.05).
    let o = obs.to_finite_f32().unwrap();
    for t in 0..64 {
        for n in 0..3 {
            if term[t * 3 + n] {
                let next = &o[((t + 1) * 3 + n) * 4..((t + 1) * 3 + n) * 4 + 4];
                assert!(next.iter().all(|v| v.abs() < 0.05), "{next:?}");
            }
        }
    }
    // The next unroll starts where this one ended.
    let last_row: Vec<f32> = o[64 * 3 * 4..].to_vec();
    let r2 = runner.unroll_one(&net, 7, 3, &mut |_| {}).unwrap().remove(0);
    let o2 = TensorView::new::<f32>("observations", r2.observations.as_ref())
        .unwrap()
        .to_finite_f32()
        .unwrap();
    assert_eq!(&o2[..3 * 4], last_row.as_slice());
}

#[test]
fn continuous_actions_travel_as_f32_with_gaussian_params() {
    let env = NativeVecEnv::new("Pendulum-v1", &[1, 2]).unwrap();
    let spec = env.spec().clone();
    let net = model_for(&spec, 0);
    let mut runner = EnvRunner::single(Box::new(env), 10, 0, 1).unwrap();
    let r = runner.unroll_one(&net, 1, 1, &mut |_| {}).unwrap().remove(0);
    TensorView::new::<f32>("actions", r.actions.as_ref())
        .unwrap()
        .expect_shape(&[Some(10), Some(2), Some(1)])
        .unwrap();
    TensorView::new::<f32>("behaviour_params", r.behaviour_params.as_ref())
        .unwrap()
        .expect_shape(&[Some(10), Some(2), Some(2)])
        .unwrap();
}

/// With an LSTM core the rollout carries the state each column started the unroll with, and
/// the state is zeroed where an episode ended.
#[test]
fn recurrent_state_is_sent_and_reset_at_episode_ends() {
    let env = NativeVecEnv::new("CartPole-v1", &[1, 2, 3, 4]).unwrap();
    let spec = env.spec().clone();
    let net = model_for(&spec, 8);
    let s = net.state_size();
    assert_eq!(s, 2 * 2 * 8);
    let mut runner = EnvRunner::single(Box::new(env), 16, s, 2).unwrap();
    let r1 = runner.unroll_one(&net, 1, 1, &mut |_| {}).unwrap().remove(0);
    let st1 = TensorView::new::<f32>("initial_state", r1.initial_state.as_ref()).unwrap();
    st1.expect_shape(&[Some(4), Some(s)]).unwrap();
    assert!(
        st1.to_finite_f32().unwrap().iter().all(|&x| x == 0.0),
        "a fresh run starts from zeros"
    );
    let r2 = runner.unroll_one(&net, 1, 1, &mut |_| {}).unwrap().remove(0);
    let st2 = TensorView::new::<f32>("initial_state", r2.initial_state.as_ref())
        .unwrap()
        .to_finite_f32()
        .unwrap();
    assert!(st2.iter().any(|&x| x != 0.0), "the state carries over between unrolls");

    // Replaying r2 from its initial state with the learner's unroll reproduces the actor's
    // behaviour params, with the resets where episodes ended.
    let obs = TensorView::new::<f32>("observations", r2.observations.as_ref())
        .unwrap()
        .to_finite_f32()
        .unwrap();
    let term = TensorView::new::<u8>("terminated", r2.terminated.as_ref())
        .unwrap()
        .to_vec::<u8>();
    let trunc = TensorView::new::<u8>("truncated", r2.truncated.as_ref())
        .unwrap()
        .to_vec::<u8>();
    let mut starts = vec![0f32; 17 * 4];
    for i in 0..16 * 4 {
        starts[4 + i] = (term[i] | trunc[i]) as f32;
    }
    let (params, _, _) = tch::no_grad(|| {
        net.unroll(
            &Tensor::from_slice(&obs).view([17, 4, 4]),
            &Tensor::from_slice(&st2).view([4, s as i64]),
            &Tensor::from_slice(&starts).view([17, 4]),
        )
    });
    let behaviour = TensorView::new::<f32>("behaviour_params", r2.behaviour_params.as_ref())
        .unwrap()
        .to_finite_f32()
        .unwrap();
    let replayed = Vec::<f32>::try_from(params.narrow(0, 0, 16).flatten(0, -1)).unwrap();
    let max_diff = behaviour
        .iter()
        .zip(&replayed)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max_diff < 1e-5, "{max_diff}");
    assert!(starts.contains(&1.0), "episodes ended inside the unroll");
}

/// Two agents taking turns (the other's column absent), one shared LSTM policy: the actor
/// carries each agent's state through the other's turns, and the learner's replay of the
/// rollout (`unroll_present` with the rollout's validity) reproduces every behaviour param.
#[test]
fn recurrent_state_passes_through_the_other_agents_turns() {
    struct Turns {
        spec: EnvSpec,
        groups: troupe::env::Groups,
        t: usize,
    }
    impl Turns {
        fn observe(&self, obs: &mut ObsBuf<'_>) {
            if let ObsBuf::F32(b) = obs {
                for (i, x) in b.iter_mut().enumerate() {
                    *x = ((self.t * 7 + i) as f32 * 0.37).sin();
                }
            }
        }
    }
    impl VecEnv for Turns {
        fn spec(&self) -> &EnvSpec {
            &self.spec
        }
        fn num_envs(&self) -> usize {
            1
        }
        fn set_groups(&mut self, groups: troupe::env::Groups) {
            self.groups = groups;
        }
        fn groups(&self) -> &troupe::env::Groups {
            &self.groups
        }
        fn reset(&mut self, outs: &mut [troupe::env::ResetOut<'_>]) -> Result<(), EnvError> {
            self.observe(&mut outs[0].obs);
            Ok(())
        }
        fn step(&mut self, _: &[Action<'_>], outs: &mut [StepOut<'_>], _: &mut [u8]) -> Result<(), EnvError> {
            // Agent t % 2 moves; the other waits.
            let mover = self.t % 2;
            self.t += 1;
            self.observe(&mut outs[0].obs);
            outs[0].valid[1 - mover] = 0;
            outs[0].rewards[mover] = 1.0;
            Ok(())
        }
    }
    let agent = |id: &str| troupe::spaces::AgentSpec {
        id: id.into(),
        observation: troupe::spaces::ObservationSpace::f32(&[3]),
        action: ActionSpace::Discrete { n: 3 },
        action_mask: false,
    };
    let env_spec = EnvSpec {
        id: "Turns-v0".into(),
        agents: vec![agent("a"), agent("b")],
        state: None,
    };
    let policy = PolicySpec {
        id: env_spec.id.clone(),
        policy: "default".into(),
        agents: vec!["a".into(), "b".into()],
        observation: env_spec.agents[0].observation.clone(),
        action: env_spec.agents[0].action.clone(),
        action_mask: false,
        agent_id_input: false,
        state: None,
    };
    let net = Model::new(
        &ModelSpec {
            env: policy.clone(),
            model: ModelConfig {
                lstm_size: 8,
                ..ModelConfig::default()
            },
        },
        tch::Device::Cpu,
    )
    .unwrap();
    let s = net.state_size();
    let env = Turns {
        groups: troupe::env::one_group(&env_spec),
        spec: env_spec,
        t: 0,
    };
    let (t, n) = (12usize, 2usize);
    let mut runner = EnvRunner::new(Box::new(env), &[policy], RewardMode::Agent, t, &[s], 3).unwrap();
    let r = runner.unroll(&[&net], 1, &[1], &mut |_| {}).unwrap().remove(0);
    let valid = TensorView::new::<u8>("valid", r.valid.as_ref()).unwrap().to_vec::<u8>();
    assert_eq!(
        valid.iter().filter(|&&v| v == 0).count(),
        t,
        "one agent waits at every step"
    );
    let obs = TensorView::new::<f32>("observations", r.observations.as_ref())
        .unwrap()
        .to_finite_f32()
        .unwrap();
    let mut present: Vec<f32> = valid.iter().map(|&v| v as f32).collect();
    present.extend([1.0; 2]);
    let replay = |present: Option<&Tensor>| {
        let (params, _, _) = tch::no_grad(|| {
            net.unroll_present(
                &Tensor::from_slice(&obs).view([(t + 1) as i64, n as i64, 3]),
                &Tensor::zeros([n as i64, s as i64], (Kind::Float, tch::Device::Cpu)),
                &Tensor::zeros([(t + 1) as i64, n as i64], (Kind::Float, tch::Device::Cpu)),
                present,
            )
        });
        Vec::<f32>::try_from(params.narrow(0, 0, t as i64).flatten(0, -1)).unwrap()
    };
    let behaviour = TensorView::new::<f32>("behaviour_params", r.behaviour_params.as_ref())
        .unwrap()
        .to_finite_f32()
        .unwrap();
    let diff = |a: &[f32]| behaviour.iter().zip(a).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let present = Tensor::from_slice(&present).view([(t + 1) as i64, n as i64]);
    assert!(
        diff(&replay(Some(&present))) < 1e-5,
        "{}",
        diff(&replay(Some(&present)))
    );
    // A replay that keeps the states of the waiting turns computes other params: the test can
    // tell the two apart.
    assert!(diff(&replay(None)) > 1e-3, "{}", diff(&replay(None)));
}

#[test]
fn wide_pixel_unrolls_are_split_by_columns_under_the_cap() {
    // 64 columns of 4x84x84 u8 frames over 32 steps is ~58 MB: several parts.
    struct Frames {
        spec: EnvSpec,
        groups: troupe::env::Groups,
        n: usize,
    }
    impl VecEnv for Frames {
        fn spec(&self) -> &EnvSpec {
            &self.spec
        }
        fn num_envs(&self) -> usize {
            self.n
        }
        fn set_groups(&mut self, groups: troupe::env::Groups) {
            self.groups = groups;
        }
        fn groups(&self) -> &troupe::env::Groups {
            &self.groups
        }
        fn reset(&mut self, outs: &mut [troupe::env::ResetOut<'_>]) -> Result<(), EnvError> {
            if let ObsBuf::U8(b) = &mut outs[0].obs {
                b.fill(7);
            }
            Ok(())
        }
        fn step(&mut self, _: &[Action<'_>], outs: &mut [StepOut<'_>], _: &mut [u8]) -> Result<(), EnvError> {
            if let ObsBuf::U8(b) = &mut outs[0].obs {
                for (i, row) in b.chunks_mut(4 * 84 * 84).enumerate() {
                    row.fill(i as u8);
                }
            }
            outs[0].rewards.fill(1.0);
            Ok(())
        }
    }
    let env_spec = EnvSpec::single(
        "Frames-v0",
        troupe::spaces::ObservationSpace::u8(&[4, 84, 84]),
        ActionSpace::Discrete { n: 3 },
        false,
    );
    let spec = PolicySpec::single(&env_spec);
    let mut model = ModelConfig {
        torso: troupe::config::TorsoKind::NatureCnn,
        ..ModelConfig::default()
    };
    model.share_torso = true;
    let net = Model::new(
        &ModelSpec {
            env: spec.clone(),
            model,
        },
        tch::Device::Cpu,
    )
    .unwrap();
    let frames = Frames {
        groups: troupe::env::one_group(&env_spec),
        spec: env_spec,
        n: 64,
    };
    let mut runner = EnvRunner::single(Box::new(frames), 32, 0, 1).unwrap();
    let parts = runner.unroll_one(&net, 1, 1, &mut |_| {}).unwrap();
    assert!(parts.len() >= 7, "{}", parts.len());
    let mut cols = 0;
    for p in &parts {
        let size = prost::Message::encoded_len(p);
        assert!(size <= proto::MAX_MESSAGE_BYTES, "{size}");
        let obs = TensorView::new::<u8>("observations", p.observations.as_ref()).unwrap();
        // Column c of the whole unroll holds the value c after a step.
        let w = obs.shape[1];
        let data = obs.bytes();
        for j in 0..w {
            assert_eq!(data[(w + j) * 4 * 84 * 84], (cols + j) as u8);
        }
        cols += w;
    }
    assert_eq!(cols, 64);
}

#[test]
fn an_unroll_too_large_for_one_column_is_refused_at_start() {
    let env = NativeVecEnv::new("CartPole-v1", &[1]).unwrap();
    let err = EnvRunner::single(Box::new(env), 1_000_000, 0, 1)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("actor.unroll_length"), "{err}");
}

/// Ape-X acting: one rollout per env; an env with epsilon 0 takes the action of highest Q
/// (the behaviour parameters hold the dueling Q-values the model gives), one with epsilon 1
/// acts at random; each rollout's initial priority is the R2D2 mixture of its n-step TD errors
/// under the actor's own Q-values, recomputed here from the rollout alone.
#[test]
fn apex_acting_is_epsilon_greedy_with_initial_priorities_per_env() {
    use troupe::model::q;
    let env = NativeVecEnv::new("CartPole-v1", &[1, 2, 3]).unwrap();
    let spec = env.spec().clone();
    tch::manual_seed(4);
    let net = model_for(&spec, 0);
    let t = 32usize;
    let mut runner = EnvRunner::single(Box::new(env), t, 0, 5).unwrap();
    let qa = QActing {
        epsilons: vec![0.0, 1.0, 0.0],
        anneal_frames: 0,
        dueling: true,
        n_step: 3,
        discount: 0.99,
        eta: 0.9,
        reward_clip: 0.0,
        reward_scale: 1.0,
        vdn: false,
    };
    runner.act_on_q_values(qa.clone());
    let parts = runner.unroll_one(&net, 7, 3, &mut |_| {}).unwrap();
    assert_eq!(parts.len(), 3, "one rollout per env");
    let priorities = runner.priorities().to_vec();
    assert_eq!(priorities.len(), 3);
    for (e, r) in parts.iter().enumerate() {
        let obs = TensorView::new::<f32>("observations", r.observations.as_ref()).unwrap();
        obs.expect_shape(&[Some(t + 1), Some(1), Some(4)]).unwrap();
        let o = obs.to_finite_f32().unwrap();
        let qs = TensorView::new::<f32>("behaviour_params", r.behaviour_params.as_ref())
            .unwrap()
            .to_finite_f32()
            .unwrap();
        let actions = TensorView::new::<i64>("actions", r.actions.as_ref())
            .unwrap()
            .to_vec::<i64>();
        // The Q-values the model gives for the rollout's observations.
        let x = Tensor::from_slice(&o).view([t as i64 + 1, 4]);
        let out = net.step(&x, &Tensor::zeros([t as i64 + 1, 0], (Kind::Float, tch::Device::Cpu)));
        let q_all = q::q_values(&out.params, &out.value, true);
        let expect = Vec::<f32>::try_from(q_all.narrow(0, 0, t as i64).flatten(0, -1)).unwrap();
        for (a, b) in qs.iter().zip(&expect) {
            assert!((a - b).abs() < 1e-5, "env {e}: {a} vs {b}");
        }
        let greedy = (0..t)
            .filter(|&s| actions[s] == if qs[2 * s + 1] > qs[2 * s] { 1 } else { 0 })
            .count();
        if qa.epsilons[e] == 0.0 {
            assert_eq!(greedy, t, "env {e} acts greedily");
        } else {
            assert!(greedy < t - 4, "env {e} acts at random: {greedy} of {t} greedy");
        }
        // Its priority, from the rollout alone.
        let flag = |v: &Option<WireTensor>, name| {
            let f = TensorView::new::<u8>(name, v.as_ref()).unwrap().to_flags().unwrap();
            Tensor::from_slice(&f.iter().map(|&b| b as u8 as f32).collect::<Vec<f32>>()).view([t as i64, 1])
        };
        let rewards = TensorView::new::<f32>("rewards", r.rewards.as_ref())
            .unwrap()
            .to_finite_f32()
            .unwrap();
        let rewards = Tensor::from_slice(&rewards).view([t as i64, 1]);
        let (term, trunc) = (flag(&r.terminated, "terminated"), flag(&r.truncated, "truncated"));
        let valid = Tensor::ones([t as i64, 1], (Kind::Float, tch::Device::Cpu));
        let q3 = q_all.unsqueeze(1);
        let none = Tensor::zeros([0, 2], (Kind::Float, tch::Device::Cpu));
        let y = q::targets(
            &q::TargetInput {
                q_online: &q3,
                q_target: &q3,
                trunc_online: &none,
                trunc_target: &none,
                truncation_at: &[],
                rewards: &rewards,
                terminated: &term,
                truncated: &trunc,
                valid: &valid,
                masks: None,
            },
            q::NStep { n: 3, discount: 0.99 },
        );
        let a = Tensor::from_slice(&actions).view([t as i64, 1, 1]);
        let taken = q3.narrow(0, 0, t as i64).gather(-1, &a, false).squeeze_dim(-1);
        let p = q::priorities(&(y - taken), &valid, 0.9)[0];
        assert!(
            (p - priorities[e]).abs() < 1e-4 * p.max(1.0),
            "env {e}: {p} vs {}",
            priorities[e]
        );
        assert!(priorities[e] > q::PRIORITY_EPSILON);
    }
}
