//! MountainCar-v0 with Gymnasium's dynamics (gymnasium 1.2.2, `classic_control/mountain_car.py`).
//!
//! - State: `[position, velocity]` in f64 (Gymnasium keeps float64 here throughout).
//! - Actions 0, 1, 2 push left, not at all, right with a force of 0.001.
//! - Dynamics, per step: `velocity += (action - 1) * 0.001 - 0.0025 * cos(3 * position)`,
//!   clipped to `[-0.07, 0.07]`; then `position += velocity`, clipped to `[-1.2, 0.6]`; a car
//!   that is at the left wall with a negative velocity stops (velocity 0).
//! - Observation: the state as f32.
//! - Reward: -1 on every step.
//! - Termination: `position >= 0.5 && velocity >= 0` (Gymnasium's default goal velocity 0).
//! - Truncation: Gymnasium's `TimeLimit` of 200 steps (set on the 200th step even when that step
//!   also terminates).
//! - Reset: position uniform in `[-0.6, -0.4)`, velocity 0.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Action, Env, Step};
use crate::spaces::{ActionSpace, EnvSpec, ObservationSpace};

const MIN_POSITION: f64 = -1.2;
const MAX_POSITION: f64 = 0.6;
const MAX_SPEED: f64 = 0.07;
const GOAL_POSITION: f64 = 0.5;
const GOAL_VELOCITY: f64 = 0.0;
const FORCE: f64 = 0.001;
const GRAVITY: f64 = 0.0025;
/// The reset position is uniform in `[RESET_LOW, RESET_HIGH)`.
const RESET_LOW: f64 = -0.6;
const RESET_HIGH: f64 = -0.4;
pub const MAX_EPISODE_STEPS: u32 = 200;

/// A car in a valley that must rock back and forth to reach the hilltop; see the module docs.
pub struct MountainCar {
    /// position, velocity.
    state: [f64; 2],
    steps: u32,
    rng: StdRng,
}

impl MountainCar {
    pub const OBSERVATION_SIZE: usize = 2;
    pub const NUM_ACTIONS: usize = 3;

    pub fn new(seed: u64) -> MountainCar {
        MountainCar {
            state: [0.0; 2],
            steps: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Sets `[position, velocity]` directly (tests replay Gymnasium's states). The elapsed-step
    /// counter is left alone.
    ///
    /// # Panics
    /// If `state` does not have 2 entries.
    pub fn set_state(&mut self, state: &[f64]) {
        self.state = state.try_into().expect("MountainCar state has 2 entries");
    }

    /// `[position, velocity]`.
    pub fn state(&self) -> Vec<f64> {
        self.state.to_vec()
    }

    /// Sets how many steps the current episode has taken (for the 200-step truncation).
    pub fn set_elapsed_steps(&mut self, n: u32) {
        self.steps = n;
    }

    fn write_obs(&self, obs: &mut [f32]) {
        obs.copy_from_slice(&self.state.map(|s| s as f32));
    }
}

impl Env for MountainCar {
    fn spec(&self) -> EnvSpec {
        EnvSpec::single(
            "MountainCar-v0",
            ObservationSpace::f32(&[Self::OBSERVATION_SIZE]),
            ActionSpace::Discrete { n: Self::NUM_ACTIONS },
            false,
        )
    }

    fn reset(&mut self, obs: &mut [f32]) {
        self.state = [self.rng.random_range(RESET_LOW..RESET_HIGH), 0.0];
        self.steps = 0;
        self.write_obs(obs);
    }

    fn step(&mut self, action: Action<'_>, obs: &mut [f32]) -> Step {
        let push = match action {
            Action::Discrete(&[a]) if (0..Self::NUM_ACTIONS as i64).contains(&a) => (a - 1) as f64,
            other => panic!("MountainCar-v0: action {other:?} is not one of Discrete(3)"),
        };
        let [mut position, mut velocity] = self.state;
        velocity += push * FORCE + (3.0 * position).cos() * (-GRAVITY);
        velocity = velocity.clamp(-MAX_SPEED, MAX_SPEED);
        position += velocity;
        position = position.clamp(MIN_POSITION, MAX_POSITION);
        if position == MIN_POSITION && velocity < 0.0 {
            velocity = 0.0;
        }
        self.state = [position, velocity];
        self.steps += 1;
        self.write_obs(obs);
        Step {
            reward: -1.0,
            terminated: position >= GOAL_POSITION && velocity >= GOAL_VELOCITY,
            truncated: self.steps >= MAX_EPISODE_STEPS,
        }
    }
}
