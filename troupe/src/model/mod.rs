//! Policy models: a torso (MLP, Nature-DQN CNN, a conv stack, or the IMPALA ResNet), an optional
//! LSTM core, a policy head whose distribution the action space picks (categorical, masked;
//! multi-discrete; diagonal Gaussian) and a value head.
//!
//! By default the policy and the value have separate encoders (torso + core); with
//! `model.share_torso` one encoder feeds both heads (the usual choice for pixels).
//!
//! Observations enter as their dtype (u8 pixels stay u8 up to here) and become floats on the
//! model's device: u8 is scaled by 1/255; `channels_last` images are permuted to [C, H, W].
//!
//! **Recurrent state.** With an LSTM core, the state of a column is one flat f32 vector of
//! [`Model::state_size`] values: `(h, c)` of the policy core, then `(h, c)` of the value core
//! when it has its own. Actors keep it, zero it where an episode starts, and send the state at
//! the start of each unroll; the learner replays from it ([`Model::unroll`]).
//!
//! **Policy files** are safetensors of every variable (f32, PyTorch layouts and names: a Linear
//! is `weight [out, in]` + `bias`, an LSTM `weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`,
//! `bias_hh_l0` with PyTorch's gate order). The metadata key `spec` holds the [`ModelSpec`] as
//! JSON, enough to rebuild the model (`scripts/load_policy.py` does it in PyTorch). Paths:
//!
//! | tensor | what |
//! |---|---|
//! | `{enc}.torso.layers.{i}` | MLP Linear layers |
//! | `{enc}.torso.convs.{i}`, `{enc}.torso.dense` | Cnn / NatureCnn conv layers and dense layer |
//! | `{enc}.torso.stages.{s}.conv`, `.res{r}.conv{0,1}`, `{enc}.torso.dense` | IMPALA ResNet |
//! | `{enc}.core.*` | LSTM core |
//! | `policy.head`, `value.head` | Linear heads |
//! | `policy.log_std` | Gaussian heads: `[dim]` |
//! | `obs_norm.{mean,var,count}` | with `model.normalize_observations` ([`normalize::ObsNorm`]) |
//! | `value.norm.{mean,var,count}` | learner's value normalisation ([`normalize::ValueNorm`]) |
//!
//! `{enc}` is `encoder` when shared, else `policy.encoder` and `value.encoder`.

pub mod dist;
pub mod normalize;
pub mod q;
mod torso;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, RNN};
use tch::{Device, Kind, Tensor};

use crate::config::ModelConfig;
use crate::spaces::{ActionSpace, ObsDType, ObservationSpace, PolicySpec};
use normalize::{ObsNorm, ValueNorm, ValueStats};
use torso::Torso;

/// A problem loading a weights blob; names the tensor and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("weights blob is not valid safetensors: {0}")]
    Format(String),
    #[error("weights blob: tensor {name}: {problem}")]
    Tensor { name: String, problem: String },
    #[error("weights blob: missing tensor {0}")]
    Missing(String),
}

/// A model as a policy file describes it: the policy's spaces and the model config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub env: PolicySpec,
    pub model: ModelConfig,
}

/// A model that cannot be built for these spaces (e.g. a CNN on a 1-D observation).
#[derive(Debug, Clone, thiserror::Error)]
#[error("model for {env}: {problem}")]
pub struct ModelError {
    pub env: String,
    pub problem: String,
}

/// Torso then (optionally) an LSTM core.
struct Encoder {
    torso: Torso,
    core: Option<nn::LSTM>,
}

impl Encoder {
    /// An encoder of `input` (the observation, or the state for a centralized critic, which
    /// always gets an MLP) with the agent one-hot beside it.
    fn new(
        path: nn::Path<'_>,
        spec: &ModelSpec,
        input: &ObservationSpace,
        mlp: bool,
    ) -> Result<(Encoder, i64), ModelError> {
        let extra = spec.env.agent_id_width() as i64;
        let (torso, features) =
            Torso::new(&path / "torso", input, extra, &spec.model, mlp).map_err(|problem| ModelError {
                env: spec.env.id.clone(),
                problem,
            })?;
        let lstm = spec.model.lstm_size as i64;
        if lstm == 0 {
            return Ok((Encoder { torso, core: None }, features));
        }
        let core = nn::lstm(&path / "core", features, lstm, Default::default());
        Ok((
            Encoder {
                torso,
                core: Some(core),
            },
            lstm,
        ))
    }

    /// `x`: float `[M, obs...]`, `extra`: the agent one-hot `[M, A]`; `state`: `[M, 2 * lstm]`
    /// when there is a core. Returns features `[M, F]` and the new state.
    fn step(&self, x: &Tensor, extra: Option<&Tensor>, state: Option<&Tensor>) -> (Tensor, Option<Tensor>) {
        let h = self.torso.forward(x, extra);
        match &self.core {
            None => (h, None),
            Some(core) => {
                let state = state.expect("a recurrent encoder needs a state");
                let hc = state.chunk(2, -1);
                let s = nn::LSTMState((hc[0].unsqueeze(0), hc[1].unsqueeze(0)));
                let nn::LSTMState((h1, c1)) = core.step(&h, &s);
                let (h1, c1) = (h1.squeeze_dim(0), c1.squeeze_dim(0));
                let next = Tensor::cat(&[&h1, &c1], -1);
                (h1, Some(next))
            }
        }
    }
}

/// What one forward step gives.
pub struct StepOutput {
    /// Distribution parameters `[M, dist_params]`.
    pub params: Tensor,
    /// `[M]`.
    pub value: Tensor,
    /// `[M, state_size]`, or an empty `[M, 0]` tensor without a core.
    pub state: Tensor,
}

pub struct Model {
    vs: nn::VarStore,
    spec: ModelSpec,
    policy_encoder: Encoder,
    /// `None` when the torso is shared.
    value_encoder: Option<Encoder>,
    policy_head: nn::Linear,
    value_head: nn::Linear,
    log_std: Option<Tensor>,
    obs_norm: Option<ObsNorm>,
    /// Only on the learner (actors have no use for values): see [`Model::enable_value_norm`].
    value_norm: Option<ValueNorm>,
    /// The run's env config as JSON, written into policy files (`env_config`) so a file alone
    /// says how to build its env (backend, kwargs, wrappers).
    env_config: Option<String>,
}

impl Model {
    pub fn new(spec: &ModelSpec, device: Device) -> Result<Model, ModelError> {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let shared = spec.model.share_torso;
        let obs = &spec.env.observation;
        let (policy_encoder, features) = if shared {
            Encoder::new(&root / "encoder", spec, obs, false)?
        } else {
            Encoder::new(&root / "policy" / "encoder", spec, obs, false)?
        };
        // The value head reads the value encoder's features, which a centralized critic's MLP
        // makes as wide as its last hidden layer, whatever the policy's torso gives.
        let (value_encoder, value_features) = match (&spec.env.state, shared) {
            (_, true) => (None, features),
            // A centralized critic: an MLP over the env's state (with the agent one-hot).
            (Some(state), false) => {
                let (enc, width) = Encoder::new(&root / "value" / "encoder", spec, state, true)?;
                (Some(enc), width)
            }
            (None, false) => {
                let (enc, width) = Encoder::new(&root / "value" / "encoder", spec, obs, false)?;
                (Some(enc), width)
            }
        };
        if spec.env.state.is_some() && shared {
            return Err(ModelError {
                env: spec.env.id.clone(),
                problem: "a centralized critic needs separate torsos (model.share_torso = false)".into(),
            });
        }
        let action = &spec.env.action;
        let head_width = match action {
            ActionSpace::Box { low, .. } => low.len(),
            _ => action.dist_params(),
        } as i64;
        let policy_head = nn::linear(&root / "policy" / "head", features, head_width, Default::default());
        let value_head = nn::linear(&root / "value" / "head", value_features, 1, Default::default());
        let log_std = match action {
            ActionSpace::Box { low, .. } => {
                Some((&root / "policy").var("log_std", &[low.len() as i64], nn::Init::Const(spec.model.init_log_std)))
            }
            _ => None,
        };
        let obs_norm = spec.model.normalize_observations.then(|| {
            let shape: Vec<i64> = spec.env.observation.shape.iter().map(|&d| d as i64).collect();
            ObsNorm::new(&root / "obs_norm", &shape, spec.model.observation_clip)
        });
        Ok(Model {
            vs,
            spec: spec.clone(),
            policy_encoder,
            value_encoder,
            policy_head,
            value_head,
            log_std,
            obs_norm,
            value_norm: None,
            env_config: None,
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Records the env config that policy files carry.
    pub fn set_env_config(&mut self, env: &crate::config::EnvConfig) {
        self.env_config = Some(serde_json::to_string(env).expect("env config serializes"));
    }

    /// Adds value-target statistics (`value.norm.*`): the value head then predicts normalised
    /// values; see [`Model::denormalize_values`].
    pub fn enable_value_norm(&mut self) {
        if self.value_norm.is_none() {
            self.value_norm = Some(ValueNorm::new(self.vs.root() / "value" / "norm"));
        }
    }

    pub fn obs_norm_mut(&mut self) -> Option<&mut ObsNorm> {
        self.obs_norm.as_mut()
    }

    pub fn value_norm_mut(&mut self) -> Option<&mut ValueNorm> {
        self.value_norm.as_mut()
    }

    /// The value statistics (mean 0, std 1 without value normalisation).
    pub fn value_stats(&self) -> ValueStats {
        self.value_norm
            .as_ref()
            .map(ValueNorm::stats)
            .unwrap_or(ValueStats { mean: 0.0, std: 1.0 })
    }

    /// The value head's outputs in return units.
    pub fn denormalize_values(&self, v: &Tensor) -> Tensor {
        let s = self.value_stats();
        v * s.std + s.mean
    }

    /// PopArt's "preserving outputs precisely": rescales the value head's last layer so its
    /// outputs in return units are what they were under the statistics `before`.
    pub fn preserve_value_outputs(&mut self, before: ValueStats, after: ValueStats) {
        tch::no_grad(|| {
            let w = &mut self.value_head.ws;
            let scaled = &*w * (before.std / after.std);
            w.copy_(&scaled);
            if let Some(b) = self.value_head.bs.as_mut() {
                let shifted = (&*b * before.std + before.mean - after.mean) / after.std;
                b.copy_(&shifted);
            }
        });
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Floats per column of recurrent state (0 without an LSTM core).
    pub fn state_size(&self) -> usize {
        state_size(&self.spec.model)
    }

    /// A zero state for `m` columns.
    pub fn initial_state(&self, m: i64) -> Tensor {
        Tensor::zeros([m, self.state_size() as i64], (Kind::Float, self.device()))
    }

    /// Observations as they arrive (f32 or u8, `[..., obs...]`, any device) as floats on the
    /// model's device.
    pub fn prepare(&self, obs: &Tensor) -> Tensor {
        let x = obs.to_device(self.device());
        match self.spec.env.observation.dtype {
            ObsDType::U8 => x.to_kind(Kind::Float) / 255.0,
            ObsDType::F32 => x.to_kind(Kind::Float),
        }
    }

    /// The model reads more than the observation: the agent one-hot, or a critic's state.
    pub fn is_packed(&self) -> bool {
        self.spec.env.agent_id_width() > 0 || self.spec.env.state.is_some()
    }

    /// The model's input for `L` leading dims of columns (`[L..., obs...]` observations as they
    /// arrive): [`Model::prepare`] alone for a plain policy; for a multi-agent one, each row's
    /// flattened observation, the one-hot of its agent (`agents`: i64 `[L...]`, indices into
    /// the policy's agents) and the env state (`states`: f32 `[L..., S]`, with a centralized
    /// critic), side by side in `[L..., O + A + S]`.
    pub fn input(&self, obs: &Tensor, agents: Option<&Tensor>, states: Option<&Tensor>) -> Tensor {
        let x = self.prepare(obs);
        if !self.is_packed() {
            return x;
        }
        let lead = obs.dim() - self.spec.env.observation.shape.len();
        let mut parts = vec![x.flatten(lead as i64, -1)];
        let a = self.spec.env.agent_id_width() as i64;
        if a > 0 {
            let ids = agents.expect("a model with the agent-id input needs agent indices");
            parts.push(ids.to_device(self.device()).one_hot(a).to_kind(Kind::Float));
        }
        if self.spec.env.state.is_some() {
            let s = states.expect("a centralized critic needs the env states");
            parts.push(s.to_device(self.device()).to_kind(Kind::Float));
        }
        Tensor::cat(&parts, -1)
    }

    /// Splits an [`Model::input`] of `[M, ...]` into the observation `[M, obs...]`, the agent
    /// one-hot and the critic's state.
    fn unpack(&self, x: &Tensor) -> (Tensor, Option<Tensor>, Option<Tensor>) {
        if !self.is_packed() {
            return (x.shallow_clone(), None, None);
        }
        let o = self.spec.env.observation.size() as i64;
        let a = self.spec.env.agent_id_width() as i64;
        let m = x.size()[0];
        let mut shape = vec![m];
        shape.extend(self.spec.env.observation.shape.iter().map(|&d| d as i64));
        let obs = x.narrow(-1, 0, o).reshape(shape.as_slice());
        let ids = (a > 0).then(|| x.narrow(-1, o, a));
        let state = self
            .spec
            .env
            .state
            .as_ref()
            .map(|s| x.narrow(-1, o + a, s.size() as i64));
        (obs, ids, state)
    }

    /// One step for `M` columns: `x` the model's input `[M, ...]` (see [`Model::input`]),
    /// `state` `[M, state_size]` (ignored without a core).
    pub fn step(&self, x: &Tensor, state: &Tensor) -> StepOutput {
        let (obs, ids, critic_state) = self.unpack(x);
        let obs = &self.normalize_obs(&obs);
        let m = obs.size()[0];
        let lstm = self.spec.model.lstm_size as i64;
        let recurrent = lstm > 0;
        let (p_state, v_state) = if recurrent && self.value_encoder.is_some() {
            let parts = state.split(2 * lstm, -1);
            (Some(parts[0].shallow_clone()), Some(parts[1].shallow_clone()))
        } else if recurrent {
            (Some(state.shallow_clone()), None)
        } else {
            (None, None)
        };
        let (pf, p_next) = self.policy_encoder.step(obs, ids.as_ref(), p_state.as_ref());
        let (vf, v_next) = match &self.value_encoder {
            Some(enc) => enc.step(critic_state.as_ref().unwrap_or(obs), ids.as_ref(), v_state.as_ref()),
            None => (pf.shallow_clone(), None),
        };
        let params = self.params(&pf);
        let value = self.value_head.forward(&vf).squeeze_dim(-1);
        let state = match (p_next, v_next) {
            (Some(p), Some(v)) => Tensor::cat(&[p, v], -1),
            (Some(p), None) => p,
            _ => Tensor::zeros([m, 0], (Kind::Float, self.device())),
        };
        StepOutput { params, value, state }
    }

    /// What an actor needs: distribution parameters and the next state. Skips the value head
    /// (and a separate value torso) unless a value core's state must advance.
    pub fn act(&self, x: &Tensor, state: &Tensor) -> (Tensor, Tensor) {
        let recurrent = self.spec.model.lstm_size > 0;
        if recurrent && self.value_encoder.is_some() {
            let out = self.step(x, state);
            return (out.params, out.state);
        }
        let (obs, ids, _) = self.unpack(x);
        let obs = &self.normalize_obs(&obs);
        let (pf, next) = self.policy_encoder.step(obs, ids.as_ref(), recurrent.then_some(state));
        let m = obs.size()[0];
        let next = next.unwrap_or_else(|| Tensor::zeros([m, 0], (Kind::Float, self.device())));
        (self.params(&pf), next)
    }

    /// Observations through the running normalisation, when the model has one.
    fn normalize_obs(&self, obs: &Tensor) -> Tensor {
        match &self.obs_norm {
            Some(n) => n.apply(obs),
            None => obs.shallow_clone(),
        }
    }

    fn params(&self, features: &Tensor) -> Tensor {
        let out = self.policy_head.forward(features);
        match &self.log_std {
            Some(log_std) => {
                let ls = log_std.unsqueeze(0).expand_as(&out);
                Tensor::cat(&[&out, &ls], -1)
            }
            None => out,
        }
    }

    /// Replays `T + 1` steps of `B` columns: `obs` the input `[T + 1, B, ...]`, `state0`
    /// `[B, state_size]` (the state before step 0), `starts` `[T + 1, B]` (1 where an episode
    /// starts at that step, so the state is zeroed before it; row 0 is ignored, the actor has
    /// already reset `state0`). Returns params `[T + 1, B, P]`, values `[T + 1, B]` and the
    /// state after each step `[T + 1, B, S]` (S = 0 without a core).
    pub fn unroll(&self, obs: &Tensor, state0: &Tensor, starts: &Tensor) -> (Tensor, Tensor, Tensor) {
        self.unroll_present(obs, state0, starts, None)
    }

    /// [`Model::unroll`] where some steps are absent: `present` `[T + 1, B]` is 0 where a
    /// column took no step (its agent had finished, or it was not its turn). An absent step's
    /// outputs are computed but its state is not kept: the agent's state passes through it to
    /// its next step, as the actor's does.
    pub fn unroll_present(
        &self,
        obs: &Tensor,
        state0: &Tensor,
        starts: &Tensor,
        present: Option<&Tensor>,
    ) -> (Tensor, Tensor, Tensor) {
        let size = obs.size();
        let (t1, b) = (size[0], size[1]);
        if self.state_size() == 0 {
            let flat = obs.flatten(0, 1);
            let out = self.step(&flat, state0);
            let p = out.params.size()[1];
            return (
                out.params.view([t1, b, p]),
                out.value.view([t1, b]),
                Tensor::zeros([t1, b, 0], (Kind::Float, self.device())),
            );
        }
        let mut state = state0.shallow_clone();
        let (mut params, mut values, mut states) = (Vec::new(), Vec::new(), Vec::new());
        for t in 0..t1 {
            if t > 0 {
                let keep = (Tensor::ones_like(&starts.get(t)) - starts.get(t)).unsqueeze(-1);
                // Out of place: `states` holds the previous step's state (a shallow clone shares
                // storage), and the learner reads it for truncated episodes' final observations.
                state = &state * keep;
            }
            let out = self.step(&obs.get(t), &state);
            params.push(out.params);
            values.push(out.value);
            state = match present {
                Some(p) => {
                    let p = p.get(t).unsqueeze(-1);
                    &out.state * &p + &state * (Tensor::ones_like(&p) - &p)
                }
                None => out.state,
            };
            states.push(state.shallow_clone());
        }
        (
            Tensor::stack(&params, 0),
            Tensor::stack(&values, 0),
            Tensor::stack(&states, 0),
        )
    }

    /// The weights as a safetensors blob, with the spec in its metadata.
    pub fn to_safetensors(&self) -> Vec<u8> {
        let mut named: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        tch::no_grad(|| {
            for (name, t) in self.vs.variables() {
                let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
                let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
                let values = Vec::<f32>::try_from(t.flatten(0, -1)).expect("f32 tensor");
                named.push((name, shape, bytemuck::cast_slice(&values).to_vec()));
            }
        });
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = named
            .iter()
            .map(|(n, s, b)| {
                let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .expect("shape matches bytes");
                (n.clone(), view)
            })
            .collect();
        let mut metadata: HashMap<String, String> = [
            ("format".to_string(), FORMAT.to_string()),
            ("env".to_string(), self.spec.env.id.clone()),
            ("spec".to_string(), serde_json::to_string(&self.spec).expect("json")),
        ]
        .into_iter()
        .collect();
        if let Some(env) = &self.env_config {
            metadata.insert("env_config".to_string(), env.clone());
        }
        safetensors::serialize(views, Some(metadata)).expect("serialize safetensors")
    }

    /// Copies weights from a safetensors blob. Every variable must be there with its shape, and
    /// every weight finite: a refused blob leaves the model as it was.
    pub fn load_safetensors(&mut self, blob: &[u8]) -> Result<(), WeightsError> {
        crate::policy_file::check_finite(blob).map_err(|e| match e {
            crate::policy_file::BlobError::Format(m) => WeightsError::Format(m),
            crate::policy_file::BlobError::NotFinite { tensor, index, value } => WeightsError::Tensor {
                name: tensor,
                problem: format!("element {index} is {value}, expected finite weights"),
            },
        })?;
        let st = safetensors::SafeTensors::deserialize(blob).map_err(|e| WeightsError::Format(e.to_string()))?;
        let device = self.vs.device();
        tch::no_grad(|| {
            for (name, mut var) in self.vs.variables() {
                let view = st.tensor(&name).map_err(|_| WeightsError::Missing(name.clone()))?;
                if view.dtype() != safetensors::Dtype::F32 {
                    return Err(WeightsError::Tensor {
                        name,
                        problem: format!("expected dtype F32, got {:?}", view.dtype()),
                    });
                }
                let want: Vec<usize> = var.size().iter().map(|&d| d as usize).collect();
                if view.shape() != want.as_slice() {
                    return Err(WeightsError::Tensor {
                        name,
                        problem: format!("expected shape {want:?}, got {:?}", view.shape()),
                    });
                }
                let values: Vec<f32> = bytemuck::pod_collect_to_vec(view.data());
                let shape: Vec<i64> = want.iter().map(|&d| d as i64).collect();
                let src = Tensor::from_slice(&values).view(shape.as_slice()).to_device(device);
                var.copy_(&src);
            }
            Ok(())
        })
    }
}

/// The policy file format named in its metadata.
pub const FORMAT: &str = "troupe-policy-v2";

/// Floats of recurrent state per column for a model config.
pub fn state_size(m: &ModelConfig) -> usize {
    let cores = if m.share_torso { 1 } else { 2 };
    if m.lstm_size == 0 {
        0
    } else {
        cores * 2 * m.lstm_size
    }
}

/// The spec stored in a policy blob's metadata.
pub fn spec_of_blob(blob: &[u8]) -> Result<ModelSpec, WeightsError> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(blob).map_err(|e| WeightsError::Format(e.to_string()))?;
    let spec = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("spec"))
        .ok_or_else(|| WeightsError::Format("metadata has no \"spec\"".into()))?;
    serde_json::from_str(spec).map_err(|e| WeightsError::Format(format!("metadata \"spec\": {e}")))
}

#[cfg(test)]
mod tests;
