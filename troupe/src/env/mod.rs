//! Environments. Each one steps a single episode; actors run many side by side and reset them
//! when an episode ends.

mod cartpole;

pub use cartpole::CartPole;

use crate::config::EnvConfig;

/// What one step returned. `observation` is the observation after the step: when the episode
/// ended, it is the episode's last observation (the caller resets).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub reward: f32,
    /// The episode reached a terminal state: no value beyond this step.
    pub terminated: bool,
    /// The episode was cut off by a time limit: the state still has a value.
    pub truncated: bool,
}

/// A single-agent environment with a flat f32 observation and discrete actions.
pub trait Env: Send {
    fn observation_size(&self) -> usize;
    fn num_actions(&self) -> usize;
    /// Starts a new episode and writes its first observation into `obs`.
    fn reset(&mut self, obs: &mut [f32]);
    /// Applies `action` and writes the next observation into `obs`.
    fn step(&mut self, action: usize, obs: &mut [f32]) -> Step;
}

/// Observation size and action count of an environment id, without building one.
pub fn spec(id: &str) -> Option<(usize, usize)> {
    match id {
        "CartPole-v1" => Some((CartPole::OBSERVATION_SIZE, CartPole::NUM_ACTIONS)),
        _ => None,
    }
}

/// Builds the configured environment with its own seed.
pub fn make(cfg: &EnvConfig, seed: u64) -> Box<dyn Env> {
    match cfg.id.as_str() {
        "CartPole-v1" => Box::new(CartPole::new(seed)),
        other => unreachable!("env.id {other} passed config validation"),
    }
}
