//! Pendulum-v1 with Gymnasium's dynamics (gymnasium 1.2.2, `classic_control/pendulum.py`).
//!
//! - State: `[theta, theta_dot]` in f64; `theta` is 0 with the pendulum upright and is never
//!   wrapped (only the cost normalizes it).
//! - Action: one torque, clipped to `[-2, 2]`.
//! - Dynamics (g = 10, m = 1, l = 1, dt = 0.05), semi-implicit Euler:
//!   `theta_dot' = clip(theta_dot + (3g/(2l) sin(theta) + 3/(m l^2) u) dt, -8, 8)`, then
//!   `theta' = theta + theta_dot' dt`.
//! - Observation: `[cos theta', sin theta', theta_dot']` as f32.
//! - Reward: `-(normalize(theta)^2 + 0.1 theta_dot^2 + 0.001 u^2)` from the state *before* the
//!   step and the clipped torque, with `normalize` mapping angles into `[-pi, pi)` as Python's
//!   `%` does.
//! - Never terminates. Truncation: Gymnasium's `TimeLimit` of 200 steps.
//! - Reset: `theta` uniform in `[-pi, pi)`, `theta_dot` uniform in `[-1, 1)`.
//!
//! Precision: the torque arrives as `np.float32`, and under NumPy 2's promotion rules the terms
//! that only involve it (`3/(m l^2) u` and `0.001 u^2`) are computed in f32 before joining the
//! f64 state; this module does the same.

use std::f64::consts::PI;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Action, Env, Step};
use crate::spaces::{ActionSpace, EnvSpec, ObservationSpace};

const MAX_SPEED: f64 = 8.0;
const MAX_TORQUE: f32 = 2.0;
/// Seconds per step.
const DT: f64 = 0.05;
const G: f64 = 10.0;
const M: f64 = 1.0;
const L: f64 = 1.0;
/// Reset bounds: `theta` in `[-RESET_THETA, RESET_THETA)`, `theta_dot` likewise.
const RESET_THETA: f64 = PI;
const RESET_THETA_DOT: f64 = 1.0;
pub const MAX_EPISODE_STEPS: u32 = 200;

/// The inverted pendulum swing-up; see the module docs.
pub struct Pendulum {
    /// theta, theta_dot.
    state: [f64; 2],
    steps: u32,
    rng: StdRng,
}

impl Pendulum {
    pub const OBSERVATION_SIZE: usize = 3;

    pub fn new(seed: u64) -> Pendulum {
        Pendulum {
            state: [0.0; 2],
            steps: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Sets `[theta, theta_dot]` directly (tests replay Gymnasium's states). The elapsed-step
    /// counter is left alone.
    ///
    /// # Panics
    /// If `state` does not have 2 entries.
    pub fn set_state(&mut self, state: &[f64]) {
        self.state = state.try_into().expect("Pendulum state has 2 entries");
    }

    /// `[theta, theta_dot]`.
    pub fn state(&self) -> Vec<f64> {
        self.state.to_vec()
    }

    /// Sets how many steps the current episode has taken (for the 200-step truncation).
    pub fn set_elapsed_steps(&mut self, n: u32) {
        self.steps = n;
    }

    fn write_obs(&self, obs: &mut [f32]) {
        let [theta, theta_dot] = self.state;
        obs.copy_from_slice(&[theta.cos() as f32, theta.sin() as f32, theta_dot as f32]);
    }
}

/// `theta` shifted by whole turns into `[-pi, pi)`, with Python's floored `%`.
fn angle_normalize(theta: f64) -> f64 {
    let turn = 2.0 * PI;
    let mut r = (theta + PI) % turn;
    if r < 0.0 {
        r += turn;
    }
    r - PI
}

impl Env for Pendulum {
    fn spec(&self) -> EnvSpec {
        EnvSpec::single(
            "Pendulum-v1",
            ObservationSpace::f32(&[Self::OBSERVATION_SIZE]),
            ActionSpace::Box {
                low: vec![-MAX_TORQUE],
                high: vec![MAX_TORQUE],
            },
            false,
        )
    }

    fn reset(&mut self, obs: &mut [f32]) {
        self.state = [
            self.rng.random_range(-RESET_THETA..RESET_THETA),
            self.rng.random_range(-RESET_THETA_DOT..RESET_THETA_DOT),
        ];
        self.steps = 0;
        self.write_obs(obs);
    }

    fn step(&mut self, action: Action<'_>, obs: &mut [f32]) -> Step {
        let u = match action {
            Action::Continuous(&[u]) => u.clamp(-MAX_TORQUE, MAX_TORQUE),
            other => panic!("Pendulum-v1: action {other:?} is not a Box of shape (1,)"),
        };
        let [theta, theta_dot] = self.state;
        let normalized = angle_normalize(theta);
        // The torque terms are f32 products, as NumPy computes them from the float32 action.
        let torque_cost = 0.001_f32 * (u * u);
        let costs = normalized * normalized + 0.1 * (theta_dot * theta_dot) + f64::from(torque_cost);
        let torque_acc = (3.0 / (M * L * L)) as f32 * u;
        let new_theta_dot = theta_dot + (3.0 * G / (2.0 * L) * theta.sin() + f64::from(torque_acc)) * DT;
        let new_theta_dot = new_theta_dot.clamp(-MAX_SPEED, MAX_SPEED);
        let new_theta = theta + new_theta_dot * DT;
        self.state = [new_theta, new_theta_dot];
        self.steps += 1;
        self.write_obs(obs);
        Step {
            reward: -costs as f32,
            terminated: false,
            truncated: self.steps >= MAX_EPISODE_STEPS,
        }
    }
}
