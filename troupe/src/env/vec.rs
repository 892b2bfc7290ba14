//! N environment columns stepped together with same-step autoreset.

use super::{Action, Env};
use crate::spaces::{ActionSpace, EnvSpec};

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

/// What one step of all columns writes.
#[derive(Debug)]
pub struct StepOut<'a> {
    /// `[N, obs...]`: each column's next observation; where an episode ended, the first
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
    /// The last observation of each episode *truncated* in this step, appended in column
    /// order as little-endian bytes of the obs dtype: the learner bootstraps from its value.
    pub final_obs: &'a mut Vec<u8>,
    /// `[N]`, set to 1 by the caller: an env that autoresets one step late (EnvPool's
    /// NEXT_STEP mode) writes 0 for a column whose step only reset it (action ignored, no
    /// transition). `obs` is then the new episode's first observation.
    pub valid: &'a mut [u8],
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

/// N columns of one environment id, stepped together.
pub trait VecEnv {
    fn spec(&self) -> &EnvSpec;
    /// Columns: environments times agents.
    fn num_envs(&self) -> usize;
    /// Starts every column's episode; writes observations and, with masks, legal actions.
    fn reset(&mut self, obs: ObsBuf<'_>, masks: Option<&mut [u8]>) -> Result<(), EnvError>;
    /// Steps every column with `actions` (`[N, action_dim]` of the action dtype).
    fn step(&mut self, actions: Action<'_>, out: StepOut<'_>) -> Result<(), EnvError>;
}

/// Native envs side by side.
pub struct NativeVecEnv {
    spec: EnvSpec,
    envs: Vec<Box<dyn Env>>,
}

impl NativeVecEnv {
    /// One env per seed; `None` if `id` is not a native env.
    pub fn new(id: &str, seeds: &[u64]) -> Option<NativeVecEnv> {
        let envs: Vec<Box<dyn Env>> = seeds
            .iter()
            .map(|&s| super::make_native(id, s))
            .collect::<Option<_>>()?;
        let spec = envs.first().map(|e| e.spec()).or_else(|| super::native_spec(id))?;
        Some(NativeVecEnv { spec, envs })
    }

    fn obs_slice<'b>(&self, obs: &'b mut ObsBuf<'_>) -> &'b mut [f32] {
        match obs {
            ObsBuf::F32(b) => b,
            ObsBuf::U8(_) => unreachable!("native envs have f32 observations (spec of {})", self.spec.id),
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

    fn reset(&mut self, mut obs: ObsBuf<'_>, _masks: Option<&mut [u8]>) -> Result<(), EnvError> {
        let o = self.spec.observation.size();
        let buf = self.obs_slice(&mut obs);
        for (env, row) in self.envs.iter_mut().zip(buf.chunks_exact_mut(o)) {
            env.reset(row);
        }
        Ok(())
    }

    fn step(&mut self, actions: Action<'_>, mut out: StepOut<'_>) -> Result<(), EnvError> {
        let o = self.spec.observation.size();
        let d = self.spec.action.dim();
        let continuous = matches!(self.spec.action, ActionSpace::Box { .. });
        let buf = self.obs_slice(&mut out.obs);
        for (i, env) in self.envs.iter_mut().enumerate() {
            let action = match actions {
                Action::Discrete(a) if !continuous => Action::Discrete(&a[i * d..(i + 1) * d]),
                Action::Continuous(a) if continuous => Action::Continuous(&a[i * d..(i + 1) * d]),
                _ => {
                    return Err(EnvError {
                        env: self.spec.id.clone(),
                        call: "step",
                        field: "action".into(),
                        problem: "action dtype does not match the action space".into(),
                    })
                }
            };
            let row = &mut buf[i * o..(i + 1) * o];
            let step = env.step(action, row);
            out.rewards[i] = step.reward;
            out.terminated[i] = step.terminated as u8;
            out.truncated[i] = step.truncated as u8;
            if step.truncated {
                for v in row.iter() {
                    out.final_obs.extend_from_slice(&v.to_le_bytes());
                }
            }
            if step.terminated || step.truncated {
                env.reset(row);
            }
        }
        Ok(())
    }
}
