//! The actor's inner loop: N env columns stepped together (any [`VecEnv`]), one batched policy
//! forward per step (CPU, no_grad), unrolls of T steps packed into rollouts.
//!
//! The env writes each step's observations straight into row t + 1 of the rollout buffer (one
//! copy, from the env or numpy). Actions are sampled on the CPU, restricted to the env's
//! legal-action mask. With an LSTM core, the runner keeps each column's state, zeroes it where
//! an episode ended, and sends the state at the start of each unroll.

use bytes::Bytes;
use proto::v1::{DType, EpisodeStat, Rollout, Tensor as WireTensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tch::{Kind, Tensor};
use troupe::env::{Action, EnvError, ObsBuf, StepOut, VecEnv};
use troupe::model::{dist, Model};
use troupe::spaces::{ActionSpace, EnvSpec, ObsDType};

/// Observations of T + 1 rows, in their dtype.
enum ObsRows {
    F32(Vec<f32>),
    U8(Vec<u8>),
}

impl ObsRows {
    fn bytes(&self) -> &[u8] {
        match self {
            ObsRows::F32(v) => bytemuck::cast_slice(v),
            ObsRows::U8(v) => v,
        }
    }
}

/// Actions of T rows, in their dtype.
enum ActionRows {
    Discrete(Vec<i64>),
    Continuous(Vec<f32>),
}

impl ActionRows {
    fn bytes(&self) -> &[u8] {
        match self {
            ActionRows::Discrete(v) => bytemuck::cast_slice(v),
            ActionRows::Continuous(v) => bytemuck::cast_slice(v),
        }
    }
}

/// A rollout that does not fit the message cap even as one column per message.
#[derive(Debug, thiserror::Error)]
#[error("one env column of an unroll is {column_bytes} bytes, over the {cap} byte rollout message cap: lower actor.unroll_length")]
pub struct TooLarge {
    pub column_bytes: usize,
    pub cap: usize,
}

/// Largest encoded rollout part the runner aims for: half the message cap, so metadata and
/// protobuf framing never push a part over it.
pub const PART_BYTES: usize = proto::MAX_MESSAGE_BYTES / 2;

pub struct EnvRunner {
    env: Box<dyn VecEnv>,
    spec: EnvSpec,
    n: usize,
    t_len: usize,
    obs: ObsRows,
    /// `[T + 1, N, M]` masks (row t for the observation of row t), when the env has them.
    masks: Vec<u8>,
    actions: ActionRows,
    rewards: Vec<f32>,
    terminated: Vec<u8>,
    truncated: Vec<u8>,
    /// `[T, N]`: 0 where a step only reset its column (see [`StepOut::valid`]).
    valid: Vec<u8>,
    params: Vec<f32>,
    /// (t, n) of each truncated step and its last observation's bytes, in (t, n) order.
    truncations: Vec<(usize, usize)>,
    truncation_obs: Vec<u8>,
    /// Recurrent state for the next step `[N, S]` (S = 0 without a core).
    state: Tensor,
    initial_state: Vec<f32>,
    episode_return: Vec<f32>,
    episode_length: Vec<u32>,
    rng: StdRng,
    needs_reset: bool,
}

impl EnvRunner {
    /// Runs `env` with a model of `state_size` floats of recurrent state. `seed` seeds the
    /// action sampling, so a run is repeatable.
    pub fn new(
        env: Box<dyn VecEnv>,
        unroll_length: usize,
        state_size: usize,
        seed: u64,
    ) -> Result<EnvRunner, TooLarge> {
        let spec = env.spec().clone();
        let n = env.num_envs();
        let t = unroll_length;
        let o = spec.observation.size();
        let d = spec.action.dim();
        let m = if spec.action_mask {
            spec.action.mask_width().unwrap_or(0)
        } else {
            0
        };
        let p = spec.action.dist_params();
        let column_bytes = (t + 1) * spec.observation.bytes()
            + t * (d * 8 + 4 + 2 + p * 4 + m)
            + state_size * 4
            // The worst case of truncation observations: every step.
            + t * spec.observation.bytes();
        if column_bytes > PART_BYTES {
            return Err(TooLarge {
                column_bytes,
                cap: PART_BYTES,
            });
        }
        let obs = match spec.observation.dtype {
            ObsDType::F32 => ObsRows::F32(vec![0.0; (t + 1) * n * o]),
            ObsDType::U8 => ObsRows::U8(vec![0; (t + 1) * n * o]),
        };
        let actions = if spec.action.is_continuous() {
            ActionRows::Continuous(vec![0.0; t * n * d])
        } else {
            ActionRows::Discrete(vec![0; t * n * d])
        };
        Ok(EnvRunner {
            env,
            n,
            t_len: t,
            obs,
            masks: vec![1; (t + 1) * n * m],
            actions,
            rewards: vec![0.0; t * n],
            terminated: vec![0; t * n],
            truncated: vec![0; t * n],
            valid: vec![1; t * n],
            params: vec![0.0; t * n * p],
            truncations: Vec::new(),
            truncation_obs: Vec::new(),
            state: Tensor::zeros([n as i64, state_size as i64], (Kind::Float, tch::Device::Cpu)),
            initial_state: Vec::new(),
            episode_return: vec![0.0; n],
            episode_length: vec![0; n],
            rng: StdRng::seed_from_u64(seed),
            needs_reset: true,
            spec,
        })
    }

    pub fn num_envs(&self) -> usize {
        self.n
    }

    pub fn spec(&self) -> &EnvSpec {
        &self.spec
    }

    /// Swaps in a new env (after the old one failed): every column starts a new episode.
    pub fn replace_env(&mut self, env: Box<dyn VecEnv>) {
        self.env = env;
        self.needs_reset = true;
    }

    fn mask_width(&self) -> usize {
        if self.spec.action_mask {
            self.spec.action.mask_width().unwrap_or(0)
        } else {
            0
        }
    }

    fn reset_all(&mut self) -> Result<(), EnvError> {
        let o = self.spec.observation.size();
        let m = self.mask_width();
        let (n, t) = (self.n, self.t_len);
        let masks = (m > 0).then(|| &mut self.masks[t * n * m..]);
        let obs = match &mut self.obs {
            ObsRows::F32(v) => ObsBuf::F32(&mut v[t * n * o..]),
            ObsRows::U8(v) => ObsBuf::U8(&mut v[t * n * o..]),
        };
        self.env.reset(obs, masks)?;
        let _ = self.state.zero_();
        self.episode_return.fill(0.0);
        self.episode_length.fill(0);
        self.needs_reset = false;
        Ok(())
    }

    /// Runs T steps of every column with `net` and returns them as one rollout, split by
    /// columns into parts under the message cap. Finished episodes go to `on_episode`.
    pub fn unroll(
        &mut self,
        net: &Model,
        actor_id: u64,
        policy_version: u64,
        on_episode: &mut dyn FnMut(EpisodeStat),
    ) -> Result<Vec<Rollout>, EnvError> {
        if self.needs_reset {
            self.reset_all()?;
        }
        let (t_len, n) = (self.t_len, self.n);
        let o = self.spec.observation.size();
        let d = self.spec.action.dim();
        let p = self.spec.action.dist_params();
        let m = self.mask_width();
        // The observation (and mask) after the last step becomes row 0.
        match &mut self.obs {
            ObsRows::F32(v) => v.copy_within(t_len * n * o.., 0),
            ObsRows::U8(v) => v.copy_within(t_len * n * o.., 0),
        }
        if m > 0 {
            self.masks.copy_within(t_len * n * m.., 0);
        }
        self.truncations.clear();
        self.truncation_obs.clear();
        self.initial_state = Vec::<f32>::try_from(self.state.flatten(0, -1)).expect("f32 state");
        let nvec = self.spec.action.nvec();
        for t in 0..t_len {
            let obs_t = {
                let rows = &self.obs.bytes()
                    [t * n * self.spec.observation.bytes()..(t + 1) * n * self.spec.observation.bytes()];
                let mut shape = vec![n as i64];
                shape.extend(self.spec.observation.shape.iter().map(|&x| x as i64));
                let kind = match self.spec.observation.dtype {
                    ObsDType::F32 => Kind::Float,
                    ObsDType::U8 => Kind::Uint8,
                };
                Tensor::from_data_size(rows, &shape, kind)
            };
            let (params, next_state) = tch::no_grad(|| net.act(&net.prepare(&obs_t), &self.state));
            let params = Vec::<f32>::try_from(params.to_kind(Kind::Float).flatten(0, -1)).expect("f32 params");
            self.state = next_state;
            self.params[t * n * p..(t + 1) * n * p].copy_from_slice(&params);
            for i in 0..n {
                let row = &params[i * p..(i + 1) * p];
                let at = (t * n + i) * d;
                match &mut self.actions {
                    ActionRows::Discrete(a) => {
                        let mask = (m > 0).then(|| &self.masks[(t * n + i) * m..(t * n + i + 1) * m]);
                        dist::sample_discrete(&nvec, row, mask, &mut self.rng, &mut a[at..at + d]);
                    }
                    ActionRows::Continuous(a) => dist::sample_gaussian(row, &mut self.rng, &mut a[at..at + d]),
                }
            }
            let before = self.truncation_obs.len();
            {
                let action = match &self.actions {
                    ActionRows::Discrete(a) => Action::Discrete(&a[t * n * d..(t + 1) * n * d]),
                    ActionRows::Continuous(a) => Action::Continuous(&a[t * n * d..(t + 1) * n * d]),
                };
                let obs = match &mut self.obs {
                    ObsRows::F32(v) => ObsBuf::F32(&mut v[(t + 1) * n * o..(t + 2) * n * o]),
                    ObsRows::U8(v) => ObsBuf::U8(&mut v[(t + 1) * n * o..(t + 2) * n * o]),
                };
                let masks = (m > 0).then(|| &mut self.masks[(t + 1) * n * m..(t + 2) * n * m]);
                let valid = &mut self.valid[t * n..(t + 1) * n];
                valid.fill(1);
                let step = self.env.step(
                    action,
                    StepOut {
                        obs,
                        rewards: &mut self.rewards[t * n..(t + 1) * n],
                        terminated: &mut self.terminated[t * n..(t + 1) * n],
                        truncated: &mut self.truncated[t * n..(t + 1) * n],
                        masks,
                        final_obs: &mut self.truncation_obs,
                        valid,
                    },
                );
                if let Err(e) = step {
                    self.needs_reset = true;
                    return Err(e);
                }
            }
            let ob = self.spec.observation.bytes();
            let k = (self.truncation_obs.len() - before) / ob;
            let truncated_now = self.truncated[t * n..(t + 1) * n].iter().filter(|&&x| x == 1).count();
            if k != truncated_now {
                self.needs_reset = true;
                return Err(EnvError {
                    env: self.spec.id.clone(),
                    call: "step",
                    field: "final_obs".into(),
                    problem: format!("{k} final observations for {truncated_now} truncated episodes"),
                });
            }
            for i in 0..n {
                let (r, term, trunc) = (
                    self.rewards[t * n + i],
                    self.terminated[t * n + i],
                    self.truncated[t * n + i],
                );
                if trunc == 1 {
                    // One per final observation the env gave, whatever the step's validity.
                    self.truncations.push((t, i));
                }
                if self.valid[t * n + i] == 0 {
                    // Only a reset: no transition, and the new episode starts at the next step.
                    if self.state.size()[1] > 0 {
                        let _ = self.state.get(i as i64).zero_();
                    }
                    continue;
                }
                self.episode_return[i] += r;
                self.episode_length[i] += 1;
                if term == 1 || trunc == 1 {
                    on_episode(EpisodeStat {
                        episode_return: self.episode_return[i],
                        length: self.episode_length[i],
                    });
                    self.episode_return[i] = 0.0;
                    self.episode_length[i] = 0;
                    if self.state.size()[1] > 0 {
                        let _ = self.state.get(i as i64).zero_();
                    }
                }
            }
        }
        Ok(self.pack(actor_id, policy_version))
    }

    /// Packs the unroll into rollouts over disjoint column ranges, each under [`PART_BYTES`].
    fn pack(&self, actor_id: u64, policy_version: u64) -> Vec<Rollout> {
        let n = self.n;
        let total = self.obs.bytes().len()
            + self.actions.bytes().len()
            + self.rewards.len() * 7
            + self.params.len() * 4
            + self.masks.len()
            + self.initial_state.len() * 4
            + self.truncation_obs.len();
        let parts = total.div_ceil(PART_BYTES).clamp(1, n);
        let per = n.div_ceil(parts);
        (0..n)
            .step_by(per)
            .map(|c0| self.pack_columns(actor_id, policy_version, c0, (c0 + per).min(n)))
            .collect()
    }

    fn pack_columns(&self, actor_id: u64, policy_version: u64, c0: usize, c1: usize) -> Rollout {
        let (t, n, w) = (self.t_len, self.n, c1 - c0);
        let obs_dims = &self.spec.observation.shape;
        let with = |lead: &[usize], tail: &[usize]| -> Vec<usize> { lead.iter().chain(tail).copied().collect() };
        // Columns c0..c1 of `[rows, N, width bytes]`.
        let cols = |data: &[u8], rows: usize, width: usize| -> Bytes {
            if c0 == 0 && c1 == n {
                return Bytes::copy_from_slice(data);
            }
            let mut out = Vec::with_capacity(rows * w * width);
            for r in 0..rows {
                out.extend_from_slice(&data[(r * n + c0) * width..(r * n + c1) * width]);
            }
            Bytes::from(out)
        };
        let ob = self.spec.observation.bytes();
        let obs_dtype = match self.spec.observation.dtype {
            ObsDType::F32 => DType::DtypeF32,
            ObsDType::U8 => DType::DtypeU8,
        };
        let d = self.spec.action.dim();
        let (act_dtype, act_size) = match self.spec.action {
            ActionSpace::Box { .. } => (DType::DtypeF32, 4),
            _ => (DType::DtypeI64, 8),
        };
        let p = self.spec.action.dist_params();
        let m = self.mask_width();
        let mut trunc_obs = Vec::new();
        let mut k = 0;
        for (j, &(_, col)) in self.truncations.iter().enumerate() {
            if (c0..c1).contains(&col) {
                trunc_obs.extend_from_slice(&self.truncation_obs[j * ob..(j + 1) * ob]);
                k += 1;
            }
        }
        let state_size = self.state.size()[1] as usize;
        Rollout {
            actor_id,
            policy_version,
            observations: Some(WireTensor::from_bytes(
                obs_dtype,
                &with(&[t + 1, w], obs_dims),
                cols(self.obs.bytes(), t + 1, ob),
            )),
            actions: Some(WireTensor::from_bytes(
                act_dtype,
                &[t, w, d],
                cols(self.actions.bytes(), t, d * act_size),
            )),
            rewards: Some(WireTensor::from_bytes(
                DType::DtypeF32,
                &[t, w],
                cols(bytemuck::cast_slice(&self.rewards), t, 4),
            )),
            terminated: Some(WireTensor::from_bytes(
                DType::DtypeU8,
                &[t, w],
                cols(&self.terminated, t, 1),
            )),
            truncated: Some(WireTensor::from_bytes(
                DType::DtypeU8,
                &[t, w],
                cols(&self.truncated, t, 1),
            )),
            behaviour_params: Some(WireTensor::from_bytes(
                DType::DtypeF32,
                &[t, w, p],
                cols(bytemuck::cast_slice(&self.params), t, p * 4),
            )),
            truncation_observations: Some(WireTensor::from_bytes(
                obs_dtype,
                &with(&[k], obs_dims),
                Bytes::from(trunc_obs),
            )),
            action_masks: (m > 0)
                .then(|| WireTensor::from_bytes(DType::DtypeU8, &[t, w, m], cols(&self.masks[..t * n * m], t, m))),
            valid: self.valid[..t * n]
                .contains(&0)
                .then(|| WireTensor::from_bytes(DType::DtypeU8, &[t, w], cols(&self.valid[..t * n], t, 1))),
            initial_state: (state_size > 0).then(|| {
                WireTensor::from_bytes(
                    DType::DtypeF32,
                    &[w, state_size],
                    cols(bytemuck::cast_slice(&self.initial_state), 1, state_size * 4),
                )
            }),
        }
    }
}

#[cfg(test)]
mod tests;
