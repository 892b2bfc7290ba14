//! CartPole-v1 with Gymnasium's dynamics: the same constants, explicit Euler integration in f64,
//! termination when |x| > 2.4 or |theta| > 12 degrees, truncation after 500 steps, reward 1 on
//! every step (the terminating one included) and a reset state uniform in [-0.05, 0.05).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Action, Env, Step};
use crate::spaces::{ActionSpace, EnvSpec, ObservationSpace};

const GRAVITY: f64 = 9.8;
const MASS_CART: f64 = 1.0;
const MASS_POLE: f64 = 0.1;
const TOTAL_MASS: f64 = MASS_POLE + MASS_CART;
/// Half the pole's length.
const LENGTH: f64 = 0.5;
const POLE_MASS_LENGTH: f64 = MASS_POLE * LENGTH;
const FORCE_MAG: f64 = 10.0;
/// Seconds between state updates.
const TAU: f64 = 0.02;
const THETA_THRESHOLD_RADIANS: f64 = 12.0 * 2.0 * std::f64::consts::PI / 360.0;
const X_THRESHOLD: f64 = 2.4;
pub const MAX_EPISODE_STEPS: u32 = 500;

pub struct CartPole {
    /// x, x_dot, theta, theta_dot.
    state: [f64; 4],
    steps: u32,
    rng: StdRng,
}

impl CartPole {
    pub const OBSERVATION_SIZE: usize = 4;
    pub const NUM_ACTIONS: usize = 2;

    pub fn new(seed: u64) -> CartPole {
        CartPole {
            state: [0.0; 4],
            steps: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Sets the physical state directly (tests compare against recorded trajectories).
    pub fn set_state(&mut self, state: [f64; 4]) {
        self.state = state;
        self.steps = 0;
    }

    pub fn state(&self) -> [f64; 4] {
        self.state
    }

    fn write_obs(&self, obs: &mut [f32]) {
        for (o, s) in obs.iter_mut().zip(self.state) {
            *o = s as f32;
        }
    }
}

impl Env for CartPole {
    fn spec(&self) -> EnvSpec {
        EnvSpec::single(
            "CartPole-v1",
            ObservationSpace::f32(&[Self::OBSERVATION_SIZE]),
            ActionSpace::Discrete { n: Self::NUM_ACTIONS },
            false,
        )
    }

    fn reset(&mut self, obs: &mut [f32]) {
        for s in &mut self.state {
            *s = self.rng.random_range(-0.05..0.05);
        }
        self.steps = 0;
        self.write_obs(obs);
    }

    fn step(&mut self, action: Action<'_>, obs: &mut [f32]) -> Step {
        let [x, x_dot, theta, theta_dot] = self.state;
        let push_right = matches!(action, Action::Discrete([1]));
        let force = if push_right { FORCE_MAG } else { -FORCE_MAG };
        let (sin, cos) = theta.sin_cos();
        let temp = (force + POLE_MASS_LENGTH * (theta_dot * theta_dot) * sin) / TOTAL_MASS;
        let theta_acc = (GRAVITY * sin - cos * temp) / (LENGTH * (4.0 / 3.0 - MASS_POLE * (cos * cos) / TOTAL_MASS));
        let x_acc = temp - POLE_MASS_LENGTH * theta_acc * cos / TOTAL_MASS;
        // Explicit Euler, in Gymnasium's order: positions use the old velocities.
        self.state = [
            x + TAU * x_dot,
            x_dot + TAU * x_acc,
            theta + TAU * theta_dot,
            theta_dot + TAU * theta_acc,
        ];
        self.steps += 1;
        self.write_obs(obs);
        let [x, _, theta, _] = self.state;
        let terminated = !(-X_THRESHOLD..=X_THRESHOLD).contains(&x)
            || !(-THETA_THRESHOLD_RADIANS..=THETA_THRESHOLD_RADIANS).contains(&theta);
        Step {
            reward: 1.0,
            terminated,
            truncated: self.steps >= MAX_EPISODE_STEPS,
        }
    }
}
