//! Acrobot-v1 with Gymnasium's dynamics (gymnasium 1.2.2, `classic_control/acrobot.py`).
//!
//! - State: `[theta1, theta2, dtheta1, dtheta2]` in f64. `theta1` is the first link's angle from
//!   straight down, `theta2` the second link's angle relative to the first.
//! - Actions 0, 1, 2 apply a torque of -1, 0, +1 to the joint between the links (no torque noise:
//!   Gymnasium's default `torque_noise_max` is 0).
//! - Dynamics: the equations of Sutton and Barto's book (Gymnasium's default `book_or_nips =
//!   "book"`), integrated over one `dt = 0.2` with a single classic Runge-Kutta 4 step, in f64
//!   and in the same order of operations as Gymnasium. Afterwards both angles are wrapped into
//!   `[-pi, pi]` and the velocities clipped to `[-4 pi, 4 pi]` and `[-9 pi, 9 pi]`.
//! - Observation: `[cos theta1, sin theta1, cos theta2, sin theta2, dtheta1, dtheta2]` as f32.
//! - Reward: -1 per step, 0 on the step that reaches the goal.
//! - Termination: the free end is more than one link length above the pivot,
//!   `-cos(theta1) - cos(theta1 + theta2) > 1`.
//! - Truncation: Gymnasium's `TimeLimit` of 500 steps (`truncated` is set on the 500th step even
//!   when that step also terminates).
//! - Reset: all four state entries uniform in `[-0.1, 0.1)`, rounded to f32 as Gymnasium stores
//!   them (`astype(np.float32)`); the first observation is computed from that f32 state in f32.

use std::f64::consts::PI;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{Action, Env, Step};
use crate::spaces::{ActionSpace, EnvSpec, ObservationSpace};

/// Seconds integrated per step.
const DT: f64 = 0.2;
/// Link lengths (m).
const LINK_LENGTH_1: f64 = 1.0;
/// Link masses (kg).
const LINK_MASS_1: f64 = 1.0;
const LINK_MASS_2: f64 = 1.0;
/// Positions of the links' centres of mass along them (m).
const LINK_COM_POS_1: f64 = 0.5;
const LINK_COM_POS_2: f64 = 0.5;
/// Moment of inertia of either link.
const LINK_MOI: f64 = 1.0;
const GRAVITY: f64 = 9.8;
const MAX_VEL_1: f64 = 4.0 * PI;
const MAX_VEL_2: f64 = 9.0 * PI;
/// Torque for each discrete action.
const AVAIL_TORQUE: [f64; 3] = [-1.0, 0.0, 1.0];
/// Reset state entries are uniform in `[-RESET_BOUND, RESET_BOUND)`.
const RESET_BOUND: f64 = 0.1;
pub const MAX_EPISODE_STEPS: u32 = 500;

/// The two-link underactuated pendulum; see the module docs.
pub struct Acrobot {
    /// theta1, theta2, dtheta1, dtheta2.
    state: [f64; 4],
    steps: u32,
    rng: StdRng,
}

impl Acrobot {
    pub const OBSERVATION_SIZE: usize = 6;
    pub const NUM_ACTIONS: usize = 3;

    pub fn new(seed: u64) -> Acrobot {
        Acrobot {
            state: [0.0; 4],
            steps: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Sets `[theta1, theta2, dtheta1, dtheta2]` directly (tests replay Gymnasium's states).
    /// The elapsed-step counter is left alone.
    ///
    /// # Panics
    /// If `state` does not have 4 entries.
    pub fn set_state(&mut self, state: &[f64]) {
        self.state = state.try_into().expect("Acrobot state has 4 entries");
    }

    /// `[theta1, theta2, dtheta1, dtheta2]`.
    pub fn state(&self) -> Vec<f64> {
        self.state.to_vec()
    }

    /// Sets how many steps the current episode has taken (for the 500-step truncation).
    pub fn set_elapsed_steps(&mut self, n: u32) {
        self.steps = n;
    }

    fn write_obs(&self, obs: &mut [f32]) {
        let [t1, t2, dt1, dt2] = self.state;
        obs.copy_from_slice(&[
            t1.cos() as f32,
            t1.sin() as f32,
            t2.cos() as f32,
            t2.sin() as f32,
            dt1 as f32,
            dt2 as f32,
        ]);
    }
}

/// Time derivative of `[theta1, theta2, dtheta1, dtheta2, torque]` under the book's equations.
/// The torque is held constant over the step (its derivative is 0).
fn dsdt(s: [f64; 5]) -> [f64; 5] {
    const M1: f64 = LINK_MASS_1;
    const M2: f64 = LINK_MASS_2;
    const L1: f64 = LINK_LENGTH_1;
    const LC1: f64 = LINK_COM_POS_1;
    const LC2: f64 = LINK_COM_POS_2;
    const I1: f64 = LINK_MOI;
    const I2: f64 = LINK_MOI;
    const G: f64 = GRAVITY;
    let [theta1, theta2, dtheta1, dtheta2, a] = s;
    let (sin2, cos2) = theta2.sin_cos();
    // Grouped as Gymnasium's Python expressions evaluate (left to right), so the rounding agrees.
    let d1 = M1 * LC1 * LC1 + M2 * (L1 * L1 + LC2 * LC2 + 2.0 * L1 * LC2 * cos2) + I1 + I2;
    let d2 = M2 * (LC2 * LC2 + L1 * LC2 * cos2) + I2;
    let phi2 = M2 * LC2 * G * (theta1 + theta2 - PI / 2.0).cos();
    let phi1 = -M2 * L1 * LC2 * (dtheta2 * dtheta2) * sin2 - 2.0 * M2 * L1 * LC2 * dtheta2 * dtheta1 * sin2
        + (M1 * LC1 + M2 * L1) * G * (theta1 - PI / 2.0).cos()
        + phi2;
    let ddtheta2 = (a + d2 / d1 * phi1 - M2 * L1 * LC2 * (dtheta1 * dtheta1) * sin2 - phi2)
        / (M2 * LC2 * LC2 + I2 - (d2 * d2) / d1);
    let ddtheta1 = -(d2 * ddtheta2 + phi1) / d1;
    [dtheta1, dtheta2, ddtheta1, ddtheta2, 0.0]
}

/// One classic Runge-Kutta 4 step of length `dt` from `y0`.
fn rk4(y0: [f64; 5], dt: f64) -> [f64; 5] {
    let dt2 = dt / 2.0;
    let shifted = |k: [f64; 5], h: f64| std::array::from_fn(|i| y0[i] + h * k[i]);
    let k1 = dsdt(y0);
    let k2 = dsdt(shifted(k1, dt2));
    let k3 = dsdt(shifted(k2, dt2));
    let k4 = dsdt(shifted(k3, dt));
    std::array::from_fn(|i| y0[i] + dt / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]))
}

/// Shifts `x` by whole turns `max - min` until it lies in `[min, max]`.
fn wrap(mut x: f64, min: f64, max: f64) -> f64 {
    let turn = max - min;
    while x > max {
        x -= turn;
    }
    while x < min {
        x += turn;
    }
    x
}

impl Env for Acrobot {
    fn spec(&self) -> EnvSpec {
        EnvSpec::single(
            "Acrobot-v1",
            ObservationSpace::f32(&[Self::OBSERVATION_SIZE]),
            ActionSpace::Discrete { n: Self::NUM_ACTIONS },
            false,
        )
    }

    fn reset(&mut self, obs: &mut [f32]) {
        let s: [f32; 4] = std::array::from_fn(|_| self.rng.random_range(-RESET_BOUND..RESET_BOUND) as f32);
        self.state = s.map(f64::from);
        self.steps = 0;
        // Gymnasium's first observation comes from its float32 state, so it is computed in f32.
        obs.copy_from_slice(&[s[0].cos(), s[0].sin(), s[1].cos(), s[1].sin(), s[2], s[3]]);
    }

    fn step(&mut self, action: Action<'_>, obs: &mut [f32]) -> Step {
        let torque = match action {
            Action::Discrete(&[a]) if (0..Self::NUM_ACTIONS as i64).contains(&a) => AVAIL_TORQUE[a as usize],
            other => panic!("Acrobot-v1: action {other:?} is not one of Discrete(3)"),
        };
        let [t1, t2, dt1, dt2] = self.state;
        let ns = rk4([t1, t2, dt1, dt2, torque], DT);
        self.state = [
            wrap(ns[0], -PI, PI),
            wrap(ns[1], -PI, PI),
            ns[2].clamp(-MAX_VEL_1, MAX_VEL_1),
            ns[3].clamp(-MAX_VEL_2, MAX_VEL_2),
        ];
        self.steps += 1;
        self.write_obs(obs);
        let [t1, t2, _, _] = self.state;
        let terminated = -t1.cos() - (t2 + t1).cos() > 1.0;
        Step {
            reward: if terminated { 0.0 } else { -1.0 },
            terminated,
            truncated: self.steps >= MAX_EPISODE_STEPS,
        }
    }
}
