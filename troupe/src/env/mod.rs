//! Environments.
//!
//! Two levels:
//! - [`Env`]: one native (Rust) single-agent episode, f32 observations, the classic-control
//!   envs with Gymnasium's dynamics. The caller resets it when an episode ends.
//! - [`VecEnv`]: N columns stepped together, with **same-step autoreset** (when column i ends,
//!   the observation written for it is already the first of its next episode, and the ended
//!   episode's last observation goes to `final_obs`). The actor only sees this level; native
//!   envs ([`NativeVecEnv`]) and Python-hosted ones (in the actor crate) both implement it.
//!
//! Env ids are Gymnasium's.

mod acrobot;
mod cartpole;
mod mountain_car;
mod mountain_car_continuous;
mod pendulum;
mod vec;

pub use acrobot::Acrobot;
pub use cartpole::CartPole;
pub use mountain_car::MountainCar;
pub use mountain_car_continuous::MountainCarContinuous;
pub use pendulum::Pendulum;
pub use vec::{EnvError, NativeVecEnv, ObsBuf, StepOut, VecEnv};

use crate::spaces::EnvSpec;

/// What one step returned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub reward: f32,
    /// The episode reached a terminal state: no value beyond this step.
    pub terminated: bool,
    /// The episode was cut off by a time limit: the state still has a value.
    pub truncated: bool,
}

/// One agent's action, in the dtype of its space.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action<'a> {
    /// Discrete (one element) or MultiDiscrete (one per component), 0-based.
    Discrete(&'a [i64]),
    /// A Box action; the env clips it to its bounds as Gymnasium's does.
    Continuous(&'a [f32]),
}

/// A single-agent native environment with f32 observations.
pub trait Env: Send {
    fn spec(&self) -> EnvSpec;
    /// Starts a new episode and writes its first observation into `obs`.
    fn reset(&mut self, obs: &mut [f32]);
    /// Applies `action` and writes the next observation into `obs`.
    fn step(&mut self, action: Action<'_>, obs: &mut [f32]) -> Step;
}

/// The native environments, by Gymnasium id.
pub const NATIVE_IDS: &[&str] = &[
    "CartPole-v1",
    "Acrobot-v1",
    "MountainCar-v0",
    "MountainCarContinuous-v0",
    "Pendulum-v1",
];

/// Builds a native environment with its own seed; `None` for an id that is not native.
pub fn make_native(id: &str, seed: u64) -> Option<Box<dyn Env>> {
    Some(match id {
        "CartPole-v1" => Box::new(CartPole::new(seed)),
        "Acrobot-v1" => Box::new(Acrobot::new(seed)),
        "MountainCar-v0" => Box::new(MountainCar::new(seed)),
        "MountainCarContinuous-v0" => Box::new(MountainCarContinuous::new(seed)),
        "Pendulum-v1" => Box::new(Pendulum::new(seed)),
        _ => return None,
    })
}

/// The spaces of a native environment, without keeping one.
pub fn native_spec(id: &str) -> Option<EnvSpec> {
    make_native(id, 0).map(|e| e.spec())
}
