//! IMPALA (Espeholt et al. 2018): one pass over each batch,
//!
//! ```text
//! L = -mean(log pi(a|x) * A) + baseline_cost * 0.5 * mean((v_s - V(x))^2) - entropy_cost * mean(H(pi))
//! ```
//!
//! with V-trace targets `v_s` and advantages `A = min(pg_rho_bar, pi/mu) (r + gamma v_{s+1} - V(x))`
//! (normalised per batch when `normalize_advantages`). Means are over valid steps.

use tch::Tensor;
use troupe::config::ImpalaConfig;
use troupe::model::Model;

use super::{Algorithm, Forward, Loss, Passes, TrainBatch};
use crate::vtrace::VTraceParams;

pub struct Impala {
    cfg: ImpalaConfig,
    vtrace: VTraceParams,
}

impl Impala {
    pub fn new(cfg: ImpalaConfig, discount: f64) -> Impala {
        let vtrace = VTraceParams {
            discount,
            rho_bar: cfg.rho_bar,
            c_bar: cfg.c_bar,
            pg_rho_bar: cfg.pg_rho_bar,
        };
        Impala { cfg, vtrace }
    }
}

impl Algorithm for Impala {
    fn name(&self) -> &'static str {
        "impala"
    }

    fn passes(&self) -> Passes {
        Passes {
            epochs: 1,
            minibatches: 1,
        }
    }

    fn loss(&self, model: &Model, b: &TrainBatch) -> Loss {
        let f = Forward::compute(model, b, &self.vtrace);
        let adv = f.advantages(b, self.cfg.normalize_advantages);
        let pg_loss = -b.masked_mean(&(&f.log_probs * adv));
        let baseline_loss = f.value_loss(model, b);
        let entropy = b.masked_mean(&f.entropy);
        let total = &pg_loss + &baseline_loss * self.cfg.baseline_cost - &entropy * self.cfg.entropy_cost;
        let terms: Vec<(&'static str, Tensor)> = vec![
            ("pg", pg_loss.detach()),
            ("baseline", baseline_loss.detach()),
            ("entropy", entropy.detach()),
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
