//! APPO: V-trace targets with PPO's clipped surrogate (Schulman et al. 2017), as Sample
//! Factory and RLlib define asynchronous PPO, with an optional KL penalty to the behaviour
//! policy. Over `epochs` passes of `minibatches` column groups per batch, on each minibatch:
//!
//! ```text
//! r   = pi(a|x) / mu(a|x)                    (mu: the behaviour policy that acted)
//! v_s, A = V-trace targets and advantages from the current values
//!          A = min(pg_rho_bar, r) (r_t + gamma v_{s+1} - V(x)), normalised per minibatch
//! L   = -mean(min(r A, clip(r, 1 - eps, 1 + eps) A))
//!       + baseline_cost * 0.5 * mean((v_s - V(x))^2)
//!       - entropy_cost * mean(H(pi))
//!       + kl_cost * mean(KL(mu || pi))
//! ```
//!
//! Means are over valid steps. With value normalisation the value loss is taken on normalised
//! targets and outputs, `((v_s - mu) / sigma - head(x))^2`. `eps` is `clip_ratio`; the clip is PPO's symmetric one (RLlib's;
//! Sample Factory clips to [1 / (1 + eps), 1 + eps]). KL(mu || pi) is the direction of PPO's
//! penalty (KL[pi_old, pi]).

use tch::Tensor;
use troupe::config::AppoConfig;
use troupe::model::{dist, Model};

use super::{Algorithm, Forward, Loss, Passes, TrainBatch};
use crate::vtrace::VTraceParams;

pub struct Appo {
    cfg: AppoConfig,
    vtrace: VTraceParams,
}

impl Appo {
    pub fn new(cfg: AppoConfig, discount: f64) -> Appo {
        let vtrace = VTraceParams {
            discount,
            rho_bar: cfg.rho_bar,
            c_bar: cfg.c_bar,
            pg_rho_bar: cfg.pg_rho_bar,
        };
        Appo { cfg, vtrace }
    }
}

impl Algorithm for Appo {
    fn name(&self) -> &'static str {
        "appo"
    }

    fn passes(&self) -> Passes {
        Passes {
            epochs: self.cfg.epochs,
            minibatches: self.cfg.minibatches,
        }
    }

    fn loss(&self, model: &Model, b: &TrainBatch) -> Loss {
        let f = Forward::compute(model, b, &self.vtrace);
        let adv = f.advantages(b, self.cfg.normalize_advantages);
        let ratio = (&f.log_probs - &f.behaviour_log_probs).exp();
        let eps = self.cfg.clip_ratio;
        let surrogate = (&ratio * &adv).minimum(&(ratio.clamp(1.0 - eps, 1.0 + eps) * &adv));
        let policy_loss = -b.masked_mean(&surrogate);
        let baseline_loss = f.value_loss(model, b);
        let entropy = b.masked_mean(&f.entropy);
        let action = &model.spec().env.action;
        let kl = b.masked_mean(&dist::kl_divergence(action, &b.behaviour, &f.params, b.masks.as_ref()));
        let mut total = &policy_loss + &baseline_loss * self.cfg.baseline_cost - &entropy * self.cfg.entropy_cost;
        if self.cfg.kl_cost > 0.0 {
            total += &kl * self.cfg.kl_cost;
        }
        let clipped = tch::no_grad(|| b.masked_mean(&(&ratio - 1.0).abs().gt(eps).to_kind(tch::Kind::Float)));
        let terms: Vec<(&'static str, Tensor)> = vec![
            ("policy", policy_loss.detach()),
            ("baseline", baseline_loss.detach()),
            ("entropy", entropy.detach()),
            ("kl", kl.detach()),
            ("clip_fraction", clipped),
        ];
        Loss {
            total,
            terms,
            value_targets: f.vtrace.vs,
            values: f.values,
            priorities: None,
        }
    }
}

#[cfg(test)]
mod tests {
    //! APPO's loss against a plain f64 computation of the formulas in the module docs, on
    //! random inputs: the network's outputs are taken as given, everything after them (the
    //! log-probabilities, V-trace, the clipped surrogate, the value loss, the entropy and the
    //! KL penalty) is recomputed here from scratch.
    #![allow(clippy::needless_range_loop)] // index loops mirror the formulas
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use tch::{Device, Kind};
    use troupe::config::ModelConfig;
    use troupe::model::ModelSpec;
    use troupe::spaces::{ActionSpace, EnvSpec, ObservationSpace, PolicySpec};

    const T: usize = 6;
    const B: usize = 4;
    const OBS: usize = 3;

    fn f64s(x: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(x.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    fn f32s(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    /// A random batch for `action`: two episodes end inside it (one terminated, followed by an
    /// invalid reset step; one truncated, with its last observation); the behaviour policy is
    /// the current one plus noise, so some ratios fall inside the clip and some outside.
    fn batch(model: &Model, rng: &mut StdRng) -> TrainBatch {
        let action = &model.spec().env.action;
        let masked = model.spec().env.action_mask;
        let obs: Vec<f64> = (0..(T + 1) * B * OBS).map(|_| rng.random_range(-2.0..2.0)).collect();
        let obs_t = Tensor::from_slice(&f32s(&obs)).view([(T + 1) as i64, B as i64, OBS as i64]);
        let (params_all, _, _) = tch::no_grad(|| {
            model.unroll(
                &obs_t,
                &Tensor::zeros([B as i64, 0], (Kind::Float, Device::Cpu)),
                &Tensor::zeros([(T + 1) as i64, B as i64], (Kind::Float, Device::Cpu)),
            )
        });
        let p = action.dist_params();
        let params = f64s(&params_all.narrow(0, 0, T as i64));
        // A Gaussian's ratio moves with every dimension's mean and log-std: less noise there.
        let noise = if action.is_continuous() { 0.15 } else { 0.6 };
        let behaviour: Vec<f64> = params.iter().map(|&x| x + rng.random_range(-noise..noise)).collect();
        let mut masks = vec![1u8; T * B * p];
        let mut actions_i = vec![0i64; T * B];
        let mut actions_f = vec![0f32; T * B * 2];
        for i in 0..T * B {
            match action {
                ActionSpace::Discrete { n } => {
                    let a = rng.random_range(0..*n);
                    actions_i[i] = a as i64;
                    if masked {
                        // One illegal choice per step, never the one taken.
                        masks[i * p + (a + 1) % n] = 0;
                    }
                }
                _ => {
                    for d in 0..2 {
                        actions_f[i * 2 + d] = rng.random_range(-1.5..1.5);
                    }
                }
            }
        }
        let rewards: Vec<f64> = (0..T * B).map(|_| rng.random_range(-1.0..1.0)).collect();
        let (mut term, mut trunc, mut valid) = (vec![0f32; T * B], vec![0f32; T * B], vec![1f32; T * B]);
        term[B] = 1.0; // step 1, column 0
        valid[2 * B] = 0.0;
        trunc[3 * B + 2] = 1.0;
        let trunc_obs: Vec<f32> = (0..OBS).map(|_| rng.random_range(-2.0..2.0)).collect();
        let flags = |v: &[f32]| Tensor::from_slice(v).view([T as i64, B as i64]);
        TrainBatch {
            t: T as i64,
            b: B as i64,
            obs: obs_t,
            actions: match action {
                ActionSpace::Box { .. } => Tensor::from_slice(&actions_f).view([T as i64, B as i64, 2]),
                _ => Tensor::from_slice(&actions_i).view([T as i64, B as i64, 1]),
            },
            rewards: Tensor::from_slice(&f32s(&rewards)).view([T as i64, B as i64]),
            terminated: flags(&term),
            truncated: flags(&trunc),
            valid: flags(&valid),
            any_absent: valid.contains(&0.0),
            behaviour: Tensor::from_slice(&f32s(&behaviour)).view([T as i64, B as i64, p as i64]),
            masks: masked.then(|| Tensor::from_slice(&masks).view([T as i64, B as i64, p as i64])),
            state0: Tensor::zeros([B as i64, 0], (Kind::Float, Device::Cpu)),
            truncation_obs: Tensor::from_slice(&trunc_obs).view([1, OBS as i64]),
            truncation_at: vec![(3, 2)],
            agents: Tensor::zeros([B as i64], (Kind::Int64, Device::Cpu)),
            states: None,
            truncation_states: None,
            replay: None,
        }
    }

    /// log-softmax of one categorical's logits, illegal entries at -inf.
    fn log_softmax(logits: &[f64], mask: &[u8]) -> Vec<f64> {
        let m = logits
            .iter()
            .zip(mask)
            .filter(|(_, &k)| k != 0)
            .map(|(&l, _)| l)
            .fold(f64::NEG_INFINITY, f64::max);
        let lse = m + logits
            .iter()
            .zip(mask)
            .filter(|(_, &k)| k != 0)
            .map(|(&l, _)| (l - m).exp())
            .sum::<f64>()
            .ln();
        logits
            .iter()
            .zip(mask)
            .map(|(&l, &k)| if k != 0 { l - lse } else { f64::NEG_INFINITY })
            .collect()
    }

    /// (log-probability of the action, entropy) under `params`, and KL(q || params) for
    /// behaviour parameters `q`.
    fn dist_terms(
        action: &ActionSpace,
        params: &[f64],
        q: &[f64],
        a_i: i64,
        a_f: &[f64],
        mask: &[u8],
    ) -> (f64, f64, f64, f64) {
        match action {
            ActionSpace::Box { .. } => {
                let (mut lp, mut lq, mut ent, mut kl) = (0.0, 0.0, 0.0, 0.0);
                let half_log_2pi = 0.5 * (2.0 * std::f64::consts::PI).ln();
                for d in 0..2 {
                    let (m, ls) = (params[d], params[2 + d]);
                    let (mq, lsq) = (q[d], q[2 + d]);
                    lp += -0.5 * ((a_f[d] - m) / ls.exp()).powi(2) - ls - half_log_2pi;
                    lq += -0.5 * ((a_f[d] - mq) / lsq.exp()).powi(2) - lsq - half_log_2pi;
                    ent += 0.5 + half_log_2pi + ls;
                    // KL(N(mq, sq) || N(m, s))
                    let (sq, s) = (lsq.exp(), ls.exp());
                    kl += (s / sq).ln() + (sq * sq + (mq - m).powi(2)) / (2.0 * s * s) - 0.5;
                }
                (lp, lq, ent, kl)
            }
            _ => {
                let lp_all = log_softmax(params, mask);
                let lq_all = log_softmax(q, mask);
                let legal = |i: usize| mask[i] != 0;
                let ent = -(0..params.len())
                    .filter(|&i| legal(i))
                    .map(|i| lp_all[i].exp() * lp_all[i])
                    .sum::<f64>();
                let kl = (0..params.len())
                    .filter(|&i| legal(i))
                    .map(|i| lq_all[i].exp() * (lq_all[i] - lp_all[i]))
                    .sum::<f64>();
                (lp_all[a_i as usize], lq_all[a_i as usize], ent, kl)
            }
        }
    }

    struct Reference {
        policy: f64,
        baseline: f64,
        entropy: f64,
        kl: f64,
        total: f64,
    }

    fn reference(model: &Model, b: &TrainBatch, cfg: &AppoConfig, gamma: f64) -> Reference {
        let action = &model.spec().env.action;
        let p = action.dist_params();
        let (params_all, values_all, _) = tch::no_grad(|| {
            model.unroll(
                &b.obs,
                &b.state0,
                &Tensor::zeros([(T + 1) as i64, B as i64], (Kind::Float, Device::Cpu)),
            )
        });
        let params = f64s(&params_all);
        let values = f64s(&values_all); // [T + 1][B]
        let trunc_value = f64s(&tch::no_grad(|| {
            model
                .step(&b.truncation_obs, &Tensor::zeros([1, 0], (Kind::Float, Device::Cpu)))
                .value
        }))[0];
        let q = f64s(&b.behaviour);
        let a_i: Vec<i64> = Vec::<i64>::try_from(b.actions.flatten(0, -1)).unwrap_or_default();
        let a_f = f64s(&b.actions);
        let rewards = f64s(&b.rewards);
        let term = f64s(&b.terminated);
        let trunc = f64s(&b.truncated);
        let valid = f64s(&b.valid);
        let mask: Vec<u8> = match &b.masks {
            Some(m) => Vec::<u8>::try_from(m.flatten(0, -1)).unwrap(),
            None => vec![1; T * B * p],
        };
        let at = |t: usize, c: usize| t * B + c;
        let (mut lp, mut lq, mut ent, mut kl) =
            (vec![0.0; T * B], vec![0.0; T * B], vec![0.0; T * B], vec![0.0; T * B]);
        for i in 0..T * B {
            let r = dist_terms(
                action,
                &params[i * p..(i + 1) * p],
                &q[i * p..(i + 1) * p],
                a_i.get(i).copied().unwrap_or(0),
                &a_f[(i * 2).min(a_f.len())..(i * 2 + 2).min(a_f.len())],
                &mask[i * p..(i + 1) * p],
            );
            (lp[i], lq[i], ent[i], kl[i]) = r;
        }
        // V-trace, backwards.
        let mut vs = [0.0; T * B];
        let mut adv = [0.0; T * B];
        for c in 0..B {
            for s in (0..T).rev() {
                let i = at(s, c);
                let ratio = (lp[i] - lq[i]).exp();
                let (rho, cc, pg_rho) = (ratio.min(cfg.rho_bar), ratio.min(cfg.c_bar), ratio.min(cfg.pg_rho_bar));
                let ended = term[i] > 0.5 || trunc[i] > 0.5;
                let next_v = if trunc[i] > 0.5 && (s, c) == (3, 2) {
                    trunc_value
                } else {
                    values[at(s + 1, c)]
                };
                let disc = if term[i] > 0.5 { 0.0 } else { gamma };
                let delta = rho * (rewards[i] + disc * next_v - values[i]);
                let later = if !ended && s + 1 < T {
                    vs[at(s + 1, c)] - values[at(s + 1, c)]
                } else {
                    0.0
                };
                vs[i] = values[i] + delta + if ended { 0.0 } else { gamma } * cc * later;
                let vs_next = if ended {
                    next_v
                } else if s + 1 < T {
                    vs[at(s + 1, c)]
                } else {
                    values[at(T, c)]
                };
                adv[i] = pg_rho * (rewards[i] + disc * vs_next - values[i]);
            }
        }
        let n: f64 = valid.iter().sum();
        let mean = |x: &dyn Fn(usize) -> f64| (0..T * B).map(|i| valid[i] * x(i)).sum::<f64>() / n;
        let am = mean(&|i| adv[i]);
        let astd = (mean(&|i| (adv[i] - am).powi(2)) * n / (n - 1.0)).sqrt();
        let nadv: Vec<f64> = adv.iter().map(|a| (a - am) / (astd + 1e-8)).collect();
        let eps = cfg.clip_ratio;
        let policy = -mean(&|i| {
            let r = (lp[i] - lq[i]).exp();
            (r * nadv[i]).min(r.clamp(1.0 - eps, 1.0 + eps) * nadv[i])
        });
        let baseline = 0.5 * mean(&|i| (vs[i] - values[i]).powi(2));
        let entropy = mean(&|i| ent[i]);
        let kl = mean(&|i| kl[i]);
        Reference {
            policy,
            baseline,
            entropy,
            kl,
            total: policy + cfg.baseline_cost * baseline - cfg.entropy_cost * entropy + cfg.kl_cost * kl,
        }
    }

    fn check(action: ActionSpace, masked: bool) {
        let spec = ModelSpec {
            env: PolicySpec::single(&EnvSpec::single(
                "Test-v0",
                ObservationSpace::f32(&[OBS]),
                action,
                masked,
            )),
            model: ModelConfig {
                hidden_sizes: vec![16],
                init_log_std: -0.3,
                ..ModelConfig::default()
            },
        };
        let cfg = AppoConfig {
            rho_bar: 1.0,
            c_bar: 0.9,
            pg_rho_bar: 1.2,
            baseline_cost: 0.7,
            entropy_cost: 0.03,
            normalize_advantages: true,
            clip_ratio: 0.2,
            kl_cost: 0.5,
            epochs: 1,
            minibatches: 1,
        };
        let gamma = 0.97;
        let appo = Appo::new(cfg.clone(), gamma);
        for seed in 0..4u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            tch::manual_seed(seed as i64);
            let model = Model::new(&spec, Device::Cpu).unwrap();
            let b = batch(&model, &mut rng);
            let got = appo.loss(&model, &b);
            let term = |name: &str| got.terms.iter().find(|(n, _)| *n == name).unwrap().1.double_value(&[]);
            let want = reference(&model, &b, &cfg, gamma);
            let close = |what: &str, g: f64, w: f64| {
                assert!(
                    (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "seed {seed} {what}: got {g}, reference {w}"
                );
            };
            close("policy", term("policy"), want.policy);
            close("baseline", term("baseline"), want.baseline);
            close("entropy", term("entropy"), want.entropy);
            close("kl", term("kl"), want.kl);
            close("total", got.total.double_value(&[]), want.total);
            // The inputs exercise the clip: some ratios are clipped, some not.
            let clipped = term("clip_fraction");
            assert!(clipped > 0.0 && clipped < 1.0, "seed {seed}: clip fraction {clipped}");
            assert!(want.kl > 1e-3, "seed {seed}: the behaviour policy differs");
        }
    }

    #[test]
    fn appo_loss_matches_the_reference_for_a_masked_categorical() {
        check(ActionSpace::Discrete { n: 4 }, true);
    }

    #[test]
    fn appo_loss_matches_the_reference_for_a_categorical() {
        check(ActionSpace::Discrete { n: 3 }, false);
    }

    #[test]
    fn appo_loss_matches_the_reference_for_a_gaussian() {
        check(
            ActionSpace::Box {
                low: vec![-1.0; 2],
                high: vec![1.0; 2],
            },
            false,
        );
    }
}
