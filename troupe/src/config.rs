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
    /// The run is solved when the mean return of the last 100 episodes reaches this.
    pub target_return: Option<f64>,
    pub env: EnvConfig,
    pub model: ModelConfig,
    pub actor: ActorConfig,
    pub learner: LearnerConfig,
    /// IMPALA's settings; only with `learner.algorithm = "impala"` (the default).
    pub impala: Option<ImpalaConfig>,
    /// APPO's settings; only with `learner.algorithm = "appo"`.
    pub appo: Option<AppoConfig>,
    /// Ape-X DQN's settings; only with `learner.algorithm = "apex_dqn"`.
    pub apex: Option<ApexConfig>,
    pub coordinator: CoordinatorConfig,
    /// How a multi-agent env's agents map to policies, and what reward they train on.
    pub policies: PoliciesConfig,
    /// Experience replay: the tables the replay service keeps (in Redis), for every policy.
    pub replay: ReplayConfig,
}

/// `[replay]`: named tables, each with a sampler, a remover and a rate limiter (Reverb's
/// semantics). Every policy of the run has its own copy of each table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayConfig {
    pub tables: Vec<ReplayTableConfig>,
}

/// How a replay table draws its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerKind {
    Uniform,
    /// Proportional to `priority ^ priority_exponent` (Schaul et al. 2016).
    Prioritized,
    /// The oldest item first.
    Fifo,
}

/// Who writes fresh rollouts to replay (`learner.replay_inserter`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayInserter {
    /// The learner writes each rollout it accepts (validated, and within its policy lag).
    #[default]
    Learner,
    /// Each actor writes what it sends, beside the stream (Ape-X's actors): the learner's
    /// ingest does no replay work, and replay fills even while the learner is away. Replayed
    /// rollouts are validated when sampled, as every rollout is.
    Actors,
}

/// `[[replay.tables]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayTableConfig {
    pub name: String,
    /// Items held; an insert beyond it evicts the oldest (FIFO).
    pub max_size: u64,
    pub sampler: SamplerKind,
    /// alpha: how strongly priorities shape sampling (0: uniform).
    pub priority_exponent: f64,
    /// beta at the start: how far importance weights correct for prioritization.
    pub importance_sampling_exponent: f64,
    /// beta at the end of `importance_sampling_anneal_updates` learner updates (linear);
    /// none: beta stays fixed.
    pub importance_sampling_exponent_final: Option<f64>,
    pub importance_sampling_anneal_updates: u64,
    /// An item sampled this often is removed; 0: no limit.
    pub max_times_sampled: u64,
    /// Sampling starts once the table holds this many items.
    pub min_size_to_sample: u64,
    /// With it, `inserts * samples_per_insert - samples` is kept within `error_buffer` of
    /// its value at `min_size_to_sample` (Reverb's SampleToInsertRatio): the side that runs
    /// ahead waits. Without it, only the minimum size holds sampling back.
    pub samples_per_insert: Option<f64>,
    /// Default: `max(1, samples_per_insert) * 100`.
    pub error_buffer: Option<f64>,
    /// How long an insert or a sample waits on the rate limiter before it fails with
    /// DEADLINE_EXCEEDED (a request may ask for less).
    pub timeout_s: f64,
}

impl Default for ReplayTableConfig {
    fn default() -> Self {
        ReplayTableConfig {
            name: String::new(),
            max_size: 100_000,
            sampler: SamplerKind::Uniform,
            priority_exponent: 0.6,
            importance_sampling_exponent: 0.4,
            importance_sampling_exponent_final: None,
            importance_sampling_anneal_updates: 0,
            max_times_sampled: 0,
            min_size_to_sample: 1,
            samples_per_insert: None,
            error_buffer: None,
            timeout_s: 30.0,
        }
    }
}

impl ReplayTableConfig {
    /// The error buffer in use.
    pub fn error_buffer(&self) -> Option<f64> {
        self.samples_per_insert
            .map(|spi| self.error_buffer.unwrap_or(spi.max(1.0) * 100.0))
    }
}

impl ReplayConfig {
    pub fn table(&self, name: &str) -> Option<&ReplayTableConfig> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// Refuses tables that could block a side forever, as Reverb does, and names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (i, t) in self.tables.iter().enumerate() {
            let key = |k: &str| format!("replay.tables[{i}].{k}");
            if !valid_policy_name(&t.name) {
                return bad(
                    &key("name"),
                    "1 to 64 letters, digits, '-' and '_'",
                    &format!("{:?}", t.name),
                );
            }
            if self.tables[..i].iter().any(|o| o.name == t.name) {
                return bad(
                    &key("name"),
                    "table names that appear once",
                    &format!("{:?} twice", t.name),
                );
            }
            check_range(&key("max_size"), t.max_size as f64, 1.0, 1e12)?;
            check_range(&key("priority_exponent"), t.priority_exponent, 0.0, 10.0)?;
            check_range(
                &key("importance_sampling_exponent"),
                t.importance_sampling_exponent,
                0.0,
                1.0,
            )?;
            if let Some(b) = t.importance_sampling_exponent_final {
                check_range(&key("importance_sampling_exponent_final"), b, 0.0, 1.0)?;
            }
            check_open_range(&key("timeout_s"), t.timeout_s, 0.0, 86_400.0)?;
            if t.min_size_to_sample < 1 || t.min_size_to_sample > t.max_size {
                return bad(
                    &key("min_size_to_sample"),
                    &format!(
                        "1 to max_size ({}): a table that never reaches it is never sampled",
                        t.max_size
                    ),
                    &t.min_size_to_sample.to_string(),
                );
            }
            if t.samples_per_insert.is_none() && t.error_buffer.is_some() {
                return bad(
                    &key("error_buffer"),
                    "no error_buffer without samples_per_insert",
                    "a value",
                );
            }
            if let Some(spi) = t.samples_per_insert {
                check_open_range(&key("samples_per_insert"), spi, 0.0, 1e6)?;
                let buffer = t.error_buffer().unwrap_or_default();
                if !buffer.is_finite() || buffer < spi.max(1.0) {
                    return bad(
                        &key("error_buffer"),
                        &format!(
                            "at least max(1, samples_per_insert) = {}: a smaller buffer can block inserts and samples both (Reverb refuses it too)",
                            spi.max(1.0)
                        ),
                        &buffer.to_string(),
                    );
                }
                if t.max_times_sampled > 0 && spi > t.max_times_sampled as f64 {
                    return bad(
                        &key("samples_per_insert"),
                        &format!(
                            "at most max_times_sampled ({}): items leave after that many samples, so more samples per insert than that would wait forever",
                            t.max_times_sampled
                        ),
                        &spi.to_string(),
                    );
                }
            }
        }
        Ok(())
    }
}

/// How agents map to policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyMapping {
    /// One policy, `default`, for every agent (with the agent-id input when there are several).
    Shared,
    /// One policy per agent, named by the agent's id.
    PerAgent,
    /// `policies.map`: each agent's policy, by name, among `policies.names` (teams).
    Map,
}

/// The reward each agent trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardMode {
    /// Its own reward.
    Agent,
    /// The team reward: the sum of every agent's reward at that step.
    Team,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoliciesConfig {
    pub mapping: PolicyMapping,
    /// With `mapping = "map"`: the policies of the run.
    pub names: Vec<String>,
    /// With `mapping = "map"`: agent id to policy name, for every agent of the env.
    pub map: std::collections::BTreeMap<String, String>,
    /// Feed the model a one-hot of the column's agent (default: when a policy acts for more
    /// than one agent).
    pub agent_id_input: Option<bool>,
    pub reward: RewardMode,
}

impl Default for PoliciesConfig {
    fn default() -> Self {
        PoliciesConfig {
            mapping: PolicyMapping::Shared,
            names: Vec::new(),
            map: Default::default(),
            agent_id_input: None,
            reward: RewardMode::Agent,
        }
    }
}

/// Where an environment's code runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EnvBackend {
    /// Troupe's own Rust envs ([`crate::env::NATIVE_IDS`]).
    Native,
    /// `gymnasium.make(id, **kwargs)` inside the actor (PyO3), then `wrappers` in order.
    Gymnasium,
    /// A user's function `module:function` called with `kwargs`, returning a Gymnasium env.
    Factory,
    /// `envpool.make_gymnasium(id, num_envs=N, seed=..., **kwargs)`: one C++ pool of N envs.
    /// EnvPool resets one step after an episode ends; those steps are marked and left out.
    Envpool,
    /// A PettingZoo env from `module:function` (e.g. `mpe2.simple_spread_v3:parallel_env`)
    /// called with `kwargs`: a parallel env, or a turn-based AEC env through PettingZoo's own
    /// conversion to the parallel API.
    Pettingzoo,
}

/// A Gymnasium wrapper applied to a hosted env: `gymnasium.wrappers.<name>(env, **kwargs)`, or
/// `module:function` for a wrapper of the user's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrapperConfig {
    pub name: String,
    #[serde(default)]
    pub kwargs: toml::Table,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnvConfig {
    /// Environment id, Gymnasium's (for `factory`, a name for logs and the policy file).
    pub id: String,
    pub backend: EnvBackend,
    /// Base seed; environment i of actor a gets seed + a * num_envs + i.
    pub seed: u64,
    /// Keyword arguments for `gymnasium.make`, the factory, or `envpool.make_gymnasium`.
    pub kwargs: toml::Table,
    /// Gymnasium backend: wrappers applied in order, innermost first.
    pub wrappers: Vec<WrapperConfig>,
    /// Factory backend: `module:function`.
    pub factory: String,
    /// Modules imported before the env is made (e.g. "ale_py", which registers the ALE ids).
    pub imports: Vec<String>,
    /// Directories added to Python's `sys.path` (for a factory's module).
    pub python_path: Vec<String>,
    /// Python-hosted multi-agent envs: an episode that ends at this step is reported as
    /// truncated rather than terminated (lbforaging reports its 50-step limit as `done`; EPyMARL
    /// reads it as a time limit).
    pub time_limit: Option<u32>,
    /// Lowest and highest episode return the env can give, for the actors' return histogram
    /// buckets (e.g. [0, 500] for CartPole, [-500, 0] for Acrobot). Without it, buckets span
    /// +-10^5 on a log scale. (The learning curve follows the returns themselves.)
    pub return_range: Option<[f64; 2]>,
}

/// The network's torso: what turns an observation into features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TorsoKind {
    /// Dense layers of `hidden_sizes`, on the flattened observation.
    Mlp,
    /// The Nature-DQN CNN (Mnih et al. 2015): 32x8x8/4, 64x4x4/2, 64x3x3/1, then a dense 512
    /// (fixed, as in the paper; `dense_size` does not apply).
    NatureCnn,
    /// A conv stack of `conv_channels`, `conv_kernels` and `conv_strides`, then `dense_size`.
    Cnn,
    /// The IMPALA ResNet (Espeholt et al. 2018, fig. 3): per stage of `impala_channels`, a 3x3
    /// conv, a 3x3/2 max-pool and two residual blocks; then `dense_size`.
    ImpalaResnet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Relu,
    Tanh,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub torso: TorsoKind,
    /// MLP: widths of the hidden layers.
    pub hidden_sizes: Vec<usize>,
    /// MLP: the hidden layers' activation.
    pub activation: Activation,
    /// Cnn: output channels, kernel sizes and strides of each conv layer.
    pub conv_channels: Vec<usize>,
    pub conv_kernels: Vec<usize>,
    pub conv_strides: Vec<usize>,
    /// ImpalaResnet: channels of each stage.
    pub impala_channels: Vec<usize>,
    /// Conv torsos: width of the dense layer after the convolutions.
    pub dense_size: usize,
    /// Image observations are [H, W, C] (MinAtar) rather than [C, H, W] (Atari frame stacks).
    pub channels_last: bool,
    /// Width of an LSTM core after the torso; 0 for none.
    pub lstm_size: usize,
    /// One torso (and core) for the policy and the value heads. Separate networks are the
    /// default: with a shared MLP torso, CartPole's value loss swamps the policy's gradients.
    pub share_torso: bool,
    /// Gaussian heads: the initial log standard deviation (a learned parameter per dimension).
    pub init_log_std: f64,
    /// Normalise observations by running mean and variance (learned by the learner, carried
    /// in the policy file, applied by the actors): `clamp((x - mean) / sqrt(var + 1e-8), ±clip)`.
    pub normalize_observations: bool,
    /// The clip for normalised observations.
    pub observation_clip: f64,
    /// A centralized critic (MAPPO's, with V-trace): the value function reads the env's global
    /// state (and the agent one-hot) instead of the agent's own observation. Needs an env with
    /// a state and separate torsos.
    pub central_critic: bool,
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

/// The learner's algorithm: its loss, its targets and its statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlgorithmKind {
    /// IMPALA (Espeholt et al. 2018): V-trace targets and the V-trace policy gradient.
    Impala,
    /// APPO: V-trace targets with PPO's clipped surrogate (Schulman et al. 2017), as Sample
    /// Factory and RLlib define it, and an optional KL penalty to the behaviour policy.
    Appo,
    /// Ape-X DQN (Horgan et al. 2018): n-step double DQN with a dueling head, trained on
    /// prioritized replay alone; the actors act epsilon-greedily and write to replay.
    #[serde(rename = "apex_dqn")]
    ApexDqn,
}

impl AlgorithmKind {
    pub fn name(self) -> &'static str {
        match self {
            AlgorithmKind::Impala => "impala",
            AlgorithmKind::Appo => "appo",
            AlgorithmKind::ApexDqn => "apex_dqn",
        }
    }

    /// The section its settings go in.
    pub fn section(self) -> &'static str {
        match self {
            AlgorithmKind::ApexDqn => "apex",
            other => other.name(),
        }
    }
}

/// How the learning rate moves over the run, from `learning_rate` to `final_learning_rate`
/// over `schedule_frames` trained frames (then it stays at the final rate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    Constant,
    Linear,
    Cosine,
}

/// Value-target normalisation (see docs/CONFIG.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueNormalization {
    None,
    /// The value head predicts targets normalised by running statistics (Sample Factory's
    /// `normalize_returns`); a change of statistics changes its unnormalised outputs.
    Running,
    /// PopArt (van Hasselt et al. 2016): the same statistics, and after each change the value
    /// head's last layer is rescaled so its unnormalised outputs are preserved exactly.
    Popart,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearnerConfig {
    /// `impala` or `appo`; its settings are in the section of that name.
    pub algorithm: AlgorithmKind,
    /// B: environment columns per update (each column is one env's T-step unroll).
    pub batch_size: usize,
    pub optimizer: Optimizer,
    pub learning_rate: f64,
    pub lr_schedule: LrSchedule,
    /// Where a linear or cosine schedule ends.
    pub final_learning_rate: f64,
    /// Trained frames over which the schedule moves.
    pub schedule_frames: u64,
    /// RMSProp smoothing (alpha); Adam's beta2 is fixed at 0.999.
    pub rmsprop_alpha: f64,
    pub rmsprop_eps: f64,
    pub discount: f64,
    /// Rewards are multiplied by this before training (after clipping).
    pub reward_scale: f64,
    /// Rewards are clipped to [-reward_clip, reward_clip] before training; 0 for no clip.
    pub reward_clip: f64,
    pub value_normalization: ValueNormalization,
    /// Step size of the value statistics' moving averages.
    pub value_norm_beta: f64,
    pub max_grad_norm: f64,
    /// libtorch's intra-op threads for the learner; 0 for every core the process may use.
    pub threads: usize,
    /// Publish the weights as a new policy version every K updates.
    pub publish_every: u64,
    /// Rollouts the learner holds in its queue before actors must wait.
    pub queue_capacity: usize,
    /// Rollouts acted with a policy more than this many versions behind the learner's newest
    /// are refused (counted as `troupe_learner_rollouts_rejected_total{reason="stale"}`).
    pub max_policy_lag: u64,
    /// Rollout streams one actor id may hold open at once; more are refused.
    pub max_streams_per_actor: usize,
    /// A rollout stream that sends nothing for this long is closed (the first message included).
    pub stream_idle_timeout_s: f64,
    /// Keep this many checkpoints in `--checkpoint-dir` (the newest; older ones are deleted).
    pub keep_checkpoints: usize,
    /// Write a checkpoint at most this often (and always at shutdown).
    pub checkpoint_every_s: f64,
    /// The share of each batch's columns drawn from replay (`replay_table`), the rest fresh
    /// from the actors; 0: no replay. The learner also writes every rollout it accepts there.
    pub replay_ratio: f64,
    /// The `[[replay.tables]]` entry the learner writes to and samples from (its policy's copy).
    pub replay_table: String,
    /// Who writes fresh rollouts to `replay_table`: "learner" or "actors".
    pub replay_inserter: ReplayInserter,
}

/// IMPALA's loss: `-mean(log pi(a|x) * A) + baseline_cost * 0.5 * mean((v_s - V)^2)
/// - entropy_cost * mean(H)`, with V-trace targets `v_s` and advantages `A`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImpalaConfig {
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
}

/// APPO's loss (the learner's `algorithms::appo` gives it in full): PPO's clipped surrogate on
/// `r = pi(a|x) / mu(a|x)` with V-trace advantages, the V-trace value loss, an entropy bonus and
/// `kl_cost * mean(KL(mu || pi))`; targets are recomputed on each minibatch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppoConfig {
    pub rho_bar: f64,
    pub c_bar: f64,
    pub pg_rho_bar: f64,
    pub baseline_cost: f64,
    pub entropy_cost: f64,
    pub normalize_advantages: bool,
    /// PPO's epsilon: the ratio is clipped to [1 - clip_ratio, 1 + clip_ratio].
    pub clip_ratio: f64,
    /// Weight of the KL penalty to the behaviour policy; 0 for none.
    pub kl_cost: f64,
    /// Passes over each batch.
    pub epochs: usize,
    /// Minibatches per pass (the batch's columns are split; B must divide evenly).
    pub minibatches: usize,
}

/// Ape-X DQN's settings (the learner's `algorithms::apex` gives the rule in full). The batch
/// is `learner.batch_size` columns drawn from `learner.replay_table`, each column a T-step
/// sequence of one env; its Q-values come from the model's heads (dueling: `Q = V + A -
/// mean(A)`, with the policy head as A and the value head as V; else the policy head is Q).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApexConfig {
    /// n of the n-step returns.
    pub n_step: usize,
    /// Copy the online network into the target network every this many learner updates.
    pub target_update_period: u64,
    /// A dueling head (Wang et al. 2016).
    pub dueling: bool,
    /// A sequence's priority: `eta * max|td| + (1 - eta) * mean|td|` (R2D2's mixture; 1 is the
    /// max, 0 the mean).
    pub priority_eta: f64,
    /// The actors' exploration: env i of N acts with `epsilon_base^(1 + epsilon_alpha * i / (N -
    /// 1))`, N = `num_actors * actor.num_envs`, i = `((actor id - 1) mod num_actors) *
    /// num_envs + env`.
    pub epsilon_base: f64,
    pub epsilon_alpha: f64,
    /// Actors the schedule spreads over (the deployment's actor count).
    pub num_actors: usize,
    /// Each env's epsilon starts at 1 and falls linearly to its own over this many of its
    /// actor's frames (EPyMARL's and CleanRL's annealing, for tasks that random play must
    /// explore first); 0: the paper's fixed epsilons from the start.
    pub epsilon_anneal_frames: u64,
    /// How long the learner waits for replay to give a batch before it logs that it is still
    /// waiting (it goes on waiting, with backoff: replay is its only source).
    pub sample_deadline_s: f64,
    /// Value decomposition for teams (VDN, Sunehag et al. 2018): the team's Q is the sum of its
    /// agents' Qs, trained on the team reward (`policies.mapping = "shared"`, `policies.reward =
    /// "team"`).
    pub vdn: bool,
}

impl Default for ApexConfig {
    fn default() -> Self {
        ApexConfig {
            n_step: 3,
            target_update_period: 100,
            dueling: true,
            priority_eta: 0.9,
            epsilon_base: 0.4,
            epsilon_alpha: 7.0,
            num_actors: 1,
            epsilon_anneal_frames: 0,
            sample_deadline_s: 10.0,
            vdn: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorConfig {
    /// Keep the newest K policy versions in Redis (pinned versions are kept as well).
    pub keep_versions: u64,
    /// An actor that has not sent a heartbeat for this long is reported as gone.
    pub actor_timeout_s: f64,
    /// The learner lease lasts this long after each renewal (the learner renews every third of
    /// it). Another learner id may take the run over once it has run out.
    pub learner_lease_s: f64,
}

fn default_run_name() -> String {
    "troupe".to_string()
}

impl Default for EnvConfig {
    fn default() -> Self {
        EnvConfig {
            id: "CartPole-v1".to_string(),
            backend: EnvBackend::Native,
            seed: 0,
            kwargs: toml::Table::new(),
            wrappers: Vec::new(),
            factory: String::new(),
            imports: Vec::new(),
            python_path: Vec::new(),
            time_limit: None,
            return_range: None,
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            torso: TorsoKind::Mlp,
            hidden_sizes: vec![64, 64],
            activation: Activation::Relu,
            conv_channels: vec![16],
            conv_kernels: vec![3],
            conv_strides: vec![1],
            impala_channels: vec![16, 32, 32],
            dense_size: 256,
            channels_last: false,
            lstm_size: 0,
            share_torso: false,
            init_log_std: 0.0,
            normalize_observations: false,
            observation_clip: 10.0,
            central_critic: false,
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

impl LearnerConfig {
    /// Columns of each batch drawn from replay.
    pub fn replayed_columns(&self) -> usize {
        (self.replay_ratio * self.batch_size as f64).round() as usize
    }
}

impl Default for LearnerConfig {
    fn default() -> Self {
        LearnerConfig {
            algorithm: AlgorithmKind::Impala,
            batch_size: 64,
            optimizer: Optimizer::Adam,
            learning_rate: 5e-4,
            lr_schedule: LrSchedule::Constant,
            final_learning_rate: 0.0,
            schedule_frames: 10_000_000,
            rmsprop_alpha: 0.99,
            rmsprop_eps: 1e-5,
            discount: 0.99,
            reward_scale: 1.0,
            reward_clip: 0.0,
            value_normalization: ValueNormalization::None,
            value_norm_beta: 0.001,
            max_grad_norm: 40.0,
            threads: 0,
            publish_every: 1,
            queue_capacity: 4,
            max_policy_lag: 1000,
            max_streams_per_actor: 2,
            stream_idle_timeout_s: 60.0,
            keep_checkpoints: 3,
            checkpoint_every_s: 30.0,
            replay_ratio: 0.0,
            replay_table: String::new(),
            replay_inserter: ReplayInserter::Learner,
        }
    }
}

impl Default for ImpalaConfig {
    fn default() -> Self {
        ImpalaConfig {
            rho_bar: 1.0,
            c_bar: 1.0,
            pg_rho_bar: 1.0,
            baseline_cost: 0.5,
            entropy_cost: 0.01,
            normalize_advantages: true,
        }
    }
}

impl Default for AppoConfig {
    fn default() -> Self {
        AppoConfig {
            rho_bar: 1.0,
            c_bar: 1.0,
            pg_rho_bar: 1.0,
            baseline_cost: 0.5,
            entropy_cost: 0.01,
            normalize_advantages: true,
            clip_ratio: 0.2,
            kl_cost: 0.0,
            epochs: 1,
            minibatches: 1,
        }
    }
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            keep_versions: 8,
            actor_timeout_s: 10.0,
            learner_lease_s: 10.0,
        }
    }
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            name: default_run_name(),
            target_return: None,
            env: EnvConfig::default(),
            model: ModelConfig::default(),
            actor: ActorConfig::default(),
            learner: LearnerConfig::default(),
            impala: None,
            appo: None,
            apex: None,
            coordinator: CoordinatorConfig::default(),
            policies: PoliciesConfig::default(),
            replay: ReplayConfig::default(),
        }
    }
}

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

    /// IMPALA's settings (the `[impala]` section, or its defaults).
    pub fn impala(&self) -> ImpalaConfig {
        self.impala.clone().unwrap_or_default()
    }

    /// APPO's settings (the `[appo]` section, or its defaults).
    pub fn appo(&self) -> AppoConfig {
        self.appo.clone().unwrap_or_default()
    }

    /// Ape-X DQN's settings (the `[apex]` section, or its defaults).
    pub fn apex(&self) -> ApexConfig {
        self.apex.clone().unwrap_or_default()
    }

    /// The actors act epsilon-greedily over Q-values and write to replay, not to the stream.
    pub fn acts_on_q_values(&self) -> bool {
        self.learner.algorithm == AlgorithmKind::ApexDqn
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
        self.env.validate()?;
        if let Some(t) = self.target_return {
            if !t.is_finite() {
                return bad("target_return", "a finite number", &t.to_string());
            }
        }
        self.model.validate()?;
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
        check_range("learner.final_learning_rate", l.final_learning_rate, 0.0, 1.0)?;
        check_range("learner.schedule_frames", l.schedule_frames as f64, 1.0, 1e18)?;
        check_range("learner.discount", l.discount, 0.0, 1.0)?;
        check_open_range("learner.reward_scale", l.reward_scale, 0.0, f64::MAX)?;
        check_range("learner.reward_clip", l.reward_clip, 0.0, f64::MAX)?;
        check_open_range("learner.value_norm_beta", l.value_norm_beta, 0.0, 1.0)?;
        check_open_range("learner.max_grad_norm", l.max_grad_norm, 0.0, f64::MAX)?;
        check_range("learner.threads", l.threads as f64, 0.0, 1024.0)?;
        let vtrace = |section: &str, rho: f64, c: f64, pg: f64, base: f64, ent: f64| {
            check_open_range(&format!("{section}.rho_bar"), rho, 0.0, f64::MAX)?;
            check_open_range(&format!("{section}.c_bar"), c, 0.0, f64::MAX)?;
            check_open_range(&format!("{section}.pg_rho_bar"), pg, 0.0, f64::MAX)?;
            check_range(&format!("{section}.baseline_cost"), base, 0.0, 1e6)?;
            check_range(&format!("{section}.entropy_cost"), ent, 0.0, 1e6)
        };
        let i = self.impala();
        vtrace(
            "impala",
            i.rho_bar,
            i.c_bar,
            i.pg_rho_bar,
            i.baseline_cost,
            i.entropy_cost,
        )?;
        let a = self.appo();
        vtrace(
            "appo",
            a.rho_bar,
            a.c_bar,
            a.pg_rho_bar,
            a.baseline_cost,
            a.entropy_cost,
        )?;
        check_open_range("appo.clip_ratio", a.clip_ratio, 0.0, 1.0)?;
        check_range("appo.kl_cost", a.kl_cost, 0.0, 1e6)?;
        check_range("appo.epochs", a.epochs as f64, 1.0, 1000.0)?;
        check_range("appo.minibatches", a.minibatches as f64, 1.0, l.batch_size as f64)?;
        if !l.batch_size.is_multiple_of(a.minibatches) {
            return bad(
                "appo.minibatches",
                &format!("a divisor of learner.batch_size ({})", l.batch_size),
                &a.minibatches.to_string(),
            );
        }
        let x = self.apex();
        check_range("apex.n_step", x.n_step as f64, 1.0, 1000.0)?;
        check_range("apex.target_update_period", x.target_update_period as f64, 1.0, 1e9)?;
        check_range("apex.priority_eta", x.priority_eta, 0.0, 1.0)?;
        check_open_range("apex.epsilon_base", x.epsilon_base, 0.0, 1.0)?;
        check_range("apex.epsilon_alpha", x.epsilon_alpha, 0.0, 1e3)?;
        check_range("apex.num_actors", x.num_actors as f64, 1.0, 1e6)?;
        check_open_range("apex.sample_deadline_s", x.sample_deadline_s, 0.0, 86400.0)?;
        for (section, given) in [
            ("impala", self.impala.is_some()),
            ("appo", self.appo.is_some()),
            ("apex", self.apex.is_some()),
        ] {
            if given && section != l.algorithm.section() {
                return bad(
                    section,
                    &format!(
                        "no [{section}] section, as learner.algorithm is \"{}\"",
                        l.algorithm.name()
                    ),
                    &format!("[{section}]"),
                );
            }
        }
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
        check_open_range(
            "coordinator.learner_lease_s",
            self.coordinator.learner_lease_s,
            0.0,
            3600.0,
        )?;
        check_range("learner.max_policy_lag", l.max_policy_lag as f64, 1.0, 1e12)?;
        check_range(
            "learner.max_streams_per_actor",
            l.max_streams_per_actor as f64,
            1.0,
            64.0,
        )?;
        check_open_range("learner.stream_idle_timeout_s", l.stream_idle_timeout_s, 0.0, 86400.0)?;
        check_range("learner.keep_checkpoints", l.keep_checkpoints as f64, 1.0, 1000.0)?;
        self.policies.validate()?;
        self.replay.validate()?;
        check_range("learner.replay_ratio", l.replay_ratio, 0.0, 0.9)?;
        // `learner.replay_table` must name a table when `why` needs one.
        let known_table = |why: &str| -> Result<(), ConfigError> {
            if self.replay.table(&l.replay_table).is_some() {
                return Ok(());
            }
            let known: Vec<&str> = self.replay.tables.iter().map(|t| t.name.as_str()).collect();
            bad(
                "learner.replay_table",
                &format!("one of the run's [[replay.tables]] {known:?} with {why}"),
                &format!("{:?}", l.replay_table),
            )
        };
        if l.algorithm == AlgorithmKind::ApexDqn {
            known_table("learner.algorithm = \"apex_dqn\"")?;
            if l.replay_ratio != 0.0 {
                return bad(
                    "learner.replay_ratio",
                    "0 with learner.algorithm = \"apex_dqn\" (its batches are all replayed)",
                    &l.replay_ratio.to_string(),
                );
            }
            if l.replay_inserter != ReplayInserter::Actors {
                return bad(
                    "learner.replay_inserter",
                    "\"actors\" with learner.algorithm = \"apex_dqn\" (Ape-X's actors write to replay, with priorities)",
                    "\"learner\"",
                );
            }
            if self.model.lstm_size > 0 {
                return bad(
                    "model.lstm_size",
                    "0 with learner.algorithm = \"apex_dqn\" (a recurrent Q-network, R2D2, is not built)",
                    &self.model.lstm_size.to_string(),
                );
            }
            if self.model.central_critic {
                return bad(
                    "model.central_critic",
                    "false with learner.algorithm = \"apex_dqn\" (Q-values read the agent's own observation)",
                    "true",
                );
            }
            if self.apex().vdn
                && (self.policies.mapping != PolicyMapping::Shared || self.policies.reward != RewardMode::Team)
            {
                return bad(
                    "apex.vdn",
                    "policies.mapping = \"shared\" and policies.reward = \"team\" with it (the team's agents in one Q-network, trained on the team reward)",
                    "true",
                );
            }
            if l.value_normalization != ValueNormalization::None {
                return bad(
                    "learner.value_normalization",
                    "\"none\" with learner.algorithm = \"apex_dqn\" (the value head is part of the Q-values)",
                    &format!("{:?}", l.value_normalization).to_lowercase(),
                );
            }
        } else if l.replay_ratio > 0.0 {
            known_table("learner.replay_ratio > 0")?;
            let k = l.replayed_columns();
            if k == 0 || k >= l.batch_size {
                return bad(
                    "learner.replay_ratio",
                    &format!(
                        "a share that leaves 1 or more columns each for replay and the stream in a batch of {}",
                        l.batch_size
                    ),
                    &format!("{} ({k} replayed columns)", l.replay_ratio),
                );
            }
        } else if l.replay_inserter != ReplayInserter::Learner {
            return bad(
                "learner.replay_inserter",
                "\"learner\" (the default) without learner.replay_ratio > 0",
                "\"actors\"",
            );
        } else if !l.replay_table.is_empty() {
            return bad(
                "learner.replay_table",
                "no table without learner.replay_ratio > 0",
                &format!("{:?}", l.replay_table),
            );
        }
        if self.model.central_critic && self.model.share_torso {
            return bad(
                "model.central_critic",
                "separate torsos (model.share_torso = false): the critic reads the state, the policy the observation",
                "true",
            );
        }
        check_open_range("learner.checkpoint_every_s", l.checkpoint_every_s, 0.0, 86400.0)?;
        Ok(())
    }
}

impl EnvConfig {
    /// Buckets for episode returns: 20 even steps over `return_range`, or a symmetric log scale.
    pub fn return_buckets(&self) -> Vec<f64> {
        match self.return_range {
            Some([lo, hi]) => (0..=20).map(|i| lo + (hi - lo) * i as f64 / 20.0).collect(),
            None => {
                let mut pos: Vec<f64> = (0..6)
                    .flat_map(|k| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(k)))
                    .collect();
                pos.retain(|&x| x <= 1e5);
                let mut b: Vec<f64> = pos.iter().rev().map(|x| -x).collect();
                b.push(0.0);
                b.extend(pos);
                b
            }
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let ids = crate::env::NATIVE_IDS;
        match self.backend {
            EnvBackend::Native if !crate::env::is_native(&self.id) => {
                return bad(
                    "env.id",
                    &format!("a native env, one of {ids:?} (or set env.backend = \"gymnasium\" for a Gymnasium id)"),
                    &self.id,
                );
            }
            EnvBackend::Factory | EnvBackend::Pettingzoo => {
                let ok = self
                    .factory
                    .split_once(':')
                    .is_some_and(|(m, f)| !m.is_empty() && !f.is_empty());
                if !ok {
                    return bad("env.factory", "\"module:function\"", &format!("{:?}", self.factory));
                }
            }
            _ => {}
        }
        if self.id.is_empty() {
            return bad("env.id", "a non-empty env id", "\"\"");
        }
        if let Some([lo, hi]) = self.return_range {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return bad(
                    "env.return_range",
                    "[low, high] with finite low < high",
                    &format!("[{lo}, {hi}]"),
                );
            }
        }
        if self.backend != EnvBackend::Gymnasium && !self.wrappers.is_empty() {
            return bad(
                "env.wrappers",
                "no wrappers unless env.backend = \"gymnasium\"",
                &format!("{} wrappers", self.wrappers.len()),
            );
        }
        if !matches!(self.backend, EnvBackend::Factory | EnvBackend::Pettingzoo) && !self.factory.is_empty() {
            return bad(
                "env.factory",
                "empty unless env.backend = \"factory\" or \"pettingzoo\"",
                &self.factory,
            );
        }
        if let Some(t) = self.time_limit {
            if t == 0 || matches!(self.backend, EnvBackend::Native | EnvBackend::Envpool) {
                return bad(
                    "env.time_limit",
                    "a step count >= 1, for a gymnasium or pettingzoo env (native envs know their limits)",
                    &t.to_string(),
                );
            }
        }
        if self.backend == EnvBackend::Native {
            let python_only = [
                ("env.kwargs", !self.kwargs.is_empty()),
                ("env.imports", !self.imports.is_empty()),
                ("env.python_path", !self.python_path.is_empty()),
            ];
            if let Some((key, _)) = python_only.iter().find(|(_, set)| *set) {
                return bad(
                    key,
                    "nothing for a native env (it applies to Python-hosted envs)",
                    "a value",
                );
            }
        }
        Ok(())
    }
}

/// A policy name: also a Redis key part, a metric label and a file name.
pub fn valid_policy_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl PoliciesConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.mapping {
            PolicyMapping::Map => {
                if self.names.is_empty() {
                    return bad("policies.names", "1 or more policy names with mapping = \"map\"", "[]");
                }
                for (i, n) in self.names.iter().enumerate() {
                    if !valid_policy_name(n) {
                        return bad(
                            &format!("policies.names[{i}]"),
                            "1 to 64 letters, digits, '-' and '_'",
                            &format!("{n:?}"),
                        );
                    }
                    if self.names[..i].contains(n) {
                        return bad(
                            &format!("policies.names[{i}]"),
                            "names that appear once",
                            &format!("{n:?} twice"),
                        );
                    }
                }
                if self.map.is_empty() {
                    return bad("policies.map", "an agent-to-policy table with mapping = \"map\"", "{}");
                }
                for (agent, policy) in &self.map {
                    if !self.names.contains(policy) {
                        return bad(
                            &format!("policies.map.{agent}"),
                            &format!("one of the policies in policies.names {:?}", self.names),
                            &format!("{policy:?}"),
                        );
                    }
                }
                if let Some(unused) = self.names.iter().find(|n| !self.map.values().any(|p| p == *n)) {
                    return bad(
                        "policies.names",
                        "policies that policies.map gives at least one agent",
                        &format!("{unused:?} with no agent"),
                    );
                }
            }
            _ => {
                if !self.names.is_empty() || !self.map.is_empty() {
                    return bad(
                        "policies.map",
                        "no policies.names or policies.map unless policies.mapping = \"map\"",
                        "a value",
                    );
                }
            }
        }
        Ok(())
    }
}

impl ModelConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let widths = |key: &str, v: &[usize], lo: usize, hi: usize| {
            if v.is_empty() || v.iter().any(|&h| h < lo || h > hi) {
                bad(key, &format!("1 or more values in {lo}..={hi}"), &format!("{v:?}"))
            } else {
                Ok(())
            }
        };
        match self.torso {
            TorsoKind::Mlp => widths("model.hidden_sizes", &self.hidden_sizes, 1, 65536)?,
            TorsoKind::Cnn => {
                widths("model.conv_channels", &self.conv_channels, 1, 4096)?;
                widths("model.conv_kernels", &self.conv_kernels, 1, 64)?;
                widths("model.conv_strides", &self.conv_strides, 1, 64)?;
                if self.conv_kernels.len() != self.conv_channels.len()
                    || self.conv_strides.len() != self.conv_channels.len()
                {
                    return bad(
                        "model.conv_kernels",
                        &format!(
                            "one kernel and one stride per conv layer ({} layers)",
                            self.conv_channels.len()
                        ),
                        &format!(
                            "{} kernels, {} strides",
                            self.conv_kernels.len(),
                            self.conv_strides.len()
                        ),
                    );
                }
            }
            TorsoKind::ImpalaResnet => widths("model.impala_channels", &self.impala_channels, 1, 4096)?,
            TorsoKind::NatureCnn => {}
        }
        check_range("model.dense_size", self.dense_size as f64, 1.0, 65536.0)?;
        check_range("model.lstm_size", self.lstm_size as f64, 0.0, 65536.0)?;
        check_range("model.init_log_std", self.init_log_std, -20.0, 5.0)?;
        check_open_range("model.observation_clip", self.observation_clip, 0.0, f64::MAX)?;
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

    /// Actors write to replay only in a run whose learner replays; the key names its values.
    #[test]
    fn actors_insert_only_where_the_learner_replays() {
        let base = "[[replay.tables]]\nname = \"t\"\nmax_size = 100\n[learner]\nbatch_size = 8\n";
        let err = RunConfig::from_toml(&format!("{base}replay_inserter = \"actors\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("learner.replay_inserter"), "{err}");
        let ok = RunConfig::from_toml(&format!(
            "{base}replay_inserter = \"actors\"\nreplay_ratio = 0.5\nreplay_table = \"t\"\n"
        ))
        .unwrap();
        assert_eq!(ok.learner.replay_inserter, ReplayInserter::Actors);
        let err = RunConfig::from_toml(&format!("{base}replay_inserter = \"env\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("replay_inserter") && err.contains("unknown variant"),
            "{err}"
        );
    }

    /// Replay tables that could block a side forever are refused at start-up, as Reverb
    /// refuses them, naming the key; a sound one parses.
    #[test]
    fn replay_tables_that_could_deadlock_are_refused() {
        let table = |extra: &str| format!("[[replay.tables]]\nname = \"t\"\nmax_size = 100\n{extra}");
        let cases = [
            (
                "min_size_to_sample = 101",
                "replay.tables[0].min_size_to_sample: expected 1 to max_size (100)",
            ),
            (
                "min_size_to_sample = 0",
                "replay.tables[0].min_size_to_sample: expected 1 to max_size",
            ),
            (
                "samples_per_insert = 4.0\nerror_buffer = 2.0",
                "replay.tables[0].error_buffer: expected at least max(1, samples_per_insert) = 4",
            ),
            (
                "samples_per_insert = 0.5\nerror_buffer = 0.5",
                "replay.tables[0].error_buffer: expected at least max(1, samples_per_insert) = 1",
            ),
            (
                "samples_per_insert = 8.0\nmax_times_sampled = 2",
                "replay.tables[0].samples_per_insert: expected at most max_times_sampled (2)",
            ),
            (
                "error_buffer = 5.0",
                "replay.tables[0].error_buffer: expected no error_buffer without samples_per_insert",
            ),
            (
                "samples_per_insert = -1.0",
                "replay.tables[0].samples_per_insert: expected a value in (0, 1000000]",
            ),
            (
                "priority_exponent = -1.0",
                "replay.tables[0].priority_exponent: expected a value in [0, 10]",
            ),
            ("sampler = \"lifo\"", "replay.tables[0].sampler: unknown variant `lifo`"),
        ];
        for (extra, want) in cases {
            let err = RunConfig::from_toml(&table(extra)).unwrap_err().to_string();
            assert!(err.contains(want), "{extra}: {err}");
        }
        let twice = "[[replay.tables]]\nname = \"t\"\n[[replay.tables]]\nname = \"t\"";
        assert!(RunConfig::from_toml(twice)
            .unwrap_err()
            .to_string()
            .contains("replay.tables[1].name"));
        let ok = RunConfig::from_toml(&table(
            "sampler = \"prioritized\"\nsamples_per_insert = 4.0\nmin_size_to_sample = 10\nmax_times_sampled = 8",
        ))
        .unwrap();
        let t = ok.replay.table("t").unwrap();
        assert_eq!((t.sampler, t.error_buffer()), (SamplerKind::Prioritized, Some(400.0)));
    }

    /// Ape-X DQN's requirements are each refused by name, and the shipped arrangement passes.
    #[test]
    fn apex_needs_its_table_the_actors_and_a_feed_forward_q_network() {
        let base = "[learner]\nalgorithm = \"apex_dqn\"\nreplay_table = \"t\"\nreplay_inserter = \"actors\"\n";
        let table = "[[replay.tables]]\nname = \"t\"\nsampler = \"prioritized\"\n";
        let ok = RunConfig::from_toml(&format!("{base}[apex]\nnum_actors = 4\n{table}")).unwrap();
        assert!(ok.acts_on_q_values());
        assert_eq!((ok.apex().num_actors, ok.apex().n_step), (4, 3));
        let cases = [
            (
                base.to_string(),
                "learner.replay_table: expected one of the run's [[replay.tables]] []",
            ),
            (
                format!("[learner]\nalgorithm = \"apex_dqn\"\nreplay_table = \"t\"\n{table}"),
                "learner.replay_inserter: expected \"actors\"",
            ),
            (
                format!("[model]\nlstm_size = 8\n{base}{table}"),
                "model.lstm_size: expected 0 with learner.algorithm = \"apex_dqn\"",
            ),
            (
                format!("{base}value_normalization = \"popart\"\n{table}"),
                "learner.value_normalization: expected \"none\"",
            ),
            (
                format!("{base}replay_ratio = 0.5\n{table}"),
                "learner.replay_ratio: expected 0 with learner.algorithm = \"apex_dqn\"",
            ),
            (
                format!("{base}[apex]\nn_step = 0\n{table}"),
                "apex.n_step: expected a value in [1, 1000]",
            ),
            (
                format!("{base}[impala]\nentropy_cost = 0.1\n{table}"),
                "impala: expected no [impala] section, as learner.algorithm is \"apex_dqn\"",
            ),
            (
                format!("[apex]\nn_step = 2\n"),
                "apex: expected no [apex] section, as learner.algorithm is \"impala\"",
            ),
        ];
        for (text, want) in cases {
            let err = RunConfig::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
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
                "env.id: expected a native env, one of [\"CartPole-v1\", \"Acrobot-v1\"",
            ),
            (
                "[model]\nhidden_sizes = []",
                "model.hidden_sizes: expected 1 or more values in 1..=65536, got []",
            ),
            (
                "[model]\ntorso = \"cnn\"\nconv_channels = [16, 32]",
                "model.conv_kernels: expected one kernel and one stride per conv layer (2 layers)",
            ),
            (
                "[learner]\nalgorithm = \"appo\"\nbatch_size = 6\n[appo]\nminibatches = 4",
                "appo.minibatches: expected a divisor of learner.batch_size (6), got 4",
            ),
            (
                "[appo]\nepochs = 2",
                "appo: expected no [appo] section, as learner.algorithm is \"impala\", got [appo]",
            ),
            (
                "[learner]\nalgorithm = \"appo\"\n[appo]\nclip_ratio = 0",
                "appo.clip_ratio: expected a value in (0, 1], got 0",
            ),
            (
                "[impala]\nrho_bar = -1",
                "impala.rho_bar: expected a finite value > 0, got -1",
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
