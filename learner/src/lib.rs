//! The learner: takes rollout streams from actors, assembles [T, B] batches, runs IMPALA
//! (V-trace) updates on CUDA or CPU, and publishes the weights as policy versions.
//!
//! - [`ingest`]: the gRPC edge; validates rollouts into a bounded queue.
//! - [`batch`]: columns of rollouts into [T, B] batches.
//! - [`trainer`]: the model thread (network, optimizer) and the batcher thread.
//! - [`algorithms`]: the losses (IMPALA, APPO) behind one trait.
//! - [`vtrace`]: the targets.
//! - [`publisher`]: weight snapshots to the coordinator.

pub mod algorithms;
pub mod batch;
pub mod checkpoint;
pub mod device;
pub mod ingest;
pub mod optimizer;
pub mod publisher;
pub mod replay;
pub mod trainer;
pub mod vtrace;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use proto::v1::coordinator_client::CoordinatorClient;
use proto::v1::learner_server::LearnerServer;
use proto::v1::RegisterLearnerRequest;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use troupe::config::ReplayInserter;
use troupe::model::ModelSpec;
use troupe::process::{grpc_channel, write_ready_file, Backoff, GrpcChannel};
use troupe::security::Security;
use troupe::spaces::{EnvSpec, PolicySpec, DEFAULT_POLICY};
use troupe::telemetry::names;
use troupe::RunConfig;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "learner",
    about = "Troupe learner: IMPALA/V-trace updates from actor rollout streams"
)]
pub struct Args {
    /// Coordinator gRPC address.
    #[arg(long, env = "TROUPE_COORDINATOR", default_value = "http://127.0.0.1:50051")]
    pub coordinator: String,
    /// Where actors stream rollouts to; port 0 picks a free port.
    #[arg(long, env = "TROUPE_LEARNER_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,
    /// The address actors should dial (default: http://<listen address>; set it when listening
    /// on 0.0.0.0).
    #[arg(long, env = "TROUPE_LEARNER_ADVERTISE")]
    pub advertise: Option<String>,
    /// Where to serve Prometheus metrics; port 0 picks a free port.
    #[arg(long, env = "TROUPE_METRICS_LISTEN", default_value = "127.0.0.1:9102")]
    pub metrics_listen: SocketAddr,
    #[arg(long, env = "TROUPE_DEVICE", value_enum, default_value = "auto")]
    pub device: device::DeviceChoice,
    /// Seed for weight initialisation.
    #[arg(long, env = "TROUPE_SEED", default_value_t = 0)]
    pub seed: i64,
    /// Once serving, write {"grpc", "metrics", "device"} as JSON here.
    #[arg(long, env = "TROUPE_READY_FILE")]
    pub ready_file: Option<PathBuf>,
    #[arg(long, env = "TROUPE_LOG_JSON")]
    pub log_json: bool,
    /// Where to keep checkpoints (weights, optimizer state, counters), written every
    /// `learner.checkpoint_every_s` and at shutdown; the learner resumes from the newest valid
    /// one. A persistent volume in Kubernetes and compose.
    #[arg(long, env = "TROUPE_CHECKPOINT_DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// The policy this learner trains (default: the run's only one). A multi-policy run has one
    /// learner process per policy, each with its own lease, versions and checkpoints.
    #[arg(long, env = "TROUPE_POLICY")]
    pub policy: Option<String>,
    /// Names this learner's slot for the lease (default: the host name). A learner with the
    /// same id takes over at once; another id waits until the holder's lease runs out.
    #[arg(long, env = "TROUPE_LEARNER_ID")]
    pub learner_id: Option<String>,
    /// When the lease is held by another learner, or is lost to one: `exit` (status 75) or
    /// `wait` (stand by until the lease is free, then resume from the newest checkpoint).
    #[arg(long, env = "TROUPE_ON_FENCED", value_enum, default_value = "exit")]
    pub on_fenced: OnFenced,
    /// Also serve gRPC health in plain text here (for probes when TLS is on); port 0 picks one.
    #[arg(long, env = "TROUPE_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    #[command(flatten)]
    pub tls: troupe::security::TlsArgs,
    #[command(flatten)]
    pub auth: troupe::security::AuthArgs,
    /// The replay service (with `learner.replay_ratio`; default: the coordinator, which serves it
    /// unless it runs `--role coordinator`).
    #[arg(long, env = "TROUPE_REPLAY")]
    pub replay: Option<String>,
    /// Testing only: the model thread panics after this many updates, as a libtorch error or a
    /// CUDA out-of-memory would end it.
    #[arg(long, env = "TROUPE_FAULT_MODEL_PANIC_AFTER", hide = true)]
    pub fault_model_panic_after: Option<u64>,
}

/// What to do when another learner holds the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnFenced {
    Exit,
    Wait,
}

/// Exit status of a learner that another learner fenced off (BSD `EX_TEMPFAIL`).
pub const EXIT_FENCED: i32 = 75;

/// How [`run`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// A signal: drained and done.
    Shutdown,
    /// Another learner holds the lease (at registration, or it took it since).
    Fenced,
}

/// What registration gave us.
struct Registered {
    config: RunConfig,
    spec: PolicySpec,
    /// The policy is the run's first (rollouts that name no policy are its).
    first_policy: bool,
    latest: u64,
    epoch: u64,
    lease_s: f64,
}

/// Registers with the coordinator and takes the lease (retrying until it answers, and until
/// the env's spaces are known). `None` on shutdown; `Err(Fenced)` if another learner holds
/// the lease and `on_fenced` is `exit`.
async fn register(
    client: &mut CoordinatorClient<GrpcChannel>,
    policy: Option<&str>,
    advertise: &str,
    learner_id: &str,
    checkpoint_version: u64,
    on_fenced: OnFenced,
    shutdown: &CancellationToken,
) -> anyhow::Result<Result<Option<Registered>, Ended>> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(3));
    loop {
        let req = RegisterLearnerRequest {
            advertise_address: advertise.to_string(),
            learner_id: learner_id.to_string(),
            checkpoint_version,
            policy: policy.unwrap_or_default().to_string(),
        };
        match client.register_learner(req).await {
            Ok(r) => {
                let r = r.into_inner();
                let config = RunConfig::from_toml(&r.run_config_toml)?;
                let json = r.spec.map(|s| s.json).unwrap_or_default();
                let env: EnvSpec = serde_json::from_str(&json).context("coordinator sent a malformed env spec")?;
                env.validate()?;
                let (spec, first_policy) = own_policy(&config, &env, policy)?;
                return Ok(Ok(Some(Registered {
                    first_policy,
                    config,
                    spec,
                    latest: r.latest_version,
                    epoch: r.epoch,
                    lease_s: r.lease_s,
                })));
            }
            Err(status) if status.code() == tonic::Code::FailedPrecondition && on_fenced == OnFenced::Exit => {
                tracing::error!(
                    message = status.message(),
                    "the coordinator refused this learner (--on-fenced exit)"
                );
                return Ok(Err(Ended::Fenced));
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
            {
                anyhow::bail!("the coordinator refused this learner's token: {}", status.message());
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "registration failed, retrying");
                if !backoff.wait(shutdown).await {
                    return Ok(Ok(None));
                }
            }
        }
    }
}

/// The spec of the policy this learner trains: `--policy`, or the run's only policy.
fn own_policy(config: &RunConfig, env: &EnvSpec, policy: Option<&str>) -> anyhow::Result<(PolicySpec, bool)> {
    let policies = troupe::policy_map::policy_specs(config, env)?;
    let spec = match policy {
        Some(name) => troupe::policy_map::find(&policies, name)?.clone(),
        None if policies.len() == 1 && policies[0].policy == DEFAULT_POLICY => policies[0].clone(),
        // Its metrics say policy="default" until told otherwise: a run's only policy of another
        // name is named on the command line, so that the label is right.
        None if policies.len() == 1 => anyhow::bail!(
            "--policy: the run's only policy is {:?}: start its learner with --policy {}",
            policies[0].policy,
            policies[0].policy
        ),
        None => {
            let names: Vec<&str> = policies.iter().map(|p| p.policy.as_str()).collect();
            anyhow::bail!(
                "--policy: the run has {} policies {names:?}: start one learner per policy, each with --policy NAME",
                names.len()
            )
        }
    };
    spec.validate()?;
    let first = policies[0].policy == spec.policy;
    Ok((spec, first))
}

/// What ended the model thread, from its join result.
fn why_it_ended(joined: Result<std::thread::Result<()>, tokio::task::JoinError>) -> String {
    match joined {
        Ok(Err(panic)) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into()),
        Ok(Ok(())) => "it returned".into(),
        Err(e) => format!("joining it failed: {e}"),
    }
}

/// The access rule for the learner's methods: only actors stream rollouts.
pub fn method_roles(path: &str) -> Option<&'static [troupe::security::Role]> {
    use troupe::security::Role;
    match path {
        "/troupe.v1.Learner/StreamRollouts" => Some(&[Role::Actor]),
        _ => None,
    }
}

/// The plain health server `main` starts before anything else (so a learner standing by for
/// the lease answers probes: live, not ready), and its bound address.
pub struct PlainHealth {
    pub health: troupe::health::Health,
    pub addr: SocketAddr,
}

pub async fn run(
    args: Args,
    security: Security,
    listener: TcpListener,
    metrics_addr: SocketAddr,
    plain_health: Option<PlainHealth>,
    shutdown: CancellationToken,
) -> anyhow::Result<Ended> {
    let local = listener.local_addr()?;
    let advertise = args
        .advertise
        .clone()
        .unwrap_or_else(|| format!("{}://{local}", security.scheme()));
    let learner_id = match &args.learner_id {
        Some(id) => id.clone(),
        None => std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "learner".to_string()),
    };
    let device = device::select(args.device)?;
    let device_name = device::name(device);
    tracing::info!(device = %device_name, "learner device");
    metrics::gauge!(names::LEARNER_DEVICE, "device" => device_name.clone()).set(1.0);

    let coordinator = grpc_channel(&args.coordinator, &security).context("--coordinator")?;
    let mut client = CoordinatorClient::new(coordinator.clone()).max_decoding_message_size(proto::MAX_MESSAGE_BYTES);
    // Made (and checked writable) once, before registering: registration reports the newest
    // checkpoint's version. How many to keep comes with the run config.
    let mut checkpointer = match &args.checkpoint_dir {
        Some(dir) => Some(checkpoint::Checkpointer::new(dir, 1)?),
        None => None,
    };
    let resume = match &checkpointer {
        Some(c) => {
            let dir = c.dir().to_path_buf();
            tokio::task::spawn_blocking(move || checkpoint::newest_valid(&dir)).await??
        }
        None => None,
    };
    let checkpoint_version = resume.as_ref().map_or(0, |r| r.version);
    let registered = register(
        &mut client,
        args.policy.as_deref(),
        &advertise,
        &learner_id,
        checkpoint_version,
        args.on_fenced,
        &shutdown,
    )
    .await?;
    let Registered {
        config,
        spec: env_spec,
        first_policy,
        latest,
        epoch,
        lease_s,
    } = match registered {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(Ended::Shutdown),
        Err(ended) => return Ok(ended),
    };
    if let Some(c) = checkpointer.as_mut() {
        c.keep(config.learner.keep_checkpoints);
    }
    tracing::info!(advertise = %advertise, learner_id = %learner_id, policy = %env_spec.policy, epoch, latest_version = latest, env = %env_spec.id, "registered with the coordinator");
    // A checkpoint of another policy (a shared directory) is not ours to resume from.
    let resume = resume.filter(|r| match troupe::model::spec_of_blob(&r.policy) {
        Ok(s) if s.env.policy == env_spec.policy => true,
        Ok(s) => {
            tracing::warn!(path = %r.path.display(), checkpoint_policy = %s.env.policy, policy = %env_spec.policy, "skipping a checkpoint of another policy");
            false
        }
        Err(_) => true,
    });
    // Everything below stops on a signal or when another learner fences this one.
    let fenced = CancellationToken::new();
    let stop = shutdown.child_token();
    let shutdown = stop.clone();

    let spec = ModelSpec {
        env: env_spec.clone(),
        model: config.model.clone(),
    };
    tch::manual_seed(args.seed);
    let mut trainer = trainer::Trainer::new(&config, &spec, device)?;
    let state_size = trainer.model().state_size();
    match &resume {
        Some(r) => {
            // Version numbers continue from what the coordinator mints, not the checkpoint's.
            trainer.restore(r)?;
            tracing::info!(
                path = %r.path.display(),
                checkpoint_version = r.version,
                learner_step = r.learner_step,
                frames = r.frames,
                optimizer_steps = r.optimizer_steps,
                "resumed from checkpoint"
            );
        }
        None if latest > 0 => {
            let (meta, blob) = troupe::client::fetch_policy_of(&mut client, &env_spec.policy, latest)
                .await
                .context("fetching the latest policy to resume from")?;
            trainer.load(meta.version, meta.learner_step, meta.frames, &blob)?;
            tracing::warn!(
                version = meta.version,
                learner_step = meta.learner_step,
                "resumed from the latest stored policy, without optimizer state (no checkpoint)"
            );
        }
        None => {}
    }

    let known_version = Arc::new(AtomicU64::new(latest));
    let minted = Arc::new(AtomicU64::new(latest));
    let (queue_tx, queue_rx) = mpsc::channel(config.learner.queue_capacity);
    let queue_bytes = Arc::new(AtomicU64::new(0));
    metrics::gauge!(names::LEARNER_QUEUE_CAPACITY).set(config.learner.queue_capacity as f64);
    // Every rejection reason exists from the start at 0, so the first rejection shows in
    // `increase()` (a counter that appears at 1 has no increase to show).
    for reason in ingest::RejectKind::ALL
        .iter()
        .map(|k| k.label())
        .chain(["too_large", "stale", "wrong_actor"])
    {
        metrics::counter!(names::LEARNER_ROLLOUTS_REJECTED, "reason" => reason).absolute(0);
    }
    let (snap_tx, snap_rx) = watch::channel(None);
    let (checkpoints, checkpoint_writer) = match checkpointer {
        Some(c) => {
            let (tx, rx) = watch::channel(None);
            let every = Duration::from_secs_f64(config.learner.checkpoint_every_s);
            let writer = tokio::spawn(checkpoint::writer(Arc::new(c), rx, fenced.clone()));
            (Some((every, tx)), Some(writer))
        }
        None => (None, None),
    };
    let publisher = tokio::spawn(
        publisher::Publisher {
            channel: coordinator.clone(),
            policy: env_spec.policy.clone(),
            snapshots: snap_rx,
            published: latest,
            epoch,
            fenced: fenced.clone(),
            minted: minted.clone(),
            known_version: known_version.clone(),
        }
        .run(),
    );
    tokio::spawn(publisher::keep_lease(
        coordinator.clone(),
        env_spec.policy.clone(),
        epoch,
        lease_s,
        fenced.clone(),
        stop.clone(),
    ));
    device::watch_gpu_memory(device, shutdown.clone());

    let rollout_spec = Arc::new(ingest::RolloutSpec {
        unroll_length: config.actor.unroll_length,
        max_envs: config.actor.num_envs * env_spec.agents_per_env(),
        first_policy,
        env: env_spec.clone(),
        state_size,
    });
    let replay_link = if config.learner.replay_ratio > 0.0 || config.acts_on_q_values() {
        let address = args.replay.as_deref().unwrap_or(&args.coordinator);
        let link =
            troupe::replay::ReplayLink::connect(address, &security, &config.learner.replay_table, &env_spec.policy)
                .context("--replay")?;
        Some((address.to_string(), link))
    } else {
        None
    };
    let (replay_sampler, replay_writer, replay_only) = match replay_link {
        Some((address, link)) if config.acts_on_q_values() => {
            if !matches!(env_spec.action, troupe::spaces::ActionSpace::Discrete { .. }) {
                anyhow::bail!(
                    "learner.algorithm = \"apex_dqn\" needs a Discrete action space; policy {:?} has {:?}",
                    env_spec.policy,
                    env_spec.action
                );
            }
            let t = config
                .replay
                .table(&config.learner.replay_table)
                .expect("the config's validation checks the table");
            tracing::info!(address, table = %link.table, batch = config.learner.batch_size, "Ape-X: every batch from replay");
            let apex = config.apex();
            let agents = env_spec.agents_per_env();
            if apex.vdn && !config.learner.batch_size.is_multiple_of(agents) {
                anyhow::bail!(
                    "learner.batch_size: expected a multiple of the {agents} agents per env with apex.vdn (a batch holds whole teams), got {}",
                    config.learner.batch_size
                );
            }
            let only = trainer::ReplayOnly {
                sampler: replay::Sampler::new(link.clone(), (*rollout_spec).clone(), tokio::runtime::Handle::current()),
                deadline: Duration::from_secs_f64(apex.sample_deadline_s),
                beta0: t.importance_sampling_exponent,
                beta1: t
                    .importance_sampling_exponent_final
                    .unwrap_or(t.importance_sampling_exponent),
                anneal_updates: t.importance_sampling_anneal_updates,
                priorities: replay::spawn_priority_updater(link, shutdown.clone()),
            };
            (None, None, Some(only))
        }
        Some((address, link)) => {
            let k = config.learner.replayed_columns();
            tracing::info!(address, table = %link.table, replayed_columns = k, batch = config.learner.batch_size, "replaying a share of each batch");
            // With actors inserting, what they send is in replay already.
            let writer = (config.learner.replay_inserter == ReplayInserter::Learner).then(|| {
                troupe::replay::spawn_writer(link.clone(), troupe::replay::WriterMetrics::LEARNER, shutdown.clone())
            });
            let sampler = replay::Sampler::new(link, (*rollout_spec).clone(), tokio::runtime::Handle::current());
            (Some((sampler, k)), writer, None)
        }
        None => (None, None, None),
    };
    let trainer_loop = trainer::TrainerLoop {
        trainer,
        batch_size: config.learner.batch_size,
        publish_every: config.learner.publish_every,
        threads: config.learner.threads,
        queue: queue_rx,
        queue_bytes: queue_bytes.clone(),
        snapshots: snap_tx,
        known_version: known_version.clone(),
        runtime: tokio::runtime::Handle::current(),
        shutdown: shutdown.clone(),
        panic_after: args.fault_model_panic_after,
        checkpoints,
        minted,
        replay: replay_sampler,
        replay_only,
    };
    let model_thread = std::thread::Builder::new()
        .name("model".into())
        .spawn(move || trainer_loop.run())?;
    let mut model_done = tokio::task::spawn_blocking(move || model_thread.join());

    let service = ingest::LearnerService {
        spec: rollout_spec,
        limits: ingest::StreamLimits {
            max_policy_lag: config.learner.max_policy_lag,
            max_streams_per_actor: config.learner.max_streams_per_actor,
            idle_timeout: Duration::from_secs_f64(config.learner.stream_idle_timeout_s),
        },
        binding: security.actor_binding(),
        slots: Default::default(),
        latest_version: known_version,
        queue: queue_tx,
        queue_bytes,
        shutdown: shutdown.clone(),
        replay_writer,
    };
    let (mut health, health_service) = troupe::health::health_service(troupe::health::LEARNER).await;
    let plain_addr = plain_health.map(|p| {
        health.join(p.health);
        p.addr
    });
    if let Some(path) = &args.ready_file {
        write_ready_file(
            path,
            &serde_json::json!({
                "grpc": local.to_string(),
                "metrics": metrics_addr.to_string(),
                "device": device_name,
                "health": plain_addr.map(|a| a.to_string()),
            }),
        )?;
    }
    tracing::info!(listen = %local, "serving rollout streams");
    health.set(troupe::health::ServingStatus::Serving).await;
    let server = troupe::process::service_server(&security, method_roles)?
        .add_service(health_service)
        .add_service(
            LearnerServer::new(service)
                .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(proto::MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(troupe::process::incoming(listener), shutdown.clone().cancelled_owned());
    let mut server = std::pin::pin!(server);
    // The model thread only ends on its own when it fails (a libtorch error, CUDA out of
    // memory): then the learner fails its health check and exits non-zero, so that a
    // supervisor restarts it, rather than serving streams that nothing trains on.
    let mut model_joined = false;
    let mut was_fenced = false;
    let died = tokio::select! {
        r = &mut server => { r?; None }
        joined = &mut model_done => {
            model_joined = true;
            (!shutdown.is_cancelled()).then(|| why_it_ended(joined))
        }
        _ = fenced.cancelled() => {
            was_fenced = true;
            None
        }
    };
    if was_fenced {
        // Another learner holds the lease: stop training and serving at once. Our weights are
        // not published any more; the newest checkpoint stays for a later resume.
        tracing::error!(epoch, "fenced off by another learner: stopping");
        health.set(troupe::health::ServingStatus::NotServing).await;
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(20), server).await;
        let _ = tokio::time::timeout(Duration::from_secs(20), model_done).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), publisher).await;
        return Ok(Ended::Fenced);
    }
    if let Some(why) = died {
        let reason = format!("the model thread died: {why}");
        tracing::error!(reason = %reason, "learner failing");
        troupe::telemetry::mark_unhealthy(&reason);
        health.set(troupe::health::ServingStatus::NotServing).await;
        // Let health checks see it, then stop everything.
        tokio::time::sleep(Duration::from_secs(2)).await;
        shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        anyhow::bail!(reason);
    }

    // Drain: the model thread finishes its update and snapshots once more; the publisher
    // sends that checkpoint. Each within a deadline.
    if model_joined {
        // A signal stopped the model thread before the server finished closing its streams.
        if tokio::time::timeout(Duration::from_secs(20), server).await.is_err() {
            tracing::warn!("rollout server did not stop within 20 s");
        }
    } else if tokio::time::timeout(Duration::from_secs(20), model_done).await.is_err() {
        tracing::warn!("model thread did not stop within 20 s");
    }
    match tokio::time::timeout(Duration::from_secs(20), publisher).await {
        Ok(_) => tracing::info!("drained"),
        Err(_) => tracing::warn!("final publish did not finish within 20 s"),
    }
    if let Some(w) = checkpoint_writer {
        if tokio::time::timeout(Duration::from_secs(20), w).await.is_err() {
            tracing::warn!("the final checkpoint was not written within 20 s");
        }
    }
    Ok(if fenced.is_cancelled() {
        Ended::Fenced
    } else {
        Ended::Shutdown
    })
}

#[cfg(test)]
mod tests {
    /// Every Learner RPC in the protocol has roles (see the coordinator's twin of this test).
    #[test]
    fn every_learner_method_has_roles() {
        let ours: Vec<&str> = proto::methods::GRPC_METHODS
            .iter()
            .copied()
            .filter(|m| m.starts_with("troupe.v1.Learner/"))
            .collect();
        assert!(!ours.is_empty());
        for m in ours {
            assert!(super::method_roles(&format!("/{m}")).is_some(), "{m}: no roles");
        }
    }
}
