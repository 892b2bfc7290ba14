#![allow(dead_code)]
//! Shared by the in-process learning tests (each its own binary, so the global torch RNG and
//! thread settings are the test's alone and runs are repeatable). The learning path without the network: the actor's env runner produces rollouts, the
//! learner's edge validates them, the batcher and trainer learn from them, and the weights go
//! back to the runner through safetensors every `publish_every` updates, as in a cluster.

use actor::runner::EnvRunner;
use learner::batch::Batcher;
use learner::ingest::{validate, RolloutSpec};
use learner::trainer::Trainer;
use tch::Device;
use troupe::model::{Model, ModelSpec};
use troupe::RunConfig;

/// What an in-process run measured.
pub struct Outcome {
    /// Mean return of the last 100 episodes at the end.
    pub mean_return: f64,
    /// The update at which that mean first reached the target (NaN if never; training stops).
    pub solved_at: f64,
    /// Each update's explained variance of the value targets.
    pub explained_variance: Vec<f64>,
    /// Mean return of the first 100 episodes (the untrained policy).
    pub first_mean_return: f64,
    /// The observation dtype the rollouts carried on the wire.
    pub wire_obs_dtype: Option<proto::v1::DType>,
    pub episodes: u64,
}

/// Trains for `updates` updates, acting with weights `lag` publishes old (a cluster's actors
/// are a few versions behind).
pub fn train(config: &RunConfig, updates: u64, seed: i64, lag: usize, target: f64) -> Outcome {
    tch::manual_seed(seed);
    tch::set_num_threads(1);
    let seeds: Vec<u64> = (0..config.actor.num_envs as u64)
        .map(|i| i + 1000 * seed as u64)
        .collect();
    let env = actor::envs::make(&config.env, &seeds, &python_path()).unwrap();
    // One policy (shared by every agent of a multi-agent env).
    let policies = troupe::policy_map::policy_specs(config, env.spec()).unwrap();
    assert_eq!(policies.len(), 1, "in-process training runs one policy");
    let spec = ModelSpec {
        env: policies[0].clone(),
        model: config.model.clone(),
    };
    let mut acting = Model::new(&spec, Device::Cpu).unwrap();
    let mut runner = EnvRunner::new(
        env,
        &policies,
        config.policies.reward,
        config.actor.unroll_length,
        &[acting.state_size()],
        seed as u64,
    )
    .unwrap();
    let mut trainer = Trainer::new(config, &spec, Device::Cpu).unwrap();
    let snap = trainer.snapshot().expect("finite weights");
    acting.load_safetensors(&snap.blob).unwrap();
    let mut version = snap.version;
    let mut in_flight = std::collections::VecDeque::new();
    let mut solved_at: Option<u64> = None;
    let rollout_spec = RolloutSpec {
        unroll_length: config.actor.unroll_length,
        env: spec.env.clone(),
        state_size: acting.state_size(),
        max_envs: config.actor.num_envs * spec.env.agents_per_env(),
        first_policy: true,
    };
    let mut batcher = Batcher::new(config.learner.batch_size);
    let mut returns = std::collections::VecDeque::new();
    let mut explained_variance = Vec::new();
    let mut first_returns = Vec::new();
    let mut wire_obs_dtype = None;
    let mut episodes = 0u64;
    while trainer.updates < updates && solved_at.is_none() {
        let parts = runner
            .unroll_one(&acting, 1, version, &mut |e| {
                episodes += 1;
                if first_returns.len() < 100 {
                    first_returns.push(e.episode_return as f64);
                }
                returns.push_back(e.episode_return as f64);
                if returns.len() > 100 {
                    returns.pop_front();
                }
            })
            .unwrap();
        for r in parts {
            wire_obs_dtype = r
                .observations
                .as_ref()
                .and_then(|t| proto::v1::DType::try_from(t.dtype).ok());
            batcher.push(validate(&r, &rollout_spec, version).unwrap());
        }
        while let Some(batch) = batcher.next_batch() {
            let stats = trainer.update_batch(&batch);
            explained_variance.push(stats.explained_variance);
            if trainer.updates.is_multiple_of(config.learner.publish_every) {
                in_flight.push_back(trainer.snapshot().expect("finite weights"));
                if in_flight.len() > lag {
                    let snap = in_flight.pop_front().unwrap();
                    acting.load_safetensors(&snap.blob).unwrap();
                    version = snap.version;
                }
            }
            let mean = returns.iter().sum::<f64>() / returns.len().max(1) as f64;
            if returns.len() == 100 && mean >= target && solved_at.is_none() {
                solved_at = Some(trainer.updates);
            }
            if trainer.updates.is_multiple_of(250) {
                eprintln!(
                    "updates {} mean return {mean:.2} entropy {:.3}",
                    trainer.updates,
                    stats.term("entropy").unwrap_or(f64::NAN)
                );
            }
        }
    }
    Outcome {
        mean_return: returns.iter().sum::<f64>() / returns.len().max(1) as f64,
        solved_at: solved_at.map_or(f64::NAN, |u| u as f64),
        explained_variance,
        first_mean_return: first_returns.iter().sum::<f64>() / first_returns.len().max(1) as f64,
        wire_obs_dtype,
        episodes,
    }
}

/// Where hosted envs import gymnasium from (scripts/env.sh exports TROUPE_PYTHON_PATH).
pub fn python_path() -> Vec<String> {
    std::env::var("TROUPE_PYTHON_PATH")
        .map(|s| s.split(':').filter(|p| !p.is_empty()).map(String::from).collect())
        .unwrap_or_default()
}
