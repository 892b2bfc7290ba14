//! The model thread: owns the network and optimizer (tch tensors are not `Sync`, so they live
//! on one OS thread), turns queued rollouts into [T, B] batches, takes IMPALA updates and hands
//! weight snapshots to the publisher every K updates.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tch::nn::{self, OptimizerConfig};
use tch::{Device, Kind, Tensor};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use troupe::config::{LearnerConfig, Optimizer};
use troupe::model::{dist, Model, ModelSpec};
use troupe::spaces::ObsDType;
use troupe::telemetry::names;
use troupe::RunConfig;

use crate::batch::{Batch, Batcher, Columns, Rows};
use crate::vtrace::{vtrace_from_flags, Ends, VTraceParams};

/// Weights to publish as a policy version.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub parent_version: u64,
    pub learner_step: u64,
    pub frames: u64,
    pub blob: Vec<u8>,
}

/// What one update measured.
#[derive(Debug, Clone, Copy)]
pub struct UpdateStats {
    pub total_loss: f64,
    pub pg_loss: f64,
    pub baseline_loss: f64,
    pub entropy: f64,
    pub grad_norm: f64,
    /// 1 - Var(targets - values) / Var(targets): how much of the value targets' variance the
    /// value net explains (1 is perfect, 0 no better than a constant). The value loss itself
    /// grows with the returns; this does not.
    pub explained_variance: f64,
    /// Why the update was skipped (the weights did not change), if it was: `non_finite_loss`
    /// or `non_finite_gradient`.
    pub skipped: Option<&'static str>,
}

pub struct Trainer {
    net: Model,
    opt: nn::Optimizer,
    cfg: LearnerConfig,
    device: Device,
    pub updates: u64,
    pub frames: u64,
    /// Version of the weights as they were last snapshotted.
    pub version: u64,
}

/// Raw bytes of `kind` elements as a CPU tensor of `shape` (one copy).
fn tensor_of(rows: &Rows, shape: &[i64], kind: Kind) -> Tensor {
    Tensor::from_data_size(&rows.data, shape, kind)
}

impl Trainer {
    pub fn new(run: &RunConfig, spec: &ModelSpec, device: Device) -> anyhow::Result<Trainer> {
        let mut net = Model::new(spec, device)?;
        net.set_env_config(&run.env);
        let l = &run.learner;
        let opt = match l.optimizer {
            Optimizer::Adam => nn::Adam::default().build(net.var_store(), l.learning_rate)?,
            Optimizer::Rmsprop => nn::RmsProp {
                alpha: l.rmsprop_alpha,
                eps: l.rmsprop_eps,
                ..Default::default()
            }
            .build(net.var_store(), l.learning_rate)?,
        };
        Ok(Trainer {
            net,
            opt,
            cfg: l.clone(),
            device,
            updates: 0,
            frames: 0,
            version: 0,
        })
    }

    pub fn model(&self) -> &Model {
        &self.net
    }

    /// Starts from stored weights (a restarted learner resumes from the latest version).
    pub fn load(&mut self, version: u64, learner_step: u64, frames: u64, blob: &[u8]) -> anyhow::Result<()> {
        self.net.load_safetensors(blob)?;
        self.version = version;
        self.updates = learner_step;
        self.frames = frames;
        Ok(())
    }

    /// Takes the next version number and snapshots the weights under it. Weights with a NaN or
    /// an infinity are never snapshotted: the error names the tensor, and no version is taken.
    pub fn snapshot(&mut self) -> Result<Snapshot, troupe::policy_file::BlobError> {
        let blob = self.net.to_safetensors();
        troupe::policy_file::check_finite(&blob)?;
        let parent_version = self.version;
        self.version += 1;
        Ok(Snapshot {
            version: self.version,
            parent_version,
            learner_step: self.updates,
            frames: self.frames,
            blob,
        })
    }

    /// One IMPALA update on a [T, B] batch.
    pub fn update(&mut self, batch: &Batch) -> UpdateStats {
        let dev = self.device;
        let spec = self.net.spec().clone();
        let c = &batch.cols;
        let (t, b) = (c.t as i64, c.n as i64);
        let obs_dims: Vec<i64> = spec.env.observation.shape.iter().map(|&d| d as i64).collect();
        let obs_kind = match spec.env.observation.dtype {
            ObsDType::F32 => Kind::Float,
            ObsDType::U8 => Kind::Uint8,
        };
        let with_obs = |lead: &[i64]| -> Vec<i64> { lead.iter().chain(obs_dims.iter()).copied().collect() };
        // Pixels cross to the device as u8 and become floats there (Model::prepare).
        let obs = self
            .net
            .prepare(&tensor_of(&c.observations, &with_obs(&[t + 1, b]), obs_kind));
        let d = spec.env.action.dim() as i64;
        let p = spec.env.action.dist_params() as i64;
        let action_kind = if spec.env.action.is_continuous() {
            Kind::Float
        } else {
            Kind::Int64
        };
        let actions = tensor_of(&c.actions, &[t, b, d], action_kind).to_device(dev);
        let rewards = tensor_of(&c.rewards, &[t, b], Kind::Float).to_device(dev);
        let terminated = tensor_of(&c.terminated, &[t, b], Kind::Uint8)
            .to_device(dev)
            .to_kind(Kind::Float);
        let truncated = tensor_of(&c.truncated, &[t, b], Kind::Uint8)
            .to_device(dev)
            .to_kind(Kind::Float);
        let behaviour = tensor_of(&c.params, &[t, b, p], Kind::Float).to_device(dev);
        let masks = c.masks.as_ref().map(|m| {
            let w = spec.env.action.mask_width().unwrap_or(0) as i64;
            tensor_of(m, &[t, b, w], Kind::Uint8).to_device(dev)
        });
        let s = self.net.state_size() as i64;
        let state0 = match &c.state {
            Some(rows) => tensor_of(rows, &[b, s], Kind::Float).to_device(dev),
            None => Tensor::zeros([b, s], (Kind::Float, dev)),
        };
        // 0 where a step only reset its env (EnvPool's NEXT_STEP): no transition, so it is left
        // out of every loss term below.
        let valid = tensor_of(&c.valid, &[t, b], Kind::Uint8)
            .to_device(dev)
            .to_kind(Kind::Float);
        let n_valid = valid.sum(Kind::Float).clamp_min(1.0);
        let masked_mean = |x: &Tensor| (x * &valid).sum(Kind::Float) / &n_valid;
        // An episode starts at step t + 1 where one ended at step t, or where step t was only a
        // reset.
        let invalid: Tensor = valid.ones_like() - &valid;
        let ended = (&terminated + &truncated + invalid).clamp_max(1.0);
        let starts = Tensor::cat(&[Tensor::zeros([1, b], (Kind::Float, dev)), ended.shallow_clone()], 0);

        let (params_all, values_all, states) = self.net.unroll(&obs, &state0, &starts);
        let params = params_all.narrow(0, 0, t);
        let (action_log_probs, entropy_per_step) =
            dist::log_prob_entropy(&spec.env.action, &params, &actions, masks.as_ref());
        let (behaviour_log_probs, _) = dist::log_prob_entropy(&spec.env.action, &behaviour, &actions, masks.as_ref());
        let log_rhos = action_log_probs.detach() - behaviour_log_probs;

        // The value of each truncated episode's last observation, placed at its step. With a
        // recurrent core, that observation follows the state after its step.
        let truncation_values = if batch.truncation_index.is_empty() {
            Tensor::zeros([t, b], (Kind::Float, dev))
        } else {
            let k = batch.truncation_index.len() as i64;
            let rows = Rows::new(1, 0, c.truncation_observations.clone());
            let tobs = self.net.prepare(&tensor_of(&rows, &with_obs(&[k]), obs_kind));
            let index = Tensor::from_slice(&batch.truncation_index).to_device(dev);
            let tstate = if s > 0 {
                states.narrow(0, 0, t).reshape([t * b, s]).index_select(0, &index)
            } else {
                Tensor::zeros([k, 0], (Kind::Float, dev))
            };
            let v = tch::no_grad(|| self.net.step(&tobs, &tstate.detach()).value);
            Tensor::zeros([t * b], (Kind::Float, dev))
                .index_put(&[Some(index)], &v, false)
                .view([t, b])
        };
        let vt = vtrace_from_flags(
            &log_rhos,
            &rewards,
            &values_all.detach(),
            &Ends {
                terminated: &terminated,
                truncated: &truncated,
                truncation_values: &truncation_values,
            },
            &VTraceParams {
                discount: self.cfg.discount,
                rho_bar: self.cfg.rho_bar,
                c_bar: self.cfg.c_bar,
                pg_rho_bar: self.cfg.pg_rho_bar,
            },
        );
        let values = values_all.narrow(0, 0, t);
        let advantages = if self.cfg.normalize_advantages && n_valid.double_value(&[]) > 1.0 {
            // Without this, a value net that lags rising returns makes nearly every advantage
            // large and positive, and the policy drifts into always taking one action.
            let mean = masked_mean(&vt.pg_advantages);
            let centred = &vt.pg_advantages - &mean;
            let bessel: Tensor = &n_valid / (&n_valid - 1.0).clamp_min(1.0);
            let var = masked_mean(&centred.square()) * bessel;
            centred / (var.sqrt() + 1e-8)
        } else {
            vt.pg_advantages.shallow_clone()
        };
        let explained_variance = tch::no_grad(|| {
            let var_of = |x: &Tensor| {
                let m = masked_mean(x);
                masked_mean(&(x - m).square()).double_value(&[])
            };
            let var = var_of(&vt.vs);
            let resid = var_of(&(&vt.vs - &values));
            if var > 1e-12 {
                1.0 - resid / var
            } else {
                f64::NAN
            }
        });
        let pg_loss = -masked_mean(&(&action_log_probs * &advantages));
        let baseline_loss = masked_mean(&(&vt.vs - &values).square()) * 0.5;
        let entropy = masked_mean(&entropy_per_step);
        let loss = &pg_loss + &baseline_loss * self.cfg.baseline_cost - &entropy * self.cfg.entropy_cost;
        let total_loss = loss.double_value(&[]);
        let mut stats = UpdateStats {
            total_loss,
            pg_loss: pg_loss.double_value(&[]),
            baseline_loss: baseline_loss.double_value(&[]),
            entropy: entropy.double_value(&[]),
            grad_norm: f64::NAN,
            explained_variance,
            skipped: None,
        };
        // A non-finite loss or gradient would spread into every weight: skip the step.
        self.opt.zero_grad();
        if !total_loss.is_finite() {
            stats.skipped = Some("non_finite_loss");
            return stats;
        }
        loss.backward();
        stats.grad_norm = self.clip_gradients();
        if !stats.grad_norm.is_finite() {
            self.opt.zero_grad();
            stats.skipped = Some("non_finite_gradient");
            return stats;
        }
        self.opt.step();
        self.updates += 1;
        self.frames += (t * b) as u64;
        stats
    }

    /// Scales gradients so their global norm is at most `max_grad_norm`; returns the norm before.
    fn clip_gradients(&mut self) -> f64 {
        let grads: Vec<Tensor> = self
            .net
            .var_store()
            .trainable_variables()
            .iter()
            .map(|v| v.grad())
            .filter(|g| g.defined())
            .collect();
        if grads.is_empty() {
            return 0.0;
        }
        let sq: Vec<Tensor> = grads.iter().map(|g| g.square().sum(Kind::Float)).collect();
        let norm = Tensor::stack(&sq, 0).sum(Kind::Float).sqrt().double_value(&[]);
        if norm > self.cfg.max_grad_norm {
            let scale = self.cfg.max_grad_norm / (norm + 1e-6);
            tch::no_grad(|| {
                for mut g in grads {
                    let _ = g.g_mul_scalar_(scale);
                }
            });
        }
        norm
    }
}

/// Everything the model thread needs.
pub struct TrainerLoop {
    pub trainer: Trainer,
    pub batch_size: usize,
    pub publish_every: u64,
    pub queue: mpsc::Receiver<Columns>,
    pub snapshots: watch::Sender<Option<Arc<Snapshot>>>,
    /// Newest version this learner has created; rollouts may carry any version up to it.
    pub known_version: Arc<AtomicU64>,
    pub runtime: tokio::runtime::Handle,
    pub shutdown: CancellationToken,
    /// Testing only: panic after this many updates (the learner's `--fault-model-panic-after`).
    pub panic_after: Option<u64>,
}

impl TrainerLoop {
    /// Runs until shutdown, then snapshots the weights one last time (the drain checkpoint).
    pub fn run(mut self) {
        let mut batcher = Batcher::new(self.batch_size);
        let mut since_publish = 0u64;
        if self.trainer.version == 0 {
            // A fresh run: publish the initial weights so actors can start.
            self.publish();
        }
        while !self.shutdown.is_cancelled() {
            let cols = self.runtime.block_on(async {
                tokio::select! {
                    c = self.queue.recv() => c,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => None,
                }
            });
            metrics::gauge!(names::LEARNER_QUEUE_DEPTH).set(self.queue.len() as f64);
            let Some(cols) = cols else { continue };
            batcher.push(cols);
            // Every complete batch is trained before the next rollout is taken, so the backlog
            // stays under B columns plus one rollout whatever num_envs is.
            while let Some(batch) = batcher.next_batch() {
                metrics::gauge!(names::LEARNER_BATCHER_BYTES).set(batcher.pending_bytes() as f64);
                let start = Instant::now();
                let stats = self.trainer.update(&batch);
                let secs = start.elapsed().as_secs_f64();
                if let Some(reason) = stats.skipped {
                    metrics::counter!(names::LEARNER_UPDATES_SKIPPED, "reason" => reason).increment(1);
                    tracing::warn!(
                        reason,
                        loss = stats.total_loss,
                        grad_norm = stats.grad_norm,
                        "skipped an update"
                    );
                    continue;
                }
                self.record(&batch, &stats, secs);
                if self.panic_after.is_some_and(|n| self.trainer.updates >= n) {
                    panic!("injected fault after {} updates", self.trainer.updates);
                }
                since_publish += 1;
                if since_publish >= self.publish_every {
                    self.publish();
                    since_publish = 0;
                }
            }
            metrics::gauge!(names::LEARNER_BATCHER_BYTES).set(batcher.pending_bytes() as f64);
        }
        if since_publish > 0 {
            tracing::info!(updates = self.trainer.updates, "publishing final weights before exit");
            self.publish();
        }
    }

    fn publish(&mut self) {
        let snap = match self.trainer.snapshot() {
            Ok(s) => s,
            Err(e) => {
                metrics::counter!(names::LEARNER_UPDATES_SKIPPED, "reason" => "non_finite_weights").increment(1);
                tracing::error!(error = %e, "not publishing non-finite weights");
                return;
            }
        };
        // Known before it is published: the coordinator tells actors about a version before
        // our publish call returns, and their rollouts may arrive first.
        self.known_version.fetch_max(snap.version, Ordering::AcqRel);
        self.snapshots.send_replace(Some(Arc::new(snap)));
    }

    fn record(&self, batch: &Batch, s: &UpdateStats, secs: f64) {
        metrics::counter!(names::LEARNER_UPDATES).increment(1);
        metrics::counter!(names::LEARNER_FRAMES).increment((batch.t() * batch.b()) as u64);
        metrics::histogram!(names::LEARNER_UPDATE_SECONDS).record(secs);
        metrics::gauge!(names::LEARNER_LOSS, "term" => "total").set(s.total_loss);
        metrics::gauge!(names::LEARNER_LOSS, "term" => "pg").set(s.pg_loss);
        metrics::gauge!(names::LEARNER_LOSS, "term" => "baseline").set(s.baseline_loss);
        metrics::gauge!(names::LEARNER_ENTROPY).set(s.entropy);
        metrics::gauge!(names::LEARNER_GRAD_NORM).set(s.grad_norm);
        if s.explained_variance.is_finite() {
            metrics::gauge!(names::LEARNER_EXPLAINED_VARIANCE).set(s.explained_variance);
        }
        let latest = self.known_version.load(Ordering::Acquire);
        for &v in &batch.versions {
            metrics::histogram!(names::LEARNER_POLICY_LAG).record(latest.saturating_sub(v) as f64);
        }
        if self.trainer.updates.is_multiple_of(100) {
            tracing::info!(
                updates = self.trainer.updates,
                frames = self.trainer.frames,
                loss = s.total_loss,
                entropy = s.entropy,
                update_ms = secs * 1e3,
                "training"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{assemble, Columns};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use troupe::config::ModelConfig;
    use troupe::spaces::{ActionSpace, EnvSpec, ObservationSpace};

    /// The tests seed torch's global RNG before building a model: one at a time, or a test
    /// running beside another gets other initial weights.
    static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn spec() -> ModelSpec {
        ModelSpec {
            env: EnvSpec {
                id: "Test-v0".into(),
                observation: ObservationSpace::f32(&[4]),
                action: ActionSpace::Discrete { n: 3 },
                action_mask: false,
                num_agents: 1,
            },
            model: ModelConfig {
                hidden_sizes: vec![16],
                ..ModelConfig::default()
            },
        }
    }

    /// T = 6 steps of B = 4 columns of random data; column c terminates at step 1 + c and the
    /// step after is invalid (a NEXT_STEP reset). `scramble` rewrites everything at the invalid
    /// steps (observation, action, reward, behaviour params).
    fn batch(scramble: Option<u64>) -> Batch {
        let (t, n) = (6usize, 4usize);
        let mut rng = StdRng::seed_from_u64(9);
        let mut obs: Vec<f32> = (0..(t + 1) * n * 4).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut act: Vec<i64> = (0..t * n).map(|_| rng.random_range(0..3)).collect();
        let mut rew: Vec<f32> = (0..t * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut par: Vec<f32> = (0..t * n * 3).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut term = vec![0u8; t * n];
        let mut valid = vec![1u8; t * n];
        for c in 0..n {
            term[(1 + c) * n + c] = 1;
            valid[(2 + c) * n + c] = 0;
        }
        if let Some(seed) = scramble {
            let mut r2 = StdRng::seed_from_u64(seed);
            for (i, &v) in valid.iter().enumerate() {
                if v == 0 {
                    obs[i * 4..i * 4 + 4]
                        .iter_mut()
                        .for_each(|x| *x = r2.random_range(-5.0..5.0));
                    act[i] = r2.random_range(0..3);
                    rew[i] = r2.random_range(-100.0..100.0);
                    par[i * 3..i * 3 + 3]
                        .iter_mut()
                        .for_each(|x| *x = r2.random_range(-5.0..5.0));
                }
            }
        }
        let f = |v: &[f32]| bytemuck::cast_slice::<f32, u8>(v).to_vec();
        assemble(&[Columns {
            t,
            n,
            policy_version: 1,
            observations: Rows::new(t + 1, 16, f(&obs)),
            actions: Rows::new(t, 8, bytemuck::cast_slice(&act).to_vec()),
            rewards: Rows::new(t, 4, f(&rew)),
            terminated: Rows::new(t, 1, term),
            truncated: Rows::new(t, 1, vec![0; t * n]),
            valid: Rows::new(t, 1, valid),
            params: Rows::new(t, 12, f(&par)),
            masks: None,
            state: None,
            truncations: vec![],
            truncation_observations: vec![],
        }])
    }

    fn loss(b: &Batch, lstm: usize) -> (f64, f64) {
        let mut s = spec();
        s.model.lstm_size = lstm;
        let run = RunConfig {
            model: s.model.clone(),
            ..RunConfig::default()
        };
        tch::manual_seed(3);
        let mut trainer = Trainer::new(&run, &s, Device::Cpu).unwrap();
        let first = trainer.update(b);
        // A second update sees the weights the first produced from these gradients.
        let second = trainer.update(b);
        (first.total_loss, second.total_loss)
    }

    /// The tensors of a safetensors blob by name (its metadata's order is not fixed).
    fn weights(blob: &[u8]) -> Vec<(String, Vec<u8>)> {
        let st = safetensors::SafeTensors::deserialize(blob).unwrap();
        let mut out: Vec<(String, Vec<u8>)> = st.tensors().into_iter().map(|(n, v)| (n, v.data().to_vec())).collect();
        out.sort();
        out
    }

    /// A batch whose loss overflows (a finite but huge reward) skips the update: the weights,
    /// the step count and the frames stay as they were.
    #[test]
    fn a_non_finite_loss_skips_the_update() {
        let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let run = RunConfig::default();
        tch::manual_seed(3);
        let mut trainer = Trainer::new(&run, &spec(), Device::Cpu).unwrap();
        let before = trainer.model().to_safetensors();
        let mut b = batch(None);
        let mut rewards: Vec<f32> = bytemuck::pod_collect_to_vec(&b.cols.rewards.data);
        rewards[3] = 3e38;
        rewards[4] = 3e38;
        b.cols.rewards.data = bytemuck::cast_slice(&rewards).to_vec();
        let stats = trainer.update(&b);
        assert!(stats.skipped.is_some(), "{:?}", stats.total_loss);
        assert_eq!(trainer.updates, 0);
        assert_eq!(trainer.frames, 0);
        assert_eq!(weights(&trainer.model().to_safetensors()), weights(&before));
        // A normal batch then trains.
        assert!(trainer.update(&batch(None)).skipped.is_none());
        assert_eq!(trainer.updates, 1);
        assert_ne!(weights(&trainer.model().to_safetensors()), weights(&before));
        assert!(trainer.snapshot().is_ok());
    }

    /// Steps marked invalid (an env's reset step) are left out of every loss term: whatever
    /// they hold, the losses and the gradients (seen through a second update) are the same.
    #[test]
    fn invalid_steps_do_not_reach_the_loss() {
        let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        for lstm in [0, 8] {
            let base = loss(&batch(None), lstm);
            for seed in [1, 2, 3] {
                let scrambled = loss(&batch(Some(seed)), lstm);
                assert!(
                    (base.0 - scrambled.0).abs() < 1e-5,
                    "lstm {lstm}: {base:?} vs {scrambled:?}"
                );
                assert!(
                    (base.1 - scrambled.1).abs() < 1e-5,
                    "lstm {lstm}: {base:?} vs {scrambled:?}"
                );
            }
            // The check can tell: marking those steps valid lets the scrambled data in.
            let mut b = batch(Some(1));
            b.cols.valid.data.fill(1);
            let leaked = loss(&b, lstm);
            assert!((base.0 - leaked.0).abs() > 1e-3, "lstm {lstm}: {base:?} vs {leaked:?}");
        }
    }
}
