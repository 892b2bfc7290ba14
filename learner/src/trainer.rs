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
use troupe::policy::{PolicyNet, PolicySpec};
use troupe::telemetry::names;
use troupe::RunConfig;

use crate::batch::{Batch, Batcher, Columns};
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
}

pub struct Trainer {
    net: PolicyNet,
    opt: nn::Optimizer,
    cfg: LearnerConfig,
    env_id: String,
    device: Device,
    pub updates: u64,
    pub frames: u64,
    /// Version of the weights as they were last snapshotted.
    pub version: u64,
}

impl Trainer {
    pub fn new(run: &RunConfig, spec: &PolicySpec, device: Device) -> anyhow::Result<Trainer> {
        let net = PolicyNet::new(spec, device);
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
            env_id: run.env.id.clone(),
            device,
            updates: 0,
            frames: 0,
            version: 0,
        })
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
            blob: self.net.to_safetensors(&self.env_id),
        }
    }

    /// One IMPALA update on a [T, B] batch.
    pub fn update(&mut self, batch: &Batch) -> UpdateStats {
        let dev = self.device;
        let (t, b, o, a) = (
            batch.t as i64,
            batch.b as i64,
            batch.obs_size as i64,
            batch.num_actions as i64,
        );
        let f32s = |v: &[f32], shape: &[i64]| Tensor::from_slice(v).view(shape).to_device(dev);
        let obs = f32s(&batch.observations, &[t + 1, b, o]);
        let actions = Tensor::from_slice(&batch.actions).view([t, b]).to_device(dev);
        let rewards = f32s(&batch.rewards, &[t, b]);
        let terminated = f32s(&batch.terminated, &[t, b]);
        let truncated = f32s(&batch.truncated, &[t, b]);
        let behaviour_logits = f32s(&batch.logits, &[t, b, a]);

        let (logits_all, values_all) = self.net.forward(&obs);
        let log_probs = logits_all.narrow(0, 0, t).log_softmax(-1, Kind::Float);
        let action_log_probs = log_probs.gather(2, &actions.unsqueeze(-1), false).squeeze_dim(-1);
        let behaviour_log_probs = behaviour_logits
            .log_softmax(-1, Kind::Float)
            .gather(2, &actions.unsqueeze(-1), false)
            .squeeze_dim(-1);
        let log_rhos = action_log_probs.detach() - behaviour_log_probs;

        // The value of each truncated episode's last observation, placed at its step.
        let truncation_values = if batch.truncation_index.is_empty() {
            Tensor::zeros([t, b], (Kind::Float, dev))
        } else {
            let k = batch.truncation_index.len() as i64;
            let tobs = f32s(&batch.truncation_observations, &[k, o]);
            let (_, v) = tch::no_grad(|| self.net.forward(&tobs));
            let index = Tensor::from_slice(&batch.truncation_index).to_device(dev);
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
        let advantages = if self.cfg.normalize_advantages {
            // Without this, a value net that lags rising returns makes nearly every advantage
            // large and positive, and the policy drifts into always taking one action.
            (&vt.pg_advantages - vt.pg_advantages.mean(Kind::Float)) / (vt.pg_advantages.std(true) + 1e-8)
        } else {
            vt.pg_advantages.shallow_clone()
        };
        let pg_loss = -(&action_log_probs * &advantages).mean(Kind::Float);
        let baseline_loss = (&vt.vs - &values).square().mean(Kind::Float) * 0.5;
        let entropy = -(log_probs.exp() * &log_probs)
            .sum_dim_intlist(-1, false, Kind::Float)
            .mean(Kind::Float);
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
            let Some(batch) = batcher.push(cols) else { continue };
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
        metrics::counter!(names::LEARNER_FRAMES).increment((batch.t * batch.b) as u64);
        metrics::histogram!(names::LEARNER_UPDATE_SECONDS).record(secs);
        metrics::gauge!(names::LEARNER_LOSS, "term" => "total").set(s.total_loss);
        metrics::gauge!(names::LEARNER_LOSS, "term" => "pg").set(s.pg_loss);
        metrics::gauge!(names::LEARNER_LOSS, "term" => "baseline").set(s.baseline_loss);
        metrics::gauge!(names::LEARNER_ENTROPY).set(s.entropy);
        metrics::gauge!(names::LEARNER_GRAD_NORM).set(s.grad_norm);
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
