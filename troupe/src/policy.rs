//! The policy network: two MLPs of the same widths, one for the policy (logits over actions) and
//! one for the value. They share no layers: with a shared torso the value loss (returns in the
//! hundreds) swamps the policy's gradients and CartPole training collapses again and again.
//!
//! Weights leave a process as a **safetensors** blob with these tensors (f32, PyTorch layout,
//! `weight` is `[out, in]`), for `net` in `policy`, `value`:
//!
//! | name | shape |
//! |---|---|
//! | `{net}.torso.{i}.weight`, `{net}.torso.{i}.bias` | `[hidden_sizes[i], in_i]`, `[hidden_sizes[i]]` |
//! | `policy.head.weight`, `policy.head.bias` | `[num_actions, hidden_sizes[-1]]`, `[num_actions]` |
//! | `value.head.weight`, `value.head.bias` | `[1, hidden_sizes[-1]]`, `[1]` |
//!
//! The forward pass of each net is `h = relu(torso.i(h))` for each layer, then `head(h)`. The
//! blob's metadata records `env`, `observation_size`, `num_actions` and `hidden_sizes`.

use std::collections::HashMap;

use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

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

/// Shape of a policy network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    pub observation_size: usize,
    pub num_actions: usize,
    pub hidden_sizes: Vec<usize>,
}

impl PolicySpec {
    /// The network a run config asks for: its environment's sizes and the model's widths.
    pub fn for_run(cfg: &crate::RunConfig) -> PolicySpec {
        let (observation_size, num_actions) = crate::env::spec(&cfg.env.id).expect("validated env id");
        PolicySpec {
            observation_size,
            num_actions,
            hidden_sizes: cfg.model.hidden_sizes.clone(),
        }
    }
}

/// An MLP: ReLU hidden layers and a linear head.
struct Mlp {
    torso: Vec<nn::Linear>,
    head: nn::Linear,
}

impl Mlp {
    fn new(path: nn::Path<'_>, input: usize, hidden: &[usize], output: usize) -> Mlp {
        let torso_path = &path / "torso";
        let mut torso = Vec::with_capacity(hidden.len());
        let mut width = input as i64;
        for (i, &h) in hidden.iter().enumerate() {
            torso.push(nn::linear(&torso_path / i, width, h as i64, Default::default()));
            width = h as i64;
        }
        let head = nn::linear(&path / "head", width, output as i64, Default::default());
        Mlp { torso, head }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = x.shallow_clone();
        for layer in &self.torso {
            h = layer.forward(&h).relu();
        }
        self.head.forward(&h)
    }
}

pub struct PolicyNet {
    vs: nn::VarStore,
    policy: Mlp,
    value: Mlp,
    spec: PolicySpec,
}

impl PolicyNet {
    pub fn new(spec: &PolicySpec, device: Device) -> PolicyNet {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let policy = Mlp::new(
            &root / "policy",
            spec.observation_size,
            &spec.hidden_sizes,
            spec.num_actions,
        );
        let value = Mlp::new(&root / "value", spec.observation_size, &spec.hidden_sizes, 1);
        PolicyNet {
            vs,
            policy,
            value,
            spec: spec.clone(),
        }
    }

    pub fn spec(&self) -> &PolicySpec {
        &self.spec
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// `obs` is `[.., observation_size]`; returns logits `[.., num_actions]` and values `[..]`.
    pub fn forward(&self, obs: &Tensor) -> (Tensor, Tensor) {
        (self.policy.forward(obs), self.value.forward(obs).squeeze_dim(-1))
    }

    /// Logits only (what an actor needs).
    pub fn logits(&self, obs: &Tensor) -> Tensor {
        self.policy.forward(obs)
    }

    /// The weights as a safetensors blob (see the module docs for the names).
    pub fn to_safetensors(&self, env_id: &str) -> Vec<u8> {
        let mut named: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        tch::no_grad(|| {
            for (name, t) in self.vs.variables() {
                let t = t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
                let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
                let values = Vec::<f32>::try_from(t.flatten(0, -1)).expect("f32 tensor");
                let mut bytes = Vec::with_capacity(values.len() * 4);
                for v in values {
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
                named.push((name, shape, bytes));
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
        let metadata: HashMap<String, String> = [
            ("format".to_string(), "troupe-policy-v1".to_string()),
            ("env".to_string(), env_id.to_string()),
            ("observation_size".to_string(), self.spec.observation_size.to_string()),
            ("num_actions".to_string(), self.spec.num_actions.to_string()),
            (
                "hidden_sizes".to_string(),
                serde_json::to_string(&self.spec.hidden_sizes).expect("json"),
            ),
        ]
        .into_iter()
        .collect();
        safetensors::serialize(views, Some(metadata)).expect("serialize safetensors")
    }

    /// Copies weights from a safetensors blob. Every variable must be present with its shape.
    pub fn load_safetensors(&mut self, blob: &[u8]) -> Result<(), WeightsError> {
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
                let values: Vec<f32> = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let shape: Vec<i64> = want.iter().map(|&d| d as i64).collect();
                let src = Tensor::from_slice(&values).view(shape.as_slice()).to_device(device);
                var.copy_(&src);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PolicySpec {
        PolicySpec {
            observation_size: 4,
            num_actions: 2,
            hidden_sizes: vec![8, 6],
        }
    }

    #[test]
    fn forward_shapes() {
        let net = PolicyNet::new(&spec(), Device::Cpu);
        let obs = Tensor::zeros([5, 3, 4], (Kind::Float, Device::Cpu));
        let (logits, value) = net.forward(&obs);
        assert_eq!(logits.size(), vec![5, 3, 2]);
        assert_eq!(value.size(), vec![5, 3]);
    }

    #[test]
    fn safetensors_round_trip_gives_the_same_outputs() {
        tch::manual_seed(1);
        let a = PolicyNet::new(&spec(), Device::Cpu);
        tch::manual_seed(2);
        let mut b = PolicyNet::new(&spec(), Device::Cpu);
        let obs = Tensor::randn([7, 4], (Kind::Float, Device::Cpu));
        let (la, va) = a.forward(&obs);
        let (lb, _) = b.forward(&obs);
        assert!(!la.allclose(&lb, 1e-6, 1e-6, false));
        let blob = a.to_safetensors("CartPole-v1");
        b.load_safetensors(&blob).unwrap();
        let (lb, vb) = b.forward(&obs);
        assert!(la.equal(&lb) && va.equal(&vb));

        let st = safetensors::SafeTensors::deserialize(&blob).unwrap();
        let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "policy.head.bias",
                "policy.head.weight",
                "policy.torso.0.bias",
                "policy.torso.0.weight",
                "policy.torso.1.bias",
                "policy.torso.1.weight",
                "value.head.bias",
                "value.head.weight",
                "value.torso.0.bias",
                "value.torso.0.weight",
                "value.torso.1.bias",
                "value.torso.1.weight",
            ]
        );
        assert_eq!(st.tensor("policy.torso.0.weight").unwrap().shape(), &[8, 4]);
        assert_eq!(st.tensor("value.head.weight").unwrap().shape(), &[1, 6]);
    }

    #[test]
    fn wrong_shapes_and_garbage_are_rejected_by_name() {
        let a = PolicyNet::new(&spec(), Device::Cpu);
        let mut other = spec();
        other.hidden_sizes = vec![8, 5];
        let mut b = PolicyNet::new(&other, Device::Cpu);
        let err = b
            .load_safetensors(&a.to_safetensors("CartPole-v1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected shape"), "{err}");
        assert!(b.load_safetensors(b"not a blob").is_err());
    }
}
