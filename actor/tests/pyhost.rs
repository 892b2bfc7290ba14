//! The Python env host against real Gymnasium (from the envs venv on TROUPE_PYTHON_PATH, which
//! scripts/test.sh sets).

use actor::runner::EnvRunner;
use proto::TensorView;
use troupe::config::{EnvBackend, EnvConfig, ModelConfig};
use troupe::env::{Action, EnvError, ObsBuf, StepOut, VecEnv};
use troupe::model::{Model, ModelSpec};

fn python_path() -> Vec<String> {
    let p: Vec<String> = std::env::var("TROUPE_PYTHON_PATH")
        .map(|s| s.split(':').filter(|p| !p.is_empty()).map(String::from).collect())
        .unwrap_or_default();
    assert!(
        !p.is_empty(),
        "TROUPE_PYTHON_PATH must point at the envs venv's site-packages (scripts/test.sh sets it)"
    );
    p
}

fn gymnasium(id: &str) -> EnvConfig {
    EnvConfig {
        id: id.into(),
        backend: EnvBackend::Gymnasium,
        ..EnvConfig::default()
    }
}

fn faulty(mode: &str, at: i64) -> EnvConfig {
    let mut kwargs = toml::Table::new();
    kwargs.insert("mode".into(), mode.into());
    kwargs.insert("at".into(), at.into());
    EnvConfig {
        id: "FaultyCartPole".into(),
        backend: EnvBackend::Factory,
        factory: "faulty_env:make".into(),
        kwargs,
        python_path: vec![concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures").into()],
        ..EnvConfig::default()
    }
}

/// Steps all columns once with action 0; returns the error if the env failed.
fn step_once(env: &mut dyn VecEnv, obs: &mut [f32]) -> Result<(), EnvError> {
    let n = env.num_envs();
    let (mut r, mut te, mut tr, mut fin, mut va) = (vec![0.0; n], vec![0; n], vec![0; n], Vec::new(), vec![1; n]);
    env.step_one(
        Action::Discrete(&vec![0; n]),
        StepOut {
            obs: ObsBuf::F32(obs),
            rewards: &mut r,
            terminated: &mut te,
            truncated: &mut tr,
            masks: None,
            final_obs: &mut fin,
            valid: &mut va,
            states: None,
            final_states: None,
        },
    )
}

/// 200 steps of 8 CartPole-v1 columns through `cfg`'s host, with an untrained policy.
fn cartpole_unroll(cfg: &EnvConfig) -> (proto::v1::Rollout, Vec<proto::v1::EpisodeStat>) {
    let seeds: Vec<u64> = (0..8).collect();
    let env = actor::envs::make(cfg, &seeds, &python_path()).unwrap();
    assert_eq!(env.spec(), &troupe::env::native_spec("CartPole-v1").unwrap());
    let spec = ModelSpec {
        env: troupe::spaces::PolicySpec::single(env.spec()),
        model: ModelConfig::default(),
    };
    let net = Model::new(&spec, tch::Device::Cpu).unwrap();
    let mut runner = EnvRunner::single(env, 200, 0, 3).unwrap();
    let mut stats = Vec::new();
    let r = runner.unroll_one(&net, 1, 1, &mut |e| stats.push(e)).unwrap().remove(0);
    (r, stats)
}

/// Observations and rewards of a rollout.
fn floats(r: &proto::v1::Rollout) -> (Vec<f32>, Vec<f32>) {
    let obs = TensorView::new::<f32>("observations", r.observations.as_ref())
        .unwrap()
        .to_finite_f32()
        .unwrap();
    let rewards = TensorView::new::<f32>("rewards", r.rewards.as_ref())
        .unwrap()
        .to_finite_f32()
        .unwrap();
    (obs, rewards)
}

/// Same-step autoreset: after an episode ends, the next observation already belongs to the
/// next episode, and every step the learner sees is a real transition. Gymnasium's default
/// NEXT_STEP mode would hand over a reset step with reward 0 and a terminal observation.
#[test]
fn gymnasium_cartpole_autoresets_in_the_same_step() {
    let (r, stats) = cartpole_unroll(&gymnasium("CartPole-v1"));
    let episodes = stats.len();
    let (obs, rewards) = floats(&r);
    let term = TensorView::new::<u8>("terminated", r.terminated.as_ref())
        .unwrap()
        .to_flags()
        .unwrap();
    assert!(
        episodes >= 20,
        "a random policy ends many episodes in 200 steps: {episodes}"
    );
    assert!(
        rewards.iter().all(|&x| x == 1.0),
        "CartPole pays 1 on every real step; a 0 is a reset step"
    );
    let mut checked = 0;
    for t in 0..200 {
        for c in 0..8 {
            if term[t * 8 + c] {
                let next = &obs[((t + 1) * 8 + c) * 4..((t + 1) * 8 + c + 1) * 4];
                assert!(
                    next.iter().all(|v| v.abs() <= 0.05),
                    "step {t} env {c}: {next:?} is not a reset state"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 20);
}

#[test]
fn a_python_exception_bad_shape_dtype_or_nan_is_a_clear_error() {
    let seeds = [1u64, 2];
    let cases = [
        ("raise", "exception", "RuntimeError: the physics engine exploded"),
        ("shape", "observation", "env 0: expected shape [4], got [5]"),
        ("dtype", "observation", "env 0: expected dtype float32, got float64"),
        (
            "nan",
            "observation",
            "env 0: element 2 is NaN, expected a finite number",
        ),
        ("reward", "reward", "env 0: element 0 is NaN, expected a finite number"),
    ];
    for (mode, field, problem) in cases {
        let mut env = actor::envs::make(&faulty(mode, 3), &seeds, &python_path()).unwrap();
        let mut obs = vec![0f32; 8];
        env.reset_one(ObsBuf::F32(&mut obs), None).unwrap();
        step_once(env.as_mut(), &mut obs).unwrap();
        step_once(env.as_mut(), &mut obs).unwrap();
        let e = step_once(env.as_mut(), &mut obs).unwrap_err();
        assert_eq!((e.call, e.field.as_str()), ("step", field), "{mode}: {e}");
        assert!(e.problem.contains(problem), "{mode}: {e}");
        let text = e.to_string();
        assert!(text.starts_with("env FaultyCartPole: step: "), "{text}");
    }
}

/// The runner drops a failed unroll, and with a rebuilt env it goes on.
#[test]
fn the_runner_goes_on_with_a_rebuilt_env() {
    let seeds = [1u64, 2, 3];
    let cfg = faulty("raise", 40);
    let env = actor::envs::make(&cfg, &seeds, &python_path()).unwrap();
    let spec = ModelSpec {
        env: troupe::spaces::PolicySpec::single(env.spec()),
        model: ModelConfig::default(),
    };
    let net = Model::new(&spec, tch::Device::Cpu).unwrap();
    let mut runner = EnvRunner::single(env, 32, 0, 1).unwrap();
    runner.unroll_one(&net, 1, 1, &mut |_| {}).unwrap();
    let e = runner.unroll_one(&net, 1, 1, &mut |_| {}).unwrap_err();
    assert_eq!(e.field, "exception");
    runner.replace_env(actor::envs::make(&cfg, &seeds, &python_path()).unwrap());
    for _ in 0..1 {
        let parts = runner.unroll_one(&net, 1, 1, &mut |_| {}).unwrap();
        assert_eq!(parts.len(), 1);
    }
}

#[test]
fn unknown_ids_and_unsupported_spaces_name_the_env() {
    let e = actor::envs::make(&gymnasium("CartPol-v1"), &[1], &python_path())
        .err()
        .unwrap();
    assert_eq!((e.call, e.field.as_str()), ("make", "env.id"));
    assert!(e.problem.contains("close matches: ['CartPole-v1'"), "{e}");
    assert!(
        e.problem.contains("known ids: [") && e.problem.contains("Pendulum-v1"),
        "{e}"
    );
    // FrozenLake's observations are Discrete: not a Box.
    let e = actor::envs::make(&gymnasium("FrozenLake-v1"), &[1], &python_path())
        .err()
        .unwrap();
    let text = e.to_string();
    assert!(
        text.starts_with("env FrozenLake-v1: make: observation space: expected a Box"),
        "{text}"
    );
}

#[test]
fn wrappers_from_the_config_are_applied() {
    let mut cfg = gymnasium("Pendulum-v1");
    let mut kwargs = toml::Table::new();
    kwargs.insert("max_episode_steps".into(), 7.into());
    cfg.wrappers = vec![troupe::config::WrapperConfig {
        name: "TimeLimit".into(),
        kwargs,
    }];
    let mut env = actor::envs::make(&cfg, &[5], &python_path()).unwrap();
    assert!(env.spec().agents[0].action.is_continuous());
    let mut obs = vec![0f32; 3];
    env.reset_one(ObsBuf::F32(&mut obs), None).unwrap();
    let (mut r, mut te, mut tr, mut fin, mut va) = (vec![0.0; 1], vec![0; 1], vec![0; 1], Vec::new(), vec![1; 1]);
    let mut truncated_at = None;
    for t in 1..=7 {
        env.step_one(
            Action::Continuous(&[0.5]),
            StepOut {
                obs: ObsBuf::F32(&mut obs),
                rewards: &mut r,
                terminated: &mut te,
                truncated: &mut tr,
                masks: None,
                final_obs: &mut fin,
                valid: &mut va,
                states: None,
                final_states: None,
            },
        )
        .unwrap();
        if tr[0] == 1 {
            truncated_at = Some(t);
            break;
        }
    }
    assert_eq!(truncated_at, Some(7));
    assert_eq!(fin.len(), 3 * 4, "the truncated episode's last observation is kept");
}

/// EnvPool resets one step late: the step after an episode ends only resets (action ignored,
/// reward 0). The host marks exactly those steps invalid, the episode bookkeeping skips them,
/// and the observation they return is a fresh start state.
#[test]
fn envpool_reset_steps_are_marked_invalid() {
    let cfg = EnvConfig {
        id: "CartPole-v1".into(),
        backend: EnvBackend::Envpool,
        ..EnvConfig::default()
    };
    let (r, stats) = cartpole_unroll(&cfg);
    let lengths: Vec<(u32, f32)> = stats.iter().map(|e| (e.length, e.episode_return)).collect();
    let (obs, rewards) = floats(&r);
    let term = TensorView::new::<u8>("terminated", r.terminated.as_ref())
        .unwrap()
        .to_flags()
        .unwrap();
    let valid = TensorView::new::<u8>("valid", r.valid.as_ref())
        .unwrap()
        .to_flags()
        .unwrap();
    assert!(lengths.len() >= 20, "{}", lengths.len());
    // An episode's return equals its length: reset steps (reward 0) are not counted in it.
    assert!(lengths.iter().all(|&(l, ret)| l as f32 == ret), "{lengths:?}");
    let mut invalid = 0;
    for t in 0..200 {
        for c in 0..8 {
            let i = t * 8 + c;
            let after_end = t > 0 && term[i - 8];
            assert_eq!(
                !valid[i], after_end,
                "step {t} env {c}: invalid exactly after an episode end"
            );
            if valid[i] {
                assert_eq!(rewards[i], 1.0, "step {t} env {c}");
            } else {
                invalid += 1;
                assert_eq!(rewards[i], 0.0);
                let next = &obs[(i + 8) * 4..(i + 9) * 4];
                assert!(
                    next.iter().all(|v| v.abs() <= 0.05),
                    "step {t} env {c}: {next:?} is not a start state"
                );
            }
        }
    }
    assert!(invalid >= 20);
}

/// Runs `cfg` (a multi-agent env) with `config_toml`'s policies for `t` steps of `envs` envs,
/// each policy with an untrained model; returns the env spec, the rollouts and the episodes.
fn multi_agent_unroll(
    cfg: EnvConfig,
    config_toml: &str,
    envs: u64,
    t: usize,
) -> (
    troupe::spaces::EnvSpec,
    Vec<proto::v1::Rollout>,
    Vec<proto::v1::EpisodeStat>,
) {
    let mut run = troupe::RunConfig::from_toml(config_toml).unwrap();
    run.env = cfg;
    let seeds: Vec<u64> = (0..envs).collect();
    let env = actor::envs::make(&run.env, &seeds, &python_path()).unwrap();
    let spec = env.spec().clone();
    let policies = troupe::policy_map::policy_specs(&run, &spec).unwrap();
    let nets: Vec<Model> = policies
        .iter()
        .map(|p| {
            Model::new(
                &ModelSpec {
                    env: p.clone(),
                    model: run.model.clone(),
                },
                tch::Device::Cpu,
            )
            .unwrap()
        })
        .collect();
    let refs: Vec<&Model> = nets.iter().collect();
    let mut runner = EnvRunner::new(env, &policies, run.policies.reward, t, &vec![0; nets.len()], 3).unwrap();
    let mut stats = Vec::new();
    let versions = vec![1; nets.len()];
    let rollouts = runner.unroll(&refs, 1, &versions, &mut |e| stats.push(e)).unwrap();
    (spec, rollouts, stats)
}

/// lbforaging through Gymnasium (Tuple spaces): two agents, per-agent spaces, the state as both
/// observations, its 50-step limit read as truncation with `env.time_limit`, one shared policy
/// with a centralized critic: the rollout carries both agents' columns and the env states.
#[test]
fn lbforaging_runs_as_a_multi_agent_env() {
    let mut cfg = gymnasium("Foraging-8x8-2p-2f-coop-v3");
    cfg.imports = vec!["lbforaging".into()];
    cfg.time_limit = Some(50);
    let (spec, rollouts, stats) = multi_agent_unroll(cfg, "[model]\ncentral_critic = true", 3, 60);
    assert_eq!(spec.agents.len(), 2);
    assert_eq!(spec.agents[1].id, "agent_1");
    assert_eq!(spec.agents[0].observation.shape, vec![12]);
    assert_eq!(spec.state.as_ref().unwrap().shape, vec![24]);
    assert_eq!(rollouts.len(), 1);
    let r = &rollouts[0];
    assert_eq!(r.policy, "default");
    TensorView::new::<f32>("observations", r.observations.as_ref())
        .unwrap()
        .expect_shape(&[Some(61), Some(6), Some(12)])
        .unwrap();
    TensorView::new::<f32>("states", r.states.as_ref())
        .unwrap()
        .expect_shape(&[Some(61), Some(6), Some(24)])
        .unwrap();
    let trunc = TensorView::new::<u8>("truncated", r.truncated.as_ref())
        .unwrap()
        .to_vec::<u8>();
    let truncated = trunc.iter().filter(|&&x| x == 1).count();
    // A random policy rarely collects both items in 50 steps: most episodes hit the limit, both
    // agents' columns truncated together, each with its last observation and state.
    assert!(truncated >= 2 && truncated % 2 == 0, "{truncated}");
    let k = TensorView::new::<f32>("truncation_states", r.truncation_states.as_ref()).unwrap();
    assert_eq!(k.shape, vec![truncated, 24]);
    assert!(!stats.is_empty() && stats.iter().all(|e| e.policy.is_empty() && e.length <= 50));
}

/// MPE's simple_spread through PettingZoo's parallel API, one policy per agent: three
/// rollouts, each of one agent's columns; 25-step episodes end truncated; the team return is
/// the sum of the agents' rewards, and each policy's return is reported too.
#[test]
fn simple_spread_runs_with_a_policy_per_agent() {
    let mut kwargs = toml::Table::new();
    kwargs.insert("N".into(), 3.into());
    kwargs.insert("local_ratio".into(), 0.5.into());
    kwargs.insert("max_cycles".into(), 25.into());
    let cfg = EnvConfig {
        id: "simple_spread_v3".into(),
        backend: EnvBackend::Pettingzoo,
        factory: "mpe2.simple_spread_v3:parallel_env".into(),
        kwargs,
        ..EnvConfig::default()
    };
    let (spec, rollouts, stats) = multi_agent_unroll(cfg, "[policies]\nmapping = \"per_agent\"", 2, 50);
    assert_eq!(
        spec.agents.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        ["agent_0", "agent_1", "agent_2"]
    );
    assert_eq!(rollouts.len(), 3);
    for (r, a) in rollouts.iter().zip(&spec.agents) {
        assert_eq!(r.policy, a.id);
        let trunc = TensorView::new::<u8>("truncated", r.truncated.as_ref())
            .unwrap()
            .to_vec::<u8>();
        // Steps 25 and 50 of both envs.
        assert_eq!(trunc.iter().filter(|&&x| x == 1).count(), 4, "{}", a.id);
    }
    let team: Vec<f32> = stats
        .iter()
        .filter(|e| e.policy.is_empty())
        .map(|e| e.episode_return)
        .collect();
    assert_eq!(team.len(), 4);
    for (i, t) in team.iter().enumerate() {
        let parts: f32 = stats
            .iter()
            .filter(|e| !e.policy.is_empty())
            .skip(i * 3)
            .take(3)
            .map(|e| e.episode_return)
            .sum();
        assert!((t - parts).abs() < 1e-3, "team {t} against the policies' {parts}");
        assert!(*t < 0.0, "simple_spread's rewards are negative distances: {t}");
    }
}
