//! Ape-X DQN (Horgan et al. 2018, "Distributed Prioritized Experience Replay"): n-step
//! double-DQN targets (van Hasselt et al. 2016) from a target network synced every
//! `apex.target_update_period` updates, a dueling head (Wang et al. 2016), an
//! importance-weighted Huber loss over prioritized replay (Schaul et al. 2016), and each
//! replayed sequence's new priority from its TD errors (R2D2's mixture of their max and mean,
//! Kapturowski et al. 2019).
//!
//! A batch is `learner.batch_size` columns drawn from replay, each a T-step sequence of one
//! env that an actor acted epsilon-greedily (see `troupe::model::q` for the Q-values and the
//! targets, which the actors share to compute each sequence's initial priority). The loss is
//!
//! ```text
//! L = sum_{t,b} w_b * huber(y_t,b - Q(x_t,b, a_t,b)) / (valid steps)
//! ```
//!
//! with `w_b` the column's importance weight (`(N * P(b))^-beta`, over the batch's largest).

use tch::{Kind, Tensor};
use troupe::config::ApexConfig;
use troupe::model::q::{self, NStep, TargetInput};
use troupe::model::Model;

use super::{Algorithm, Loss, Passes, TrainBatch};

/// Importance-sampling weights of sampled items (Schaul et al. 2016): `(N * P(i))^-beta`,
/// divided by the batch's largest, so they only ever scale updates down. `probabilities` are
/// the draws' probabilities, `size` the table's size when drawn.
pub fn importance_weights(probabilities: &[f64], size: u64, beta: f64) -> Vec<f64> {
    let raw: Vec<f64> = probabilities.iter().map(|&p| (size as f64 * p).powf(-beta)).collect();
    let max = raw.iter().copied().fold(0.0, f64::max);
    if !(max.is_finite() && max > 0.0) {
        return vec![1.0; probabilities.len()];
    }
    raw.iter().map(|w| w / max).collect()
}

/// Huber loss with threshold 1 (the paper's gradient clipping of the TD error).
pub fn huber(x: &Tensor) -> Tensor {
    let a = x.abs();
    a.le(1.0).to_kind(Kind::Float) * 0.5 * x.square() + a.gt(1.0).to_kind(Kind::Float) * (&a - 0.5)
}

/// The loss and new priorities of one batch: `td = y - Q_online(x_t, a_t)` over valid steps,
/// `loss = sum(w_b * huber(td)) / (valid steps)` with `w_b` the column's importance weight
/// (`[B]`), and each column's priority `eta * max|td| + (1 - eta) * mean|td| +`
/// [`q::PRIORITY_EPSILON`].
pub struct TdLoss {
    pub loss: Tensor,
    /// `[T, B]`, detached.
    pub td: Tensor,
    /// One per column.
    pub priorities: Vec<f64>,
}

pub fn td_loss(q_taken: &Tensor, y: &Tensor, valid: &Tensor, weights: &Tensor, eta: f64) -> TdLoss {
    let td = (y - q_taken) * valid;
    let count = valid.sum(Kind::Float).clamp_min(1.0);
    let loss = (huber(&td) * weights.unsqueeze(0) * valid).sum(Kind::Float) / &count;
    let priorities = q::priorities(&td, valid, eta);
    TdLoss {
        loss,
        td: td.detach(),
        priorities,
    }
}

pub struct ApexDqn {
    cfg: ApexConfig,
    discount: f64,
    /// The target network: the online weights as they were at the last sync.
    target: Option<Model>,
}

impl ApexDqn {
    pub fn new(cfg: ApexConfig, discount: f64) -> ApexDqn {
        ApexDqn {
            cfg,
            discount,
            target: None,
        }
    }

    fn q(&self, model: &Model, obs: &Tensor, state0: &Tensor, starts: &Tensor) -> Tensor {
        let (params, values, _) = model.unroll(obs, state0, starts);
        q::q_values(&params, &values, self.cfg.dueling)
    }
}

impl Algorithm for ApexDqn {
    fn name(&self) -> &'static str {
        "apex_dqn"
    }

    fn passes(&self) -> Passes {
        Passes {
            epochs: 1,
            minibatches: 1,
        }
    }

    /// The Q-network's output layers start at zero, so every initial Q-value is 0. With the
    /// default initialisation, LBF's unnormalised coordinates gave a fresh network team
    /// Q-values of 6-8 where no return exceeds 1 (the first update's targets averaged 19, the
    /// max over that spread); they stayed there for the 5 k updates logged, and a rare reward's TD error
    /// no longer stood out in its priority.
    fn initialize(&self, fresh: &Model) {
        tch::no_grad(|| {
            for (name, mut v) in fresh.var_store().variables() {
                if name.starts_with("policy.head.") || name.starts_with("value.head.") {
                    let _ = v.zero_();
                }
            }
        });
    }

    fn reset(&mut self, online: &Model) {
        let mut target = Model::new(online.spec(), online.device()).expect("the online model's spec builds");
        copy_weights(&mut target, online);
        self.target = Some(target);
    }

    fn after_update(&mut self, online: &Model, updates: u64) {
        if updates.is_multiple_of(self.cfg.target_update_period) {
            match self.target.as_mut() {
                Some(target) => copy_weights(target, online),
                None => self.reset(online),
            }
        }
    }

    fn loss(&self, model: &Model, b: &TrainBatch) -> Loss {
        let target = self
            .target
            .as_ref()
            .expect("the trainer resets the algorithm before training");
        let dev = model.device();
        let (t, n) = (b.t, b.b);
        let obs = b.input(model);
        // A feed-forward Q-network (the config refuses a recurrent one): no state to reset.
        let starts = Tensor::zeros([t + 1, n], (Kind::Float, dev));
        let q_online = self.q(model, &obs, &b.state0, &starts);
        let q_target = tch::no_grad(|| self.q(target, &obs, &b.state0, &starts));
        let a = q_online.size()[2];
        let (trunc_online, trunc_target) = if b.truncation_at.is_empty() {
            let empty = Tensor::zeros([0, a], (Kind::Float, dev));
            (empty.shallow_clone(), empty)
        } else {
            let x = b.truncation_input(model);
            let k = x.size()[0];
            let s0 = Tensor::zeros([k, 0], (Kind::Float, dev));
            tch::no_grad(|| {
                let on = model.step(&x, &s0);
                let tg = target.step(&x, &s0);
                (
                    q::q_values(&on.params, &on.value, self.cfg.dueling),
                    q::q_values(&tg.params, &tg.value, self.cfg.dueling),
                )
            })
        };
        let masks = b.masks.as_ref().map(|m| m.to_kind(Kind::Float));
        let q_detached = q_online.detach();
        // VDN: each agent's target takes its share of the team reward, so the agents' targets
        // sum to the team's (the windows of a team's agents are the same steps).
        let rewards = if self.cfg.vdn {
            &b.rewards / model.spec().env.agents_per_env() as f64
        } else {
            b.rewards.shallow_clone()
        };
        let y = q::targets(
            &TargetInput {
                q_online: &q_detached,
                q_target: &q_target,
                trunc_online: &trunc_online,
                trunc_target: &trunc_target,
                truncation_at: &b.truncation_at,
                rewards: &rewards,
                terminated: &b.terminated,
                truncated: &b.truncated,
                valid: &b.valid,
                masks: masks.as_ref(),
            },
            NStep {
                n: self.cfg.n_step,
                discount: self.discount,
            },
        );
        let q_taken = q_online
            .narrow(0, 0, t)
            .gather(-1, &b.actions.narrow(2, 0, 1), false)
            .squeeze_dim(-1);
        let weights = match &b.replay {
            Some(r) => r.weights.shallow_clone(),
            None => Tensor::ones([n], (Kind::Float, dev)),
        };
        let td = if self.cfg.vdn {
            // The team's Q and target are sums over each env's columns (an item's, side by
            // side); the target's rewards were each agent's share of the team reward.
            let a = model.spec().env.agents_per_env() as i64;
            let team = |x: &Tensor| x.view([t, n / a, a]).sum_dim_intlist(-1, false, Kind::Float);
            let valid = b.valid.view([t, n / a, a]).amax(-1, false);
            let w = weights.view([n / a, a]).select(1, 0);
            let mut td = td_loss(&team(&q_taken), &team(&y), &valid, &w, self.cfg.priority_eta);
            td.priorities = td
                .priorities
                .iter()
                .flat_map(|&p| std::iter::repeat_n(p, a as usize))
                .collect();
            td
        } else {
            td_loss(&q_taken, &y, &b.valid, &weights, self.cfg.priority_eta)
        };
        let q_mean = b.masked_mean(&q_taken.detach());
        Loss {
            terms: vec![("td", td.loss.detach()), ("q", q_mean)],
            total: td.loss,
            value_targets: y,
            values: q_taken.detach(),
            priorities: Some(td.priorities),
        }
    }
}

/// `to`'s weights (and observation statistics) become `from`'s.
fn copy_weights(to: &mut Model, from: &Model) {
    tch::no_grad(|| {
        let src = from.var_store().variables();
        for (name, mut dst) in to.var_store().variables() {
            let s = src.get(&name).expect("the same spec has the same variables");
            dst.copy_(s);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use tch::Device;
    use troupe::model::q::{targets, PRIORITY_EPSILON};

    fn tensor(data: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(data).reshape(shape)
    }

    fn values(x: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(&x.to_kind(Kind::Double).reshape([-1])).unwrap()
    }

    /// The targets by a plain loop over each step's window, as the module docs state them: the
    /// window walks the column's steps one by one, passing absent ones through.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        q_online: &[Vec<Vec<f64>>],
        q_target: &[Vec<Vec<f64>>],
        trunc: &[((usize, usize), Vec<f64>, Vec<f64>)],
        r: &[Vec<f64>],
        term: &[Vec<bool>],
        truncd: &[Vec<bool>],
        valid: &[Vec<bool>],
        n: usize,
        gamma: f64,
    ) -> Vec<Vec<f64>> {
        let (t_len, b_len) = (r.len(), r[0].len());
        let dq = |on: &[f64], tg: &[f64]| {
            let mut best = 0;
            for a in 1..on.len() {
                if on[a] > on[best] {
                    best = a;
                }
            }
            tg[best]
        };
        let mut out = vec![vec![0.0; b_len]; t_len];
        for b in 0..b_len {
            for t in 0..t_len {
                if !valid[t][b] {
                    continue;
                }
                let mut y = 0.0;
                let mut disc = 1.0;
                let mut taken = 0;
                let mut s = t;
                loop {
                    if s == t_len {
                        y += disc * dq(&q_online[s][b], &q_target[s][b]);
                        break;
                    }
                    if valid[s][b] && taken == n {
                        y += disc * dq(&q_online[s][b], &q_target[s][b]);
                        break;
                    }
                    y += disc * r[s][b];
                    let gamma = if valid[s][b] { gamma } else { 1.0 };
                    if term[s][b] {
                        break;
                    }
                    if truncd[s][b] {
                        let (_, on, tg) = trunc.iter().find(|(at, _, _)| *at == (s, b)).unwrap();
                        y += disc * gamma * dq(on, tg);
                        break;
                    }
                    if valid[s][b] {
                        taken += 1;
                    }
                    disc *= gamma;
                    s += 1;
                }
                out[t][b] = y;
            }
        }
        out
    }

    #[test]
    fn n_step_double_dqn_targets_match_a_plain_loop() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for &n in &[1usize, 3, 5] {
            for _case in 0..20 {
                let (t, b, a) = (7usize, 5usize, 3usize);
                let gamma = 0.9;
                let q = |rng: &mut rand::rngs::StdRng| -> Vec<Vec<Vec<f64>>> {
                    (0..=t)
                        .map(|_| {
                            (0..b)
                                .map(|_| (0..a).map(|_| rng.random_range(-2.0..2.0)).collect())
                                .collect()
                        })
                        .collect()
                };
                let (qo, qt) = (q(&mut rng), q(&mut rng));
                let flags = |rng: &mut rand::rngs::StdRng, p: f64| -> Vec<Vec<bool>> {
                    (0..t).map(|_| (0..b).map(|_| rng.random_bool(p)).collect()).collect()
                };
                let r: Vec<Vec<f64>> = (0..t)
                    .map(|_| (0..b).map(|_| rng.random_range(-1.0..1.0)).collect())
                    .collect();
                let term = flags(&mut rng, 0.15);
                let truncd = flags(&mut rng, 0.15);
                let valid = flags(&mut rng, 0.7);
                let mut trunc = Vec::new();
                for s in 0..t {
                    for c in 0..b {
                        if truncd[s][c] && !term[s][c] {
                            let row = |rng: &mut rand::rngs::StdRng| -> Vec<f64> {
                                (0..a).map(|_| rng.random_range(-2.0..2.0)).collect()
                            };
                            trunc.push(((s, c), row(&mut rng), row(&mut rng)));
                        }
                    }
                }
                // A step both terminated and truncated counts as terminated.
                let truncd_only: Vec<Vec<bool>> = (0..t)
                    .map(|s| (0..b).map(|c| truncd[s][c] && !term[s][c]).collect())
                    .collect();
                let want = reference(&qo, &qt, &trunc, &r, &term, &truncd_only, &valid, n, gamma);

                let f3 = |x: &[Vec<Vec<f64>>]| -> Tensor {
                    let flat: Vec<f32> = x.iter().flatten().flatten().map(|&v| v as f32).collect();
                    tensor(&flat, &[x.len() as i64, b as i64, a as i64])
                };
                let f2 = |x: &[Vec<f64>]| -> Tensor {
                    let flat: Vec<f32> = x.iter().flatten().map(|&v| v as f32).collect();
                    tensor(&flat, &[t as i64, b as i64])
                };
                let fb = |x: &[Vec<bool>]| -> Tensor {
                    let flat: Vec<f32> = x.iter().flatten().map(|&v| v as u8 as f32).collect();
                    tensor(&flat, &[t as i64, b as i64])
                };
                let rows = |pick: fn(&((usize, usize), Vec<f64>, Vec<f64>)) -> &Vec<f64>| -> Tensor {
                    let flat: Vec<f32> = trunc.iter().flat_map(|e| pick(e).iter().map(|&v| v as f32)).collect();
                    tensor(&flat, &[trunc.len() as i64, a as i64])
                };
                let (tro, trt) = (rows(|e| &e.1), rows(|e| &e.2));
                let at: Vec<(i64, i64)> = trunc.iter().map(|e| (e.0 .0 as i64, e.0 .1 as i64)).collect();
                let (qo_t, qt_t, r_t) = (f3(&qo), f3(&qt), f2(&r));
                let (te, tr, va) = (fb(&term), fb(&truncd), fb(&valid));
                let got = targets(
                    &TargetInput {
                        q_online: &qo_t,
                        q_target: &qt_t,
                        trunc_online: &tro,
                        trunc_target: &trt,
                        truncation_at: &at,
                        rewards: &r_t,
                        terminated: &te,
                        truncated: &tr,
                        valid: &va,
                        masks: None,
                    },
                    NStep { n, discount: gamma },
                );
                let got = values(&got);
                let want: Vec<f64> = want.into_iter().flatten().collect();
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() < 1e-4,
                        "n {n}, (t, b) = ({}, {}): {g} vs {w}",
                        i / b,
                        i % b
                    );
                }
            }
        }
    }

    /// One step, by hand: double DQN takes the online net's argmax and the target net's value
    /// of it, here 5.0 where the target net's own max is 9.0; terminated steps do not bootstrap.
    #[test]
    fn one_step_targets_by_hand() {
        // T = 2, B = 1, A = 2.
        let qo = tensor(&[0.0, 0.0, 1.0, 3.0, 2.0, 1.0], &[3, 1, 2]);
        let qt = tensor(&[0.0, 0.0, 9.0, 5.0, 7.0, 4.0], &[3, 1, 2]);
        let empty = Tensor::zeros([0, 2], (Kind::Float, Device::Cpu));
        let r = tensor(&[1.0, 2.0], &[2, 1]);
        let term = tensor(&[0.0, 1.0], &[2, 1]);
        let zero = tensor(&[0.0, 0.0], &[2, 1]);
        let valid = tensor(&[1.0, 1.0], &[2, 1]);
        let y_of = |masks: Option<&Tensor>| {
            targets(
                &TargetInput {
                    q_online: &qo,
                    q_target: &qt,
                    trunc_online: &empty,
                    trunc_target: &empty,
                    truncation_at: &[],
                    rewards: &r,
                    terminated: &term,
                    truncated: &zero,
                    valid: &valid,
                    masks,
                },
                NStep { n: 1, discount: 0.5 },
            )
        };
        let y = y_of(None);
        // y_0 = 1 + 0.5 * Q_target(x_1, argmax Q_online(x_1) = 1) = 1 + 0.5 * 5; y_1 = 2.
        assert_eq!(values(&y), vec![3.5, 2.0]);
        // With action 1 illegal at x_1, the argmax is action 0: 1 + 0.5 * 9.
        let masks = tensor(&[1.0, 1.0, 1.0, 0.0], &[2, 1, 2]);
        let y = y_of(Some(&masks));
        assert_eq!(values(&y), vec![5.5, 2.0]);
    }

    #[test]
    fn importance_weights_follow_schaul_et_al() {
        // N = 4: P = 0.5 -> (2)^-0.5, P = 0.125 -> (0.5)^-0.5, the largest; divided by it.
        let w = importance_weights(&[0.5, 0.125], 4, 0.5);
        let raw = [2f64.powf(-0.5), 0.5f64.powf(-0.5)];
        assert!(
            (w[0] - raw[0] / raw[1]).abs() < 1e-12 && (w[1] - 1.0).abs() < 1e-12,
            "{w:?}"
        );
        // beta = 0: no correction.
        assert_eq!(importance_weights(&[0.5, 0.125], 4, 0.0), vec![1.0, 1.0]);
    }

    /// The loss weighs each column by its importance weight, skips invalid steps, and a
    /// column's priority mixes its largest and mean absolute TD errors.
    #[test]
    fn td_loss_and_priorities() {
        // T = 2, B = 2. TD errors: column 0: 0.5 and 3.0; column 1: -1.0 and (invalid) 9.0.
        let q = tensor(&[0.0, 1.0, 0.0, 0.0], &[2, 2]);
        let y = tensor(&[0.5, 0.0, 3.0, 9.0], &[2, 2]);
        let valid = tensor(&[1.0, 1.0, 1.0, 0.0], &[2, 2]);
        let w = tensor(&[1.0, 0.5], &[2]);
        let out = td_loss(&q, &y, &valid, &w, 0.9);
        // huber: 0.125, 2.5 (column 0, weight 1); 0.5 (column 1, weight 0.5); over 3 steps.
        let want = (0.125 + 2.5 + 0.5 * 0.5) / 3.0;
        assert!((out.loss.double_value(&[]) - want).abs() < 1e-6);
        let p0 = 0.9 * 3.0 + 0.1 * (0.5 + 3.0) / 2.0 + PRIORITY_EPSILON;
        let p1 = 0.9 * 1.0 + 0.1 * 1.0 + PRIORITY_EPSILON;
        assert!(
            (out.priorities[0] - p0).abs() < 1e-6 && (out.priorities[1] - p1).abs() < 1e-6,
            "{:?}",
            out.priorities
        );
    }
}
