//! Environments.
//!
//! Three levels:
//! - [`Env`]: one native (Rust) single-agent episode, f32 observations, the classic-control
//!   envs with Gymnasium's dynamics. The caller resets it when an episode ends.
//! - [`MultiAgentEnv`]: one native episode of several agents, PettingZoo's parallel API: every
//!   live agent acts at each step, each gets its own observation, reward and flags, and an agent
//!   that finished takes no more steps until the episode ends. Level-Based Foraging
//!   ([`Foraging`]) is one. A single-agent [`Env`] is the case of one agent.
//! - [`VecEnv`]: N environments stepped together, their agents' columns split into groups (one
//!   per policy), with **same-step autoreset** (when an env's episode ends, the observations
//!   written for its columns are already the first of its next episode, and the ended
//!   episode's last observations go to `final_obs`). The actor only sees this level; native
//!   envs ([`NativeVecEnv`]) and Python-hosted ones (in the actor crate) both implement it.
//!
//! Env ids are Gymnasium's (and lbforaging's).

mod acrobot;
mod cartpole;
pub mod foraging;
mod mountain_car;
mod mountain_car_continuous;
mod pendulum;
mod vec;

pub use acrobot::Acrobot;
pub use cartpole::CartPole;
pub use foraging::Foraging;
pub use mountain_car::MountainCar;
pub use mountain_car_continuous::MountainCarContinuous;
pub use pendulum::Pendulum;
pub use vec::{one_group, EnvError, Groups, NativeVecEnv, ObsBuf, ResetOut, StepOut, VecEnv};

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

/// What one step gave one agent.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AgentStep {
    pub reward: f32,
    pub terminated: bool,
    pub truncated: bool,
}

/// A native environment of several agents (PettingZoo's parallel API), f32 observations.
/// Agents are indexed in the order of [`EnvSpec::agents`].
pub trait MultiAgentEnv: Send {
    fn spec(&self) -> EnvSpec;
    /// Starts a new episode: every agent is live.
    fn reset(&mut self);
    /// Applies one action per agent (those of agents that are not live are ignored) and writes
    /// what each agent got.
    fn step(&mut self, actions: &[Action<'_>], steps: &mut [AgentStep]);
    /// Agent `agent`'s current observation.
    fn observe(&self, agent: usize, out: &mut [f32]);
    /// The global state, when the spec has one.
    fn state(&self, out: &mut [f32]);
    /// The agent still acts in this episode (it has not terminated or been truncated).
    fn is_live(&self, agent: usize) -> bool;
}

/// A single-agent [`Env`] as a [`MultiAgentEnv`] of one agent.
struct SingleAgent {
    env: Box<dyn Env>,
    obs: Vec<f32>,
    live: bool,
}

impl MultiAgentEnv for SingleAgent {
    fn spec(&self) -> EnvSpec {
        self.env.spec()
    }

    fn reset(&mut self) {
        self.env.reset(&mut self.obs);
        self.live = true;
    }

    fn step(&mut self, actions: &[Action<'_>], steps: &mut [AgentStep]) {
        let s = self.env.step(actions[0], &mut self.obs);
        self.live = !(s.terminated || s.truncated);
        steps[0] = AgentStep {
            reward: s.reward,
            terminated: s.terminated,
            truncated: s.truncated,
        };
    }

    fn observe(&self, _agent: usize, out: &mut [f32]) {
        out.copy_from_slice(&self.obs);
    }

    fn state(&self, _out: &mut [f32]) {}

    fn is_live(&self, _agent: usize) -> bool {
        self.live
    }
}

/// The native single-agent environments, by Gymnasium id.
pub const CLASSIC_CONTROL_IDS: &[&str] = &[
    "CartPole-v1",
    "Acrobot-v1",
    "MountainCar-v0",
    "MountainCarContinuous-v0",
    "Pendulum-v1",
];

/// The native environments, for messages: the classic-control ids and lbforaging's pattern.
pub const NATIVE_IDS: &[&str] = &[
    "CartPole-v1",
    "Acrobot-v1",
    "MountainCar-v0",
    "MountainCarContinuous-v0",
    "Pendulum-v1",
    "Foraging[-2s]-<S>x<S>-<P>p-<F>f[-coop]-v3",
];

/// `id` names a native environment.
pub fn is_native(id: &str) -> bool {
    CLASSIC_CONTROL_IDS.contains(&id) || foraging::ForagingConfig::from_id(id).is_some()
}

/// Builds a native single-agent environment with its own seed; `None` for an id that is not one.
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

/// Builds any native environment, single- or multi-agent, as a [`MultiAgentEnv`].
pub fn make_native_multi(id: &str, seed: u64) -> Option<Box<dyn MultiAgentEnv>> {
    if let Some(env) = make_native(id, seed) {
        let obs = vec![0.0; env.spec().agents[0].observation.size()];
        return Some(Box::new(SingleAgent { env, obs, live: false }));
    }
    Foraging::new(id, seed).map(|e| Box::new(e) as Box<dyn MultiAgentEnv>)
}

/// The spaces of a native environment, without keeping one.
pub fn native_spec(id: &str) -> Option<EnvSpec> {
    make_native_multi(id, 0).map(|e| e.spec())
}
