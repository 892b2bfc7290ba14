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
use troupe::config::ReplayInserter;
use troupe::model::{dist, Model, ModelSpec};
use troupe::process::{grpc_channel, Backoff, GrpcChannel};
use troupe::security::Security;
use troupe::spaces::{EnvSpec, PolicySpec};
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
    /// The replay service, where the run has the actors write their rollouts to replay
    /// (`learner.replay_inserter = "actors"`); default: the coordinator, which serves it.
    #[arg(long, env = "TROUPE_REPLAY")]
    pub replay: Option<String>,
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
    /// Each policy's learner address, as far as the coordinator knows them.
    pub learner_addresses: std::collections::HashMap<String, String>,
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
    /// The policy's name (the `policy` label of its metrics).
    pub policy: String,
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
                    metrics::counter!(names::ACTOR_POLICY_SWITCHES, "policy" => self.policy.clone()).increment(1);
                }
                self.version = u.version;
                metrics::gauge!(names::ACTOR_POLICY_VERSION, "policy" => self.policy.clone()).set(self.version as f64);
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
    /// Every policy's acting version and when the actor switched to it.
    pub acting: std::collections::BTreeMap<String, (u64, std::time::Instant)>,
}

/// Learner addresses by policy; "" is the run's first policy's (the coordinator's
/// `learner_address`).
pub type LearnerAddresses = std::collections::BTreeMap<String, String>;

/// What the env thread hands the async side once it knows the run's policies: per policy, the
/// sender the follower fills and the outbox the rollout sender drains.
struct PolicyLinks {
    policies: Vec<String>,
    updates: Vec<watch::Sender<Option<Arc<PolicyUpdate>>>>,
    outboxes: Vec<mpsc::Receiver<Rollout>>,
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
                    learner_addresses: r.learner_addresses,
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
    let mut addresses: LearnerAddresses = reg.learner_addresses.clone().into_iter().collect();
    addresses.insert(String::new(), reg.learner_address.clone());
    let (learner_tx, learner_rx) = watch::channel(addresses);
    let (links_tx, links_rx) = tokio::sync::oneshot::channel::<PolicyLinks>();

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(heartbeat::run(
        coordinator.clone(),
        reg.actor_id,
        reg.actor_secret.clone(),
        Duration::from_secs_f64(reg.config.actor.heartbeat_interval_s),
        progress.clone(),
        learner_tx,
        shutdown.clone(),
    ));
    let identity = rollout_sender::Identity {
        actor_id: reg.actor_id,
        secret: reg.actor_secret.clone(),
    };
    let max_in_flight = reg.config.actor.max_in_flight;
    let outbox_capacity = args.outbox_capacity.max(1);
    // Ape-X's actors write to replay alone: no rollout stream to the learner.
    let streams = !reg.config.acts_on_q_values();

    let runtime = tokio::runtime::Handle::current();
    let runner_shutdown = shutdown.clone();
    let (runner_done_tx, runner_done) = tokio::sync::oneshot::channel::<()>();
    let env_coordinator = coordinator.clone();
    let python_path = args.python_path.clone();
    let replay = (reg.config.learner.replay_inserter == ReplayInserter::Actors).then(|| {
        let address = args.replay.clone().unwrap_or_else(|| args.coordinator.clone());
        tracing::info!(replay = %address, table = %reg.config.learner.replay_table, "writing rollouts to replay");
        (address, security.clone())
    });
    let runner = std::thread::Builder::new().name("env-runner".into()).spawn(move || {
        let result = run_envs(EnvLoop {
            reg,
            python_path,
            coordinator: env_coordinator,
            links: links_tx,
            replay,
            outbox_capacity,
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

    // Once the env is built, the env thread says which policies it acts for: a follower and
    // a rollout sender each (the first policy also answers to "", the coordinator's default).
    let mut runner_done = runner_done;
    let mut runner_finished = false;
    let links = tokio::select! {
        biased;
        _ = shutdown.cancelled() => None,
        l = links_rx => l.ok(),
        _ = &mut runner_done => {
            runner_finished = true;
            None
        }
    };
    if let Some(links) = links {
        for (i, ((policy, update), outbox)) in links
            .policies
            .into_iter()
            .zip(links.updates)
            .zip(links.outboxes)
            .enumerate()
        {
            tasks.spawn(policy_follower::run(
                coordinator.clone(),
                policy.clone(),
                update,
                shutdown.clone(),
            ));
            let (addr_tx, addr_rx) = watch::channel(String::new());
            tasks.spawn(follow_address(
                learner_rx.clone(),
                policy,
                i == 0,
                addr_tx,
                shutdown.clone(),
            ));
            if streams {
                tasks.spawn(rollout_sender::run(
                    security.clone(),
                    identity.clone(),
                    addr_rx,
                    outbox,
                    max_in_flight,
                    shutdown.clone(),
                ));
            }
        }
    }

    // Run until a signal, or until the env thread or a task stops on its own (a bug or a
    // panic): then stop everything rather than live on doing nothing.
    let failure = if runner_finished {
        Some("the env loop stopped")
    } else {
        tokio::select! {
            // Tasks end as soon as the token is cancelled, so a signal must win the race.
            biased;
            _ = shutdown.cancelled() => None,
            _ = &mut runner_done => Some("the env loop stopped"),
            _ = tasks.join_next() => Some("a background task stopped"),
        }
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
/// Keeps one policy's learner address (a watch of its own, for its rollout sender) in step
/// with the addresses heartbeats bring.
async fn follow_address(
    mut all: watch::Receiver<LearnerAddresses>,
    policy: String,
    first: bool,
    tx: watch::Sender<String>,
    shutdown: CancellationToken,
) {
    loop {
        let addr = {
            let map = all.borrow_and_update();
            map.get(&policy)
                .or(if first { map.get("") } else { None })
                .cloned()
                .unwrap_or_default()
        };
        if !addr.is_empty() && *tx.borrow() != addr {
            tx.send_replace(addr);
        }
        tokio::select! {
            r = all.changed() => if r.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}

/// What the env thread needs.
struct EnvLoop {
    reg: Registration,
    python_path: Vec<String>,
    coordinator: GrpcChannel,
    /// Where the env thread sends the policies it acts for, once it knows them.
    links: tokio::sync::oneshot::Sender<PolicyLinks>,
    /// The replay service's address and this actor's credentials, when the actors write
    /// rollouts to replay.
    replay: Option<(String, Security)>,
    outbox_capacity: usize,
    progress: Arc<Mutex<Progress>>,
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
}

fn run_envs(env_loop: EnvLoop) -> anyhow::Result<()> {
    let EnvLoop {
        reg,
        python_path,
        coordinator,
        links,
        replay,
        outbox_capacity,
        progress,
        runtime,
        shutdown,
    } = env_loop;
    tch::set_num_threads(1);
    tch::set_num_interop_threads(1);
    let env = envs::make_with_retry(&reg.config.env, &reg.env_seeds, &python_path, &shutdown)?;
    let Some(env) = env else { return Ok(()) };
    let spec = env.spec().clone();
    // The config's mapping must fit the env's agents: a start-up error naming both sides.
    let policies: Vec<PolicySpec> = troupe::policy_map::policy_specs(&reg.config, &spec)?;
    if !report_spec(
        &coordinator,
        reg.actor_id,
        &reg.actor_secret,
        &spec,
        &runtime,
        &shutdown,
    )? {
        return Ok(());
    }
    let mut nets = Vec::new();
    let mut updates = Vec::new();
    let mut policy_rxs = Vec::new();
    let mut outbox_txs = Vec::new();
    let mut outbox_rxs = Vec::new();
    for p in &policies {
        nets.push(Model::new(
            &ModelSpec {
                env: p.clone(),
                model: reg.config.model.clone(),
            },
            tch::Device::Cpu,
        )?);
        let (tx, rx) = watch::channel::<Option<Arc<PolicyUpdate>>>(None);
        updates.push(tx);
        policy_rxs.push(rx);
        let (otx, orx) = mpsc::channel::<Rollout>(outbox_capacity);
        outbox_txs.push(otx);
        outbox_rxs.push(orx);
    }
    let names: Vec<String> = policies.iter().map(|p| p.policy.clone()).collect();
    // Each policy's replay writer, when the actors write rollouts to replay.
    let mut replay_writers = Vec::new();
    if let Some((address, security)) = &replay {
        let _in_runtime = runtime.enter();
        for name in &names {
            let link = troupe::replay::ReplayLink::connect(address, security, &reg.config.learner.replay_table, name)
                .context("--replay")?;
            replay_writers.push(troupe::replay::spawn_writer(
                link,
                troupe::replay::WriterMetrics::ACTOR,
                shutdown.clone(),
            ));
        }
    }
    if links
        .send(PolicyLinks {
            policies: names.clone(),
            updates,
            outboxes: outbox_rxs,
        })
        .is_err()
    {
        return Ok(()); // the actor is stopping
    }
    let seed = reg
        .env_seeds
        .iter()
        .fold(0x9e37_79b9_7f4a_7c15u64, |a, &s| a.rotate_left(7) ^ s);
    let state_sizes: Vec<usize> = nets.iter().map(|n| n.state_size()).collect();
    let mut envs = runner::EnvRunner::new(
        env,
        &policies,
        reg.config.policies.reward,
        reg.config.actor.unroll_length,
        &state_sizes,
        seed,
    )?;
    // Ape-X: this actor's envs act epsilon-greedily, each with its own epsilon, and what they
    // collect goes to replay alone (with initial priorities), not to the learner's stream.
    let q_acting = reg.config.acts_on_q_values();
    if q_acting {
        let apex = reg.config.apex();
        let num_envs = envs.num_envs();
        let first = (reg.actor_id.saturating_sub(1) as usize % apex.num_actors) * num_envs;
        let total = apex.num_actors * num_envs;
        let epsilons: Vec<f64> = (0..num_envs)
            .map(|e| dist::apex_epsilon(first + e, total, apex.epsilon_base, apex.epsilon_alpha))
            .collect();
        tracing::info!(?epsilons, "acting epsilon-greedily over Q-values (Ape-X)");
        envs.act_on_q_values(runner::QActing {
            epsilons,
            anneal_frames: apex.epsilon_anneal_frames,
            dueling: apex.dueling,
            n_step: apex.n_step,
            discount: reg.config.learner.discount,
            eta: apex.priority_eta,
            reward_clip: reg.config.learner.reward_clip,
            reward_scale: reg.config.learner.reward_scale,
            vdn: apex.vdn,
        });
    }
    let mut acting: Vec<ActingPolicy> = names
        .iter()
        .map(|n| ActingPolicy {
            policy: n.clone(),
            ..ActingPolicy::default()
        })
        .collect();
    // Every policy's first version, before the first step.
    for rx in &mut policy_rxs {
        let first = runtime.block_on(async {
            tokio::select! {
                r = rx.wait_for(|p| p.is_some()) => r.is_ok(),
                _ = shutdown.cancelled() => false,
            }
        });
        if !first {
            return Ok(());
        }
    }
    let frames_per_unroll = (reg.config.actor.unroll_length * envs.num_envs()) as u64;
    // Per policy: since when its outbox has been full (its learner gone or far behind).
    let mut stalled: Vec<Option<Instant>> = vec![None; names.len()];
    while !shutdown.is_cancelled() {
        // Switch weights between unrolls when a newer version has arrived.
        for (g, rx) in policy_rxs.iter_mut().enumerate() {
            let newest = rx.borrow_and_update().clone();
            if let Some(u) = newest {
                if acting[g].offer(&mut nets[g], &u) {
                    let mut p = progress.lock().expect("progress lock");
                    let now = std::time::Instant::now();
                    if g == 0 {
                        p.policy_version = acting[g].version;
                        p.policy_since = Some(now);
                    }
                    p.acting.insert(names[g].clone(), (acting[g].version, now));
                }
            }
        }
        let versions: Vec<u64> = acting.iter().map(|a| a.version).collect();
        let net_refs: Vec<&Model> = nets.iter().collect();
        let mut finished = Vec::new();
        let parts = match envs.unroll(&net_refs, reg.actor_id, &versions, &mut |e| finished.push(e)) {
            Ok(parts) => parts,
            Err(e) => {
                metrics::counter!(names::ACTOR_ENV_ERRORS).increment(1);
                tracing::error!(error = %e, "env failed; rebuilding it and dropping this unroll");
                match envs::make_with_retry(&reg.config.env, &reg.env_seeds, &python_path, &shutdown)? {
                    Some(env) if env.spec() == &spec => envs.replace_env(env),
                    Some(env) => anyhow::bail!(
                        "the rebuilt env {} has different spaces: {}",
                        spec.id,
                        env.spec().difference(&spec).unwrap_or_default()
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
                if e.policy.is_empty() {
                    metrics::histogram!(names::ACTOR_EPISODE_RETURN).record(e.episode_return as f64);
                    metrics::histogram!(names::ACTOR_EPISODE_LENGTH).record(e.length as f64);
                    metrics::counter!(names::ACTOR_EPISODES).increment(1);
                }
                p.push_episode(e);
            }
        }
        metrics::counter!(names::ACTOR_FRAMES).increment(frames_per_unroll);
        if q_acting {
            let priorities = envs.priorities().to_vec();
            for (rollout, priority) in parts.iter().zip(priorities) {
                let g = names
                    .iter()
                    .position(|n| *n == rollout.policy)
                    .expect("the runner's own policies");
                let item = troupe::replay::item_with_priority(rollout, priority);
                // Backpressure from replay's rate limiter: wait for room in the writer's
                // queue (a writer backing off from errors drains it, so this never waits long).
                let sent = runtime.block_on(async {
                    tokio::select! {
                        r = replay_writers[g].send(item) => r.is_ok(),
                        _ = shutdown.cancelled() => false,
                    }
                });
                if !sent {
                    return Ok(());
                }
            }
            continue;
        }
        for rollout in parts {
            let g = names
                .iter()
                .position(|n| *n == rollout.policy)
                .expect("the runner's own policies");
            if let Some(writer) = replay_writers.get(g) {
                // Never waits: a writer that is behind or backing off drops it (counted).
                if writer.try_send(troupe::replay::item_of(&rollout)).is_err() {
                    metrics::counter!(names::ACTOR_REPLAY_DROPPED, "policy" => names[g].clone()).increment(1);
                }
            }
            let outbox = &outbox_txs[g];
            let start = Instant::now();
            let sent = if names.len() == 1 {
                // Backpressure: wait for room in the bounded outbox, but never past shutdown.
                runtime.block_on(async {
                    tokio::select! {
                        r = outbox.send(rollout) => Sent::from(r.is_ok()),
                        _ = shutdown.cancelled() => Sent::Stop,
                    }
                })
            } else {
                send_or_drop(outbox, rollout, &mut stalled[g], &runtime, &shutdown)
            };
            metrics::histogram!(names::ACTOR_SEND_WAIT_SECONDS).record(start.elapsed().as_secs_f64());
            metrics::gauge!(names::ACTOR_OUTBOX_DEPTH).set((outbox.max_capacity() - outbox.capacity()) as f64);
            match sent {
                Sent::Stop => return Ok(()),
                Sent::Dropped => {
                    metrics::counter!(names::ACTOR_ROLLOUTS_DROPPED, "policy" => names[g].clone()).increment(1);
                    continue;
                }
                Sent::Yes => metrics::counter!(names::ACTOR_ROLLOUTS_SENT, "policy" => names[g].clone()).increment(1),
            }
        }
    }
    Ok(())
}

/// What became of a rollout handed to its policy's outbox.
enum Sent {
    Yes,
    /// Its policy's learner has been behind for long: dropped so the other policies go on.
    Dropped,
    /// Shutdown, or the sender is gone.
    Stop,
}

impl From<bool> for Sent {
    fn from(ok: bool) -> Sent {
        if ok {
            Sent::Yes
        } else {
            Sent::Stop
        }
    }
}

/// How long a multi-policy actor waits for room in one policy's outbox before it drops that
/// rollout, and how long an outbox may stay full before its rollouts are dropped at once.
const POLICY_SEND_WAIT: Duration = Duration::from_secs(2);
const POLICY_STALL: Duration = Duration::from_secs(5);

/// The outbox policy of a multi-policy actor: one policy's learner being slow or gone must not
/// stop the others. A full outbox is waited on (backpressure, as with one policy) for up to
/// [`POLICY_SEND_WAIT`]; once it has stayed full for [`POLICY_STALL`], that policy's rollouts
/// are dropped at once (counted in `troupe_actor_rollouts_dropped_total`) until it has room.
fn send_or_drop(
    outbox: &mpsc::Sender<Rollout>,
    rollout: Rollout,
    stalled: &mut Option<Instant>,
    runtime: &tokio::runtime::Handle,
    shutdown: &CancellationToken,
) -> Sent {
    let rollout = match outbox.try_send(rollout) {
        Ok(()) => {
            *stalled = None;
            return Sent::Yes;
        }
        Err(mpsc::error::TrySendError::Closed(_)) => return Sent::Stop,
        Err(mpsc::error::TrySendError::Full(r)) => r,
    };
    let since = *stalled.get_or_insert_with(Instant::now);
    if since.elapsed() >= POLICY_STALL {
        return Sent::Dropped;
    }
    runtime.block_on(async {
        tokio::select! {
            r = tokio::time::timeout(POLICY_SEND_WAIT, outbox.send(rollout)) => match r {
                Ok(Ok(())) => {
                    *stalled = None;
                    Sent::Yes
                }
                Ok(Err(_)) => Sent::Stop,
                Err(_) => {
                    tracing::warn!("a policy's learner is behind or gone: dropping its rollouts while its outbox stays full");
                    Sent::Dropped
                }
            },
            _ = shutdown.cancelled() => Sent::Stop,
        }
    })
}

/// Tells the coordinator the env's spaces (retrying while it is away). A spec that differs
/// from the run's is an error. Returns false on shutdown.
fn report_spec(
    channel: &GrpcChannel,
    actor_id: u64,
    secret: &str,
    spec: &EnvSpec,
    runtime: &tokio::runtime::Handle,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    let mut client = CoordinatorClient::new(channel.clone());
    let json = serde_json::to_string(spec)?;
    runtime.block_on(async {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(3));
        loop {
            let mut req = tonic::Request::new(ReportEnvSpecRequest {
                actor_id,
                spec: Some(proto::v1::EnvSpec { json: json.clone() }),
            });
            // The coordinator checks that reports under this id come from this actor.
            if let Ok(v) = secret.parse() {
                if !secret.is_empty() {
                    req.metadata_mut().insert(troupe::security::ACTOR_SECRET_HEADER, v);
                }
            }
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
