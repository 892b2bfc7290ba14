//! Ape-X DQN's learning rule (Horgan et al. 2018, "Distributed Prioritized Experience Replay"):
//! n-step double-DQN targets (van Hasselt et al. 2016), an importance-weighted Huber loss over
//! prioritized replay (Schaul et al. 2016), and each replayed sequence's new priority from its
//! TD errors (R2D2's mixture of their max and mean, Kapturowski et al. 2019).
//!
//! These are functions of Q-values over `[T, B]` sequences laid out as every batch is (see
//! [`super::TrainBatch`]): `obs[t]` is seen before step `t`, `terminated[t]`/`truncated[t]` end
//! the episode after it, and `obs[t + 1]` then starts the next one (a truncated episode's last
//! observation is kept apart). For a valid step `t`, the n-step target is
//!
//! ```text
//! y_t = sum_{k < m} gamma^k r_{t+k} + gamma^m * bootstrap
//! ```
//!
//! where the window takes up to `n` of the column's valid steps and stops early after a step
//! that ends the episode (terminated: bootstrap 0; truncated: the value of its last
//! observation, discounted once more) or at the end of the unroll (bootstrap from `obs[T]`);
//! after `n` steps it bootstraps from the next valid step's observation. A step that is not
//! valid (its agent absent: another's turn) passes the window through, as V-trace does (see
//! [`crate::vtrace::vtrace_from_flags`]): its reward counts, it is not discounted and does not
//! count towards `n`, and its flags still end the episode. A bootstrap value is double DQN's:
//! `Q_target(x, argmax_a Q_online(x, a))`, the argmax over legal actions where a mask is known.
//!
//! The algorithm around them (its target network and when it syncs, a batch source that is
//! replay alone, the actors' epsilon-greedy acting and initial priorities) is not built yet.

use tch::{Kind, Tensor};

/// The n-step window and its discount.
#[derive(Debug, Clone, Copy)]
pub struct NStep {
    pub n: usize,
    pub discount: f64,
}

/// What the targets are computed from. Shapes: `T` steps, `B` columns, `A` actions, `K`
/// truncated steps.
pub struct TargetInput<'a> {
    /// The online network's Q at every observation, `[T + 1, B, A]`.
    pub q_online: &'a Tensor,
    /// The target network's Q at every observation, `[T + 1, B, A]`.
    pub q_target: &'a Tensor,
    /// Both networks' Q at each truncated step's last observation, `[K, A]`.
    pub trunc_online: &'a Tensor,
    pub trunc_target: &'a Tensor,
    /// (t, b) of each truncated step, in the order of the `trunc_*` rows.
    pub truncation_at: &'a [(i64, i64)],
    /// `[T, B]` floats, 0/1.
    pub rewards: &'a Tensor,
    pub terminated: &'a Tensor,
    pub truncated: &'a Tensor,
    pub valid: &'a Tensor,
    /// Legal actions at each of the first `T` observations, `[T, B, A]` (0/1); the last
    /// observation's are not in a batch, so its argmax is over every action.
    pub masks: Option<&'a Tensor>,
}

/// Double DQN's bootstrap value of each row of `online`/`target` (`[..., A]`), with the argmax
/// over legal actions where `mask` (`[..., A]`, 0/1) is given.
pub fn double_q(online: &Tensor, target: &Tensor, mask: Option<&Tensor>) -> Tensor {
    let scores = match mask {
        Some(m) => online.masked_fill(&m.eq(0.0), f64::NEG_INFINITY),
        None => online.shallow_clone(),
    };
    let best = scores.argmax(-1, true);
    target.gather(-1, &best, false).squeeze_dim(-1)
}

/// `x` `[R, B]` moved up `k` rows (row `t` holds row `t + k`), rows past the end zero: `[T, B]`.
fn ahead(x: &Tensor, k: i64, t: i64) -> Tensor {
    let rows = x.size()[0];
    let have = (rows - k).clamp(0, t);
    let mut shape = x.size();
    shape[0] = t - have;
    let pad = Tensor::zeros(shape.as_slice(), (x.kind(), x.device()));
    if have == 0 {
        return pad;
    }
    Tensor::cat(&[x.narrow(0, k, have), pad], 0)
}

/// The n-step double-DQN targets `y_t`, `[T, B]`, without gradient (0 where a step is not
/// valid).
pub fn targets(x: &TargetInput<'_>, w: NStep) -> Tensor {
    tch::no_grad(|| {
        let size = x.rewards.size();
        let (t, b) = (size[0], size[1]);
        let dev = x.rewards.device();
        // Each observation's bootstrap value; row T has no mask.
        let boot_obs = {
            let first = double_q(&x.q_online.narrow(0, 0, t), &x.q_target.narrow(0, 0, t), x.masks);
            let last = double_q(&x.q_online.narrow(0, t, 1), &x.q_target.narrow(0, t, 1), None);
            Tensor::cat(&[first, last], 0)
        };
        // Each truncated step's bootstrap value, at its (t, b); 0 elsewhere.
        let boot_trunc = Tensor::zeros([t, b], (Kind::Float, dev));
        if !x.truncation_at.is_empty() {
            let values = double_q(x.trunc_online, x.trunc_target, None);
            let flat: Vec<i64> = x.truncation_at.iter().map(|&(s, c)| s * b + c).collect();
            let index = Tensor::from_slice(&flat).to_device(dev);
            let _ = boot_trunc.view([-1]).index_copy_(0, &index, &values);
        }
        let ones = Tensor::ones([t, b], (Kind::Float, dev));
        // Row t of `inside` at offset k: step t + k is inside the unroll.
        let rows = Tensor::arange(t, (Kind::Float, dev)).unsqueeze(1).expand([t, b], false);
        let mut open = x.valid.shallow_clone();
        let mut disc = ones.shallow_clone();
        let mut count = Tensor::zeros([t, b], (Kind::Float, dev));
        let mut sum = Tensor::zeros([t, b], (Kind::Float, dev));
        let mut boot = Tensor::zeros([t, b], (Kind::Float, dev));
        // Absent steps stretch a window, so it may reach the end of the unroll whatever n.
        for k in 0..=t {
            let obs_k = ahead(&boot_obs, k, t);
            // Past the last step: bootstrap from obs[T].
            let inside = rows.lt((t - k) as f64).to_kind(Kind::Float);
            boot += &open * (&ones - &inside) * &disc * &obs_k;
            open = &open * &inside;
            let valid = ahead(x.valid, k, t);
            // n steps taken: bootstrap from the next valid step's observation.
            let full = &open * &valid * count.ge(w.n as f64).to_kind(Kind::Float);
            boot += &full * &disc * &obs_k;
            open = &open - &full;
            sum += &open * &disc * ahead(x.rewards, k, t);
            let terminated = ahead(x.terminated, k, t);
            let term = &open * &terminated;
            let trunc = &open * ahead(x.truncated, k, t) * (&ones - &terminated);
            // A valid step is discounted; an absent one is not.
            let gamma = &valid * w.discount + (&ones - &valid);
            boot += &trunc * &disc * &gamma * ahead(&boot_trunc, k, t);
            open = &open * (&ones - &term) * (&ones - &trunc);
            count += &valid;
            disc = &disc * &gamma;
        }
        (sum + boot) * x.valid
    })
}

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

/// Added to every priority (Schaul et al.'s epsilon), so no item's chance of being drawn
/// again falls to 0.
pub const PRIORITY_EPSILON: f64 = 1e-6;

/// The loss and new priorities of one batch: `td = y - Q_online(x_t, a_t)` over valid steps,
/// `loss = sum(w_b * huber(td)) / (valid steps)` with `w_b` the column's importance weight
/// (`[B]`), and each column's priority `eta * max|td| + (1 - eta) * mean|td| +`
/// [`PRIORITY_EPSILON`].
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
    let abs = td.detach().abs();
    let steps = valid.sum_dim_intlist(0, false, Kind::Float);
    let max = abs.amax(0, false);
    let mean = abs.sum_dim_intlist(0, false, Kind::Float) / steps.clamp_min(1.0);
    let p = (max * eta + mean * (1.0 - eta) + PRIORITY_EPSILON)
        .to_kind(Kind::Double)
        .to_device(tch::Device::Cpu);
    let priorities = Vec::<f64>::try_from(&p).expect("a [B] tensor of doubles on the CPU");
    TdLoss {
        loss,
        td: td.detach(),
        priorities,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use tch::Device;

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
