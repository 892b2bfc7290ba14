//! V-trace targets (Espeholt et al., 2018, "IMPALA", section 4.1), with episode ends inside the
//! unroll and truncation handled apart from termination.
//!
//! For step s of an unroll of length T:
//!
//! ```text
//! delta_s = rho_s (r_s + gamma_s * V_next_s - V(x_s))        rho_s = min(rho_bar, pi/mu)
//! v_s - V(x_s) = delta_s + trace_s * c_s * (v_{s+1} - V(x_{s+1}))   c_s = min(c_bar, pi/mu)
//! ```
//!
//! where `V_next_s` is V(x_{s+1}) inside an episode, the value of the last observation when the
//! episode was truncated at s, and the bootstrap value at s = T - 1; `gamma_s` is 0 when the
//! episode terminated at s; `trace_s` is 0 whenever the episode ended at s (nothing after it
//! belongs to the same episode). The policy-gradient advantage is
//! `min(pg_rho_bar, pi/mu) * (r_s + gamma_s * v_next_s - V(x_s))`, with `v_next_s` = v_{s+1}
//! inside an episode and `V_next_s` at its end or at the unroll's end.

use tch::Tensor;

pub struct VTraceInput<'a> {
    /// log(pi(a|x) / mu(a|x)), [T, B].
    pub log_rhos: &'a Tensor,
    pub rewards: &'a Tensor,
    /// V(x_s), [T, B].
    pub values: &'a Tensor,
    /// V_next_s, [T, B] (see the module docs).
    pub next_values: &'a Tensor,
    /// gamma * (1 - terminated_s), [T, B].
    pub discounts: &'a Tensor,
    /// gamma * (1 - (terminated_s or truncated_s)), [T, B].
    pub trace_discounts: &'a Tensor,
    pub rho_bar: f64,
    pub c_bar: f64,
    pub pg_rho_bar: f64,
    /// Where false, the step passes the trajectory through: its importance weights are 1
    /// whatever the clips (see [`vtrace_from_flags`]). `None`: every step is present.
    pub present: Option<&'a Tensor>,
}

pub struct VTraceOutput {
    /// Value targets v_s, [T, B].
    pub vs: Tensor,
    pub pg_advantages: Tensor,
}

/// Computes the targets without gradient.
pub fn vtrace(x: &VTraceInput<'_>) -> VTraceOutput {
    tch::no_grad(|| {
        let rhos = x.log_rhos.exp();
        let (clipped_rhos, cs) = match x.present {
            Some(p) => (
                rhos.clamp_max(x.rho_bar).where_self(p, &rhos.ones_like()),
                rhos.clamp_max(x.c_bar).where_self(p, &rhos.ones_like()),
            ),
            None => (rhos.clamp_max(x.rho_bar), rhos.clamp_max(x.c_bar)),
        };
        let deltas = &clipped_rhos * (x.rewards + x.discounts * x.next_values - x.values);
        let steps = deltas.size()[0];
        let trace = x.trace_discounts * &cs;
        let mut acc = deltas.get(steps - 1).zeros_like();
        let mut out = Vec::with_capacity(steps as usize);
        for s in (0..steps).rev() {
            acc = deltas.get(s) + trace.get(s) * &acc;
            out.push(acc.shallow_clone());
        }
        out.reverse();
        let vs = Tensor::stack(&out, 0) + x.values;
        // v_next: v_{s+1} inside an episode; V_next_s at an episode's end. At s = T - 1 the
        // shifted row is V_next_s (the bootstrap value) already.
        let shifted = Tensor::cat(&[vs.narrow(0, 1, steps - 1), x.next_values.narrow(0, steps - 1, 1)], 0);
        let vs_next = shifted.where_self(&x.trace_discounts.gt(0.0), x.next_values);
        let pg_rhos = rhos.clamp_max(x.pg_rho_bar);
        let pg_advantages = pg_rhos * (x.rewards + x.discounts * vs_next - x.values);
        VTraceOutput { vs, pg_advantages }
    })
}

/// Discount and clipping thresholds.
#[derive(Debug, Clone, Copy)]
pub struct VTraceParams {
    pub discount: f64,
    pub rho_bar: f64,
    pub c_bar: f64,
    pub pg_rho_bar: f64,
}

/// Episode ends of a [T, B] batch, as 0/1 floats.
pub struct Ends<'a> {
    pub terminated: &'a Tensor,
    pub truncated: &'a Tensor,
    /// Value of the last observation at truncated steps (anything elsewhere), [T, B].
    pub truncation_values: &'a Tensor,
    /// 0 where the column took no step (an absent agent, or an env's reset step), [T, B];
    /// `None` where every step is present (most single-agent batches: no pass-through work).
    pub valid: Option<&'a Tensor>,
}

/// V-trace from the values of all T + 1 observations ([T + 1, B], the last row is the bootstrap)
/// and the episode-end flags: builds `V_next`, the discounts and the trace discounts.
///
/// A step the column took no part in (`valid` 0: its agent was absent, or the env only reset)
/// passes the trajectory through: its value is that of the column's next present step, its
/// importance weights are 1 and it is not discounted (time, for an agent, is its own steps), so
/// its target is its reward plus the next present step's, and a present step before it
/// bootstraps from that next present step. Where an agent's episode ended, the flags cut the
/// trace as usual, so the absent steps after an agent finished never reach its episode.
pub fn vtrace_from_flags(
    log_rhos: &Tensor,
    rewards: &Tensor,
    values_all: &Tensor,
    ends: &Ends<'_>,
    p: &VTraceParams,
) -> VTraceOutput {
    tch::no_grad(|| {
        let steps = rewards.size()[0];
        let done = (ends.terminated + ends.truncated).clamp_max(1.0);
        let present = ends.valid.map(|v| v.gt(0.5));
        let values_all = match &present {
            // Values carried back over absent steps: row s is V(x_s) where present, else row
            // s + 1's.
            Some(present) => {
                let mut carried = vec![values_all.get(steps)];
                for s in (0..steps).rev() {
                    let next = carried.last().expect("one row").shallow_clone();
                    carried.push(values_all.get(s).where_self(&present.get(s), &next));
                }
                carried.reverse();
                Tensor::stack(&carried, 0)
            }
            None => values_all.shallow_clone(),
        };
        let values = values_all.narrow(0, 0, steps);
        let following = values_all.narrow(0, 1, steps);
        // Truncated: the value of the episode's last observation. Terminated: multiplied by 0.
        let next_values = ends.truncation_values.where_self(&ends.truncated.gt(0.5), &following);
        // An absent step is not discounted (time, for an agent, is its own steps) and its
        // importance weight is 1.
        let (gamma, log_rhos) = match &present {
            Some(present) => (
                Tensor::full_like(rewards, p.discount).where_self(present, &rewards.ones_like()),
                log_rhos.where_self(present, &log_rhos.zeros_like()),
            ),
            None => (Tensor::full_like(rewards, p.discount), log_rhos.shallow_clone()),
        };
        let discounts = (1.0 - ends.terminated) * &gamma;
        let trace_discounts = (1.0 - done) * &gamma;
        vtrace(&VTraceInput {
            present: present.as_ref(),
            log_rhos: &log_rhos,
            rewards,
            values: &values,
            next_values: &next_values,
            discounts: &discounts,
            trace_discounts: &trace_discounts,
            rho_bar: p.rho_bar,
            c_bar: p.c_bar,
            pg_rho_bar: p.pg_rho_bar,
        })
    })
}

#[cfg(test)]
mod tests {
    //! Checks against a plain f64 implementation of the paper's sum (not the recursion):
    //! v_s = V(x_s) + sum_{t=s}^{end} (prod_{i=s}^{t-1} gamma c_i) delta_t, where the sum stops at
    //! the unroll's end or the step where the episode ended.
    #![allow(clippy::needless_range_loop)] // index loops mirror the formula
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use tch::{Device, Kind};

    struct Case {
        t: usize,
        b: usize,
        gamma: f64,
        log_rhos: Vec<Vec<f64>>,
        rewards: Vec<Vec<f64>>,
        /// [T + 1][B].
        values: Vec<Vec<f64>>,
        terminated: Vec<Vec<bool>>,
        truncated: Vec<Vec<bool>>,
        truncation_values: Vec<Vec<f64>>,
    }

    fn random_case(rng: &mut StdRng, t: usize, b: usize) -> Case {
        let grid = |rng: &mut StdRng, rows: usize, f: &mut dyn FnMut(&mut StdRng) -> f64| {
            (0..rows)
                .map(|_| (0..b).map(|_| f(rng)).collect())
                .collect::<Vec<Vec<f64>>>()
        };
        let terminated: Vec<Vec<bool>> = (0..t)
            .map(|_| (0..b).map(|_| rng.random_bool(0.15)).collect())
            .collect();
        let truncated = (0..t)
            .map(|s| {
                (0..b)
                    .map(|c| !terminated[s][c] && rng.random_bool(0.1) || terminated[s][c] && rng.random_bool(0.05))
                    .collect()
            })
            .collect();
        Case {
            t,
            b,
            gamma: 0.97,
            // exp(U(-1.5, 1.5)) spans ratios from 0.22 to 4.5: both sides of clips at 1.
            log_rhos: grid(rng, t, &mut |r| r.random_range(-1.5..1.5)),
            rewards: grid(rng, t, &mut |r| r.random_range(-1.0..2.0)),
            values: grid(rng, t + 1, &mut |r| r.random_range(-3.0..3.0)),
            terminated,
            truncated,
            truncation_values: grid(rng, t, &mut |r| r.random_range(-3.0..3.0)),
        }
    }

    /// Returns (vs, pg_advantages), [T][B].
    fn reference(c: &Case, rho_bar: f64, c_bar: f64, pg_rho_bar: f64) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
        let ended = |s: usize, j: usize| c.terminated[s][j] || c.truncated[s][j];
        // Value of what follows step s, and the discount applied to it.
        let next_value = |s: usize, j: usize| -> f64 {
            if c.terminated[s][j] {
                0.0
            } else if c.truncated[s][j] {
                c.truncation_values[s][j]
            } else {
                c.values[s + 1][j]
            }
        };
        let delta = |s: usize, j: usize| -> f64 {
            let rho = c.log_rhos[s][j].exp().min(rho_bar);
            rho * (c.rewards[s][j] + c.gamma * next_value(s, j) - c.values[s][j])
        };
        let mut vs = vec![vec![0.0; c.b]; c.t];
        for s in 0..c.t {
            for j in 0..c.b {
                let mut sum = 0.0;
                let mut prod = 1.0;
                for t in s..c.t {
                    if t > s {
                        if ended(t - 1, j) {
                            break;
                        }
                        prod *= c.gamma * c.log_rhos[t - 1][j].exp().min(c_bar);
                    }
                    sum += prod * delta(t, j);
                }
                vs[s][j] = c.values[s][j] + sum;
            }
        }
        let mut pg = vec![vec![0.0; c.b]; c.t];
        for s in 0..c.t {
            for j in 0..c.b {
                let v_next = if ended(s, j) || s == c.t - 1 {
                    next_value(s, j)
                } else {
                    vs[s + 1][j]
                };
                let v_next = if c.terminated[s][j] { 0.0 } else { v_next };
                let rho = c.log_rhos[s][j].exp().min(pg_rho_bar);
                pg[s][j] = rho * (c.rewards[s][j] + c.gamma * v_next - c.values[s][j]);
            }
        }
        (vs, pg)
    }

    fn tensor(rows: &[Vec<f64>]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().map(|&x| x as f32).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, rows[0].len() as i64])
    }

    fn flags(rows: &[Vec<bool>]) -> Tensor {
        tensor(
            &rows
                .iter()
                .map(|r| r.iter().map(|&x| x as u8 as f64).collect())
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn matches_the_papers_formula_on_random_inputs() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut checked_ends = 0;
        for (i, &(rho_bar, c_bar, pg_rho_bar)) in [(1.0, 1.0, 1.0), (1.5, 0.8, 1.2), (100.0, 100.0, 100.0)]
            .iter()
            .enumerate()
        {
            for _ in 0..4 {
                let c = random_case(&mut rng, 12 + i, 7);
                checked_ends += c
                    .terminated
                    .iter()
                    .chain(&c.truncated)
                    .flatten()
                    .filter(|&&x| x)
                    .count();
                let (want_vs, want_pg) = reference(&c, rho_bar, c_bar, pg_rho_bar);
                let out = vtrace_from_flags(
                    &tensor(&c.log_rhos),
                    &tensor(&c.rewards),
                    &tensor(&c.values),
                    &Ends {
                        terminated: &flags(&c.terminated),
                        truncated: &flags(&c.truncated),
                        truncation_values: &tensor(&c.truncation_values),
                        valid: Some(&flags(&c.terminated).ones_like()),
                    },
                    &VTraceParams {
                        discount: c.gamma,
                        rho_bar,
                        c_bar,
                        pg_rho_bar,
                    },
                );
                let got_vs = Vec::<f32>::try_from(out.vs.flatten(0, -1)).unwrap();
                let got_pg = Vec::<f32>::try_from(out.pg_advantages.flatten(0, -1)).unwrap();
                for (k, (g, w)) in got_vs.iter().zip(want_vs.iter().flatten()).enumerate() {
                    assert!((*g as f64 - w).abs() < 1e-4, "vs[{k}]: {g} vs {w}");
                }
                for (k, (g, w)) in got_pg.iter().zip(want_pg.iter().flatten()).enumerate() {
                    assert!((*g as f64 - w).abs() < 1e-4, "pg[{k}]: {g} vs {w}");
                }
            }
        }
        assert!(checked_ends > 50, "the cases include episode ends: {checked_ends}");
    }

    #[test]
    fn on_policy_without_ends_is_the_discounted_n_step_return() {
        // rho = c = 1 everywhere and no ends: v_s = sum_t gamma^(t-s) r_t + gamma^(T-s) V(x_T).
        let (t, gamma) = (5usize, 0.9);
        let rewards = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0]).view([5, 1]);
        let values_all = Tensor::from_slice(&[0.5f32, -1.0, 2.0, 0.0, 1.0, 10.0]).view([6, 1]);
        let zeros = Tensor::zeros([5, 1], (Kind::Float, Device::Cpu));
        let out = vtrace_from_flags(
            &zeros,
            &rewards,
            &values_all,
            &Ends {
                terminated: &zeros,
                truncated: &zeros,
                truncation_values: &zeros,
                valid: None,
            },
            &VTraceParams {
                discount: gamma,
                rho_bar: 1.0,
                c_bar: 1.0,
                pg_rho_bar: 1.0,
            },
        );
        let vs = Vec::<f32>::try_from(out.vs.flatten(0, -1)).unwrap();
        for s in 0..t {
            let mut want = 0.0;
            for (k, r) in (s..t).enumerate() {
                want += gamma.powi(k as i32) * (r + 1) as f64;
            }
            want += gamma.powi((t - s) as i32) * 10.0;
            assert!((vs[s] as f64 - want).abs() < 1e-4, "{s}: {} vs {want}", vs[s]);
        }
    }

    /// A multi-agent unroll: agents finish at different times (then sit out, absent, until
    /// the env's episode ends and they start again) and skip turns mid-episode. Each column's
    /// targets at its present steps equal the paper's formula on that agent's own trajectory:
    /// its present steps alone, in order, bootstrapping from the unroll's last observation.
    #[test]
    fn absent_steps_leave_each_agents_trajectory_whole() {
        let mut rng = StdRng::seed_from_u64(5);
        let (t, b) = (24usize, 6usize);
        for &(rho_bar, c_bar, pg_rho_bar) in &[(1.0, 1.0, 1.0), (1.5, 0.8, 1.2)] {
            for _ in 0..6 {
                let mut c = random_case(&mut rng, t, b);
                // Absent runs: after an agent's episode ends (until a random reset), and single
                // skipped turns; no reward on an absent step (the agent got none).
                let mut valid = vec![vec![true; b]; t];
                for j in 0..b {
                    let mut s = 0;
                    while s < t {
                        if rng.random_bool(0.12) && s > 0 {
                            valid[s][j] = false; // not its turn
                        }
                        if valid[s][j] && (c.terminated[s][j] || c.truncated[s][j]) && rng.random_bool(0.6) {
                            let gap = rng.random_range(1..5);
                            for k in s + 1..(s + 1 + gap).min(t) {
                                valid[k][j] = false;
                            }
                            s += gap;
                        }
                        s += 1;
                    }
                }
                for s in 0..t {
                    for j in 0..b {
                        if !valid[s][j] {
                            c.rewards[s][j] = 0.0;
                            c.terminated[s][j] = false;
                            c.truncated[s][j] = false;
                        }
                    }
                }
                let valid_rows: Vec<Vec<f64>> = valid
                    .iter()
                    .map(|r| r.iter().map(|&v| v as u8 as f64).collect())
                    .collect();
                let out = vtrace_from_flags(
                    &tensor(&c.log_rhos),
                    &tensor(&c.rewards),
                    &tensor(&c.values),
                    &Ends {
                        terminated: &flags(&c.terminated),
                        truncated: &flags(&c.truncated),
                        truncation_values: &tensor(&c.truncation_values),
                        valid: Some(&tensor(&valid_rows)),
                    },
                    &VTraceParams {
                        discount: c.gamma,
                        rho_bar,
                        c_bar,
                        pg_rho_bar,
                    },
                );
                let got_vs = Vec::<f32>::try_from(out.vs.flatten(0, -1)).unwrap();
                let got_pg = Vec::<f32>::try_from(out.pg_advantages.flatten(0, -1)).unwrap();
                for j in 0..b {
                    let steps: Vec<usize> = (0..t).filter(|&s| valid[s][j]).collect();
                    if steps.is_empty() {
                        continue;
                    }
                    let col =
                        |rows: &[Vec<f64>]| -> Vec<Vec<f64>> { steps.iter().map(|&s| vec![rows[s][j]]).collect() };
                    let colb =
                        |rows: &[Vec<bool>]| -> Vec<Vec<bool>> { steps.iter().map(|&s| vec![rows[s][j]]).collect() };
                    let mut values = col(&c.values);
                    values.push(vec![c.values[t][j]]);
                    let own = Case {
                        t: steps.len(),
                        b: 1,
                        gamma: c.gamma,
                        log_rhos: col(&c.log_rhos),
                        rewards: col(&c.rewards),
                        values,
                        terminated: colb(&c.terminated),
                        truncated: colb(&c.truncated),
                        truncation_values: col(&c.truncation_values),
                    };
                    let (want_vs, want_pg) = reference(&own, rho_bar, c_bar, pg_rho_bar);
                    for (k, &s) in steps.iter().enumerate() {
                        let (gv, gp) = (got_vs[s * b + j] as f64, got_pg[s * b + j] as f64);
                        assert!(
                            (gv - want_vs[k][0]).abs() < 1e-4,
                            "vs[{s}][{j}]: {gv} vs {}",
                            want_vs[k][0]
                        );
                        assert!(
                            (gp - want_pg[k][0]).abs() < 1e-4,
                            "pg[{s}][{j}]: {gp} vs {}",
                            want_pg[k][0]
                        );
                    }
                }
            }
        }
    }
}
