//! Q-values and their n-step double-DQN targets, which the learner (Ape-X DQN's loss) and the
//! actors (each sequence's initial priority) share.
//!
//! A Q-network is the model's two heads: with a dueling head (Wang et al. 2016) the policy head
//! gives the advantages `A` and the value head `V`, and `Q = V + A - mean(A)`; without one the
//! policy head gives `Q` itself.
//!
//! Targets are functions of Q-values over `[T, B]` sequences laid out as every batch is: `obs[t]`
//! is seen before step `t`, `terminated[t]`/`truncated[t]` end the episode after it, and
//! `obs[t + 1]` then starts the next one (a truncated episode's last observation is kept apart).
//! For a valid step `t`, the n-step target is
//!
//! ```text
//! y_t = sum_{k < m} gamma^k r_{t+k} + gamma^m * bootstrap
//! ```
//!
//! where the window takes up to `n` of the column's valid steps and stops early after a step
//! that ends the episode (terminated: bootstrap 0; truncated: the value of its last
//! observation, discounted once more) or at the end of the unroll (bootstrap from `obs[T]`);
//! after `n` steps it bootstraps from the next valid step's observation. A step that is not
//! valid (its agent absent: another's turn) passes the window through, as V-trace does: its
//! reward counts, it is not discounted and does not count towards `n`, and its flags still end
//! the episode. A bootstrap value is double DQN's: `Q_target(x, argmax_a Q_online(x, a))`, the
//! argmax over legal actions where a mask is known.

use tch::{Kind, Tensor};

/// Q-values `[..., A]` from the policy head's outputs `params` `[..., A]` and the value head's
/// `value` `[...]`.
pub fn q_values(params: &Tensor, value: &Tensor, dueling: bool) -> Tensor {
    if dueling {
        value.unsqueeze(-1) + params - params.mean_dim(-1, true, Kind::Float)
    } else {
        params.shallow_clone()
    }
}

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

/// Added to every priority (Schaul et al.'s epsilon), so no item's chance of being drawn
/// again falls to 0.
pub const PRIORITY_EPSILON: f64 = 1e-6;

/// Each column's priority from its TD errors `td` `[T, B]` (0 at steps that are not valid):
/// `eta * max|td| + (1 - eta) * mean|td| +` [`PRIORITY_EPSILON`], the mean over valid steps.
pub fn priorities(td: &Tensor, valid: &Tensor, eta: f64) -> Vec<f64> {
    let abs = td.detach().abs() * valid;
    let steps = valid.sum_dim_intlist(0, false, Kind::Float);
    let max = abs.amax(0, false);
    let mean = abs.sum_dim_intlist(0, false, Kind::Float) / steps.clamp_min(1.0);
    let p = (max * eta + mean * (1.0 - eta) + PRIORITY_EPSILON)
        .to_kind(Kind::Double)
        .to_device(tch::Device::Cpu);
    Vec::<f64>::try_from(&p).expect("a [B] tensor of doubles on the CPU")
}
