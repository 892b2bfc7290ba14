//! MountainCarContinuous-v0 with Gymnasium's dynamics (gymnasium 1.2.2,
//! `classic_control/continuous_mountain_car.py`).
//!
//! - Action: one force in `[-1, 1]`; larger values are clipped for the dynamics (but not for
//!   the reward, see below).
//! - Dynamics, per step: `velocity += force * 0.0015 - 0.0025 * cos(3 * position)`, clipped to
//!   `[-0.07, 0.07]`; then `position += velocity`, clipped to `[-1.2, 0.6]`; a car at the left
//!   wall with a negative velocity stops.
//! - Observation: the state, `[position, velocity]`, as f32.
//! - Reward: `-0.1 * action^2` with the action as given (unclipped), plus 100 on reaching the goal.
//! - Termination: `position >= 0.45 && velocity >= 0`, evaluated before the state is rounded to
//!   f32.
//! - Truncation: Gymnasium's `TimeLimit` of 999 steps (set on the 999th step even when that step
//!   also terminates).
//! - Reset: position uniform in `[-0.6, -0.4)`, velocity 0.
//!
//! Precision: unlike the other classic-control envs, Gymnasium stores this state as float32
//! after every step, while a freshly reset state is float64, and the step mixes `np.float32`,
//! `np.float64` and Python floats. Under NumPy 2's promotion rules (NEP 50) a Python float takes
//! the NumPy operand's type, so part of the step, including the comparisons with the bounds and
//! the goal, runs in f32 and part in f64 depending on where the state came from. [`Scalar`]
//! replays those rules so the results agree to the last bit, the goal and wall branches included.

use std::cmp::Ordering;
use std::ops::{Add, Mul, Sub};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Action, Env, Step};
use crate::spaces::{ActionSpace, EnvSpec, ObservationSpace};

const MIN_ACTION: f64 = -1.0;
const MAX_ACTION: f64 = 1.0;
const MIN_POSITION: f64 = -1.2;
const MAX_POSITION: f64 = 0.6;
const MAX_SPEED: f64 = 0.07;
const GOAL_POSITION: f64 = 0.45;
const GOAL_VELOCITY: f64 = 0.0;
const POWER: f64 = 0.0015;
const GRAVITY: f64 = 0.0025;
const GOAL_REWARD: f64 = 100.0;
/// Weight of the squared action in the per-step cost.
const ACTION_COST: f64 = 0.1;
/// The reset position is uniform in `[RESET_LOW, RESET_HIGH)`.
const RESET_LOW: f64 = -0.6;
const RESET_HIGH: f64 = -0.4;
pub const MAX_EPISODE_STEPS: u32 = 999;

/// A number as Gymnasium's step holds it: its value and its Python/NumPy type, which decides the
/// precision of the arithmetic and comparisons it takes part in (NumPy 2, NEP 50).
#[derive(Debug, Clone, Copy)]
enum Scalar {
    /// `np.float32`.
    F32(f32),
    /// `np.float64`.
    F64(f64),
    /// A Python float: double precision, but "weak": next to an `np.float32` it becomes one.
    Py(f64),
}

use Scalar::{Py, F32, F64};

/// Two operands brought to the precision NumPy computes them in.
enum Promoted {
    Single(f32, f32),
    Double(f64, f64),
}

impl Scalar {
    fn value(self) -> f64 {
        match self {
            F32(x) => f64::from(x),
            F64(x) | Py(x) => x,
        }
    }

    fn promote(self, rhs: Scalar) -> Promoted {
        match (self, rhs) {
            (F32(_), F32(_) | Py(_)) | (Py(_), F32(_)) => Promoted::Single(self.value() as f32, rhs.value() as f32),
            _ => Promoted::Double(self.value(), rhs.value()),
        }
    }

    /// Applies `op` in the promoted precision; the result has the promoted type.
    fn binary(self, rhs: Scalar, op32: fn(f32, f32) -> f32, op64: fn(f64, f64) -> f64) -> Scalar {
        match (self, rhs, self.promote(rhs)) {
            (Py(_), Py(_), Promoted::Double(a, b)) => Py(op64(a, b)),
            (_, _, Promoted::Double(a, b)) => F64(op64(a, b)),
            (_, _, Promoted::Single(a, b)) => F32(op32(a, b)),
        }
    }

    /// Python's `max(self, other)`: the first argument unless the second is larger.
    fn py_max(self, other: Scalar) -> Scalar {
        if other > self {
            other
        } else {
            self
        }
    }

    /// Python's `min(self, other)`: the first argument unless the second is smaller.
    fn py_min(self, other: Scalar) -> Scalar {
        if other < self {
            other
        } else {
            self
        }
    }
}

impl Add for Scalar {
    type Output = Scalar;
    fn add(self, rhs: Scalar) -> Scalar {
        self.binary(rhs, |a, b| a + b, |a, b| a + b)
    }
}

impl Sub for Scalar {
    type Output = Scalar;
    fn sub(self, rhs: Scalar) -> Scalar {
        self.binary(rhs, |a, b| a - b, |a, b| a - b)
    }
}

impl Mul for Scalar {
    type Output = Scalar;
    fn mul(self, rhs: Scalar) -> Scalar {
        self.binary(rhs, |a, b| a * b, |a, b| a * b)
    }
}

impl PartialEq for Scalar {
    fn eq(&self, other: &Scalar) -> bool {
        self.partial_cmp(other) == Some(Ordering::Equal)
    }
}

impl PartialOrd for Scalar {
    fn partial_cmp(&self, other: &Scalar) -> Option<Ordering> {
        match self.promote(*other) {
            Promoted::Single(a, b) => a.partial_cmp(&b),
            Promoted::Double(a, b) => a.partial_cmp(&b),
        }
    }
}

/// A car in a valley with a continuous engine; see the module docs.
pub struct MountainCarContinuous {
    /// position, velocity: `F64` after a reset, `F32` after a step, as in Gymnasium.
    state: [Scalar; 2],
    steps: u32,
    rng: StdRng,
}

impl MountainCarContinuous {
    pub const OBSERVATION_SIZE: usize = 2;

    pub fn new(seed: u64) -> MountainCarContinuous {
        MountainCarContinuous {
            state: [F64(0.0); 2],
            steps: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Sets `[position, velocity]` as a float64 state, the type Gymnasium's reset leaves
    /// (tests replay Gymnasium's states). The elapsed-step counter is left alone.
    ///
    /// # Panics
    /// If `state` does not have 2 entries.
    pub fn set_state(&mut self, state: &[f64]) {
        let [p, v]: [f64; 2] = state.try_into().expect("MountainCarContinuous state has 2 entries");
        self.state = [F64(p), F64(v)];
    }

    /// Sets `[position, velocity]` as a float32 state, the type Gymnasium's step leaves.
    ///
    /// # Panics
    /// If `state` does not have 2 entries.
    pub fn set_state_f32(&mut self, state: &[f32]) {
        let [p, v]: [f32; 2] = state.try_into().expect("MountainCarContinuous state has 2 entries");
        self.state = [F32(p), F32(v)];
    }

    /// `[position, velocity]`.
    pub fn state(&self) -> Vec<f64> {
        self.state.iter().map(|s| s.value()).collect()
    }

    /// Sets how many steps the current episode has taken (for the 999-step truncation).
    pub fn set_elapsed_steps(&mut self, n: u32) {
        self.steps = n;
    }

    fn write_obs(&self, obs: &mut [f32]) {
        obs.copy_from_slice(&self.state.map(|s| s.value() as f32));
    }
}

impl Env for MountainCarContinuous {
    fn spec(&self) -> EnvSpec {
        EnvSpec::single(
            "MountainCarContinuous-v0",
            ObservationSpace::f32(&[Self::OBSERVATION_SIZE]),
            ActionSpace::Box {
                low: vec![MIN_ACTION as f32],
                high: vec![MAX_ACTION as f32],
            },
            false,
        )
    }

    fn reset(&mut self, obs: &mut [f32]) {
        self.state = [F64(self.rng.random_range(RESET_LOW..RESET_HIGH)), F64(0.0)];
        self.steps = 0;
        self.write_obs(obs);
    }

    fn step(&mut self, action: Action<'_>, obs: &mut [f32]) -> Step {
        let action = match action {
            Action::Continuous(&[a]) => a,
            other => panic!("MountainCarContinuous-v0: action {other:?} is not a Box of shape (1,)"),
        };
        let [mut position, mut velocity] = self.state;
        // Each line follows one line of Gymnasium's step, operand types included.
        let force = F32(action).py_max(Py(MIN_ACTION)).py_min(Py(MAX_ACTION));
        velocity = velocity + (force * Py(POWER) - Py(GRAVITY) * Py((Py(3.0) * position).value().cos()));
        if velocity > Py(MAX_SPEED) {
            velocity = Py(MAX_SPEED);
        }
        if velocity < Py(-MAX_SPEED) {
            velocity = Py(-MAX_SPEED);
        }
        position = position + velocity;
        if position > Py(MAX_POSITION) {
            position = Py(MAX_POSITION);
        }
        if position < Py(MIN_POSITION) {
            position = Py(MIN_POSITION);
        }
        if position == Py(MIN_POSITION) && velocity < Py(0.0) {
            velocity = Py(0.0);
        }
        let terminated = position >= Py(GOAL_POSITION) && velocity >= Py(GOAL_VELOCITY);
        let a = f64::from(action);
        let reward = (if terminated { GOAL_REWARD } else { 0.0 }) - a * a * ACTION_COST;
        self.state = [position, velocity].map(|s| F32(s.value() as f32));
        self.steps += 1;
        self.write_obs(obs);
        Step {
            reward: reward as f32,
            terminated,
            truncated: self.steps >= MAX_EPISODE_STEPS,
        }
    }
}
