//! The model thread: owns the network and optimizer (tch tensors are not `Sync`, so they live
//! on one OS thread), takes updates with the run's [`Algorithm`] and hands weight snapshots to
//! the publisher every K updates. A second thread, the batcher, takes rollouts off the queue and
//! assembles the next batch's tensors while the model thread trains on the current one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{Device, Kind, Tensor};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use troupe::config::{LearnerConfig, LrSchedule, Optimizer, ValueNormalization};
use troupe::model::{Model, ModelSpec};
use troupe::telemetry::names;
use troupe::RunConfig;

use crate::algorithms::{self, Algorithm, TrainBatch};
use crate::batch::{Batch, Batcher, Columns};
use crate::optimizer::{self, Rule};

/// Weights to publish as a policy version.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub parent_version: u64,
    pub learner_step: u64,
    pub frames: u64,
    pub blob: Vec<u8>,
}

/// What one update (one batch, one or more SGD steps) measured.
#[derive(Debug, Clone)]
pub struct UpdateStats {
    pub total_loss: f64,
    /// The algorithm's own terms, averaged over the SGD steps.
    pub terms: Vec<(&'static str, f64)>,
    /// Gradient norm before clipping, averaged over the SGD steps.
    pub grad_norm: f64,
    /// 1 - Var(targets - values) / Var(targets), on the first pass: how much of the value
    /// targets' variance the value net explains (1 is perfect, 0 no better than a constant).
    pub explained_variance: f64,
    pub learning_rate: f64,
    /// SGD steps taken (the weights changed this many times).
    pub sgd_steps: usize,
    /// Why SGD steps were skipped, if any were: `non_finite_loss` or `non_finite_gradient`.
    /// The batch's remaining steps are dropped with it.
    pub skipped: Option<&'static str>,
    /// Each column's new replay priority, from an algorithm that prioritizes its replay.
    pub priorities: Option<Vec<f64>>,
}

impl UpdateStats {
    pub fn term(&self, name: &str) -> Option<f64> {
        self.terms.iter().find(|(n, _)| *n == name).map(|&(_, v)| v)
    }
}

pub struct Trainer {
    net: Model,
    opt: optimizer::Optimizer,
    cfg: LearnerConfig,
    algorithm: Box<dyn Algorithm>,
    device: Device,
    /// Minibatch splits come from a generator seeded with this and the update number, so a
    /// resumed run splits exactly as an uninterrupted one.
    rng_seed: u64,
    pub updates: u64,
    pub frames: u64,
    /// Version of the weights as they were last snapshotted.
    pub version: u64,
}

/// Sums over valid steps for the value statistics and the explained variance.
#[derive(Default)]
struct TargetSums {
    n: f64,
    target: f64,
    target_sq: f64,
    resid: f64,
    resid_sq: f64,
}

impl TargetSums {
    fn add(&mut self, targets: &Tensor, values: &Tensor, valid: &Tensor) {
        let sum = |x: &Tensor| (x * valid).sum(Kind::Double);
        let resid = targets - values;
        // One transfer from the device for the five sums.
        let sums = Vec::<f64>::try_from(Tensor::stack(
            &[
                valid.sum(Kind::Double),
                sum(targets),
                sum(&targets.square()),
                sum(&resid),
                sum(&resid.square()),
            ],
            0,
        ))
        .expect("five f64 sums");
        self.n += sums[0];
        self.target += sums[1];
        self.target_sq += sums[2];
        self.resid += sums[3];
        self.resid_sq += sums[4];
    }

    fn explained_variance(&self) -> f64 {
        if self.n < 1.0 {
            return f64::NAN;
        }
        let var = self.target_sq / self.n - (self.target / self.n).powi(2);
        let resid = self.resid_sq / self.n - (self.resid / self.n).powi(2);
        if var > 1e-12 {
            1.0 - resid / var
        } else {
            f64::NAN
        }
    }
}

impl Trainer {
    pub fn new(run: &RunConfig, spec: &ModelSpec, device: Device) -> anyhow::Result<Trainer> {
        let mut net = Model::new(spec, device)?;
        net.set_env_config(&run.env);
        let l = &run.learner;
        if l.value_normalization != ValueNormalization::None {
            net.enable_value_norm();
        }
        let rule = match l.optimizer {
            Optimizer::Adam => Rule::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
            },
            Optimizer::Rmsprop => Rule::RmsProp {
                alpha: l.rmsprop_alpha,
                eps: l.rmsprop_eps,
            },
        };
        let opt = optimizer::Optimizer::new(net.var_store(), rule, l.learning_rate);
        let mut algorithm = algorithms::build(run);
        algorithm.initialize(&net);
        algorithm.reset(&net);
        Ok(Trainer {
            net,
            opt,
            cfg: l.clone(),
            algorithm,
            device,
            rng_seed: run.env.seed ^ 0x7472_6f75_7065,
            updates: 0,
            frames: 0,
            version: 0,
        })
    }

    pub fn model(&self) -> &Model {
        &self.net
    }

    pub fn algorithm(&self) -> &dyn Algorithm {
        self.algorithm.as_ref()
    }

    /// Starts from stored weights (a restarted learner resumes from the latest version).
    pub fn load(&mut self, version: u64, learner_step: u64, frames: u64, blob: &[u8]) -> anyhow::Result<()> {
        self.net.load_safetensors(blob)?;
        self.algorithm.reset(&self.net);
        self.version = version;
        self.updates = learner_step;
        self.frames = frames;
        Ok(())
    }

    /// Everything a resumed run needs to continue exactly: the weights (with the observation
    /// and value statistics), the optimizer's state, and the counters.
    pub fn checkpoint(&self) -> crate::checkpoint::State {
        crate::checkpoint::State {
            version: self.version,
            learner_step: self.updates,
            frames: self.frames,
            optimizer_steps: self.opt.steps(),
            rng_seed: self.rng_seed,
            policy: self.net.to_safetensors(),
            optimizer: self.opt.state(),
        }
    }

    /// Continues from a checkpoint written by [`Trainer::checkpoint`].
    pub fn restore(&mut self, state: &crate::checkpoint::Loaded) -> anyhow::Result<()> {
        self.net.load_safetensors(&state.policy)?;
        // A target network is not checkpointed: it starts again from the restored weights.
        self.algorithm.reset(&self.net);
        self.opt.restore(state.optimizer_steps, &state.optimizer)?;
        self.version = state.version;
        self.updates = state.learner_step;
        self.frames = state.frames;
        self.rng_seed = state.rng_seed;
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

    /// The learning rate after `frames` trained frames.
    pub fn learning_rate_at(&self, frames: u64) -> f64 {
        let (lr0, lr1) = (self.cfg.learning_rate, self.cfg.final_learning_rate);
        let frac = (frames as f64 / self.cfg.schedule_frames as f64).min(1.0);
        match self.cfg.lr_schedule {
            LrSchedule::Constant => lr0,
            LrSchedule::Linear => lr0 + (lr1 - lr0) * frac,
            LrSchedule::Cosine => lr1 + (lr0 - lr1) * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos()),
        }
    }

    /// One update from a batch of bytes (tests; the model thread gets its tensors built ahead).
    pub fn update_batch(&mut self, batch: &Batch) -> UpdateStats {
        let tb = TrainBatch::from_batch(batch, self.net.spec(), self.net.state_size());
        self.update(&tb)
    }

    /// One update on a [T, B] batch: the algorithm's passes over it, an SGD step per minibatch.
    pub fn update(&mut self, batch: &TrainBatch) -> UpdateStats {
        let mut b = batch.to_device(self.device);
        if self.cfg.reward_clip > 0.0 {
            b.rewards = b.rewards.clamp(-self.cfg.reward_clip, self.cfg.reward_clip);
        }
        if self.cfg.reward_scale != 1.0 {
            b.rewards = &b.rewards * self.cfg.reward_scale;
        }
        // The observation statistics take this batch's observations (rows 0..T, valid steps)
        // before the loss sees them (and give them back if no step is taken).
        let saved_obs_stats = self.net.obs_norm_mut().map(|n| n.save());
        if self.net.obs_norm_mut().is_some() {
            let obs = self.net.prepare(&b.obs.narrow(0, 0, b.t)).flatten(0, 1);
            let w = b.valid.flatten(0, 1);
            if let Some(n) = self.net.obs_norm_mut() {
                if !n.update(&obs, &w) {
                    tracing::warn!("a batch with non-finite observations: observation statistics unchanged");
                }
                metrics::gauge!(names::LEARNER_OBS_NORM_SAMPLES).set(n.count());
            }
        }
        let lr = self.learning_rate_at(self.frames);
        self.opt.set_lr(lr);
        let passes = self.algorithm.passes();
        assert!(
            passes.minibatches >= 1 && (b.b as usize).is_multiple_of(passes.minibatches),
            "{} minibatches do not split {} columns evenly (the config's validation checks this)",
            passes.minibatches,
            b.b
        );
        let per = b.b as usize / passes.minibatches;
        let mut order: Vec<i64> = (0..b.b).collect();
        let mut rng = StdRng::seed_from_u64(self.rng_seed ^ self.updates.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut sums = TargetSums::default();
        let mut stats = UpdateStats {
            total_loss: 0.0,
            terms: Vec::new(),
            grad_norm: 0.0,
            explained_variance: f64::NAN,
            learning_rate: lr,
            sgd_steps: 0,
            skipped: None,
            priorities: None,
        };
        'passes: for epoch in 0..passes.epochs {
            if passes.minibatches > 1 {
                order.shuffle(&mut rng);
            }
            for m in 0..passes.minibatches {
                let mb = if passes.minibatches == 1 {
                    None
                } else {
                    Some(b.columns(&order[m * per..(m + 1) * per]))
                };
                let mb = mb.as_ref().unwrap_or(&b);
                let loss = self.algorithm.loss(&self.net, mb);
                let total = loss.total.double_value(&[]);
                // A non-finite loss or gradient would spread into every weight: skip the step
                // (and the rest of this batch).
                self.opt.zero_grad();
                if !total.is_finite() {
                    stats.skipped = Some("non_finite_loss");
                    if stats.sgd_steps == 0 {
                        stats.total_loss = total;
                    }
                    break 'passes;
                }
                loss.total.backward();
                let grad_norm = self.clip_gradients();
                if !grad_norm.is_finite() {
                    self.opt.zero_grad();
                    stats.skipped = Some("non_finite_gradient");
                    if stats.sgd_steps == 0 {
                        (stats.total_loss, stats.grad_norm) = (total, grad_norm);
                    }
                    break 'passes;
                }
                self.opt.step();
                if epoch == 0 {
                    sums.add(&loss.value_targets, &loss.values, &mb.valid);
                }
                // Priorities are the batch's columns' in order: one pass, one minibatch.
                if passes.epochs == 1 && passes.minibatches == 1 {
                    stats.priorities = loss.priorities;
                }
                stats.sgd_steps += 1;
                stats.total_loss += total;
                stats.grad_norm += grad_norm;
                // One transfer from the device for every term.
                let values: Vec<f64> = if loss.terms.is_empty() {
                    Vec::new()
                } else {
                    let stacked: Vec<Tensor> = loss.terms.iter().map(|(_, v)| v.to_kind(Kind::Double)).collect();
                    Vec::<f64>::try_from(Tensor::stack(&stacked, 0)).expect("scalar terms")
                };
                for (&(name, _), &v) in loss.terms.iter().zip(&values) {
                    match stats.terms.iter_mut().find(|(n, _)| *n == name) {
                        Some((_, acc)) => *acc += v,
                        None => stats.terms.push((name, v)),
                    }
                }
            }
        }
        if stats.sgd_steps == 0 {
            if let (Some(n), Some(saved)) = (self.net.obs_norm_mut(), saved_obs_stats.as_ref()) {
                n.restore(saved);
            }
            return stats;
        }
        // Averages over the steps taken (a skip after some steps keeps theirs).
        let k = stats.sgd_steps as f64;
        stats.total_loss /= k;
        stats.grad_norm /= k;
        stats.terms.iter_mut().for_each(|(_, v)| *v /= k);
        stats.explained_variance = sums.explained_variance();
        self.update_value_stats(&sums);
        self.updates += 1;
        self.frames += (b.t * b.b) as u64;
        self.algorithm.after_update(&self.net, self.updates);
        stats
    }

    /// Folds the first pass's targets into the value statistics; with PopArt, rescales the
    /// value head so its outputs in return units stay as they were.
    fn update_value_stats(&mut self, sums: &TargetSums) {
        let beta = self.cfg.value_norm_beta;
        let popart = self.cfg.value_normalization == ValueNormalization::Popart;
        if sums.n < 1.0 {
            return;
        }
        let Some(norm) = self.net.value_norm_mut() else { return };
        let mean = sums.target / sums.n;
        let var = (sums.target_sq / sums.n - mean * mean).max(0.0);
        let (before, after) = norm.update(mean, var, beta);
        if popart {
            self.net.preserve_value_outputs(before, after);
        }
        metrics::gauge!(names::LEARNER_VALUE_NORM, "stat" => "mean").set(after.mean);
        metrics::gauge!(names::LEARNER_VALUE_NORM, "stat" => "std").set(after.std);
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

/// A batch whose tensors the batcher thread built, and what the metrics need of it.
struct Prepared {
    batch: TrainBatch,
    versions: Vec<u64>,
    bytes: usize,
}

/// Everything the model thread needs.
pub struct TrainerLoop {
    pub trainer: Trainer,
    pub batch_size: usize,
    pub publish_every: u64,
    /// libtorch intra-op threads (0: every core this process may use).
    pub threads: usize,
    pub queue: mpsc::Receiver<Columns>,
    /// Bytes in `queue`, shared with ingest.
    pub queue_bytes: Arc<AtomicU64>,
    pub snapshots: watch::Sender<Option<Arc<Snapshot>>>,
    /// Newest version this learner has created; rollouts may carry any version up to it.
    pub known_version: Arc<AtomicU64>,
    pub runtime: tokio::runtime::Handle,
    pub shutdown: CancellationToken,
    /// Testing only: panic after this many updates (the learner's `--fault-model-panic-after`).
    pub panic_after: Option<u64>,
    /// Take a checkpoint with a snapshot at most this often (and with the last one), and hand
    /// it to the checkpoint writer here; None: never.
    pub checkpoints: Option<(Duration, watch::Sender<Option<Arc<crate::checkpoint::Encoded>>>)>,
    /// The newest version the coordinator minted for this learner: the next snapshot's number
    /// starts above it.
    pub minted: Arc<AtomicU64>,
    /// With `learner.replay_ratio`: the sampling side of replay and the replayed columns per
    /// batch.
    pub replay: Option<(crate::replay::Sampler, usize)>,
    /// With Ape-X DQN: every batch comes from replay, and priorities go back to it.
    pub replay_only: Option<ReplayOnly>,
}

/// An Ape-X learner's batch source: replay alone.
pub struct ReplayOnly {
    pub sampler: crate::replay::Sampler,
    /// How long a batch may take before the learner says it is waiting.
    pub deadline: Duration,
    /// beta of the importance weights: from `beta0` to `beta1` over `anneal_updates`.
    pub beta0: f64,
    pub beta1: f64,
    pub anneal_updates: u64,
    pub priorities: mpsc::Sender<crate::replay::PriorityUpdate>,
}

impl ReplayOnly {
    /// beta for the batch of update `u`.
    pub fn beta(&self, u: u64) -> f64 {
        if self.anneal_updates == 0 {
            return self.beta0;
        }
        let frac = (u as f64 / self.anneal_updates as f64).min(1.0);
        self.beta0 + (self.beta1 - self.beta0) * frac
    }
}

/// libtorch's intra-op threads for `configured` (0: every core this process may use).
pub fn intra_op_threads(configured: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    }
}

impl TrainerLoop {
    /// Runs until shutdown, then snapshots the weights one last time (the drain checkpoint).
    pub fn run(self) {
        let TrainerLoop {
            trainer,
            batch_size,
            publish_every,
            threads,
            queue,
            queue_bytes,
            snapshots,
            known_version,
            runtime,
            shutdown,
            panic_after,
            checkpoints,
            minted,
            replay,
            replay_only,
        } = self;
        let (replay_only, priorities) = match replay_only {
            Some(r) => {
                let tx = r.priorities.clone();
                (Some(r), Some(tx))
            }
            None => (None, None),
        };
        let stream_share = batch_size - replay.as_ref().map_or(0, |(_, k)| *k);
        let batcher = BatcherThread {
            batcher: Batcher::new(stream_share),
            queue,
            queue_bytes,
            spec: trainer.model().spec().clone(),
            state_size: trainer.model().state_size(),
            runtime,
            shutdown: shutdown.clone(),
            replay,
            replay_only,
            batch_size,
            known_version: known_version.clone(),
            updates: trainer.updates,
        };
        let trainer_updates = trainer.updates;
        ModelThread {
            trainer,
            publish_every,
            snapshots,
            known_version,
            shutdown,
            panic_after,
            checkpoints,
            last_checkpoint: Instant::now(),
            checkpointed_updates: trainer_updates,
            minted,
            priorities,
        }
        .run(threads, batcher)
    }
}

/// The model thread's half of a [`TrainerLoop`].
struct ModelThread {
    trainer: Trainer,
    publish_every: u64,
    snapshots: watch::Sender<Option<Arc<Snapshot>>>,
    known_version: Arc<AtomicU64>,
    shutdown: CancellationToken,
    panic_after: Option<u64>,
    checkpoints: Option<(Duration, watch::Sender<Option<Arc<crate::checkpoint::Encoded>>>)>,
    last_checkpoint: Instant,
    /// The learner step of the last checkpoint taken.
    checkpointed_updates: u64,
    minted: Arc<AtomicU64>,
    /// Where new priorities go, with Ape-X.
    priorities: Option<mpsc::Sender<crate::replay::PriorityUpdate>>,
}

impl ModelThread {
    fn run(mut self, threads: usize, batcher: BatcherThread) {
        let threads = intra_op_threads(threads);
        tch::set_num_threads(threads as i32);
        tracing::info!(threads, algorithm = self.trainer.algorithm().name(), "model thread");
        // One batch ready ahead: the batcher assembles it while the current one trains.
        let (ready_tx, ready_rx) = sync_channel::<Prepared>(1);
        let handle = std::thread::Builder::new()
            .name("batcher".into())
            .spawn(move || batcher.run(ready_tx))
            .expect("spawn the batcher thread");
        let mut since_publish = 0u64;
        if self.minted.load(Ordering::Acquire) == 0 {
            // The coordinator has no version (a fresh run, or a resume from a checkpoint after
            // Redis lost everything): publish these weights at once so actors can start.
            self.publish(false);
        }
        while !self.shutdown.is_cancelled() {
            let p = match ready_rx.recv_timeout(Duration::from_millis(200)) {
                Ok(p) => p,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            metrics::gauge!(names::LEARNER_PREFETCH_BYTES).set(0.0);
            let start = Instant::now();
            let stats = self.trainer.update(&p.batch);
            let secs = start.elapsed().as_secs_f64();
            if let Some(reason) = stats.skipped {
                metrics::counter!(names::LEARNER_UPDATES_SKIPPED, "reason" => reason).increment(1);
                tracing::warn!(
                    reason,
                    loss = stats.total_loss,
                    grad_norm = stats.grad_norm,
                    "skipped an update"
                );
                if stats.sgd_steps == 0 {
                    continue;
                }
            }
            self.record(&p, &stats, secs);
            self.send_priorities(&p, &stats);
            if self.panic_after.is_some_and(|n| self.trainer.updates >= n) {
                panic!("injected fault after {} updates", self.trainer.updates);
            }
            since_publish += 1;
            if since_publish >= self.publish_every {
                self.publish(false);
                since_publish = 0;
            }
        }
        // Batches already assembled (their rollouts acknowledged) are trained before the final
        // publish: the batcher stops at the cancel, so this ends within a batch or two.
        while let Ok(p) = ready_rx.recv_timeout(Duration::from_millis(50)) {
            let stats = self.trainer.update(&p.batch);
            if stats.sgd_steps > 0 {
                since_publish += 1;
            }
        }
        drop(ready_rx);
        if let Err(panic) = handle.join() {
            // The batcher's failure is the model thread's: the learner reports it and exits.
            std::panic::resume_unwind(panic);
        }
        let unsaved = self.checkpoints.is_some() && self.trainer.updates != self.checkpointed_updates;
        if since_publish > 0 || unsaved {
            tracing::info!(updates = self.trainer.updates, "publishing final weights before exit");
            self.publish(true);
        }
    }

    /// Snapshots the weights for the publisher, with a checkpoint when one is due (always with
    /// the `last` snapshot).
    fn publish(&mut self, last: bool) {
        // Each snapshot expects the version after the last one the coordinator minted for us
        // (snapshots the publisher skipped were never minted): our count never drifts from it.
        self.trainer.version = self.minted.load(Ordering::Acquire);
        let snap = match self.trainer.snapshot() {
            Ok(s) => s,
            Err(e) => {
                metrics::counter!(names::LEARNER_UPDATES_SKIPPED, "reason" => "non_finite_weights").increment(1);
                tracing::error!(error = %e, "not publishing non-finite weights");
                return;
            }
        };
        if let Some((every, tx)) = &self.checkpoints {
            if last || self.last_checkpoint.elapsed() >= *every {
                self.last_checkpoint = Instant::now();
                self.checkpointed_updates = self.trainer.updates;
                tx.send_replace(Some(Arc::new(crate::checkpoint::Encoded {
                    version: snap.version,
                    bytes: crate::checkpoint::encode(&self.trainer.checkpoint()),
                })));
            }
        }
        // Known before it is published: the coordinator tells actors about a version before
        // our publish call returns, and their rollouts may arrive first.
        self.known_version.fetch_max(snap.version, Ordering::AcqRel);
        self.snapshots.send_replace(Some(Arc::new(snap)));
    }

    /// Hands the update's new priorities to the updater; dropped (counted) if it is behind.
    fn send_priorities(&self, p: &Prepared, s: &UpdateStats) {
        let (Some(tx), Some(priorities), Some(replayed)) = (&self.priorities, &s.priorities, &p.batch.replay) else {
            return;
        };
        let update = crate::replay::PriorityUpdate {
            keys: replayed.keys.clone(),
            priorities: priorities.clone(),
        };
        if tx.try_send(update).is_err() {
            metrics::counter!(names::LEARNER_PRIORITY_UPDATE_ERRORS).increment(1);
        }
    }

    fn record(&self, p: &Prepared, s: &UpdateStats, secs: f64) {
        let algorithm = self.trainer.algorithm().name();
        metrics::counter!(names::LEARNER_UPDATES).increment(1);
        metrics::counter!(names::LEARNER_FRAMES).increment((p.batch.t * p.batch.b) as u64);
        metrics::histogram!(names::LEARNER_UPDATE_SECONDS).record(secs);
        metrics::gauge!(names::LEARNER_LOSS, "algorithm" => algorithm, "term" => "total").set(s.total_loss);
        for &(term, v) in &s.terms {
            metrics::gauge!(names::LEARNER_LOSS, "algorithm" => algorithm, "term" => term).set(v);
        }
        if let Some(e) = s.term("entropy") {
            metrics::gauge!(names::LEARNER_ENTROPY).set(e);
        }
        metrics::gauge!(names::LEARNER_GRAD_NORM).set(s.grad_norm);
        metrics::gauge!(names::LEARNER_LEARNING_RATE).set(s.learning_rate);
        if s.explained_variance.is_finite() {
            metrics::gauge!(names::LEARNER_EXPLAINED_VARIANCE).set(s.explained_variance);
        }
        let latest = self.known_version.load(Ordering::Acquire);
        for &v in &p.versions {
            metrics::histogram!(names::LEARNER_POLICY_LAG).record(latest.saturating_sub(v) as f64);
        }
        if self.trainer.updates.is_multiple_of(100) {
            tracing::info!(
                updates = self.trainer.updates,
                frames = self.trainer.frames,
                loss = s.total_loss,
                entropy = s.term("entropy"),
                update_ms = secs * 1e3,
                batch_bytes = p.bytes,
                "training"
            );
        }
    }
}

/// Takes rollouts off the queue into the batcher and builds each complete batch's tensors, one
/// batch ahead of the model thread.
struct BatcherThread {
    batcher: Batcher,
    queue: mpsc::Receiver<Columns>,
    queue_bytes: Arc<AtomicU64>,
    spec: ModelSpec,
    state_size: usize,
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
    /// With `learner.replay_ratio`: where the replayed share comes from, and its columns.
    replay: Option<(crate::replay::Sampler, usize)>,
    replay_only: Option<ReplayOnly>,
    batch_size: usize,
    known_version: Arc<AtomicU64>,
    /// Batches handed over so far, counted from the trainer's updates at the start.
    updates: u64,
}

impl BatcherThread {
    fn run(self, ready: std::sync::mpsc::SyncSender<Prepared>) {
        if self.replay_only.is_some() {
            self.run_replay_only(ready)
        } else {
            self.run_stream(ready)
        }
    }

    /// Ape-X: every batch is `batch_size` columns drawn from replay, with their keys and
    /// importance weights.
    fn run_replay_only(mut self, ready: std::sync::mpsc::SyncSender<Prepared>) {
        let mut r = self.replay_only.take().expect("replay only");
        metrics::gauge!(names::LEARNER_REPLAYED_FRACTION).set(1.0);
        loop {
            let newest = self.known_version.load(Ordering::Acquire);
            let Some(d) = r.sampler.batch(self.batch_size, newest, r.deadline, &self.shutdown) else {
                return;
            };
            let batch = crate::batch::assemble(&d.cols);
            let beta = r.beta(self.updates);
            let weights = crate::algorithms::dqn::importance_weights(&d.probabilities, d.table_size, beta);
            let weights: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
            let mut tb = TrainBatch::from_batch(&batch, &self.spec, self.state_size);
            tb.replay = Some(crate::algorithms::Replayed {
                keys: d.keys,
                weights: Tensor::from_slice(&weights),
            });
            let bytes = tb.bytes();
            metrics::gauge!(names::LEARNER_PREFETCH_BYTES).set(bytes as f64);
            // Policy lag is the stream's: replayed columns are old by design (their age is
            // `troupe_learner_replay_sample_age`).
            let p = Prepared {
                batch: tb,
                versions: Vec::new(),
                bytes,
            };
            if ready.send(p).is_err() {
                return; // the model thread has stopped
            }
            self.updates += 1;
        }
    }

    fn run_stream(mut self, ready: std::sync::mpsc::SyncSender<Prepared>) {
        loop {
            let cols = self.runtime.block_on(async {
                tokio::select! {
                    biased;
                    _ = self.shutdown.cancelled() => None,
                    c = self.queue.recv() => c,
                }
            });
            let Some(cols) = cols else { return };
            let bytes = cols.bytes() as u64;
            let held = self
                .queue_bytes
                .fetch_sub(bytes, Ordering::AcqRel)
                .saturating_sub(bytes);
            metrics::gauge!(names::LEARNER_QUEUE_BYTES).set(held as f64);
            metrics::gauge!(names::LEARNER_QUEUE_DEPTH).set(self.queue.len() as f64);
            self.batcher.push(cols);
            // Every complete batch goes to the model thread before the next rollout is taken,
            // so the backlog stays under B columns plus one rollout whatever num_envs is.
            while let Some(mut parts) = self.batcher.next_parts() {
                let mut replayed = 0;
                if let Some((sampler, k)) = self.replay.as_mut() {
                    if self.batcher.batch_size() == self.batch_size - *k {
                        let newest = self.known_version.load(Ordering::Acquire);
                        match sampler.columns(*k, newest) {
                            Some(cols) => {
                                replayed = *k;
                                parts.extend(cols);
                            }
                            None => {
                                // This batch comes from the stream alone: all B columns.
                                self.batcher.unshift(parts);
                                self.batcher.set_batch_size(self.batch_size);
                                continue;
                            }
                        }
                    } else {
                        // A stream-only batch; the next one asks replay again.
                        self.batcher.set_batch_size(self.batch_size - *k);
                    }
                    metrics::gauge!(names::LEARNER_REPLAYED_FRACTION).set(replayed as f64 / self.batch_size as f64);
                }
                let mut batch = crate::batch::assemble(&parts);
                // Policy lag is the streamed columns' (replayed ones are old by design).
                batch.versions.truncate(self.batch_size - replayed);
                metrics::gauge!(names::LEARNER_BATCHER_BYTES).set(self.batcher.pending_bytes() as f64);
                let tb = TrainBatch::from_batch(&batch, &self.spec, self.state_size);
                let bytes = tb.bytes();
                metrics::gauge!(names::LEARNER_PREFETCH_BYTES).set(bytes as f64);
                let p = Prepared {
                    batch: tb,
                    versions: batch.versions,
                    bytes,
                };
                if ready.send(p).is_err() {
                    return; // the model thread has stopped
                }
            }
            metrics::gauge!(names::LEARNER_BATCHER_BYTES).set(self.batcher.pending_bytes() as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{assemble, Columns, Rows};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use troupe::config::ModelConfig;
    use troupe::spaces::{ActionSpace, EnvSpec, ObservationSpace, PolicySpec};

    /// The tests seed torch's global RNG before building a model: one at a time, or a test
    /// running beside another gets other initial weights.
    static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn spec() -> ModelSpec {
        ModelSpec {
            env: PolicySpec::single(&EnvSpec::single(
                "Test-v0",
                ObservationSpace::f32(&[4]),
                ActionSpace::Discrete { n: 3 },
                false,
            )),
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
            agent_index: vec![0; n],
            states: None,
            truncation_states: vec![],
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
        let first = trainer.update_batch(b);
        // A second update sees the weights the first produced from these gradients.
        let second = trainer.update_batch(b);
        (first.total_loss, second.total_loss)
    }

    fn weights(blob: &[u8]) -> Vec<(String, Vec<u8>)> {
        troupe::policy_file::tensors_by_name(blob).unwrap()
    }

    /// A batch whose loss overflows (a finite but huge reward), or with a NaN observation,
    /// skips the update: the weights (observation statistics included), the step count and the
    /// frames stay as they were.
    #[test]
    fn a_non_finite_loss_skips_the_update() {
        let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let mut s = spec();
        s.model.normalize_observations = true;
        let run = RunConfig {
            model: s.model.clone(),
            ..RunConfig::default()
        };
        tch::manual_seed(3);
        let mut trainer = Trainer::new(&run, &s, Device::Cpu).unwrap();
        let before = trainer.model().to_safetensors();
        let mut b = batch(None);
        let mut rewards: Vec<f32> = bytemuck::pod_collect_to_vec(&b.cols.rewards.data);
        rewards[3] = 3e38;
        rewards[4] = 3e38;
        b.cols.rewards.data = bytemuck::cast_slice(&rewards).to_vec();
        let stats = trainer.update_batch(&b);
        assert!(stats.skipped.is_some(), "{:?}", stats.total_loss);
        assert_eq!(trainer.updates, 0);
        assert_eq!(trainer.frames, 0);
        assert_eq!(weights(&trainer.model().to_safetensors()), weights(&before));
        // A NaN observation, with observation normalisation on: skipped too, and the
        // statistics stay clean.
        let mut b = batch(None);
        let mut obs: Vec<f32> = bytemuck::pod_collect_to_vec(&b.cols.observations.data);
        obs[5] = f32::NAN;
        b.cols.observations.data = bytemuck::cast_slice(&obs).to_vec();
        let stats = trainer.update_batch(&b);
        assert_eq!(stats.skipped, Some("non_finite_loss"), "{:?}", stats.total_loss);
        assert_eq!(trainer.updates, 0);
        assert_eq!(weights(&trainer.model().to_safetensors()), weights(&before));
        // A normal batch then trains.
        assert!(trainer.update_batch(&batch(None)).skipped.is_none());
        assert_eq!(trainer.updates, 1);
        assert_ne!(weights(&trainer.model().to_safetensors()), weights(&before));
        assert!(trainer.snapshot().is_ok());
    }

    /// The schedules move from `learning_rate` to `final_learning_rate` over `schedule_frames`
    /// trained frames, then stay; the optimizer takes the scheduled rate on each update.
    #[test]
    fn the_learning_rate_follows_its_schedule() {
        let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let mut run = RunConfig::default();
        run.learner.learning_rate = 1e-3;
        run.learner.final_learning_rate = 1e-4;
        run.learner.schedule_frames = 1000;
        let at = |run: &RunConfig, frames: u64| {
            Trainer::new(run, &spec(), Device::Cpu)
                .unwrap()
                .learning_rate_at(frames)
        };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(at(&run, 0), 1e-3) && close(at(&run, 500), 1e-3) && close(at(&run, 5000), 1e-3));
        run.learner.lr_schedule = LrSchedule::Linear;
        assert!(close(at(&run, 0), 1e-3));
        assert!(close(at(&run, 250), 1e-3 - 0.25 * 9e-4));
        assert!(close(at(&run, 1000), 1e-4) && close(at(&run, 10_000), 1e-4));
        run.learner.lr_schedule = LrSchedule::Cosine;
        assert!(close(at(&run, 0), 1e-3));
        assert!(close(at(&run, 500), 5.5e-4), "half way is the midpoint");
        assert!(close(at(&run, 1000), 1e-4) && close(at(&run, 2000), 1e-4));
        // The update reports the rate it trained with, and frames move it.
        run.learner.lr_schedule = LrSchedule::Linear;
        run.learner.schedule_frames = 48; // two updates of the 6 x 4 test batch
        tch::manual_seed(3);
        let mut trainer = Trainer::new(&run, &spec(), Device::Cpu).unwrap();
        let rates: Vec<f64> = (0..3)
            .map(|_| trainer.update_batch(&batch(None)).learning_rate)
            .collect();
        assert!(
            close(rates[0], 1e-3) && close(rates[1], 5.5e-4) && close(rates[2], 1e-4),
            "{rates:?}"
        );
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

    /// A fresh Ape-X learner's Q-values are all 0 (its output layers start at zero, so no
    /// random spread becomes a bias through the targets' max), and its first update moves them;
    /// other algorithms keep the model's own initialisation.
    #[test]
    fn apex_starts_from_zero_q_values_and_learns_from_there() {
        let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let s = spec();
        let trainer = |apex: bool| {
            let mut run = RunConfig {
                model: s.model.clone(),
                ..RunConfig::default()
            };
            if apex {
                run.learner.algorithm = troupe::config::AlgorithmKind::ApexDqn;
                run.apex = Some(troupe::config::ApexConfig::default());
            }
            tch::manual_seed(5);
            Trainer::new(&run, &s, Device::Cpu).unwrap()
        };
        let x = Tensor::randn([32, 4], (Kind::Float, Device::Cpu)) * 5.0;
        let largest_q = |t: &Trainer| {
            let out = t.model().step(&x, &t.model().initial_state(32));
            troupe::model::q::q_values(&out.params, &out.value, true)
                .abs()
                .max()
                .double_value(&[])
        };
        let mut apex = trainer(true);
        assert_eq!(largest_q(&apex), 0.0);
        apex.update_batch(&batch(None));
        assert!(largest_q(&apex) > 1e-4, "the first update moves the Q-values");
        assert!(
            largest_q(&trainer(false)) > 1e-3,
            "IMPALA keeps the default initialisation"
        );
    }

    /// Ape-X DQN: each update gives one priority per column, and the target network follows
    /// the online one every `target_update_period` updates, not between: with the same weights
    /// and batches, a learner syncing every 2 updates takes its second update with the targets
    /// of a learner that never syncs, and its third with other ones.
    #[test]
    fn apex_gives_priorities_and_syncs_its_target_every_period() {
        let _rng = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let losses = |period: u64| -> (Vec<f64>, Vec<Vec<f64>>) {
            let s = spec();
            let mut run = RunConfig {
                model: s.model.clone(),
                ..RunConfig::default()
            };
            run.learner.algorithm = troupe::config::AlgorithmKind::ApexDqn;
            run.apex = Some(troupe::config::ApexConfig {
                target_update_period: period,
                ..Default::default()
            });
            tch::manual_seed(3);
            let mut trainer = Trainer::new(&run, &s, Device::Cpu).unwrap();
            let stats: Vec<UpdateStats> = (0..3).map(|_| trainer.update_batch(&batch(None))).collect();
            (
                stats.iter().map(|s| s.total_loss).collect(),
                stats
                    .iter()
                    .map(|s| s.priorities.clone().expect("priorities"))
                    .collect(),
            )
        };
        let (never, priorities) = losses(1000);
        let (every_2, _) = losses(2);
        for p in &priorities {
            assert_eq!(p.len(), 4, "one per column");
            assert!(p.iter().all(|&x| x.is_finite() && x > 0.0), "{p:?}");
        }
        assert_eq!(never[0], every_2[0]);
        assert_eq!(never[1], every_2[1], "no sync after update 1");
        assert!(
            (never[2] - every_2[2]).abs() > 1e-9,
            "a sync after update 2: {never:?} {every_2:?}"
        );
    }
}
