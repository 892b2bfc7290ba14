//! The actor's inner loop: N environments stepped together (any [`VecEnv`]), their agents'
//! columns split into one group per policy; each step, one batched forward per policy (CPU,
//! no_grad); unrolls of T steps packed into one rollout (or a few, under the message cap) per
//! policy.
//!
//! The env writes each step's observations straight into row t + 1 of the group's rollout
//! buffer (one copy, from the env or numpy). Actions are sampled on the CPU, restricted to the
//! env's legal-action mask. With an LSTM core, the runner keeps each column's state, zeroes it
//! where an agent's episode ended, carries it through the steps an agent is absent from, and
//! sends the state at the start of each unroll.
//!
//! **Rewards and returns.** With `policies.reward = "team"` every present agent trains on the
//! sum of all agents' rewards at that step. Either way an env's episode reports its whole
//! return (every agent's rewards summed: the team's) and, in multi-policy runs, each policy's
//! part of it.

use bytes::Bytes;
use proto::v1::{DType, EpisodeStat, Rollout, Tensor as WireTensor};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tch::{Kind, Tensor};
use troupe::config::RewardMode;
use troupe::env::{Action, EnvError, ObsBuf, ResetOut, StepOut, VecEnv};
use troupe::model::{dist, Model};
use troupe::spaces::{ActionSpace, EnvSpec, ObsDType, PolicySpec};

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

    fn rows(&mut self, from: usize, to: usize) -> ObsBuf<'_> {
        match self {
            ObsRows::F32(v) => ObsBuf::F32(&mut v[from..to]),
            ObsRows::U8(v) => ObsBuf::U8(&mut v[from..to]),
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

    fn row(&self, from: usize, to: usize) -> Action<'_> {
        match self {
            ActionRows::Discrete(a) => Action::Discrete(&a[from..to]),
            ActionRows::Continuous(a) => Action::Continuous(&a[from..to]),
        }
    }
}

/// A rollout that does not fit the message cap even as one env's columns per message.
#[derive(Debug, thiserror::Error)]
#[error("one env's columns of an unroll are {column_bytes} bytes, over the {cap} byte rollout message cap: lower actor.unroll_length")]
pub struct TooLarge {
    pub column_bytes: usize,
    pub cap: usize,
}

/// Largest encoded rollout part the runner aims for: half the message cap, so metadata and
/// protobuf framing never push a part over it.
pub const PART_BYTES: usize = proto::MAX_MESSAGE_BYTES / 2;

/// One policy's columns: `n` = envs times its agents, and the unroll's buffers for them.
struct Group {
    spec: PolicySpec,
    /// Agents per env.
    a: usize,
    n: usize,
    obs: ObsRows,
    /// `[T + 1, N, M]` masks (row t for the observation of row t), when the env has them.
    masks: Vec<u8>,
    rewards: Vec<f32>,
    terminated: Vec<u8>,
    truncated: Vec<u8>,
    /// `[T, N]`: 0 where a column took no step (see [`StepOut::valid`]).
    valid: Vec<u8>,
    params: Vec<f32>,
    /// `[T + 1, N, S]` env states, with a centralized critic.
    states: Vec<f32>,
    /// (t, n) of each truncated step and its last observation's bytes (and state), in order.
    truncations: Vec<(usize, usize)>,
    truncation_obs: Vec<u8>,
    truncation_states: Vec<f32>,
    /// Recurrent state for the next step `[N, S]` (S = 0 without a core).
    state: Tensor,
    /// The state before the last step, which an absent column keeps.
    prev_state: Tensor,
    initial_state: Vec<f32>,
    /// Per env: this policy's agents' rewards in the current episode.
    episode_return: Vec<f32>,
}

impl Group {
    fn mask_width(&self) -> usize {
        if self.spec.action_mask {
            self.spec.action.mask_width().unwrap_or(0)
        } else {
            0
        }
    }

    fn state_width(&self) -> usize {
        self.spec.state.as_ref().map_or(0, |s| s.size())
    }
}

pub struct EnvRunner {
    env: Box<dyn VecEnv>,
    spec: EnvSpec,
    groups: Vec<Group>,
    /// `[T, N, action_dim]` of each group (apart from the groups: the env reads these while it
    /// writes the groups' other buffers).
    actions: Vec<ActionRows>,
    envs: usize,
    t_len: usize,
    reward: RewardMode,
    /// `[E]`: envs whose episode ended at this step.
    ended: Vec<u8>,
    /// Per env: every agent's rewards in the current episode, and its length in steps.
    team_return: Vec<f32>,
    episode_length: Vec<u32>,
    /// Per env, this step: the sum of its present agents' rewards.
    step_reward: Vec<f32>,
    rng: StdRng,
    needs_reset: bool,
    /// With Ape-X: act epsilon-greedily over Q-values, one rollout per env, and each one's
    /// initial priority.
    q_acting: Option<QActing>,
    /// The last unroll's rollouts' priorities, in their order (with `q_acting`).
    priorities: Vec<f64>,
    /// Env steps taken (for epsilon's annealing).
    frames: u64,
}

/// Ape-X's acting (Horgan et al. 2018): each env acts epsilon-greedily over the model's
/// Q-values (see `troupe::model::q`) with its own epsilon, and each env's sequence gets an
/// initial priority from the actor's own Q estimates: its n-step double-DQN TD errors with the
/// acting network as both online and target network (the learner uses its target network), the
/// rewards clipped and scaled as the learner will.
#[derive(Debug, Clone)]
pub struct QActing {
    /// One per env.
    pub epsilons: Vec<f64>,
    /// Each epsilon starts at 1 and reaches its own after this many of the runner's frames
    /// (0: from the start).
    pub anneal_frames: u64,
    pub dueling: bool,
    pub n_step: usize,
    pub discount: f64,
    pub eta: f64,
    pub reward_clip: f64,
    pub reward_scale: f64,
    /// VDN: an env's priority comes from its team's TD errors (the sums of its agents' Qs and
    /// targets), each agent's target on its share of the team reward.
    pub vdn: bool,
}

impl EnvRunner {
    /// Runs `env` for the policies `policies` (their groups set on the env), each with a model
    /// of `state_sizes[g]` floats of recurrent state. `seed` seeds the action sampling, so a run
    /// is repeatable.
    pub fn new(
        mut env: Box<dyn VecEnv>,
        policies: &[PolicySpec],
        reward: RewardMode,
        unroll_length: usize,
        state_sizes: &[usize],
        seed: u64,
    ) -> Result<EnvRunner, TooLarge> {
        let spec = env.spec().clone();
        env.set_groups(troupe::policy_map::groups(&spec, policies));
        let envs = env.num_envs();
        let t = unroll_length;
        let mut groups = Vec::new();
        let mut actions = Vec::new();
        for (p, &state_size) in policies.iter().zip(state_sizes) {
            let a = p.agents_per_env();
            let n = envs * a;
            let o = p.observation.size();
            let d = p.action.dim();
            let m = if p.action_mask {
                p.action.mask_width().unwrap_or(0)
            } else {
                0
            };
            let pw = p.action.dist_params();
            let s = p.state.as_ref().map_or(0, |s| s.size());
            let env_bytes = a
                * ((t + 1) * p.observation.bytes()
                    + t * (d * 8 + 4 + 2 + pw * 4 + m)
                    + state_size * 4
                    + (t + 1) * s * 4
                    // The worst case of truncation observations: every step.
                    + t * (p.observation.bytes() + s * 4));
            if env_bytes > PART_BYTES {
                return Err(TooLarge {
                    column_bytes: env_bytes,
                    cap: PART_BYTES,
                });
            }
            actions.push(if p.action.is_continuous() {
                ActionRows::Continuous(vec![0.0; t * n * d])
            } else {
                ActionRows::Discrete(vec![0; t * n * d])
            });
            groups.push(Group {
                obs: match p.observation.dtype {
                    ObsDType::F32 => ObsRows::F32(vec![0.0; (t + 1) * n * o]),
                    ObsDType::U8 => ObsRows::U8(vec![0; (t + 1) * n * o]),
                },
                masks: vec![1; (t + 1) * n * m],
                rewards: vec![0.0; t * n],
                terminated: vec![0; t * n],
                truncated: vec![0; t * n],
                valid: vec![1; t * n],
                params: vec![0.0; t * n * pw],
                states: vec![0.0; (t + 1) * n * s],
                truncations: Vec::new(),
                truncation_obs: Vec::new(),
                truncation_states: Vec::new(),
                state: Tensor::zeros([n as i64, state_size as i64], (Kind::Float, tch::Device::Cpu)),
                prev_state: Tensor::zeros([n as i64, state_size as i64], (Kind::Float, tch::Device::Cpu)),
                initial_state: Vec::new(),
                episode_return: vec![0.0; envs],
                spec: p.clone(),
                a,
                n,
            });
        }
        Ok(EnvRunner {
            env,
            groups,
            actions,
            envs,
            t_len: t,
            reward,
            ended: vec![0; envs],
            team_return: vec![0.0; envs],
            episode_length: vec![0; envs],
            step_reward: vec![0.0; envs],
            rng: StdRng::seed_from_u64(seed),
            needs_reset: true,
            spec,
            q_acting: None,
            priorities: Vec::new(),
            frames: 0,
        })
    }

    /// Acts epsilon-greedily over Q-values from now on (see [`QActing`]).
    pub fn act_on_q_values(&mut self, q: QActing) {
        assert_eq!(q.epsilons.len(), self.envs, "one epsilon per env");
        self.q_acting = Some(q);
    }

    /// The initial priorities of the last unroll's rollouts, in their order (empty unless
    /// acting on Q-values).
    pub fn priorities(&self) -> &[f64] {
        &self.priorities
    }

    /// A runner for a single-agent env's one policy (`default`, agent rewards).
    pub fn single(
        env: Box<dyn VecEnv>,
        unroll_length: usize,
        state_size: usize,
        seed: u64,
    ) -> Result<EnvRunner, TooLarge> {
        let policy = PolicySpec::single(env.spec());
        EnvRunner::new(env, &[policy], RewardMode::Agent, unroll_length, &[state_size], seed)
    }

    /// [`EnvRunner::unroll`] with one policy.
    pub fn unroll_one(
        &mut self,
        net: &Model,
        actor_id: u64,
        version: u64,
        on_episode: &mut dyn FnMut(EpisodeStat),
    ) -> Result<Vec<Rollout>, EnvError> {
        self.unroll(&[net], actor_id, &[version], on_episode)
    }

    /// Environments (columns are envs times agents).
    pub fn num_envs(&self) -> usize {
        self.envs
    }

    pub fn spec(&self) -> &EnvSpec {
        &self.spec
    }

    /// Swaps in a new env (after the old one failed): every env starts a new episode.
    pub fn replace_env(&mut self, mut env: Box<dyn VecEnv>) {
        env.set_groups(self.env.groups().clone());
        self.env = env;
        self.needs_reset = true;
    }

    fn reset_all(&mut self) -> Result<(), EnvError> {
        let t = self.t_len;
        let mut outs: Vec<ResetOut<'_>> = self
            .groups
            .iter_mut()
            .map(|g| {
                let (n, o, m, s) = (g.n, g.spec.observation.size(), g.mask_width(), g.state_width());
                let len = (t + 1) * n * o;
                ResetOut {
                    obs: g.obs.rows(t * n * o, len),
                    masks: (m > 0).then(|| &mut g.masks[t * n * m..]),
                    states: (s > 0).then(|| &mut g.states[t * n * s..]),
                }
            })
            .collect();
        self.env.reset(&mut outs)?;
        drop(outs);
        for g in &mut self.groups {
            let _ = g.state.zero_();
            g.episode_return.fill(0.0);
        }
        self.team_return.fill(0.0);
        self.episode_length.fill(0);
        self.needs_reset = false;
        Ok(())
    }

    /// Runs T steps of every env, acting for group g with `nets[g]` (at `versions[g]`), and
    /// returns each policy's rollout, split by envs into parts under the message cap. Finished
    /// episodes go to `on_episode`.
    pub fn unroll(
        &mut self,
        nets: &[&Model],
        actor_id: u64,
        versions: &[u64],
        on_episode: &mut dyn FnMut(EpisodeStat),
    ) -> Result<Vec<Rollout>, EnvError> {
        if self.needs_reset {
            self.reset_all()?;
        }
        let t_len = self.t_len;
        for g in &mut self.groups {
            let (n, o, m, s) = (g.n, g.spec.observation.size(), g.mask_width(), g.state_width());
            // The observation (mask, state) after the last step becomes row 0.
            match &mut g.obs {
                ObsRows::F32(v) => v.copy_within(t_len * n * o.., 0),
                ObsRows::U8(v) => v.copy_within(t_len * n * o.., 0),
            }
            if m > 0 {
                g.masks.copy_within(t_len * n * m.., 0);
            }
            if s > 0 {
                g.states.copy_within(t_len * n * s.., 0);
            }
            g.truncations.clear();
            g.truncation_obs.clear();
            g.truncation_states.clear();
            g.initial_state = Vec::<f32>::try_from(g.state.flatten(0, -1)).expect("f32 state");
        }
        for t in 0..t_len {
            let q = self.q_acting.as_ref().map(|q| {
                let mut q = q.clone();
                if q.anneal_frames > 0 {
                    let frac = (self.frames as f64 / q.anneal_frames as f64).min(1.0);
                    q.epsilons.iter_mut().for_each(|e| *e = 1.0 + (*e - 1.0) * frac);
                }
                q
            });
            for ((g, a), net) in self.groups.iter_mut().zip(&mut self.actions).zip(nets) {
                act(g, a, net, t, &mut self.rng, q.as_ref());
            }
            self.frames += self.envs as u64;
            let before: Vec<(usize, usize)> = self
                .groups
                .iter()
                .map(|g| (g.truncation_obs.len(), g.truncation_states.len()))
                .collect();
            {
                let actions: Vec<Action<'_>> = self
                    .groups
                    .iter()
                    .zip(&self.actions)
                    .map(|(g, a)| {
                        let d = g.spec.action.dim();
                        a.row(t * g.n * d, (t + 1) * g.n * d)
                    })
                    .collect();
                let mut outs: Vec<StepOut<'_>> = self.groups.iter_mut().map(|g| step_out(g, t)).collect();
                let step = self.env.step(&actions, &mut outs, &mut self.ended);
                drop(outs);
                if let Err(e) = step {
                    self.needs_reset = true;
                    return Err(e);
                }
            }
            for (g, &(obs0, st0)) in self.groups.iter_mut().zip(&before) {
                let ob = g.spec.observation.bytes();
                let k = (g.truncation_obs.len() - obs0) / ob;
                let truncated_now = g.truncated[t * g.n..(t + 1) * g.n].iter().filter(|&&x| x == 1).count();
                let s = g.state_width();
                let ks = if s > 0 {
                    (g.truncation_states.len() - st0) / s
                } else {
                    k
                };
                if k != truncated_now || ks != truncated_now {
                    self.needs_reset = true;
                    return Err(EnvError {
                        env: self.spec.id.clone(),
                        call: "step",
                        field: "final_obs".into(),
                        problem: format!("{k} final observations ({ks} states) for {truncated_now} truncated agents"),
                    });
                }
            }
            self.account(t, on_episode);
        }
        let Some(q) = &self.q_acting else {
            let rollouts = self
                .groups
                .iter()
                .zip(&self.actions)
                .zip(versions)
                .flat_map(|((g, a), &v)| pack(g, a, t_len, actor_id, v))
                .collect();
            return Ok(rollouts);
        };
        // One rollout per env (a replay item each, with its own priority).
        self.priorities.clear();
        let mut rollouts = Vec::new();
        for (((g, a), &v), net) in self.groups.iter().zip(&self.actions).zip(versions).zip(nets) {
            let per_column = initial_priorities(g, a, net, t_len, q);
            for e in 0..g.n / g.a {
                let (c0, c1) = (e * g.a, (e + 1) * g.a);
                rollouts.push(pack_columns(g, a, t_len, actor_id, v, c0, c1));
                self.priorities
                    .push(per_column[c0..c1].iter().copied().fold(0.0, f64::max));
            }
        }
        Ok(rollouts)
    }

    /// Step t's rewards into returns (and the team reward, when configured), episode ends into
    /// stats, and the recurrent state zeroed where an agent's episode ended.
    fn account(&mut self, t: usize, on_episode: &mut dyn FnMut(EpisodeStat)) {
        self.step_reward.fill(0.0);
        let mut present = vec![false; self.envs];
        for g in &mut self.groups {
            for i in 0..g.n {
                let at = t * g.n + i;
                let e = i / g.a;
                if g.truncated[at] == 1 {
                    // One per final observation the env gave, whatever the step's validity.
                    g.truncations.push((t, i));
                }
                if g.valid[at] == 0 {
                    // No step for this agent (it had finished, or it was not its turn): the
                    // forward's state is dropped and the agent's state passes through to its
                    // next step, as the learner replays it (`Model::unroll_present`).
                    if g.state.size()[1] > 0 {
                        let _ = g.state.get(i as i64).copy_(&g.prev_state.get(i as i64));
                    }
                    continue;
                }
                present[e] = true;
                self.step_reward[e] += g.rewards[at];
                g.episode_return[e] += g.rewards[at];
                if (g.terminated[at] == 1 || g.truncated[at] == 1) && g.state.size()[1] > 0 {
                    let _ = g.state.get(i as i64).zero_();
                }
            }
        }
        if self.reward == RewardMode::Team {
            for g in &mut self.groups {
                for i in 0..g.n {
                    let at = t * g.n + i;
                    if g.valid[at] == 1 {
                        g.rewards[at] = self.step_reward[i / g.a];
                    }
                }
            }
        }
        let per_policy = self.groups.len() > 1;
        for e in 0..self.envs {
            if present[e] {
                self.team_return[e] += self.step_reward[e];
                self.episode_length[e] += 1;
            }
            if self.ended[e] == 0 {
                continue;
            }
            let length = self.episode_length[e];
            on_episode(EpisodeStat {
                episode_return: self.team_return[e],
                length,
                policy: String::new(),
            });
            for g in &mut self.groups {
                if per_policy {
                    on_episode(EpisodeStat {
                        episode_return: g.episode_return[e],
                        length,
                        policy: g.spec.policy.clone(),
                    });
                }
                g.episode_return[e] = 0.0;
            }
            self.team_return[e] = 0.0;
            self.episode_length[e] = 0;
            self.ended[e] = 0;
        }
    }
}

/// Step t's outputs of group g: row t + 1 of its observations, masks and states, row t of the
/// rest; every column valid until the env says otherwise.
fn step_out(g: &mut Group, t: usize) -> StepOut<'_> {
    let (n, o, m, s) = (g.n, g.spec.observation.size(), g.mask_width(), g.state_width());
    let valid = &mut g.valid[t * n..(t + 1) * n];
    valid.fill(1);
    StepOut {
        obs: g.obs.rows((t + 1) * n * o, (t + 2) * n * o),
        rewards: &mut g.rewards[t * n..(t + 1) * n],
        terminated: &mut g.terminated[t * n..(t + 1) * n],
        truncated: &mut g.truncated[t * n..(t + 1) * n],
        masks: (m > 0).then(|| &mut g.masks[(t + 1) * n * m..(t + 2) * n * m]),
        final_obs: &mut g.truncation_obs,
        valid,
        states: (s > 0).then(|| &mut g.states[(t + 1) * n * s..(t + 2) * n * s]),
        final_states: (s > 0).then_some(&mut g.truncation_states),
    }
}

/// The model's input for observations `rows` (bytes of `[M, obs...]`) of group g's columns
/// `cols` (their agents' one-hots) and env states `states` (`[M, S]`, with a critic).
fn input_of(g: &Group, net: &Model, rows: &[u8], cols: &[i64], states: Option<&[f32]>) -> Tensor {
    let m = cols.len() as i64;
    let mut shape = vec![m];
    shape.extend(g.spec.observation.shape.iter().map(|&x| x as i64));
    let kind = match g.spec.observation.dtype {
        ObsDType::F32 => Kind::Float,
        ObsDType::U8 => Kind::Uint8,
    };
    let obs = Tensor::from_data_size(rows, &shape, kind);
    if net.is_packed() {
        let agents = Tensor::from_slice(cols).remainder(g.a as i64);
        let s = g.state_width() as i64;
        let states = states.map(|x| Tensor::from_slice(x).view([m, s]));
        net.input(&obs, Some(&agents), states.as_ref())
    } else {
        net.prepare(&obs)
    }
}

/// One forward of group g's columns at step t, and actions sampled from it (or chosen
/// epsilon-greedily over Q-values, which are then what the rollout's behaviour parameters hold).
fn act(g: &mut Group, actions: &mut ActionRows, net: &Model, t: usize, rng: &mut StdRng, q: Option<&QActing>) {
    let n = g.n;
    let d = g.spec.action.dim();
    let p = g.spec.action.dist_params();
    let m = g.mask_width();
    let ob = g.spec.observation.bytes();
    let s = g.state_width();
    let cols: Vec<i64> = (0..n as i64).collect();
    let states = (s > 0).then(|| &g.states[t * n * s..(t + 1) * n * s]);
    let input = input_of(g, net, &g.obs.bytes()[t * n * ob..(t + 1) * n * ob], &cols, states);
    let (params, next_state) = tch::no_grad(|| match q {
        Some(q) => {
            let out = net.step(&input, &g.state);
            (
                troupe::model::q::q_values(&out.params, &out.value, q.dueling),
                out.state,
            )
        }
        None => net.act(&input, &g.state),
    });
    let params = Vec::<f32>::try_from(params.to_kind(Kind::Float).flatten(0, -1)).expect("f32 params");
    g.prev_state = std::mem::replace(&mut g.state, next_state);
    g.params[t * n * p..(t + 1) * n * p].copy_from_slice(&params);
    let nvec = g.spec.action.nvec();
    for i in 0..n {
        let row = &params[i * p..(i + 1) * p];
        let at = (t * n + i) * d;
        match actions {
            ActionRows::Discrete(a) => {
                let mask = (m > 0).then(|| &g.masks[(t * n + i) * m..(t * n + i + 1) * m]);
                match q {
                    Some(q) => dist::epsilon_greedy(&nvec, row, mask, q.epsilons[i / g.a], rng, &mut a[at..at + d]),
                    None => dist::sample_discrete(&nvec, row, mask, rng, &mut a[at..at + d]),
                }
            }
            ActionRows::Continuous(a) => dist::sample_gaussian(row, rng, &mut a[at..at + d]),
        }
    }
}

/// Each column's initial priority for the unroll just taken (see [`QActing`]): the Q-values
/// it acted on (in the behaviour parameters) for rows 0..T, one more forward for the last
/// observation and for truncated episodes' last observations.
fn initial_priorities(g: &Group, actions: &ActionRows, net: &Model, t: usize, q: &QActing) -> Vec<f64> {
    use troupe::model::q::{self as qv, NStep, TargetInput};
    let (n, ob, a) = (g.n, g.spec.observation.bytes(), g.spec.action.dist_params());
    let (ti, ni, ai) = (t as i64, n as i64, a as i64);
    let s = g.state_width();
    let forward = |rows: &[u8], cols: &[i64], states: Option<&[f32]>| -> Tensor {
        let x = input_of(g, net, rows, cols, states);
        let zero = Tensor::zeros([cols.len() as i64, 0], (Kind::Float, tch::Device::Cpu));
        let out = tch::no_grad(|| net.step(&x, &zero));
        qv::q_values(&out.params, &out.value, q.dueling)
    };
    let all: Vec<i64> = (0..ni).collect();
    let last = forward(
        &g.obs.bytes()[t * n * ob..(t + 1) * n * ob],
        &all,
        (s > 0).then(|| &g.states[t * n * s..(t + 1) * n * s]),
    );
    let q_all = Tensor::cat(
        &[Tensor::from_slice(&g.params).view([ti, ni, ai]), last.unsqueeze(0)],
        0,
    );
    let truncation_at: Vec<(i64, i64)> = g.truncations.iter().map(|&(s, c)| (s as i64, c as i64)).collect();
    let trunc = if truncation_at.is_empty() {
        Tensor::zeros([0, ai], (Kind::Float, tch::Device::Cpu))
    } else {
        let cols: Vec<i64> = truncation_at.iter().map(|&(_, c)| c).collect();
        forward(&g.truncation_obs, &cols, (s > 0).then_some(&g.truncation_states[..]))
    };
    let flag = |x: &[u8]| Tensor::from_slice(&x[..t * n]).view([ti, ni]).to_kind(Kind::Float);
    let mut rewards = Tensor::from_slice(&g.rewards).view([ti, ni]);
    if q.reward_clip > 0.0 {
        rewards = rewards.clamp(-q.reward_clip, q.reward_clip);
    }
    if q.reward_scale != 1.0 {
        rewards *= q.reward_scale;
    }
    if q.vdn {
        rewards /= g.a as f64;
    }
    let valid = flag(&g.valid);
    let m = g.mask_width();
    let masks = (m > 0).then(|| {
        Tensor::from_slice(&g.masks[..t * n * m])
            .view([ti, ni, m as i64])
            .to_kind(Kind::Float)
    });
    let y = qv::targets(
        &TargetInput {
            q_online: &q_all,
            q_target: &q_all,
            trunc_online: &trunc,
            trunc_target: &trunc,
            truncation_at: &truncation_at,
            rewards: &rewards,
            terminated: &flag(&g.terminated),
            truncated: &flag(&g.truncated),
            valid: &valid,
            masks: masks.as_ref(),
        },
        NStep {
            n: q.n_step,
            discount: q.discount,
        },
    );
    let taken = match actions {
        ActionRows::Discrete(x) => Tensor::from_slice(&x[..t * n]).view([ti, ni, 1]),
        ActionRows::Continuous(_) => unreachable!("Q-values need a Discrete action space"),
    };
    let q_taken = q_all.narrow(0, 0, ti).gather(-1, &taken, false).squeeze_dim(-1);
    let td = (y - q_taken) * &valid;
    if !q.vdn {
        return qv::priorities(&td, &valid, q.eta);
    }
    let ga = g.a as i64;
    let team = td.view([ti, ni / ga, ga]).sum_dim_intlist(-1, false, Kind::Float);
    let team_valid = valid.view([ti, ni / ga, ga]).amax(-1, false);
    qv::priorities(&team, &team_valid, q.eta)
        .into_iter()
        .flat_map(|p| std::iter::repeat_n(p, g.a))
        .collect()
}

/// Packs group g's unroll into rollouts over disjoint ranges of whole envs, each under
/// [`PART_BYTES`].
fn pack(g: &Group, actions: &ActionRows, t: usize, actor_id: u64, policy_version: u64) -> Vec<Rollout> {
    let total = g.obs.bytes().len()
        + actions.bytes().len()
        + g.rewards.len() * 7
        + g.params.len() * 4
        + g.masks.len()
        + g.states.len() * 4
        + g.initial_state.len() * 4
        + g.truncation_obs.len()
        + g.truncation_states.len() * 4;
    let envs = g.n / g.a;
    let parts = total.div_ceil(PART_BYTES).clamp(1, envs);
    let per = envs.div_ceil(parts) * g.a;
    (0..g.n)
        .step_by(per)
        .map(|c0| pack_columns(g, actions, t, actor_id, policy_version, c0, (c0 + per).min(g.n)))
        .collect()
}

fn pack_columns(
    g: &Group,
    actions: &ActionRows,
    t: usize,
    actor_id: u64,
    policy_version: u64,
    c0: usize,
    c1: usize,
) -> Rollout {
    let (n, w) = (g.n, c1 - c0);
    let obs_dims = &g.spec.observation.shape;
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
    let ob = g.spec.observation.bytes();
    let obs_dtype = match g.spec.observation.dtype {
        ObsDType::F32 => DType::DtypeF32,
        ObsDType::U8 => DType::DtypeU8,
    };
    let d = g.spec.action.dim();
    let (act_dtype, act_size) = match g.spec.action {
        ActionSpace::Box { .. } => (DType::DtypeF32, 4),
        _ => (DType::DtypeI64, 8),
    };
    let p = g.spec.action.dist_params();
    let m = g.mask_width();
    let s = g.state_width();
    let mut trunc_obs = Vec::new();
    let mut trunc_states: Vec<f32> = Vec::new();
    let mut k = 0;
    for (j, &(_, col)) in g.truncations.iter().enumerate() {
        if (c0..c1).contains(&col) {
            trunc_obs.extend_from_slice(&g.truncation_obs[j * ob..(j + 1) * ob]);
            if s > 0 {
                trunc_states.extend_from_slice(&g.truncation_states[j * s..(j + 1) * s]);
            }
            k += 1;
        }
    }
    let state_size = g.state.size()[1] as usize;
    Rollout {
        actor_id,
        policy_version,
        policy: g.spec.policy.clone(),
        observations: Some(WireTensor::from_bytes(
            obs_dtype,
            &with(&[t + 1, w], obs_dims),
            cols(g.obs.bytes(), t + 1, ob),
        )),
        actions: Some(WireTensor::from_bytes(
            act_dtype,
            &[t, w, d],
            cols(actions.bytes(), t, d * act_size),
        )),
        rewards: Some(WireTensor::from_bytes(
            DType::DtypeF32,
            &[t, w],
            cols(bytemuck::cast_slice(&g.rewards), t, 4),
        )),
        terminated: Some(WireTensor::from_bytes(
            DType::DtypeU8,
            &[t, w],
            cols(&g.terminated, t, 1),
        )),
        truncated: Some(WireTensor::from_bytes(
            DType::DtypeU8,
            &[t, w],
            cols(&g.truncated, t, 1),
        )),
        behaviour_params: Some(WireTensor::from_bytes(
            DType::DtypeF32,
            &[t, w, p],
            cols(bytemuck::cast_slice(&g.params), t, p * 4),
        )),
        truncation_observations: Some(WireTensor::from_bytes(
            obs_dtype,
            &with(&[k], obs_dims),
            Bytes::from(trunc_obs),
        )),
        action_masks: (m > 0)
            .then(|| WireTensor::from_bytes(DType::DtypeU8, &[t, w, m], cols(&g.masks[..t * n * m], t, m))),
        valid: g.valid[..t * n]
            .contains(&0)
            .then(|| WireTensor::from_bytes(DType::DtypeU8, &[t, w], cols(&g.valid[..t * n], t, 1))),
        initial_state: (state_size > 0).then(|| {
            WireTensor::from_bytes(
                DType::DtypeF32,
                &[w, state_size],
                cols(bytemuck::cast_slice(&g.initial_state), 1, state_size * 4),
            )
        }),
        states: (s > 0).then(|| {
            WireTensor::from_bytes(
                DType::DtypeF32,
                &[t + 1, w, s],
                cols(bytemuck::cast_slice(&g.states), t + 1, s * 4),
            )
        }),
        truncation_states: (s > 0).then(|| {
            WireTensor::from_bytes(
                DType::DtypeF32,
                &[k, s],
                Bytes::copy_from_slice(bytemuck::cast_slice(&trunc_states)),
            )
        }),
    }
}

#[cfg(test)]
mod tests;
