//! Troupe's native classic-control environments against Gymnasium itself, live.
//!
//! For each native id, `scripts/gym_reference.py` records thousands of random transitions from
//! Gymnasium (random states, step counters and actions, with the goals, walls, velocity bounds,
//! action clipping and truncation all exercised) plus a few thousand resets. Each transition is
//! replayed on the Rust environment from the same state, step counter and action; the next
//! state, observation, reward, `terminated` and `truncated` must agree to 1e-6 (relative for
//! values above 1); MountainCarContinuous's float32 state must agree to the last bit. The Rust
//! resets must cover the same ranges as Gymnasium's, and the spaces must match.
//!
//! Needs a Python with the packages of scripts/requirements-envs.txt, named by the environment
//! variable TROUPE_PYTHON; without it the tests fail (they never skip):
//!
//! ```sh
//! python3 -m venv /root/.cache/troupe/envs-test
//! /root/.cache/troupe/envs-test/bin/pip install -r scripts/requirements-envs.txt
//! TROUPE_PYTHON=/root/.cache/troupe/envs-test/bin/python cargo test -p troupe --test classic_control_vs_gymnasium
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Deserializer};
use troupe::env::{Acrobot, Action, CartPole, Env, MountainCar, MountainCarContinuous, Pendulum};
use troupe::spaces::{ActionSpace, ObsDType};

/// Transitions compared per environment.
const TRANSITIONS: usize = 3000;
/// Largest allowed difference, relative to `max(1, |Gymnasium's value|)`.
const TOLERANCE: f64 = 1e-6;

const SETUP_HINT: &str = "set TROUPE_PYTHON to a Python that has the packages of \
    scripts/requirements-envs.txt, e.g.: python3 -m venv /root/.cache/troupe/envs-test && \
    /root/.cache/troupe/envs-test/bin/pip install -r scripts/requirements-envs.txt && \
    export TROUPE_PYTHON=/root/.cache/troupe/envs-test/bin/python";

#[test]
fn cartpole_matches_gymnasium() {
    compare("CartPole-v1", CartPole::new(11));
}

#[test]
fn acrobot_matches_gymnasium() {
    compare("Acrobot-v1", Acrobot::new(12));
}

#[test]
fn mountain_car_matches_gymnasium() {
    compare("MountainCar-v0", MountainCar::new(13));
}

#[test]
fn mountain_car_continuous_matches_gymnasium() {
    compare("MountainCarContinuous-v0", MountainCarContinuous::new(14));
}

#[test]
fn pendulum_matches_gymnasium() {
    compare("Pendulum-v1", Pendulum::new(15));
}

/// What `gym_reference.py` writes. Floats arrive as strings (Python's `repr`) and are parsed
/// with `str::parse`, which gives back the exact f64 that Python had.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reference {
    env: String,
    gymnasium: String,
    numpy: String,
    max_episode_steps: u32,
    observation_space: Space,
    action_space: Space,
    transitions: Vec<Transition>,
    resets: Vec<Reset>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum Space {
    Discrete {
        n: usize,
        start: i64,
    },
    Box {
        shape: Vec<usize>,
        dtype: String,
        #[serde(deserialize_with = "floats")]
        low: Vec<f64>,
        #[serde(deserialize_with = "floats")]
        high: Vec<f64>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Transition {
    #[serde(deserialize_with = "floats")]
    state: Vec<f64>,
    /// NumPy dtype of the state array Gymnasium stepped from: "float64" or "float32".
    state_dtype: String,
    /// The TimeLimit wrapper's step counter before the step.
    elapsed: u32,
    action: RecordedAction,
    #[serde(deserialize_with = "floats")]
    next_state: Vec<f64>,
    #[serde(deserialize_with = "floats")]
    obs: Vec<f64>,
    #[serde(deserialize_with = "float")]
    reward: f64,
    terminated: bool,
    truncated: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RecordedAction {
    Discrete(i64),
    Continuous(#[serde(deserialize_with = "floats")] Vec<f64>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Reset {
    #[serde(deserialize_with = "floats")]
    state: Vec<f64>,
    #[serde(deserialize_with = "floats")]
    obs: Vec<f64>,
}

fn float<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let s = String::deserialize(d)?;
    s.parse()
        .map_err(|e| serde::de::Error::custom(format!("float {s:?}: {e}")))
}

fn floats<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| {
            s.parse()
                .map_err(|e| serde::de::Error::custom(format!("float {s:?}: {e}")))
        })
        .collect()
}

/// A native env whose state and step counter the test can set.
trait Replay: Env {
    /// Puts the env in `state` (held by Gymnasium as `dtype`) with `elapsed` steps taken.
    /// Returns false when the env cannot take the step counter (then `truncated` is not
    /// compared).
    fn put(&mut self, state: &[f64], dtype: &str, elapsed: u32) -> bool;
    fn get(&self) -> Vec<f64>;
}

fn expect_f64(dtype: &str) {
    assert_eq!(dtype, "float64", "Gymnasium never holds this env's state as {dtype}");
}

impl Replay for CartPole {
    fn put(&mut self, state: &[f64], dtype: &str, elapsed: u32) -> bool {
        expect_f64(dtype);
        self.set_state(state.try_into().expect("4 state entries"));
        // CartPole restarts its step counter in set_state and has no way to set it.
        elapsed == 0
    }
    fn get(&self) -> Vec<f64> {
        self.state().to_vec()
    }
}

impl Replay for Acrobot {
    fn put(&mut self, state: &[f64], _dtype: &str, elapsed: u32) -> bool {
        // A float32 state (as after a reset) is promoted to float64 before Gymnasium integrates.
        self.set_state(state);
        self.set_elapsed_steps(elapsed);
        true
    }
    fn get(&self) -> Vec<f64> {
        self.state()
    }
}

impl Replay for MountainCar {
    fn put(&mut self, state: &[f64], dtype: &str, elapsed: u32) -> bool {
        expect_f64(dtype);
        self.set_state(state);
        self.set_elapsed_steps(elapsed);
        true
    }
    fn get(&self) -> Vec<f64> {
        self.state()
    }
}

impl Replay for MountainCarContinuous {
    fn put(&mut self, state: &[f64], dtype: &str, elapsed: u32) -> bool {
        match dtype {
            "float64" => self.set_state(state),
            "float32" => self.set_state_f32(&state.iter().map(|&s| exact_f32(s)).collect::<Vec<_>>()),
            _ => panic!("unexpected state dtype {dtype}"),
        }
        self.set_elapsed_steps(elapsed);
        true
    }
    fn get(&self) -> Vec<f64> {
        self.state()
    }
}

impl Replay for Pendulum {
    fn put(&mut self, state: &[f64], dtype: &str, elapsed: u32) -> bool {
        expect_f64(dtype);
        self.set_state(state);
        self.set_elapsed_steps(elapsed);
        true
    }
    fn get(&self) -> Vec<f64> {
        self.state()
    }
}

/// `x` as f32, which it must hold exactly (it came from a float32 array).
fn exact_f32(x: f64) -> f32 {
    let y = x as f32;
    assert_eq!(f64::from(y), x, "{x} is not a float32 value");
    y
}

fn within_tolerance(got: f64, want: f64) -> bool {
    got == want || (got - want).abs() <= TOLERANCE * want.abs().max(1.0)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate sits in the workspace")
        .to_path_buf()
}

/// The gymnasium version that scripts/requirements-envs.txt pins.
fn pinned_gymnasium() -> String {
    let path = repo_root().join("scripts/requirements-envs.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .find_map(|l| l.trim().strip_prefix("gymnasium=="))
        .unwrap_or_else(|| panic!("{} pins no gymnasium==VERSION", path.display()))
        .trim()
        .to_string()
}

/// Runs scripts/gym_reference.py for `id` with TROUPE_PYTHON and reads what it recorded.
fn record(id: &str, seed: u64) -> Reference {
    let python = std::env::var_os("TROUPE_PYTHON")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| panic!("TROUPE_PYTHON is not set: these tests compare with Gymnasium live; {SETUP_HINT}"));
    let script = repo_root().join("scripts/gym_reference.py");
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("reference.json");
    let output = Command::new(&python)
        .arg(&script)
        .args([
            "--env",
            id,
            "--n",
            &TRANSITIONS.to_string(),
            "--seed",
            &seed.to_string(),
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("could not run TROUPE_PYTHON={python:?}: {e}; {SETUP_HINT}"));
    assert!(
        output.status.success(),
        "{} --env {id} under TROUPE_PYTHON={python:?} failed ({}):\n{}\n{SETUP_HINT}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&out).expect("the script wrote its output");
    let reference: Reference = serde_json::from_str(&text).expect("the script's output parses");
    assert_eq!(reference.env, id);
    let pinned = pinned_gymnasium();
    assert_eq!(
        reference.gymnasium, pinned,
        "TROUPE_PYTHON={python:?} has gymnasium {} but scripts/requirements-envs.txt pins {pinned}; {SETUP_HINT}",
        reference.gymnasium
    );
    assert_eq!(reference.transitions.len(), TRANSITIONS);
    reference
}

/// Largest differences seen, for the report.
#[derive(Default)]
struct MaxDiff {
    state: f64,
    obs: f64,
    reward: f64,
    /// Transitions whose next state matched to the last bit.
    exact_states: usize,
}

fn compare<E: Replay>(id: &str, mut env: E) {
    let reference = record(id, 1);
    check_spec(id, &env, &reference);
    let diff = check_transitions(id, &mut env, &reference);
    check_resets(id, &mut env, &reference);
    println!(
        "{id}: {} transitions (gymnasium {}, numpy {}): max |diff| next state {:e}, obs {:e}, \
         reward (beyond f32 rounding) {:e}; {} next states bit-exact",
        reference.transitions.len(),
        reference.gymnasium,
        reference.numpy,
        diff.state,
        diff.obs,
        diff.reward,
        diff.exact_states
    );
}

fn check_spec(id: &str, env: &impl Env, reference: &Reference) {
    let env_spec = env.spec();
    assert_eq!(env_spec.id, id);
    assert_eq!(env_spec.num_agents(), 1);
    assert!(env_spec.state.is_none());
    let spec = &env_spec.agents[0];
    assert!(!spec.action_mask);
    match &reference.observation_space {
        Space::Box { shape, dtype, .. } => {
            assert_eq!(&spec.observation.shape, shape, "{id}: observation shape");
            assert_eq!(dtype, "float32", "{id}: Gymnasium's observation dtype");
            assert_eq!(spec.observation.dtype, ObsDType::F32, "{id}: observation dtype");
        }
        Space::Discrete { .. } => panic!("{id}: Gymnasium's observation space is not a Box"),
    }
    match (&reference.action_space, &spec.action) {
        (Space::Discrete { n, start }, ActionSpace::Discrete { n: ours }) => {
            assert_eq!(*start, 0, "{id}: Discrete start");
            assert_eq!(ours, n, "{id}: number of actions");
        }
        (
            Space::Box {
                shape,
                dtype,
                low,
                high,
            },
            ActionSpace::Box {
                low: our_low,
                high: our_high,
            },
        ) => {
            assert_eq!(dtype, "float32", "{id}: Gymnasium's action dtype");
            assert_eq!(shape, &[our_low.len()], "{id}: action shape");
            let ours = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
            assert_eq!(&ours(our_low), low, "{id}: action low");
            assert_eq!(&ours(our_high), high, "{id}: action high");
        }
        (theirs, ours) => panic!(
            "{id}: action spaces differ: ours {ours:?}, Gymnasium's {}",
            match theirs {
                Space::Discrete { .. } => "Discrete",
                Space::Box { .. } => "Box",
            }
        ),
    }
}

fn check_transitions(id: &str, env: &mut impl Replay, reference: &Reference) -> MaxDiff {
    let mut diff = MaxDiff::default();
    let mut obs = vec![0f32; env.spec().agents[0].observation.size()];
    let (mut terminated, mut truncated, mut truncation_compared) = (0, 0, 0);
    for (i, t) in reference.transitions.iter().enumerate() {
        let context = || {
            format!(
                "{id} transition {i}: from state {:?} ({}), elapsed {}, action {}",
                t.state,
                t.state_dtype,
                t.elapsed,
                match &t.action {
                    RecordedAction::Discrete(a) => a.to_string(),
                    RecordedAction::Continuous(a) => format!("{a:?}"),
                }
            )
        };
        let counts_steps = env.put(&t.state, &t.state_dtype, t.elapsed);
        let continuous: Vec<f32>;
        let discrete: [i64; 1];
        let action = match &t.action {
            RecordedAction::Discrete(a) => {
                discrete = [*a];
                Action::Discrete(&discrete)
            }
            RecordedAction::Continuous(a) => {
                continuous = a.iter().map(|&x| exact_f32(x)).collect();
                Action::Continuous(&continuous)
            }
        };
        let step = env.step(action, &mut obs);

        let next = env.get();
        assert_eq!(next.len(), t.next_state.len(), "{}", context());
        for (k, (&got, &want)) in next.iter().zip(&t.next_state).enumerate() {
            assert!(
                within_tolerance(got, want),
                "{}: next state[{k}] is {got}, Gymnasium's {want} (whole state: ours {next:?}, Gymnasium's {:?})",
                context(),
                t.next_state
            );
            diff.state = diff.state.max((got - want).abs());
        }
        diff.exact_states += usize::from(next == t.next_state);
        if id == "MountainCarContinuous-v0" {
            // Gymnasium rounds this state to f32 after every step, so an f64 ulp of difference
            // in `cos` (another libm) almost never shows, while evaluating the step in the wrong
            // precision does (in about one transition of ten): require every bit.
            assert_eq!(next, t.next_state, "{}: next state not bit-exact", context());
        }
        assert_eq!(obs.len(), t.obs.len(), "{}", context());
        for (k, (&got, &want)) in obs.iter().zip(&t.obs).enumerate() {
            let got = f64::from(got);
            assert!(
                within_tolerance(got, want),
                "{}: obs[{k}] is {got}, Gymnasium's {want} (ours {obs:?}, Gymnasium's {:?})",
                context(),
                t.obs
            );
            diff.obs = diff.obs.max((got - want).abs());
        }
        let reward = f64::from(step.reward);
        assert!(
            within_tolerance(reward, t.reward),
            "{}: reward {reward}, Gymnasium's {}",
            context(),
            t.reward
        );
        // The trait's reward is f32: measure what is left beyond that rounding.
        diff.reward = diff.reward.max((reward - f64::from(t.reward as f32)).abs());
        assert_eq!(step.terminated, t.terminated, "{}: terminated", context());
        if counts_steps {
            assert_eq!(step.truncated, t.truncated, "{}: truncated", context());
            truncation_compared += 1;
            truncated += usize::from(t.truncated);
        }
        terminated += usize::from(t.terminated);
    }
    // The sample reaches both ends of an episode often enough to mean something.
    let n = reference.transitions.len();
    if id != "Pendulum-v1" {
        assert!(
            terminated >= n / 20,
            "{id}: only {terminated} of {n} transitions terminate"
        );
    }
    assert!(
        truncation_compared >= n / 20,
        "{id}: truncation compared on {truncation_compared} of {n}"
    );
    if truncation_compared == n {
        assert!(
            truncated >= n / 20,
            "{id}: only {truncated} of {n} transitions truncate"
        );
        assert!(
            terminated == 0 || reference.transitions.iter().any(|t| t.truncated && t.terminated),
            "{id}: no transition both terminates and truncates"
        );
        assert!(
            reference
                .transitions
                .iter()
                .all(|t| t.truncated == (t.elapsed + 1 >= reference.max_episode_steps)),
            "{id}: Gymnasium truncates at {} steps",
            reference.max_episode_steps
        );
    }
    diff
}

/// Per component of `rows`: (min, max, mean, all values f32-representable).
fn columns(rows: &[Vec<f64>]) -> Vec<(f64, f64, f64, bool)> {
    (0..rows[0].len())
        .map(|k| {
            let col = rows.iter().map(|r| r[k]);
            let min = col.clone().fold(f64::INFINITY, f64::min);
            let max = col.clone().fold(f64::NEG_INFINITY, f64::max);
            let mean = col.clone().sum::<f64>() / rows.len() as f64;
            let f32_exact = col.clone().all(|x| f64::from(x as f32) == x);
            (min, max, mean, f32_exact)
        })
        .collect()
}

/// The Rust resets fill the same ranges as Gymnasium's (reset draws are uniform, so thousands
/// of them come within a fraction of a percent of the bounds) and have the same centre.
fn check_resets(id: &str, env: &mut impl Replay, reference: &Reference) {
    let n = reference.resets.len();
    assert!(n >= 1000, "{id}: only {n} reference resets");
    let mut obs = vec![0f32; env.spec().agents[0].observation.size()];
    let (mut states, mut observations) = (Vec::new(), Vec::new());
    for _ in 0..n {
        env.reset(&mut obs);
        states.push(env.get());
        observations.push(obs.iter().map(|&o| f64::from(o)).collect::<Vec<_>>());
    }
    let theirs_states: Vec<_> = reference.resets.iter().map(|r| r.state.clone()).collect();
    let theirs_obs: Vec<_> = reference.resets.iter().map(|r| r.obs.clone()).collect();
    for (what, ours, theirs) in [("state", &states, &theirs_states), ("obs", &observations, &theirs_obs)] {
        let (ours, theirs) = (columns(ours), columns(theirs));
        assert_eq!(ours.len(), theirs.len(), "{id}: reset {what} size");
        for (k, (o, t)) in ours.iter().zip(&theirs).enumerate() {
            let slack = 0.01 * (t.1 - t.0) + 1e-7;
            assert!(
                (o.0 - t.0).abs() <= slack && (o.1 - t.1).abs() <= slack,
                "{id}: reset {what}[{k}] spans [{}, {}], Gymnasium's [{}, {}]",
                o.0,
                o.1,
                t.0,
                t.1
            );
            assert!(
                (o.2 - t.2).abs() <= 5.0 * slack,
                "{id}: reset {what}[{k}] has mean {}, Gymnasium's {}",
                o.2,
                t.2
            );
            if what == "state" {
                assert_eq!(o.3, t.3, "{id}: reset state[{k}] is float32 in one and not the other");
            }
        }
    }
}
