//! The run config: one TOML file that describes a training run (environment, model, unroll
//! length, batch size, learning rate, ...). The coordinator reads it at start-up and hands the
//! same document to the learner and every actor, which validate it with the same code.
//!
//! Unknown keys and out-of-range values are rejected with one line naming the key and what was
//! expected. The reference is docs/CONFIG.md.

use serde::{Deserialize, Serialize};

/// A problem with the run config. The message names the key and what was expected.
#[derive(Debug, thiserror::Error)]
#[error("run config: {0}")]
pub struct ConfigError(String);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub name: String,
    pub env: EnvConfig,
    pub model: ModelConfig,
    pub actor: ActorConfig,
    pub learner: LearnerConfig,
    pub coordinator: CoordinatorConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvConfig {
    /// Environment id. Supported: "CartPole-v1".
    pub id: String,
    /// Base seed; environment i of actor a gets seed + a * num_envs + i.
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Widths of the hidden layers of the shared torso.
    pub hidden_sizes: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActorConfig {
    /// N: environments per actor process, batched through one policy forward.
    pub num_envs: usize,
    /// T: steps per unroll.
    pub unroll_length: usize,
    /// Seconds between heartbeats to the coordinator.
    pub heartbeat_interval_s: f64,
    /// Rollouts an actor may have sent that the learner has not yet acknowledged.
    pub max_in_flight: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    Adam,
    Rmsprop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearnerConfig {
    /// B: environment columns per update (each column is one env's T-step unroll).
    pub batch_size: usize,
    pub optimizer: Optimizer,
    pub learning_rate: f64,
    /// RMSProp smoothing (alpha); Adam's beta2 is fixed at 0.999.
    pub rmsprop_alpha: f64,
    pub rmsprop_eps: f64,
    pub discount: f64,
    /// V-trace clip for the value targets' importance weights.
    pub rho_bar: f64,
    /// V-trace clip for the trace coefficients.
    pub c_bar: f64,
    /// Clip for the policy-gradient importance weights.
    pub pg_rho_bar: f64,
    pub baseline_cost: f64,
    pub entropy_cost: f64,
    /// Normalise the policy-gradient advantages of each batch to mean 0, std 1.
    pub normalize_advantages: bool,
    pub max_grad_norm: f64,
    /// Publish the weights as a new policy version every K updates.
    pub publish_every: u64,
    /// Rollouts the learner holds in its queue before actors must wait.
    pub queue_capacity: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    /// Keep the newest K policy versions in Redis (pinned versions are kept as well).
    pub keep_versions: u64,
    /// An actor that has not sent a heartbeat for this long is reported as gone.
    pub actor_timeout_s: f64,
}

fn default_run_name() -> String {
    "troupe".to_string()
}

impl Default for EnvConfig {
    fn default() -> Self {
        EnvConfig {
            id: "CartPole-v1".to_string(),
            seed: 0,
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            hidden_sizes: vec![64, 64],
        }
    }
}

impl Default for ActorConfig {
    fn default() -> Self {
        ActorConfig {
            num_envs: 16,
            unroll_length: 32,
            heartbeat_interval_s: 1.0,
            max_in_flight: 2,
        }
    }
}

impl Default for LearnerConfig {
    fn default() -> Self {
        LearnerConfig {
            batch_size: 64,
            optimizer: Optimizer::Adam,
            learning_rate: 5e-4,
            rmsprop_alpha: 0.99,
            rmsprop_eps: 1e-5,
            discount: 0.99,
            rho_bar: 1.0,
            c_bar: 1.0,
            pg_rho_bar: 1.0,
            baseline_cost: 0.5,
            entropy_cost: 0.01,
            normalize_advantages: true,
            max_grad_norm: 40.0,
            publish_every: 1,
            queue_capacity: 4,
        }
    }
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            keep_versions: 8,
            actor_timeout_s: 10.0,
        }
    }
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            name: default_run_name(),
            env: EnvConfig::default(),
            model: ModelConfig::default(),
            actor: ActorConfig::default(),
            learner: LearnerConfig::default(),
            coordinator: CoordinatorConfig::default(),
        }
    }
}

/// Environments this build supports.
pub const ENV_IDS: &[&str] = &["CartPole-v1"];

impl RunConfig {
    /// Parses and validates a TOML document. Keys left out take their defaults.
    pub fn from_toml(text: &str) -> Result<RunConfig, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError(one_line(&e.to_string())))?;
        let cfg: RunConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let line = inner
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            let mut msg = one_line(inner.message());
            if let Some(line) = line {
                msg.push_str(&format!(" (line {line})"));
            }
            if path.is_empty() || path == "." {
                ConfigError(msg)
            } else {
                ConfigError(format!("{path}: {msg}"))
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a TOML file.
    pub fn from_file(path: &std::path::Path) -> Result<RunConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        RunConfig::from_toml(&text)
    }

    /// The canonical TOML form, as sent to the learner and actors.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a run config always serializes")
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.learner;
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad("name", "a non-empty name of letters, digits, '-' and '_'", &self.name);
        }
        if !ENV_IDS.contains(&self.env.id.as_str()) {
            return bad("env.id", &format!("one of {ENV_IDS:?}"), &self.env.id);
        }
        if self.model.hidden_sizes.is_empty() || self.model.hidden_sizes.iter().any(|&h| h == 0 || h > 65536) {
            return bad(
                "model.hidden_sizes",
                "1 or more layer widths in 1..=65536",
                &format!("{:?}", self.model.hidden_sizes),
            );
        }
        check_range("actor.num_envs", self.actor.num_envs as f64, 1.0, 4096.0)?;
        check_range("actor.unroll_length", self.actor.unroll_length as f64, 1.0, 4096.0)?;
        check_range(
            "actor.heartbeat_interval_s",
            self.actor.heartbeat_interval_s,
            0.01,
            60.0,
        )?;
        check_range("actor.max_in_flight", self.actor.max_in_flight as f64, 1.0, 1024.0)?;
        check_range("learner.batch_size", l.batch_size as f64, 1.0, 65536.0)?;
        check_open_range("learner.learning_rate", l.learning_rate, 0.0, 1.0)?;
        check_open_range("learner.rmsprop_alpha", l.rmsprop_alpha, 0.0, 1.0)?;
        check_open_range("learner.rmsprop_eps", l.rmsprop_eps, 0.0, 1.0)?;
        check_range("learner.discount", l.discount, 0.0, 1.0)?;
        check_open_range("learner.rho_bar", l.rho_bar, 0.0, f64::MAX)?;
        check_open_range("learner.c_bar", l.c_bar, 0.0, f64::MAX)?;
        check_open_range("learner.pg_rho_bar", l.pg_rho_bar, 0.0, f64::MAX)?;
        check_range("learner.baseline_cost", l.baseline_cost, 0.0, 1e6)?;
        check_range("learner.entropy_cost", l.entropy_cost, 0.0, 1e6)?;
        check_open_range("learner.max_grad_norm", l.max_grad_norm, 0.0, f64::MAX)?;
        check_range("learner.publish_every", l.publish_every as f64, 1.0, 1e9)?;
        check_range("learner.queue_capacity", l.queue_capacity as f64, 1.0, 65536.0)?;
        check_range(
            "coordinator.keep_versions",
            self.coordinator.keep_versions as f64,
            1.0,
            1e6,
        )?;
        check_open_range(
            "coordinator.actor_timeout_s",
            self.coordinator.actor_timeout_s,
            0.0,
            86400.0,
        )?;
        Ok(())
    }
}

fn bad<T>(key: &str, expected: &str, got: &str) -> Result<T, ConfigError> {
    Err(ConfigError(format!("{key}: expected {expected}, got {got}")))
}

/// `lo <= v <= hi`.
fn check_range(key: &str, v: f64, lo: f64, hi: f64) -> Result<(), ConfigError> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(())
    } else {
        bad(key, &format!("a value in [{lo}, {hi}]"), &v.to_string())
    }
}

/// `lo < v <= hi`.
fn check_open_range(key: &str, v: f64, lo: f64, hi: f64) -> Result<(), ConfigError> {
    if v.is_finite() && v > lo && v <= hi {
        Ok(())
    } else if hi == f64::MAX {
        bad(key, &format!("a finite value > {lo}"), &v.to_string())
    } else {
        bad(key, &format!("a value in ({lo}, {hi}]"), &v.to_string())
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_left_out_take_defaults() {
        let cfg = RunConfig::from_toml("[learner]\nbatch_size = 8\n").unwrap();
        assert_eq!(cfg.learner.batch_size, 8);
        assert_eq!(cfg.learner.learning_rate, LearnerConfig::default().learning_rate);
        assert_eq!(cfg.actor, ActorConfig::default());
    }

    #[test]
    fn empty_document_gives_defaults_and_round_trips() {
        let cfg = RunConfig::from_toml("").unwrap();
        assert_eq!(cfg, RunConfig::default());
        let back = RunConfig::from_toml(&cfg.to_toml()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn shipped_config_parses() {
        let text = include_str!("../../configs/cartpole.toml");
        let cfg = RunConfig::from_toml(text).unwrap();
        assert_eq!(cfg.env.id, "CartPole-v1");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = RunConfig::from_toml("[learner]\nlerning_rate = 0.1\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("run config: learner.lerning_rate: unknown field `lerning_rate`"),
            "{err}"
        );
        assert!(!err.contains('\n'));
        let err = RunConfig::from_toml("[trainer]\nx = 1\n").unwrap_err().to_string();
        assert!(err.contains("trainer") && err.contains("unknown field"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_named() {
        let cases = [
            (
                "[learner]\nlearning_rate = -0.1",
                "learner.learning_rate: expected a value in (0, 1], got -0.1",
            ),
            (
                "[learner]\ndiscount = 1.5",
                "learner.discount: expected a value in [0, 1], got 1.5",
            ),
            (
                "[actor]\nnum_envs = 0",
                "actor.num_envs: expected a value in [1, 4096], got 0",
            ),
            (
                "[actor]\nmax_in_flight = 0",
                "actor.max_in_flight: expected a value in [1, 1024], got 0",
            ),
            (
                "[env]\nid = \"Pong\"",
                "env.id: expected one of [\"CartPole-v1\"], got Pong",
            ),
            (
                "[model]\nhidden_sizes = []",
                "model.hidden_sizes: expected 1 or more layer widths",
            ),
            (
                "[learner]\nmax_grad_norm = nan",
                "learner.max_grad_norm: expected a finite value > 0, got NaN",
            ),
        ];
        for (doc, want) in cases {
            let err = RunConfig::from_toml(doc).unwrap_err().to_string();
            assert!(err.contains(want), "{doc}: {err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn wrong_type_is_named() {
        let err = RunConfig::from_toml("[actor]\nunroll_length = \"long\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("actor.unroll_length"), "{err}");
        let err = RunConfig::from_toml("[learner]\noptimizer = \"sgd\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("learner.optimizer") && err.contains("adam"), "{err}");
    }
}
