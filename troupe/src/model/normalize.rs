//! Running statistics that travel with the weights, as non-trainable variables of the model
//! (so they are in every policy file and every actor applies the same ones).
//!
//! - [`ObsNorm`]: the observations' running mean and variance, merged exactly from each batch
//!   (Chan et al.'s parallel update, as Gymnasium's `NormalizeObservation` and SB3's
//!   `VecNormalize` keep them). Actors apply `clamp((x - mean) / sqrt(var + 1e-8), ±clip)`.
//! - [`ValueNorm`]: the value targets' mean and variance, for value-target normalisation
//!   (PopArt, van Hasselt et al. 2016): each batch is mixed in with weight
//!   `beta_t = max(beta, 1 / t)` (an exact average of the first `1 / beta` batches, then an
//!   exponential one); `sigma = sqrt(var)` within [1e-4, 1e6]. The value head predicts
//!   `(v - mu) / sigma`.

use tch::{nn, Kind, Tensor};

/// Variance floor added before the square root.
const OBS_EPS: f64 = 1e-8;

pub struct ObsNorm {
    mean: Tensor,
    var: Tensor,
    count: Tensor,
    clip: f64,
}

impl ObsNorm {
    /// Variables `obs_norm.mean`, `obs_norm.var` (the observation's shape) and `obs_norm.count`
    /// (`[1]`), starting at mean 0, variance 1, count 0.
    pub fn new(path: nn::Path<'_>, shape: &[i64], clip: f64) -> ObsNorm {
        ObsNorm {
            mean: path.zeros_no_train("mean", shape),
            var: path.ones_no_train("var", shape),
            count: path.zeros_no_train("count", &[1]),
            clip,
        }
    }

    /// `x` float `[M, obs...]`.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        ((x - &self.mean) / (&self.var + OBS_EPS).sqrt()).clamp(-self.clip, self.clip)
    }

    /// Merges the rows of `x` (float `[M, obs...]`) whose `weight` (`[M]`, 0 or 1) is 1.
    /// Returns false, leaving the statistics as they were, when the batch holds a non-finite
    /// value (it would poison every later normalisation).
    pub fn update(&mut self, x: &Tensor, weight: &Tensor) -> bool {
        tch::no_grad(|| {
            let x = x.to_kind(Kind::Double);
            let shape = x.size();
            let w = weight.to_kind(Kind::Double).view(
                [shape[0]]
                    .iter()
                    .chain(vec![1; shape.len() - 1].iter())
                    .copied()
                    .collect::<Vec<i64>>()
                    .as_slice(),
            );
            let n = w.sum(Kind::Double);
            let nb = n.double_value(&[]);
            if nb < 1.0 {
                return true;
            }
            let bmean = (&x * &w).sum_dim_intlist(0, false, Kind::Double) / nb;
            let bvar = ((&x - &bmean).square() * &w).sum_dim_intlist(0, false, Kind::Double) / nb;
            let na = self.count.double_value(&[0]);
            let total = na + nb;
            let mean = self.mean.to_kind(Kind::Double);
            let delta = &bmean - &mean;
            let new_mean = &mean + &delta * (nb / total);
            let m2 = self.var.to_kind(Kind::Double) * na + bvar * nb + delta.square() * (na * nb / total);
            let new_var = m2 / total;
            let finite = |t: &Tensor| bool::try_from(t.isfinite().all()).unwrap_or(false);
            if !finite(&new_mean) || !finite(&new_var) {
                return false;
            }
            self.mean.copy_(&new_mean);
            self.var.copy_(&new_var);
            let _ = self.count.fill_(total);
            true
        })
    }

    pub fn count(&self) -> f64 {
        self.count.double_value(&[0])
    }

    /// A copy of the statistics, for [`ObsNorm::restore`].
    pub fn save(&self) -> [Tensor; 3] {
        [self.mean.copy(), self.var.copy(), self.count.copy()]
    }

    /// Puts back statistics from [`ObsNorm::save`] (an update that was skipped takes nothing
    /// from its batch).
    pub fn restore(&mut self, saved: &[Tensor; 3]) {
        tch::no_grad(|| {
            self.mean.copy_(&saved[0]);
            self.var.copy_(&saved[1]);
            self.count.copy_(&saved[2]);
        });
    }
}

pub struct ValueNorm {
    mu: Tensor,
    var: Tensor,
    count: Tensor,
}

/// The statistics as plain numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValueStats {
    pub mean: f64,
    pub std: f64,
}

impl ValueNorm {
    /// Variables `value.norm.mean`, `.var` and `.count` (each `[1]`), starting at mean 0,
    /// variance 1.
    pub fn new(path: nn::Path<'_>) -> ValueNorm {
        ValueNorm {
            mu: path.zeros_no_train("mean", &[1]),
            var: path.ones_no_train("var", &[1]),
            count: path.zeros_no_train("count", &[1]),
        }
    }

    pub fn stats(&self) -> ValueStats {
        ValueStats {
            mean: self.mu.double_value(&[0]),
            std: self.var.double_value(&[0]).max(0.0).sqrt().clamp(1e-4, 1e6),
        }
    }

    /// Folds in one batch's targets (their mean and variance) as a mixture with weight
    /// `beta_t`: `mu' = mu + b d`, `var' = (1 - b) var + b var_batch + b (1 - b) d^2` with
    /// `d = mean - mu`. Keeping the variance (not the second moment) avoids the cancellation
    /// of `nu - mu^2` when returns are far from 0 compared with their spread. Returns the
    /// statistics before and after.
    pub fn update(&mut self, mean: f64, var: f64, beta: f64) -> (ValueStats, ValueStats) {
        let before = self.stats();
        let t = self.count.double_value(&[0]) + 1.0;
        let b = beta.max(1.0 / t);
        let mu = self.mu.double_value(&[0]);
        let old_var = self.var.double_value(&[0]);
        let d = mean - mu;
        tch::no_grad(|| {
            let _ = self.mu.fill_(mu + b * d);
            let _ = self.var.fill_((1.0 - b) * old_var + b * var + b * (1.0 - b) * d * d);
            let _ = self.count.fill_(t);
        });
        (before, self.stats())
    }
}
