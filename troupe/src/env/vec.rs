//! N environments stepped together with same-step autoreset, their agents' columns in groups.

use super::{Action, AgentStep, MultiAgentEnv};
use crate::spaces::EnvSpec;

/// Where observations go: a `[N, obs...]` slice of the obs dtype, usually a row of the
/// rollout buffer itself (so an observation is copied once, from the env into the rollout).
#[derive(Debug)]
pub enum ObsBuf<'a> {
    F32(&'a mut [f32]),
    U8(&'a mut [u8]),
}

impl ObsBuf<'_> {
    pub fn len(&self) -> usize {
        match self {
            ObsBuf::F32(b) => b.len(),
            ObsBuf::U8(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which of the env's agents each group (one per policy) gets. Group g's columns are env-major:
/// column `e * groups[g].len() + k` is agent `groups[g][k]` of env e.
pub type Groups = Vec<Vec<usize>>;

/// Every agent in one group, in the spec's order (a single-agent env's one group of one).
pub fn one_group(spec: &EnvSpec) -> Groups {
    vec![(0..spec.agents.len()).collect()]
}

/// What one step writes for one group's `N` columns (envs times the group's agents).
#[derive(Debug)]
pub struct StepOut<'a> {
    /// `[N, obs...]`: each column's next observation; where the env's episode ended, the first
    /// observation of the next one.
    pub obs: ObsBuf<'a>,
    /// `[N]`.
    pub rewards: &'a mut [f32],
    /// `[N]`, 0 or 1.
    pub terminated: &'a mut [u8],
    /// `[N]`, 0 or 1.
    pub truncated: &'a mut [u8],
    /// `[N, mask_width]`: legal actions for `obs` (1 = legal), when the spec has masks.
    pub masks: Option<&'a mut [u8]>,
    /// The last observation of each agent *truncated* in this step, appended in column
    /// order as little-endian bytes of the obs dtype: the learner bootstraps from its value.
    pub final_obs: &'a mut Vec<u8>,
    /// `[N]`, set to 1 by the caller. 0 marks a column that took no step: its agent was absent
    /// (it finished before the env's episode did, or it is not its turn), or the env autoresets
    /// one step late (EnvPool's NEXT_STEP mode) and this step only reset it, ignoring the
    /// action. `obs` is then the agent's next observation (the new episode's first, after a
    /// reset).
    pub valid: &'a mut [u8],
    /// `[N, S]`: the env's global state after the step, for every column (centralized critic).
    pub states: Option<&'a mut [f32]>,
    /// The state at each truncated column's last step, appended in column order like
    /// `final_obs` (with `states`).
    pub final_states: Option<&'a mut Vec<f32>>,
}

/// What a reset writes for one group.
#[derive(Debug)]
pub struct ResetOut<'a> {
    pub obs: ObsBuf<'a>,
    pub masks: Option<&'a mut [u8]>,
    pub states: Option<&'a mut [f32]>,
}

/// A failed env call. The message names the env, the call and the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("env {env}: {call}: {field}: {problem}")]
pub struct EnvError {
    pub env: String,
    /// "make", "reset", "step", ...
    pub call: &'static str,
    /// "observation", "reward", "action_mask", "exception", ...
    pub field: String,
    pub problem: String,
}

/// N environments of one id, stepped together; their agents' columns go to groups.
pub trait VecEnv {
    fn spec(&self) -> &EnvSpec;
    /// Environments (each gives every group `groups[g].len()` columns).
    fn num_envs(&self) -> usize;
    /// How agents map to groups (default: [`one_group`]); set before the first reset.
    fn set_groups(&mut self, groups: Groups);
    fn groups(&self) -> &Groups;
    /// Starts every env's episode; writes each group's observations (and masks, states).
    fn reset(&mut self, outs: &mut [ResetOut<'_>]) -> Result<(), EnvError>;
    /// Steps every env with `actions[g]` (`[N_g, action_dim]` of group g's action dtype).
    /// `ended[e]` is set to 1 where env e's episode ended at this step (every agent done).
    fn step(&mut self, actions: &[Action<'_>], outs: &mut [StepOut<'_>], ended: &mut [u8]) -> Result<(), EnvError>;

    /// [`VecEnv::reset`] of an env with one group and no state.
    fn reset_one(&mut self, obs: ObsBuf<'_>, masks: Option<&mut [u8]>) -> Result<(), EnvError> {
        self.reset(&mut [ResetOut {
            obs,
            masks,
            states: None,
        }])
    }

    /// [`VecEnv::step`] of an env with one group.
    fn step_one(&mut self, action: Action<'_>, out: StepOut<'_>) -> Result<(), EnvError> {
        let mut ended = vec![0; self.num_envs()];
        self.step(&[action], &mut [out], &mut ended)
    }
}

/// Native envs side by side.
pub struct NativeVecEnv {
    spec: EnvSpec,
    envs: Vec<Box<dyn MultiAgentEnv>>,
    groups: Groups,
    steps: Vec<AgentStep>,
    live: Vec<bool>,
    state: Vec<f32>,
}

impl NativeVecEnv {
    /// One env per seed; `None` if `id` is not a native env.
    pub fn new(id: &str, seeds: &[u64]) -> Option<NativeVecEnv> {
        let envs: Vec<Box<dyn MultiAgentEnv>> = seeds
            .iter()
            .map(|&s| super::make_native_multi(id, s))
            .collect::<Option<_>>()?;
        let spec = envs.first().map(|e| e.spec()).or_else(|| super::native_spec(id))?;
        let a = spec.agents.len();
        Some(NativeVecEnv {
            groups: one_group(&spec),
            steps: vec![AgentStep::default(); a],
            live: vec![false; a],
            state: vec![0.0; spec.state.as_ref().map_or(0, |s| s.size())],
            spec,
            envs,
        })
    }

    fn f32s<'b>(&self, obs: &'b mut ObsBuf<'_>) -> &'b mut [f32] {
        match obs {
            ObsBuf::F32(b) => b,
            ObsBuf::U8(_) => unreachable!("native envs have f32 observations (spec of {})", self.spec.id),
        }
    }

    fn action_error(&self) -> EnvError {
        EnvError {
            env: self.spec.id.clone(),
            call: "step",
            field: "action".into(),
            problem: "action dtype does not match the action space".into(),
        }
    }
}

impl VecEnv for NativeVecEnv {
    fn spec(&self) -> &EnvSpec {
        &self.spec
    }

    fn num_envs(&self) -> usize {
        self.envs.len()
    }

    fn set_groups(&mut self, groups: Groups) {
        self.groups = groups;
    }

    fn groups(&self) -> &Groups {
        &self.groups
    }

    fn reset(&mut self, outs: &mut [ResetOut<'_>]) -> Result<(), EnvError> {
        for env in self.envs.iter_mut() {
            env.reset();
        }
        for (g, out) in outs.iter_mut().enumerate() {
            let agents = &self.groups[g];
            let o = self.spec.agents[agents[0]].observation.size();
            let a_g = agents.len();
            let buf = self.f32s(&mut out.obs);
            for (c, row) in buf.chunks_exact_mut(o).enumerate() {
                self.envs[c / a_g].observe(agents[c % a_g], row);
            }
            if let Some(states) = out.states.as_deref_mut() {
                let s = self.state.len();
                for (c, row) in states.chunks_exact_mut(s).enumerate() {
                    self.envs[c / a_g].state(row);
                }
            }
        }
        Ok(())
    }

    fn step(&mut self, actions: &[Action<'_>], outs: &mut [StepOut<'_>], ended: &mut [u8]) -> Result<(), EnvError> {
        let n_agents = self.spec.agents.len();
        // Where each agent's action and columns are: (group, index in the group).
        let mut slot = vec![(0usize, 0usize); n_agents];
        for (g, agents) in self.groups.iter().enumerate() {
            for (k, &a) in agents.iter().enumerate() {
                slot[a] = (g, k);
            }
        }
        let dims: Vec<usize> = self
            .groups
            .iter()
            .map(|agents| self.spec.agents[agents[0]].action.dim())
            .collect();
        for e in 0..self.envs.len() {
            let mut by_agent = Vec::with_capacity(n_agents);
            for &(g, k) in &slot {
                let (d, c) = (dims[g], e * self.groups[g].len() + k);
                let continuous = self.spec.agents[self.groups[g][k]].action.is_continuous();
                by_agent.push(match actions[g] {
                    Action::Discrete(a) if !continuous => Action::Discrete(&a[c * d..(c + 1) * d]),
                    Action::Continuous(a) if continuous => Action::Continuous(&a[c * d..(c + 1) * d]),
                    _ => return Err(self.action_error()),
                });
            }
            let env = &mut self.envs[e];
            for (a, live) in self.live.iter_mut().enumerate() {
                *live = env.is_live(a);
            }
            env.step(&by_agent, &mut self.steps);
            let done = (0..n_agents).all(|a| !env.is_live(a));
            ended[e] = done as u8;
            for (a, &(g, k)) in slot.iter().enumerate() {
                let out = &mut outs[g];
                let c = e * self.groups[g].len() + k;
                let o = self.spec.agents[a].observation.size();
                let ObsBuf::F32(obs) = &mut out.obs else {
                    unreachable!("native envs have f32 observations")
                };
                let row = &mut obs[c * o..(c + 1) * o];
                if !self.live[a] {
                    // Absent: no step for this agent (it finished before the others).
                    out.valid[c] = 0;
                    out.rewards[c] = 0.0;
                    out.terminated[c] = 0;
                    out.truncated[c] = 0;
                    row.fill(0.0);
                    continue;
                }
                let s = self.steps[a];
                out.rewards[c] = s.reward;
                out.terminated[c] = s.terminated as u8;
                out.truncated[c] = s.truncated as u8;
                env.observe(a, row);
                if s.truncated {
                    for v in row.iter() {
                        out.final_obs.extend_from_slice(&v.to_le_bytes());
                    }
                    if let Some(fs) = out.final_states.as_deref_mut() {
                        env.state(&mut self.state);
                        fs.extend_from_slice(&self.state);
                    }
                }
            }
            if done {
                env.reset();
                for (a, &(g, k)) in slot.iter().enumerate() {
                    let c = e * self.groups[g].len() + k;
                    let o = self.spec.agents[a].observation.size();
                    let ObsBuf::F32(obs) = &mut outs[g].obs else {
                        unreachable!("native envs have f32 observations")
                    };
                    env.observe(a, &mut obs[c * o..(c + 1) * o]);
                }
            }
            let s = self.state.len();
            if s > 0 {
                env.state(&mut self.state);
                for (g, out) in outs.iter_mut().enumerate() {
                    if let Some(states) = out.states.as_deref_mut() {
                        let a_g = self.groups[g].len();
                        for c in e * a_g..(e + 1) * a_g {
                            states[c * s..(c + 1) * s].copy_from_slice(&self.state);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LBF through the vec layer: two agents' columns in one group, every episode ends at the
    /// latest at the 50-step limit (both columns truncated, the env reported ended, reset).
    #[test]
    fn multi_agent_envs_end_and_reset_in_groups() {
        let id = "Foraging-8x8-2p-2f-coop-v3";
        let mut env = NativeVecEnv::new(id, &[1, 2, 3]).unwrap();
        assert_eq!(env.spec().agents.len(), 2);
        let o = env.spec().agents[0].observation.size();
        let n = 3 * 2;
        let mut obs = vec![0f32; n * o];
        env.reset_one(ObsBuf::F32(&mut obs), None).unwrap();
        let (mut ends, mut truncations) = (0, 0);
        for _ in 0..120 {
            let (mut r, mut te, mut tr, mut fin, mut va) =
                (vec![0.0; n], vec![0; n], vec![0; n], Vec::new(), vec![1; n]);
            let mut ended = vec![0; 3];
            env.step(
                &[Action::Discrete(&[0; 6])],
                &mut [StepOut {
                    obs: ObsBuf::F32(&mut obs),
                    rewards: &mut r,
                    terminated: &mut te,
                    truncated: &mut tr,
                    masks: None,
                    final_obs: &mut fin,
                    valid: &mut va,
                    states: None,
                    final_states: None,
                }],
                &mut ended,
            )
            .unwrap();
            assert!(va.iter().all(|&v| v == 1), "both agents act until the episode ends");
            ends += ended.iter().filter(|&&e| e == 1).count();
            truncations += tr.iter().filter(|&&t| t == 1).count();
            assert_eq!(fin.len(), tr.iter().filter(|&&t| t == 1).count() * o * 4);
        }
        // Standing still collects nothing: every env is truncated at steps 50 and 100.
        assert_eq!(ends, 3 * 2);
        assert_eq!(truncations, 3 * 2 * 2);
    }
}
