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

    /// Takes the next version number and snapshots the weights under it.
    pub fn snapshot(&mut self) -> Snapshot {
        let parent_version = self.version;
        self.version += 1;
        Snapshot {
            version: self.version,
            parent_version,
            learner_step: self.updates,
            frames: self.frames,
            blob: self.net.to_safetensors(),
        }
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
        // An episode starts at step t + 1 where one ended at step t.
        let ended = (&terminated + &truncated).clamp_max(1.0);
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
        let advantages = if self.cfg.normalize_advantages && t * b > 1 {
            // Without this, a value net that lags rising returns makes nearly every advantage
            // large and positive, and the policy drifts into always taking one action.
            (&vt.pg_advantages - vt.pg_advantages.mean(Kind::Float)) / (vt.pg_advantages.std(true) + 1e-8)
        } else {
            vt.pg_advantages.shallow_clone()
        };
        let explained_variance = tch::no_grad(|| {
            let var = vt.vs.var(false).double_value(&[]);
            let resid = (&vt.vs - &values).var(false).double_value(&[]);
            if var > 1e-12 {
                1.0 - resid / var
            } else {
                f64::NAN
            }
        });
        let pg_loss = -(&action_log_probs * &advantages).mean(Kind::Float);
        let baseline_loss = (&vt.vs - &values).square().mean(Kind::Float) * 0.5;
        let entropy = entropy_per_step.mean(Kind::Float);
        let loss = &pg_loss + &baseline_loss * self.cfg.baseline_cost - &entropy * self.cfg.entropy_cost;

        self.opt.zero_grad();
        loss.backward();
        let grad_norm = self.clip_gradients();
        self.opt.step();
        self.updates += 1;
        self.frames += (t * b) as u64;
        UpdateStats {
            total_loss: loss.double_value(&[]),
            pg_loss: pg_loss.double_value(&[]),
            baseline_loss: baseline_loss.double_value(&[]),
            entropy: entropy.double_value(&[]),
            grad_norm,
            explained_variance,
        }
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
                self.record(&batch, &stats, secs);
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
        let snap = self.trainer.snapshot();
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
