//! Learning algorithms behind one interface. An [`Algorithm`] turns a batch of transitions
//! into a loss and its named terms; the trainer owns everything around it (the model, the
//! optimizer and its schedule, gradient clipping, the non-finite guards, observation and value
//! statistics, publishing), so adding an algorithm touches none of that.
//!
//! Nothing here assumes on-policy data: a [`TrainBatch`] carries the behaviour policy's
//! parameters for every step, whatever produced it, and an algorithm says how many passes it
//! takes over a batch ([`Passes`]), which a replay-based algorithm would set to its own
//! sampling.
//!
//! - [`impala`]: V-trace targets and the V-trace policy gradient.
//! - [`appo`]: V-trace targets with PPO's clipped surrogate and a KL penalty.
//! - [`dqn`]: Ape-X DQN: n-step double DQN with a target network, trained on prioritized
//!   replay alone, with each column's new priority out of its loss.

pub mod appo;
pub mod dqn;
pub mod impala;

use tch::{Device, Kind, Tensor};
use troupe::config::AlgorithmKind;
use troupe::model::{dist, Model, ModelSpec};
use troupe::spaces::ObsDType;
use troupe::RunConfig;

use crate::batch::Batch;
use crate::vtrace::{vtrace_from_flags, Ends, VTraceOutput, VTraceParams};

/// How an algorithm goes over one batch: `epochs` passes, each in `minibatches` groups of
/// columns (a fresh random split per pass).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passes {
    pub epochs: usize,
    pub minibatches: usize,
}

/// One loss to minimise, and what the trainer needs around it.
pub struct Loss {
    pub total: Tensor,
    /// The algorithm's own terms (scalar tensors, detached), by name: these become
    /// `UpdateStats::terms` and the `term` label of `troupe_learner_loss`.
    pub terms: Vec<(&'static str, Tensor)>,
    /// Value targets in return units, `[T, B]`, detached (for value statistics).
    pub value_targets: Tensor,
    /// The value net's estimates in return units, `[T, B]`, detached.
    pub values: Tensor,
    /// Each column's new replay priority, with an algorithm that prioritizes its replay.
    pub priorities: Option<Vec<f64>>,
}

pub trait Algorithm: Send {
    fn name(&self) -> &'static str;

    fn passes(&self) -> Passes;

    /// The loss on `batch` under the model's current weights.
    fn loss(&self, model: &Model, batch: &TrainBatch) -> Loss;

    /// Fresh weights, before the first update of a run that does not resume: an algorithm
    /// that wants other initial weights than the model's own sets them here.
    fn initialize(&self, _fresh: &Model) {}

    /// The algorithm's own state (a target network) starts again from the online weights: at
    /// the start, and after weights are loaded or restored.
    fn reset(&mut self, _online: &Model) {}

    /// After each update (`updates` counts them, this one included).
    fn after_update(&mut self, _online: &Model, _updates: u64) {}
}

/// The algorithm the run config names, with its section's settings.
pub fn build(run: &RunConfig) -> Box<dyn Algorithm> {
    let discount = run.learner.discount;
    match run.learner.algorithm {
        AlgorithmKind::Impala => Box::new(impala::Impala::new(run.impala(), discount)),
        AlgorithmKind::Appo => Box::new(appo::Appo::new(run.appo(), discount)),
        AlgorithmKind::ApexDqn => Box::new(dqn::ApexDqn::new(run.apex(), discount)),
    }
}

/// A [T, B] batch as tensors. Observations are as they arrive (f32 or u8, see
/// [`Model::prepare`]); flags and `valid` are 0/1 floats.
pub struct TrainBatch {
    pub t: i64,
    pub b: i64,
    /// `[T + 1, B, obs...]`.
    pub obs: Tensor,
    /// `[T, B, D]`, i64 (discrete) or f32 (Box).
    pub actions: Tensor,
    /// `[T, B]`.
    pub rewards: Tensor,
    pub terminated: Tensor,
    pub truncated: Tensor,
    /// 0 where a step only reset its env (no transition) or its agent was absent: left out of
    /// every loss term.
    pub valid: Tensor,
    /// Some step of `valid` is 0 (known on the CPU, so a batch without one skips the
    /// pass-through work in the replay and V-trace).
    pub any_absent: bool,
    /// Behaviour distribution parameters, `[T, B, P]`.
    pub behaviour: Tensor,
    /// `[T, B, W]` u8, with action masks.
    pub masks: Option<Tensor>,
    /// Recurrent state before step 0, `[B, S]`.
    pub state0: Tensor,
    /// Last observation of each truncated episode, `[K, obs...]`.
    pub truncation_obs: Tensor,
    /// (t, b) of each truncated step, in the order of `truncation_obs`.
    pub truncation_at: Vec<(i64, i64)>,
    /// Each column's agent (its index among the policy's agents), i64 `[B]`.
    pub agents: Tensor,
    /// The env's state at every observation, `[T + 1, B, S]`, with a centralized critic.
    pub states: Option<Tensor>,
    /// The state at each truncated step, `[K, S]`, with a centralized critic.
    pub truncation_states: Option<Tensor>,
    /// Where the columns came from, when they were all drawn from replay.
    pub replay: Option<Replayed>,
}

/// Replayed columns' keys and importance weights.
pub struct Replayed {
    /// Each column's item key (the columns of one item share it).
    pub keys: Vec<u64>,
    /// `[B]` floats.
    pub weights: Tensor,
}

impl TrainBatch {
    /// CPU tensors of a batch's bytes (one copy each).
    pub fn from_batch(batch: &Batch, spec: &ModelSpec, state_size: usize) -> TrainBatch {
        let c = &batch.cols;
        let (t, b) = (c.t as i64, c.n as i64);
        let obs_dims: Vec<i64> = spec.env.observation.shape.iter().map(|&d| d as i64).collect();
        let obs_kind = match spec.env.observation.dtype {
            ObsDType::F32 => Kind::Float,
            ObsDType::U8 => Kind::Uint8,
        };
        let with_obs = |lead: &[i64]| -> Vec<i64> { lead.iter().chain(obs_dims.iter()).copied().collect() };
        let of = |data: &[u8], shape: &[i64], kind: Kind| Tensor::from_data_size(data, shape, kind);
        let flag = |data: &[u8]| of(data, &[t, b], Kind::Uint8).to_kind(Kind::Float);
        let action = &spec.env.action;
        let action_kind = if action.is_continuous() {
            Kind::Float
        } else {
            Kind::Int64
        };
        let (d, p) = (action.dim() as i64, action.dist_params() as i64);
        let s = state_size as i64;
        let k = batch.truncation_index.len() as i64;
        TrainBatch {
            t,
            b,
            obs: of(&c.observations.data, &with_obs(&[t + 1, b]), obs_kind),
            actions: of(&c.actions.data, &[t, b, d], action_kind),
            rewards: of(&c.rewards.data, &[t, b], Kind::Float),
            terminated: flag(&c.terminated.data),
            truncated: flag(&c.truncated.data),
            valid: flag(&c.valid.data),
            any_absent: c.valid.data.contains(&0),
            behaviour: of(&c.params.data, &[t, b, p], Kind::Float),
            masks: c.masks.as_ref().map(|m| {
                let w = action.mask_width().unwrap_or(0) as i64;
                of(&m.data, &[t, b, w], Kind::Uint8)
            }),
            state0: match &c.state {
                Some(rows) => of(&rows.data, &[b, s], Kind::Float),
                None => Tensor::zeros([b, s], (Kind::Float, Device::Cpu)),
            },
            truncation_obs: of(&c.truncation_observations, &with_obs(&[k]), obs_kind),
            truncation_at: batch.truncation_index.iter().map(|&i| (i / b, i % b)).collect(),
            agents: Tensor::from_slice(&c.agent_index),
            states: spec.env.state.as_ref().map(|space| {
                let s = space.size() as i64;
                of(
                    &c.states.as_ref().expect("validated: states with a critic").data,
                    &[t + 1, b, s],
                    Kind::Float,
                )
            }),
            truncation_states: spec
                .env
                .state
                .as_ref()
                .map(|space| of(&c.truncation_states, &[k, space.size() as i64], Kind::Float)),
            replay: None,
        }
    }

    pub fn to_device(&self, dev: Device) -> TrainBatch {
        TrainBatch {
            t: self.t,
            b: self.b,
            obs: self.obs.to_device(dev),
            actions: self.actions.to_device(dev),
            rewards: self.rewards.to_device(dev),
            terminated: self.terminated.to_device(dev),
            truncated: self.truncated.to_device(dev),
            valid: self.valid.to_device(dev),
            any_absent: self.any_absent,
            behaviour: self.behaviour.to_device(dev),
            masks: self.masks.as_ref().map(|m| m.to_device(dev)),
            state0: self.state0.to_device(dev),
            truncation_obs: self.truncation_obs.to_device(dev),
            truncation_at: self.truncation_at.clone(),
            agents: self.agents.to_device(dev),
            states: self.states.as_ref().map(|x| x.to_device(dev)),
            truncation_states: self.truncation_states.as_ref().map(|x| x.to_device(dev)),
            replay: self.replay.as_ref().map(|r| Replayed {
                keys: r.keys.clone(),
                weights: r.weights.to_device(dev),
            }),
        }
    }

    /// The columns `cols` (indices into B), in that order.
    pub fn columns(&self, cols: &[i64]) -> TrainBatch {
        let dev = self.obs.device();
        let index = Tensor::from_slice(cols).to_device(dev);
        let pick = |x: &Tensor, dim: i64| x.index_select(dim, &index);
        let mut keep = Vec::new();
        let mut at = Vec::new();
        for (k, &(t, b)) in self.truncation_at.iter().enumerate() {
            if let Some(nb) = cols.iter().position(|&c| c == b) {
                keep.push(k as i64);
                at.push((t, nb as i64));
            }
        }
        // Keep the (t, b) row-major order the batch had.
        let mut order: Vec<usize> = (0..at.len()).collect();
        order.sort_by_key(|&i| at[i]);
        let keep: Vec<i64> = order.iter().map(|&i| keep[i]).collect();
        let at: Vec<(i64, i64)> = order.iter().map(|&i| at[i]).collect();
        let keep = Tensor::from_slice(&keep).to_device(dev);
        TrainBatch {
            t: self.t,
            b: cols.len() as i64,
            obs: pick(&self.obs, 1),
            actions: pick(&self.actions, 1),
            rewards: pick(&self.rewards, 1),
            terminated: pick(&self.terminated, 1),
            truncated: pick(&self.truncated, 1),
            valid: pick(&self.valid, 1),
            // The parent's: a subset of columns has no absent step where the whole had none.
            any_absent: self.any_absent,
            behaviour: pick(&self.behaviour, 1),
            masks: self.masks.as_ref().map(|m| pick(m, 1)),
            state0: pick(&self.state0, 0),
            truncation_obs: self.truncation_obs.index_select(0, &keep),
            truncation_at: at,
            agents: pick(&self.agents, 0),
            states: self.states.as_ref().map(|x| pick(x, 1)),
            truncation_states: self.truncation_states.as_ref().map(|x| x.index_select(0, &keep)),
            replay: self.replay.as_ref().map(|r| Replayed {
                keys: cols.iter().map(|&c| r.keys[c as usize]).collect(),
                weights: pick(&r.weights, 0),
            }),
        }
    }

    /// Bytes the tensors hold.
    pub fn bytes(&self) -> usize {
        let size = |x: &Tensor| x.numel() * x.kind().elt_size_in_bytes();
        [
            &self.obs,
            &self.actions,
            &self.rewards,
            &self.terminated,
            &self.truncated,
            &self.valid,
            &self.behaviour,
            &self.state0,
            &self.truncation_obs,
            &self.agents,
        ]
        .iter()
        .map(|x| size(x))
        .sum::<usize>()
            + self.masks.as_ref().map(size).unwrap_or(0)
            + self.states.as_ref().map(size).unwrap_or(0)
            + self.truncation_states.as_ref().map(size).unwrap_or(0)
    }

    /// The model's input over the batch's `[T + 1, B]` observations (see [`Model::input`]).
    pub fn input(&self, model: &Model) -> Tensor {
        if !model.is_packed() {
            return model.prepare(&self.obs);
        }
        let agents = self.agents.unsqueeze(0).expand([self.t + 1, self.b], false);
        model.input(&self.obs, Some(&agents), self.states.as_ref())
    }

    /// The model's input for the truncated episodes' last observations, `[K, ...]`.
    pub fn truncation_input(&self, model: &Model) -> Tensor {
        if !model.is_packed() {
            return model.prepare(&self.truncation_obs);
        }
        let cols: Vec<i64> = self.truncation_at.iter().map(|&(_, c)| c).collect();
        let agents = self
            .agents
            .index_select(0, &Tensor::from_slice(&cols).to_device(self.agents.device()));
        model.input(&self.truncation_obs, Some(&agents), self.truncation_states.as_ref())
    }

    /// Mean of `x` `[T, B]` over the valid steps.
    pub fn masked_mean(&self, x: &Tensor) -> Tensor {
        (x * &self.valid).sum(Kind::Float) / self.valid.sum(Kind::Float).clamp_min(1.0)
    }
}

/// What every V-trace algorithm computes first: the current policy and values over the batch,
/// and the V-trace targets from them.
pub struct Forward {
    /// log pi(a|x), `[T, B]`, with gradient.
    pub log_probs: Tensor,
    /// log mu(a|x) of the behaviour policy, `[T, B]`.
    pub behaviour_log_probs: Tensor,
    /// Entropy of pi, `[T, B]`, with gradient.
    pub entropy: Tensor,
    /// Current distribution parameters, `[T, B, P]`, with gradient.
    pub params: Tensor,
    /// The value head's outputs (normalised, when the model normalises values), `[T, B]`,
    /// with gradient.
    pub value_outputs: Tensor,
    /// The same in return units, detached.
    pub values: Tensor,
    /// V-trace targets and advantages in return units.
    pub vtrace: VTraceOutput,
}

impl Forward {
    pub fn compute(model: &Model, b: &TrainBatch, p: &VTraceParams) -> Forward {
        let spec = model.spec();
        let (t, n) = (b.t, b.b);
        let dev = model.device();
        let obs = b.input(model);
        // An episode starts at step t + 1 where one ended at step t. An absent step (a reset
        // alone, an agent that had finished or whose turn it was not) keeps no state: the
        // column's recurrent state passes through it, as in the actor, so an agent's memory
        // spans the other agents' turns and never its own episode's end.
        let ended = (&b.terminated + &b.truncated).clamp_max(1.0);
        let starts = Tensor::cat(&[Tensor::zeros([1, n], (Kind::Float, dev)), ended], 0);
        let present = b
            .any_absent
            .then(|| Tensor::cat(&[b.valid.shallow_clone(), Tensor::ones([1, n], (Kind::Float, dev))], 0));
        let (params_all, value_outputs_all, states) = model.unroll_present(&obs, &b.state0, &starts, present.as_ref());
        let params = params_all.narrow(0, 0, t);
        let (log_probs, entropy) = dist::log_prob_entropy(&spec.env.action, &params, &b.actions, b.masks.as_ref());
        let (behaviour_log_probs, _) =
            dist::log_prob_entropy(&spec.env.action, &b.behaviour, &b.actions, b.masks.as_ref());
        let values_all = model.denormalize_values(&value_outputs_all.detach());

        // The value of each truncated episode's last observation, placed at its step. With a
        // recurrent core, that observation follows the state after its step.
        let truncation_values = if b.truncation_at.is_empty() {
            Tensor::zeros([t, n], (Kind::Float, dev))
        } else {
            let index: Vec<i64> = b.truncation_at.iter().map(|&(s, c)| s * n + c).collect();
            let index = Tensor::from_slice(&index).to_device(dev);
            let k = index.size()[0];
            let s = model.state_size() as i64;
            let tstate = if s > 0 {
                states.narrow(0, 0, t).reshape([t * n, s]).index_select(0, &index)
            } else {
                Tensor::zeros([k, 0], (Kind::Float, dev))
            };
            let tobs = b.truncation_input(model);
            let v = tch::no_grad(|| model.denormalize_values(&model.step(&tobs, &tstate.detach()).value));
            Tensor::zeros([t * n], (Kind::Float, dev))
                .index_put(&[Some(index)], &v, false)
                .view([t, n])
        };
        let log_rhos = log_probs.detach() - &behaviour_log_probs;
        let vtrace = vtrace_from_flags(
            &log_rhos,
            &b.rewards,
            &values_all,
            &Ends {
                terminated: &b.terminated,
                truncated: &b.truncated,
                truncation_values: &truncation_values,
                valid: b.any_absent.then_some(&b.valid),
            },
            p,
        );
        Forward {
            log_probs,
            behaviour_log_probs,
            entropy,
            params,
            value_outputs: value_outputs_all.narrow(0, 0, t),
            values: values_all.narrow(0, 0, t),
            vtrace,
        }
    }

    /// The V-trace policy-gradient advantages, normalised over the batch's valid steps when
    /// `normalize`.
    pub fn advantages(&self, b: &TrainBatch, normalize: bool) -> Tensor {
        if normalize {
            normalize_advantages(b, &self.vtrace.pg_advantages)
        } else {
            self.vtrace.pg_advantages.shallow_clone()
        }
    }

    /// The value loss, `0.5 * mean((target - V)^2)` over valid steps, in the value head's
    /// units (normalised targets when the model normalises values).
    pub fn value_loss(&self, model: &Model, b: &TrainBatch) -> Tensor {
        let s = model.value_stats();
        let targets = (&self.vtrace.vs - s.mean) / s.std;
        b.masked_mean(&(targets - &self.value_outputs).square()) * 0.5
    }
}

/// Advantages normalised to mean 0 and (Bessel-corrected) std 1 over the valid steps; left as
/// they are when fewer than two steps are valid (one value has no spread).
fn normalize_advantages(b: &TrainBatch, adv: &Tensor) -> Tensor {
    let n_valid = b.valid.sum(Kind::Float);
    if n_valid.double_value(&[]) <= 1.0 {
        return adv.shallow_clone();
    }
    let mean = b.masked_mean(adv);
    let centred = adv - mean;
    let var = b.masked_mean(&centred.square()) * (&n_valid / (&n_valid - 1.0));
    centred / (var.sqrt() + 1e-8)
}
