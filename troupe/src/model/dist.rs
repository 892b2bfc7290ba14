//! Action distributions, picked by the action space (as RLlib's catalog does):
//! - Discrete and MultiDiscrete: one categorical per component over its slice of the logits,
//!   with illegal choices (mask 0) given a logit of [`MASKED_LOGIT`], so their probability is
//!   exactly 0 in sampling, log-probabilities and entropy. A MultiDiscrete action's
//!   log-probability and entropy are the sums over its components.
//! - Box: a diagonal Gaussian; the parameters are `[mean (dim), log_std (dim)]`. Actions are
//!   sampled unclipped (the env clips), and their log-probability is of the unclipped action.
//!
//! The learner uses the tensor functions; the actor samples on the CPU from plain floats.

use rand::Rng;
use rand_distr::StandardNormal;
use tch::{Kind, Tensor};

use crate::spaces::ActionSpace;

/// The logit an illegal action gets: far enough below any real logit that its probability
/// underflows to exactly 0, finite so that `0 * log p` stays 0 in the entropy.
pub const MASKED_LOGIT: f64 = -1e9;

const HALF_LOG_2PI: f64 = 0.918_938_533_204_672_7;

/// Log-probability of `actions` and entropy, each `[..]`, under `params` `[.., P]`.
/// `actions` is `[.., dim]` (i64 for discrete spaces, float for a Box); `mask` is `[.., M]`
/// (any numeric kind, 0 = illegal) or `None`.
pub fn log_prob_entropy(
    space: &ActionSpace,
    params: &Tensor,
    actions: &Tensor,
    mask: Option<&Tensor>,
) -> (Tensor, Tensor) {
    match space {
        ActionSpace::Box { low, .. } => {
            let d = low.len() as i64;
            let mean = params.narrow(-1, 0, d);
            let log_std = params.narrow(-1, d, d);
            let z = (actions.to_kind(Kind::Float) - &mean) / log_std.exp();
            let lp = (z.square() * -0.5 - &log_std - HALF_LOG_2PI).sum_dim_intlist(-1, false, Kind::Float);
            let ent = (log_std + 0.5 + HALF_LOG_2PI).sum_dim_intlist(-1, false, Kind::Float);
            (lp, ent)
        }
        _ => {
            let mut lp: Option<Tensor> = None;
            let mut ent: Option<Tensor> = None;
            let mut offset = 0i64;
            for (i, &n) in space.nvec().iter().enumerate() {
                let n = n as i64;
                let log_p = masked_log_softmax(&params.narrow(-1, offset, n), mask.map(|m| m.narrow(-1, offset, n)));
                let a = actions.narrow(-1, i as i64, 1).to_kind(Kind::Int64);
                let lpi = log_p.gather(-1, &a, false).squeeze_dim(-1);
                let enti = -(log_p.exp() * &log_p).sum_dim_intlist(-1, false, Kind::Float);
                lp = Some(match lp {
                    Some(x) => x + lpi,
                    None => lpi,
                });
                ent = Some(match ent {
                    Some(x) => x + enti,
                    None => enti,
                });
                offset += n;
            }
            (
                lp.expect("one or more components"),
                ent.expect("one or more components"),
            )
        }
    }
}

/// KL(p || q) per step, `[..]`, between the distributions of parameters `p` and `q` `[.., P]`
/// (summed over a MultiDiscrete's components and a Box's dimensions). Illegal choices have
/// probability 0 under both and add nothing.
pub fn kl_divergence(space: &ActionSpace, p: &Tensor, q: &Tensor, mask: Option<&Tensor>) -> Tensor {
    match space {
        ActionSpace::Box { low, .. } => {
            let d = low.len() as i64;
            let (mp, lsp) = (p.narrow(-1, 0, d), p.narrow(-1, d, d));
            let (mq, lsq) = (q.narrow(-1, 0, d), q.narrow(-1, d, d));
            // log(sq / sp) + (sp^2 + (mp - mq)^2) / (2 sq^2) - 1/2
            let var_q = (&lsq * 2.0).exp();
            let kl = &lsq - &lsp + ((&lsp * 2.0).exp() + (mp - mq).square()) / (var_q * 2.0) - 0.5;
            kl.sum_dim_intlist(-1, false, Kind::Float)
        }
        _ => {
            let mut total: Option<Tensor> = None;
            let mut offset = 0i64;
            for n in space.nvec() {
                let n = n as i64;
                let m = mask.map(|m| m.narrow(-1, offset, n));
                let lp = masked_log_softmax(&p.narrow(-1, offset, n), m.as_ref().map(|m| m.shallow_clone()));
                let lq = masked_log_softmax(&q.narrow(-1, offset, n), m);
                let kl = (lp.exp() * (&lp - lq)).sum_dim_intlist(-1, false, Kind::Float);
                total = Some(match total {
                    Some(x) => x + kl,
                    None => kl,
                });
                offset += n;
            }
            total.expect("one or more components")
        }
    }
}

/// `log_softmax` over the last dimension with illegal entries set to [`MASKED_LOGIT`] first.
pub fn masked_log_softmax(logits: &Tensor, mask: Option<Tensor>) -> Tensor {
    let logits = match mask {
        Some(m) => logits.masked_fill(&m.eq(0), MASKED_LOGIT),
        None => logits.shallow_clone(),
    };
    logits.log_softmax(-1, Kind::Float)
}

/// Samples one action for one column from its distribution parameters, on the CPU.
/// `mask` has `M` entries (0 = illegal) or is `None`. Writes `dim` elements.
pub fn sample_discrete<R: Rng>(nvec: &[usize], logits: &[f32], mask: Option<&[u8]>, rng: &mut R, out: &mut [i64]) {
    let mut offset = 0;
    for (i, &n) in nvec.iter().enumerate() {
        let l = &logits[offset..offset + n];
        let m = mask.map(|m| &m[offset..offset + n]);
        out[i] = sample_categorical(l, m, rng) as i64;
        offset += n;
    }
}

/// Samples from softmax(logits) restricted to the legal entries. With no legal entry (the
/// env host rejects such masks) it returns the most likely entry.
pub fn sample_categorical<R: Rng>(logits: &[f32], mask: Option<&[u8]>, rng: &mut R) -> usize {
    let legal = |i: usize| mask.is_none_or(|m| m[i] != 0);
    let mut max = f32::NEG_INFINITY;
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if legal(i) && l > max {
            max = l;
            best = i;
        }
    }
    if max == f32::NEG_INFINITY {
        return best;
    }
    let mut sum = 0.0f64;
    for (i, &l) in logits.iter().enumerate() {
        if legal(i) {
            sum += ((l - max) as f64).exp();
        }
    }
    let mut u = rng.random::<f64>() * sum;
    let mut last = best;
    for (i, &l) in logits.iter().enumerate() {
        if !legal(i) {
            continue;
        }
        let p = ((l - max) as f64).exp();
        if u < p {
            return i;
        }
        u -= p;
        last = i;
    }
    last
}

/// Ape-X's exploration schedule (Horgan et al. 2018): actor `i` of `n` acts epsilon-greedily
/// with `epsilon_i = base^(1 + alpha * i / (n - 1))` (the paper: base 0.4, alpha 7), so the
/// first actor explores most and the last hardly at all; one actor alone gets `base`.
pub fn apex_epsilon(i: usize, n: usize, base: f64, alpha: f64) -> f64 {
    if n <= 1 {
        return base;
    }
    base.powf(1.0 + alpha * i.min(n - 1) as f64 / (n - 1) as f64)
}

/// Epsilon-greedy over Q-values for one column, per component of the action: with probability
/// `epsilon` a uniformly random legal choice, else the legal choice of highest Q (the first of
/// equals). With no legal choice (the env host rejects such masks) it takes the highest Q.
pub fn epsilon_greedy<R: Rng>(
    nvec: &[usize],
    q: &[f32],
    mask: Option<&[u8]>,
    epsilon: f64,
    rng: &mut R,
    out: &mut [i64],
) {
    let mut offset = 0;
    for (i, &n) in nvec.iter().enumerate() {
        let q = &q[offset..offset + n];
        let legal = |j: usize| mask.is_none_or(|m| m[offset + j] != 0);
        let count = (0..n).filter(|&j| legal(j)).count();
        out[i] = if count > 0 && rng.random::<f64>() < epsilon {
            let pick = rng.random_range(0..count);
            (0..n).filter(|&j| legal(j)).nth(pick).expect("pick < count") as i64
        } else {
            let mut best: Option<usize> = None;
            for j in (0..n).filter(|&j| legal(j) || count == 0) {
                if best.is_none_or(|b| q[j] > q[b]) {
                    best = Some(j);
                }
            }
            best.unwrap_or(0) as i64
        };
        offset += n;
    }
}

/// Samples `mean + exp(log_std) * N(0, 1)` per dimension; `params` is `[mean, log_std]`.
pub fn sample_gaussian<R: Rng>(params: &[f32], rng: &mut R, out: &mut [f32]) {
    let d = out.len();
    for i in 0..d {
        let z: f32 = rng.sample(StandardNormal);
        out[i] = params[i] + params[d + i].exp() * z;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop, prop_assert, prop_assert_eq, proptest, ProptestConfig};
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use tch::Device;

    fn t(v: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(v).view(shape)
    }

    /// Plain f64 reference: log-probability and entropy of a masked categorical.
    fn reference_categorical(logits: &[f32], mask: &[u8], action: usize) -> (f64, f64) {
        let legal: Vec<usize> = (0..logits.len()).filter(|&i| mask[i] != 0).collect();
        let max = legal
            .iter()
            .map(|&i| logits[i] as f64)
            .fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = legal.iter().map(|&i| (logits[i] as f64 - max).exp()).sum();
        let logp = |i: usize| logits[i] as f64 - max - z.ln();
        let ent = -legal.iter().map(|&i| logp(i).exp() * logp(i)).sum::<f64>();
        (logp(action), ent)
    }

    /// The paper's schedule: with 8 actors, the first explores with 0.4, the last with 0.4^8,
    /// and epsilon falls from one actor to the next.
    #[test]
    fn apex_epsilons_follow_the_paper() {
        let e: Vec<f64> = (0..8).map(|i| apex_epsilon(i, 8, 0.4, 7.0)).collect();
        assert!(
            (e[0] - 0.4).abs() < 1e-12 && (e[7] - 0.4f64.powi(8)).abs() < 1e-15,
            "{e:?}"
        );
        assert!((e[3] - 0.4f64.powf(4.0)).abs() < 1e-12, "{e:?}");
        assert!(e.windows(2).all(|w| w[1] < w[0]), "{e:?}");
        assert_eq!(apex_epsilon(0, 1, 0.4, 7.0), 0.4);
    }

    /// Epsilon-greedy's choices come with the right frequencies: the best legal action
    /// 1 - epsilon + epsilon / legal, every other legal one epsilon / legal, an illegal one never
    /// (here the action of highest Q is illegal). Over 100,000 draws, within 5 standard errors.
    #[test]
    fn epsilon_greedy_picks_with_the_right_frequencies() {
        let q = [3.0f32, 1.0, 2.0, 9.0];
        let mask = [1u8, 1, 1, 0];
        let eps = 0.3;
        let mut rng = StdRng::seed_from_u64(11);
        let mut counts = [0usize; 4];
        let draws = 100_000;
        let mut out = [0i64];
        for _ in 0..draws {
            epsilon_greedy(&[4], &q, Some(&mask), eps, &mut rng, &mut out);
            counts[out[0] as usize] += 1;
        }
        assert_eq!(counts[3], 0, "an illegal action was taken");
        let want = [1.0 - eps + eps / 3.0, eps / 3.0, eps / 3.0];
        for (a, &p) in want.iter().enumerate() {
            let got = counts[a] as f64 / draws as f64;
            let se = (p * (1.0 - p) / draws as f64).sqrt();
            assert!((got - p).abs() < 5.0 * se, "action {a}: {got} against {p}");
        }
        // Epsilon 0 is greedy; each component of a MultiDiscrete on its own.
        let mut out = [0i64; 2];
        epsilon_greedy(&[2, 3], &[0.0, 1.0, 5.0, 4.0, 6.0], None, 0.0, &mut rng, &mut out);
        assert_eq!(out, [1, 2]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// The actor never samples an illegal action, whatever the logits.
        #[test]
        fn an_illegal_action_is_never_sampled(
            logits in prop::collection::vec(-30.0f32..30.0, 2..12),
            mask_bits in prop::collection::vec(any::<bool>(), 12),
            seed in any::<u64>(),
        ) {
            let n = logits.len();
            let mut mask: Vec<u8> = mask_bits[..n].iter().map(|&b| b as u8).collect();
            if mask.iter().all(|&m| m == 0) {
                mask[n - 1] = 1;
            }
            let mut rng = StdRng::seed_from_u64(seed);
            for _ in 0..200 {
                let a = sample_categorical(&logits, Some(&mask), &mut rng);
                prop_assert_eq!(mask[a], 1, "sampled illegal action {}", a);
            }
        }

        /// Masked log-probability and entropy equal a plain f64 computation over legal actions.
        #[test]
        fn masked_log_prob_and_entropy_match_the_reference(
            logits in prop::collection::vec(-10.0f32..10.0, 5),
            mask_bits in prop::collection::vec(any::<bool>(), 5),
            pick in 0usize..5,
        ) {
            let mut mask: Vec<u8> = mask_bits.iter().map(|&b| b as u8).collect();
            mask[pick] = 1; // the taken action was legal
            let space = ActionSpace::Discrete { n: 5 };
            let (lp, ent) = log_prob_entropy(
                &space,
                &t(&logits, &[1, 5]),
                &Tensor::from_slice(&[pick as i64]).view([1, 1]),
                Some(&Tensor::from_slice(&mask).view([1, 5])),
            );
            let (want_lp, want_ent) = reference_categorical(&logits, &mask, pick);
            prop_assert!((lp.double_value(&[0]) - want_lp).abs() < 1e-4, "{} vs {}", lp.double_value(&[0]), want_lp);
            prop_assert!((ent.double_value(&[0]) - want_ent).abs() < 1e-4, "{} vs {}", ent.double_value(&[0]), want_ent);
        }
    }

    #[test]
    fn multi_discrete_sums_its_masked_components() {
        let space = ActionSpace::MultiDiscrete { nvec: vec![3, 2] };
        let logits = [0.5f32, -1.0, 2.0, 0.3, 0.1];
        let mask = [1u8, 0, 1, 1, 1];
        let (lp, ent) = log_prob_entropy(
            &space,
            &t(&logits, &[1, 5]),
            &Tensor::from_slice(&[2i64, 1]).view([1, 2]),
            Some(&Tensor::from_slice(&mask).view([1, 5])),
        );
        let (lp0, e0) = reference_categorical(&logits[..3], &mask[..3], 2);
        let (lp1, e1) = reference_categorical(&logits[3..], &mask[3..], 1);
        assert!((lp.double_value(&[0]) - (lp0 + lp1)).abs() < 1e-5);
        assert!((ent.double_value(&[0]) - (e0 + e1)).abs() < 1e-5);
        // Sampling respects each component's mask.
        let mut rng = StdRng::seed_from_u64(1);
        let mut out = [0i64; 2];
        for _ in 0..500 {
            sample_discrete(&[3, 2], &logits, Some(&mask), &mut rng, &mut out);
            assert_ne!(out[0], 1);
        }
    }

    /// The diagonal Gaussian's log-density and entropy against the closed forms in f64, and the
    /// V-trace importance ratio exp(log pi - log mu) for the same continuous action.
    #[test]
    fn gaussian_log_prob_entropy_and_ratio_match_the_reference() {
        let space = ActionSpace::Box {
            low: vec![-2.0; 3],
            high: vec![2.0; 3],
        };
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..50 {
            let mut target = [0f32; 6];
            let mut behaviour = [0f32; 6];
            for i in 0..6 {
                target[i] = rng.random_range(-1.5..1.5);
                behaviour[i] = rng.random_range(-1.5..1.5);
            }
            let mut a = [0f32; 3];
            sample_gaussian(&behaviour, &mut rng, &mut a);
            let reference = |p: &[f32]| {
                let mut lp = 0.0;
                let mut ent = 0.0;
                for i in 0..3 {
                    let (mu, ls) = (p[i] as f64, p[3 + i] as f64);
                    let sd = ls.exp();
                    lp += -((a[i] as f64 - mu).powi(2)) / (2.0 * sd * sd)
                        - sd.ln()
                        - 0.5 * (2.0 * std::f64::consts::PI).ln();
                    ent += 0.5 + 0.5 * (2.0 * std::f64::consts::PI).ln() + ls;
                }
                (lp, ent)
            };
            let act = t(&a, &[1, 3]);
            let (lp_t, ent_t) = log_prob_entropy(&space, &t(&target, &[1, 6]), &act, None);
            let (lp_b, _) = log_prob_entropy(&space, &t(&behaviour, &[1, 6]), &act, None);
            let (want_t, want_ent) = reference(&target);
            let (want_b, _) = reference(&behaviour);
            assert!((lp_t.double_value(&[0]) - want_t).abs() < 1e-4);
            assert!((ent_t.double_value(&[0]) - want_ent).abs() < 1e-5);
            let ratio = (lp_t - lp_b).exp().double_value(&[0]);
            let want_ratio = (want_t - want_b).exp();
            assert!(
                (ratio - want_ratio).abs() < 1e-3 * want_ratio.max(1.0),
                "{ratio} vs {want_ratio}"
            );
        }
    }

    #[test]
    fn gaussian_samples_have_the_right_moments() {
        let mut rng = StdRng::seed_from_u64(3);
        let params = [1.0f32, -2.0, (0.5f32).ln(), (2.0f32).ln()];
        let mut sum = [0f64; 2];
        let mut sq = [0f64; 2];
        let n = 40000;
        let mut out = [0f32; 2];
        for _ in 0..n {
            sample_gaussian(&params, &mut rng, &mut out);
            for i in 0..2 {
                sum[i] += out[i] as f64;
                sq[i] += (out[i] as f64).powi(2);
            }
        }
        for (i, (mu, sd)) in [(1.0, 0.5), (-2.0, 2.0)].into_iter().enumerate() {
            let m = sum[i] / n as f64;
            let v = sq[i] / n as f64 - m * m;
            assert!((m - mu).abs() < 0.05, "{m}");
            assert!((v.sqrt() - sd).abs() < 0.05, "{}", v.sqrt());
        }
        let _ = Device::Cpu;
    }
}
