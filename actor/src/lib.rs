//! The actor: steps N environments with the current policy and streams T-step rollouts to the
//! learner.
//!
//! Pieces, each in its own task or thread:
//! - [`runner`]: the env + policy loop, on a dedicated thread (tch tensors are not `Sync`).
//! - [`policy_follower`]: follows the coordinator's policy versions and fetches new weights.
//! - [`rollout_sender`]: the long-lived stream to the learner, reconnecting with backoff.
//! - [`heartbeat`]: reports frames and finished episodes to the coordinator.
//!
//! They talk through bounded channels; when the learner is behind, the runner waits to send.

pub mod envs;
pub mod heartbeat;
pub mod policy_follower;
pub mod pyhost;
pub mod rollout_sender;
pub mod runner;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use proto::v1::coordinator_client::CoordinatorClient;
use proto::v1::{EpisodeStat, RegisterActorRequest, ReportEnvSpecRequest, Rollout};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use troupe::model::{Model, ModelSpec};
use troupe::process::{grpc_channel, Backoff, GrpcChannel};
use troupe::security::Security;
use troupe::spaces::EnvSpec;
use troupe::telemetry::names;
use troupe::RunConfig;

/// Process-level settings (the run config comes from the coordinator).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "actor",
    about = "Troupe actor: steps environments and streams rollouts to the learner"
)]
pub struct Args {
    /// Coordinator gRPC address.
    #[arg(long, env = "TROUPE_COORDINATOR", default_value = "http://127.0.0.1:50051")]
    pub coordinator: String,
    /// Where to serve Prometheus metrics (`/metrics`); port 0 picks a free port.
    #[arg(long, env = "TROUPE_METRICS_LISTEN", default_value = "127.0.0.1:9101")]
    pub metrics_listen: SocketAddr,
    /// Once registered, write {"actor_id", "metrics", "health"} as JSON here.
    #[arg(long, env = "TROUPE_READY_FILE")]
    pub ready_file: Option<PathBuf>,
    /// Log JSON lines instead of text.
    #[arg(long, env = "TROUPE_LOG_JSON")]
    pub log_json: bool,
    /// Directories put first on Python's sys.path for hosted envs (':'-separated): the venv
    /// with gymnasium and the envs' packages (scripts/setup.sh installs one).
    #[arg(long, env = "TROUPE_PYTHON_PATH", value_delimiter = ':')]
    pub python_path: Vec<String>,
    /// Where to serve the gRPC health service (grpc.health.v1: "" while the process runs,
    /// troupe.v1.Actor once registered); port 0 picks a free port.
    #[arg(long, env = "TROUPE_HEALTH_LISTEN", default_value = "127.0.0.1:50053")]
    pub health_listen: SocketAddr,
    /// Rollouts waiting to be sent before the env loop waits.
    #[arg(long, env = "TROUPE_ACTOR_OUTBOX", default_value_t = 1)]
    pub outbox_capacity: usize,
    #[command(flatten)]
    pub tls: troupe::security::TlsArgs,
    #[command(flatten)]
    pub auth: troupe::security::AuthArgs,
}

/// What registration gave us.
#[derive(Debug, Clone)]
pub struct Registration {
    pub actor_id: u64,
    pub config: RunConfig,
    pub env_seeds: Vec<u64>,
    pub learner_address: String,
    /// Proves to the coordinator and the learner that reports under `actor_id` are ours
    /// (empty with tokens off).
    pub actor_secret: String,
}

/// New weights for the runner: a version and its safetensors blob.
#[derive(Debug)]
pub struct PolicyUpdate {
    pub version: u64,
    pub blob: bytes::Bytes,
}

/// The weights an actor acts with: newer versions are loaded between unrolls; a blob that cannot
/// be loaded (malformed, or with a non-finite weight) is refused once, counted, and the current
/// weights stay.
#[derive(Debug, Default)]
pub struct ActingPolicy {
    /// The version loaded (0 before the first).
    pub version: u64,
    /// The last version refused: not retried.
    pub refused: u64,
}

impl ActingPolicy {
    /// Offers `u` to `net`; returns whether the weights changed.
    pub fn offer(&mut self, net: &mut Model, u: &PolicyUpdate) -> bool {
        if u.version == self.version || u.version == self.refused {
            return false;
        }
        match net.load_safetensors(&u.blob) {
            Ok(()) => {
                if self.version != 0 {
                    metrics::counter!(names::ACTOR_POLICY_SWITCHES).increment(1);
                }
                self.version = u.version;
                metrics::gauge!(names::ACTOR_POLICY_VERSION).set(self.version as f64);
                true
            }
            Err(e) => {
                self.refused = u.version;
                metrics::counter!(names::ACTOR_POLICIES_REFUSED).increment(1);
                tracing::error!(version = u.version, error = %e, "refused a policy, keeping the current one");
                false
            }
        }
    }
}

/// Counters the runner fills and the heartbeat drains. Episodes are capped so a coordinator that
/// is away for long cannot make this grow without bound (the oldest are dropped and counted).
#[derive(Default)]
pub struct Progress {
    pub frames: u64,
    pub episodes: std::collections::VecDeque<EpisodeStat>,
    pub dropped_episodes: u64,
    pub policy_version: u64,
    /// When the actor switched to `policy_version` (reported as an age, for the coordinator's
    /// policy-distribution latency).
    pub policy_since: Option<std::time::Instant>,
}

/// Episode reports held while the coordinator is unreachable (8 bytes each: 8 MB); only past
/// this are reports dropped.
pub const MAX_PENDING_EPISODES: usize = 1_000_000;

impl Progress {
    pub fn push_episode(&mut self, e: EpisodeStat) {
        if self.episodes.len() >= MAX_PENDING_EPISODES {
            self.episodes.pop_front();
            self.dropped_episodes += 1;
        }
        self.episodes.push_back(e);
    }
}

/// Registers with the coordinator, retrying with backoff until it answers or `shutdown` fires.
pub async fn register(
    coordinator: &str,
    security: &Security,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Registration>> {
    let channel = grpc_channel(coordinator, security).context("--coordinator")?;
    let mut client = CoordinatorClient::new(channel);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(3));
    let hostname = std::fs::read_to_string("/etc/hostname")
        .unwrap_or_default()
        .trim()
        .to_string();
    loop {
        let req = tonic::Request::new(RegisterActorRequest {
            hostname: hostname.clone(),
        });
        match client.register_actor(req).await {
            Ok(resp) => {
                let r = resp.into_inner();
                // A bad config from the coordinator is a deployment error: say so and stop.
                let config = RunConfig::from_toml(&r.run_config_toml)?;
                if r.env_seeds.len() != config.actor.num_envs {
                    anyhow::bail!(
                        "coordinator sent {} env seeds, expected actor.num_envs = {}",
                        r.env_seeds.len(),
                        config.actor.num_envs
                    );
                }
                return Ok(Some(Registration {
                    actor_id: r.actor_id,
                    config,
                    env_seeds: r.env_seeds,
                    learner_address: r.learner_address,
                    actor_secret: r.actor_secret,
                }));
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
            {
                anyhow::bail!("the coordinator refused this actor's token: {}", status.message());
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "registration failed, retrying");
                if !backoff.wait(shutdown).await {
                    return Ok(None);
                }
            }
        }
    }
}

/// Runs an actor until `shutdown` fires.
pub async fn run(args: Args, security: Security, reg: Registration, shutdown: CancellationToken) -> anyhow::Result<()> {
    tracing::info!(actor_id = reg.actor_id, learner = %reg.learner_address, num_envs = reg.config.actor.num_envs, "registered");
    let coordinator = grpc_channel(&args.coordinator, &security)?;
    let progress = Arc::new(Mutex::new(Progress::default()));
    let (policy_tx, policy_rx) = watch::channel::<Option<Arc<PolicyUpdate>>>(None);
    let (learner_tx, learner_rx) = watch::channel(reg.learner_address.clone());
    let (outbox_tx, outbox_rx) = mpsc::channel::<Rollout>(args.outbox_capacity.max(1));

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(policy_follower::run(coordinator.clone(), policy_tx, shutdown.clone()));
    tasks.spawn(heartbeat::run(
        coordinator.clone(),
        reg.actor_id,
        reg.actor_secret.clone(),
        Duration::from_secs_f64(reg.config.actor.heartbeat_interval_s),
        progress.clone(),
        learner_tx,
        shutdown.clone(),
    ));
    tasks.spawn(rollout_sender::run(
        security.clone(),
        rollout_sender::Identity {
            actor_id: reg.actor_id,
            secret: reg.actor_secret.clone(),
        },
        learner_rx,
        outbox_rx,
        reg.config.actor.max_in_flight,
        shutdown.clone(),
    ));

    let runtime = tokio::runtime::Handle::current();
    let runner_shutdown = shutdown.clone();
    let (runner_done_tx, runner_done) = tokio::sync::oneshot::channel::<()>();
    let env_coordinator = coordinator.clone();
    let python_path = args.python_path.clone();
    let runner = std::thread::Builder::new().name("env-runner".into()).spawn(move || {
        let result = run_envs(EnvLoop {
            reg,
            python_path,
            coordinator: env_coordinator,
            policy_rx,
            outbox: outbox_tx,
            progress,
            runtime,
            shutdown: runner_shutdown,
        });
        if let Err(e) = &result {
            tracing::error!(error = %format!("{e:#}"), "env loop failed");
        }
        let _ = runner_done_tx.send(());
        result
    })?;

    // Run until a signal, or until the env thread or a task stops on its own (a bug or a
    // panic): then stop everything rather than live on doing nothing.
    let failure = tokio::select! {
        // Tasks end as soon as the token is cancelled, so a signal must win the race.
        biased;
        _ = shutdown.cancelled() => None,
        _ = runner_done => Some("the env loop stopped"),
        _ = tasks.join_next() => Some("a background task stopped"),
    };
    // Only the signal handler cancels the token: if it is cancelled, this is a signal stop.
    let failure = failure.filter(|_| !shutdown.is_cancelled());
    shutdown.cancel();
    // Tasks watch the token; give them a bounded time to finish.
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain).await.is_err() {
        tracing::warn!("tasks did not stop within 5 s");
    }
    let joined = tokio::task::spawn_blocking(move || runner.join()).await;
    match (failure, joined) {
        (None, Ok(Ok(Ok(())))) => Ok(()),
        (_, Ok(Ok(Err(e)))) => Err(e.context("actor stopping: the env loop failed")),
        (Some(why), _) => anyhow::bail!("actor stopping: {why}"),
        (None, _) => anyhow::bail!("actor stopping: the env loop panicked"),
    }
}

/// Builds the env, reports its spaces, waits for the first policy, then unrolls until
/// shutdown, switching weights between unrolls when a newer version has arrived. An env that
/// fails (a Python exception, a bad shape or value) is logged and rebuilt; the partial unroll
/// is dropped.
/// What the env thread needs.
struct EnvLoop {
    reg: Registration,
    python_path: Vec<String>,
    coordinator: GrpcChannel,
    policy_rx: watch::Receiver<Option<Arc<PolicyUpdate>>>,
    outbox: mpsc::Sender<Rollout>,
    progress: Arc<Mutex<Progress>>,
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
}

fn run_envs(env_loop: EnvLoop) -> anyhow::Result<()> {
    let EnvLoop {
        reg,
        python_path,
        coordinator,
        mut policy_rx,
        outbox,
        progress,
        runtime,
        shutdown,
    } = env_loop;
    tch::set_num_threads(1);
    tch::set_num_interop_threads(1);
    let env = envs::make_with_retry(&reg.config.env, &reg.env_seeds, &python_path, &shutdown)?;
    let Some(env) = env else { return Ok(()) };
    let spec = env.spec().clone();
    if !report_spec(&coordinator, reg.actor_id, &spec, &runtime, &shutdown)? {
        return Ok(());
    }
    let model_spec = ModelSpec {
        env: spec.clone(),
        model: reg.config.model.clone(),
    };
    let mut net = Model::new(&model_spec, tch::Device::Cpu)?;
    let seed = reg
        .env_seeds
        .iter()
        .fold(0x9e37_79b9_7f4a_7c15u64, |a, &s| a.rotate_left(7) ^ s);
    let mut envs = runner::EnvRunner::new(env, reg.config.actor.unroll_length, net.state_size(), seed)?;
    let mut acting = ActingPolicy::default();
    let first = runtime.block_on(async {
        tokio::select! {
            r = policy_rx.wait_for(|p| p.is_some()) => r.is_ok(),
            _ = shutdown.cancelled() => false,
        }
    });
    if !first {
        return Ok(());
    }
    let frames_per_unroll = (reg.config.actor.unroll_length * envs.num_envs()) as u64;
    while !shutdown.is_cancelled() {
        // Switch weights between unrolls when a newer version has arrived.
        let newest = policy_rx.borrow_and_update().clone();
        if let Some(u) = newest {
            if acting.offer(&mut net, &u) {
                let mut p = progress.lock().expect("progress lock");
                p.policy_version = acting.version;
                p.policy_since = Some(std::time::Instant::now());
            }
        }
        let version = acting.version;
        let mut finished = Vec::new();
        let parts = match envs.unroll(&net, reg.actor_id, version, &mut |e| finished.push(e)) {
            Ok(parts) => parts,
            Err(e) => {
                metrics::counter!(names::ACTOR_ENV_ERRORS).increment(1);
                tracing::error!(error = %e, "env failed; rebuilding it and dropping this unroll");
                match envs::make_with_retry(&reg.config.env, &reg.env_seeds, &python_path, &shutdown)? {
                    Some(env) if env.spec() == &spec => envs.replace_env(env),
                    Some(env) => anyhow::bail!(
                        "the rebuilt env {} has different spaces: {:?}, expected {:?}",
                        spec.id,
                        env.spec(),
                        spec
                    ),
                    None => return Ok(()),
                }
                continue;
            }
        };
        {
            let mut p = progress.lock().expect("progress lock");
            p.frames += frames_per_unroll;
            for e in finished {
                metrics::histogram!(names::ACTOR_EPISODE_RETURN).record(e.episode_return as f64);
                metrics::histogram!(names::ACTOR_EPISODE_LENGTH).record(e.length as f64);
                metrics::counter!(names::ACTOR_EPISODES).increment(1);
                p.push_episode(e);
            }
        }
        metrics::counter!(names::ACTOR_FRAMES).increment(frames_per_unroll);
        for rollout in parts {
            // Backpressure: wait for room in the bounded outbox, but never past shutdown.
            let start = Instant::now();
            let sent = runtime.block_on(async {
                tokio::select! {
                    r = outbox.send(rollout) => r.is_ok(),
                    _ = shutdown.cancelled() => false,
                }
            });
            metrics::histogram!(names::ACTOR_SEND_WAIT_SECONDS).record(start.elapsed().as_secs_f64());
            metrics::gauge!(names::ACTOR_OUTBOX_DEPTH).set((outbox.max_capacity() - outbox.capacity()) as f64);
            if !sent {
                return Ok(());
            }
            metrics::counter!(names::ACTOR_ROLLOUTS_SENT).increment(1);
        }
    }
    Ok(())
}

/// Tells the coordinator the env's spaces (retrying while it is away). A spec that differs
/// from the run's is an error. Returns false on shutdown.
fn report_spec(
    channel: &GrpcChannel,
    actor_id: u64,
    spec: &EnvSpec,
    runtime: &tokio::runtime::Handle,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    let mut client = CoordinatorClient::new(channel.clone());
    let json = serde_json::to_string(spec)?;
    runtime.block_on(async {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(3));
        loop {
            let req = ReportEnvSpecRequest {
                actor_id,
                spec: Some(proto::v1::EnvSpec { json: json.clone() }),
            };
            match client.report_env_spec(req).await {
                Ok(_) => return Ok(true),
                Err(s) if s.code() == tonic::Code::FailedPrecondition || s.code() == tonic::Code::InvalidArgument => {
                    anyhow::bail!("the coordinator refused this env's spaces: {}", s.message())
                }
                Err(s) => {
                    tracing::warn!(code = ?s.code(), message = s.message(), "reporting env spaces failed, retrying");
                    if !backoff.wait(shutdown).await {
                        return Ok(false);
                    }
                }
            }
        }
    })
}
