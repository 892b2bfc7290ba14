//! Adam and RMSProp with their state in the open, so a checkpoint can hold it.
//!
//! tch's `nn::Optimizer` keeps its moments inside libtorch with no way to read or restore them,
//! and a learner that resumes without them takes its first steps with fresh moments (Adam's
//! first step after a restart is a full-size step in every direction). These follow PyTorch's
//! `torch.optim.Adam` (no weight decay, no AMSGrad) and `torch.optim.RMSprop` (no momentum, not
//! centred) step for step, on the model's trainable variables in name order.

use std::collections::BTreeMap;

use tch::{nn, Kind, Tensor};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    Adam { beta1: f64, beta2: f64, eps: f64 },
    RmsProp { alpha: f64, eps: f64 },
}

/// One variable and its state tensors.
struct Slot {
    name: String,
    var: Tensor,
    /// Adam: exp_avg, exp_avg_sq. RMSProp: square_avg.
    state: Vec<Tensor>,
}

pub struct Optimizer {
    rule: Rule,
    lr: f64,
    /// Steps taken (Adam's bias correction uses it).
    steps: u64,
    slots: Vec<Slot>,
}

/// Why a checkpoint's optimizer state could not be restored.
#[derive(Debug, thiserror::Error)]
#[error("optimizer state: {0}")]
pub struct StateError(pub String);

impl Optimizer {
    pub fn new(vs: &nn::VarStore, rule: Rule, lr: f64) -> Optimizer {
        let trainable = vs.trainable_variables();
        let named: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
        let mut slots = Vec::new();
        for (name, var) in named {
            if !trainable.iter().any(|t| t.data_ptr() == var.data_ptr()) {
                continue;
            }
            let n_state = match rule {
                Rule::Adam { .. } => 2,
                Rule::RmsProp { .. } => 1,
            };
            let state = (0..n_state).map(|_| var.zeros_like().detach()).collect();
            slots.push(Slot { name, var, state });
        }
        Optimizer {
            rule,
            lr,
            steps: 0,
            slots,
        }
    }

    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub fn zero_grad(&mut self) {
        for s in &mut self.slots {
            let mut g = s.var.grad();
            if g.defined() {
                let _ = g.detach_();
                let _ = g.zero_();
            }
        }
    }

    /// One step on the variables' gradients (a variable without a gradient is left alone).
    pub fn step(&mut self) {
        self.steps += 1;
        let t = self.steps as f64;
        let lr = self.lr;
        tch::no_grad(|| {
            for s in &mut self.slots {
                let g = s.var.grad();
                if !g.defined() {
                    continue;
                }
                match self.rule {
                    Rule::Adam { beta1, beta2, eps } => {
                        let m = &s.state[0] * beta1 + &g * (1.0 - beta1);
                        let v = &s.state[1] * beta2 + g.square() * (1.0 - beta2);
                        let bc1 = 1.0 - beta1.powf(t);
                        let bc2 = 1.0 - beta2.powf(t);
                        let denom = v.sqrt() / bc2.sqrt() + eps;
                        let update = &m / denom * (lr / bc1);
                        s.state[0].copy_(&m);
                        s.state[1].copy_(&v);
                        let _ = s.var.g_sub_(&update);
                    }
                    Rule::RmsProp { alpha, eps } => {
                        let sq = &s.state[0] * alpha + g.square() * (1.0 - alpha);
                        let update = &g / (sq.sqrt() + eps) * lr;
                        s.state[0].copy_(&sq);
                        let _ = s.var.g_sub_(&update);
                    }
                }
            }
        });
    }

    /// The state as named f32 tensors on the CPU (`{variable}.{k}`), for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for s in &self.slots {
            for (k, t) in s.state.iter().enumerate() {
                out.push((
                    format!("{}.{k}", s.name),
                    t.to_device(tch::Device::Cpu).to_kind(Kind::Float).contiguous(),
                ));
            }
        }
        out
    }

    /// Restores state saved by [`Optimizer::state`]: every tensor must be there with its shape.
    pub fn restore(&mut self, steps: u64, named: &BTreeMap<String, Tensor>) -> Result<(), StateError> {
        let mut loaded = Vec::new();
        for s in &self.slots {
            for (k, t) in s.state.iter().enumerate() {
                let key = format!("{}.{k}", s.name);
                let src = named.get(&key).ok_or_else(|| StateError(format!("{key}: missing")))?;
                if src.size() != t.size() {
                    return Err(StateError(format!(
                        "{key}: expected shape {:?}, got {:?}",
                        t.size(),
                        src.size()
                    )));
                }
                loaded.push(src.to_device(t.device()).to_kind(t.kind()));
            }
        }
        let mut it = loaded.into_iter();
        tch::no_grad(|| {
            for s in &mut self.slots {
                for t in &mut s.state {
                    t.copy_(&it.next().expect("one per state tensor"));
                }
            }
        });
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimises (x - 3)^2 from x = 0; checks Adam's first step against its formula (a step of
    /// exactly lr in the gradient's sign) and that both rules converge.
    #[test]
    fn adam_and_rmsprop_follow_their_formulas() {
        for rule in [
            Rule::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            Rule::RmsProp { alpha: 0.99, eps: 1e-5 },
        ] {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            let x = vs.root().zeros("x", &[1]);
            let mut opt = Optimizer::new(&vs, rule, 0.1);
            let loss = (&x - 3.0).square().sum(Kind::Float);
            opt.zero_grad();
            loss.backward();
            opt.step();
            let x1 = x.double_value(&[0]);
            match rule {
                // Bias-corrected m/sqrt(v) is sign(g) on the first step.
                Rule::Adam { .. } => assert!((x1 - 0.1).abs() < 1e-6, "{x1}"),
                // g = -6, square_avg = 0.01 * 36, step = lr * 6 / (0.6 + eps).
                Rule::RmsProp { .. } => assert!((x1 - 0.1 * 6.0 / (0.6 + 1e-5)).abs() < 1e-5, "{x1}"),
            }
            for _ in 0..2000 {
                let loss = (&x - 3.0).square().sum(Kind::Float);
                opt.zero_grad();
                loss.backward();
                opt.step();
            }
            assert!(
                (x.double_value(&[0]) - 3.0).abs() < 0.05,
                "{rule:?}: {}",
                x.double_value(&[0])
            );
        }
    }

    #[test]
    fn state_round_trips_and_a_wrong_shape_is_named() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let x = vs.root().zeros("x", &[2]);
        let rule = Rule::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        };
        let mut opt = Optimizer::new(&vs, rule, 0.1);
        let loss = (&x - 1.0).square().sum(Kind::Float);
        loss.backward();
        opt.step();
        let saved: BTreeMap<String, Tensor> = opt.state().into_iter().collect();
        assert_eq!(saved.keys().cloned().collect::<Vec<_>>(), vec!["x.0", "x.1"]);
        let vs2 = nn::VarStore::new(tch::Device::Cpu);
        let _ = vs2.root().zeros("x", &[2]);
        let mut opt2 = Optimizer::new(&vs2, rule, 0.1);
        opt2.restore(opt.steps(), &saved).unwrap();
        for ((_, a), (_, b)) in opt.state().iter().zip(opt2.state().iter()) {
            assert!(a.equal(b));
        }
        let mut bad: BTreeMap<String, Tensor> = saved.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
        bad.insert("x.1".into(), Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)));
        let e = opt2.restore(1, &bad).unwrap_err().to_string();
        assert!(e.contains("x.1") && e.contains("shape"), "{e}");
    }
}
