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
pub mod publisher;
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
use troupe::model::ModelSpec;
use troupe::process::{grpc_channel, write_ready_file, Backoff};
use troupe::spaces::EnvSpec;
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
    /// Where to keep the latest policy snapshot (`latest.safetensors`, `latest.json`), written
    /// at most every 30 s and at shutdown; a persistent volume in Kubernetes and compose.
    #[arg(long, env = "TROUPE_CHECKPOINT_DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Testing only: the model thread panics after this many updates, as a libtorch error or a
    /// CUDA out-of-memory would end it.
    #[arg(long, env = "TROUPE_FAULT_MODEL_PANIC_AFTER", hide = true)]
    pub fault_model_panic_after: Option<u64>,
}

/// Registers with the coordinator (retrying until it answers, and until the env's spaces are
/// known): the run config, the env spec and the latest version.
async fn register(
    client: &mut CoordinatorClient<tonic::transport::Channel>,
    advertise: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<(RunConfig, EnvSpec, u64)>> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(3));
    loop {
        let req = RegisterLearnerRequest {
            advertise_address: advertise.to_string(),
        };
        match client.register_learner(req).await {
            Ok(r) => {
                let r = r.into_inner();
                let config = RunConfig::from_toml(&r.run_config_toml)?;
                let json = r.spec.map(|s| s.json).unwrap_or_default();
                let spec: EnvSpec = serde_json::from_str(&json).context("coordinator sent a malformed env spec")?;
                spec.validate()?;
                return Ok(Some((config, spec, r.latest_version)));
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

pub async fn run(
    args: Args,
    listener: TcpListener,
    metrics_addr: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    let advertise = args.advertise.clone().unwrap_or_else(|| format!("http://{local}"));
    let device = device::select(args.device)?;
    let device_name = device::name(device);
    tracing::info!(device = %device_name, "learner device");
    metrics::gauge!(names::LEARNER_DEVICE, "device" => device_name.clone()).set(1.0);

    let coordinator = grpc_channel(&args.coordinator).context("coordinator address")?;
    let mut client = CoordinatorClient::new(coordinator.clone()).max_decoding_message_size(proto::MAX_MESSAGE_BYTES);
    let Some((config, env_spec, latest)) = register(&mut client, &advertise, &shutdown).await? else {
        return Ok(());
    };
    tracing::info!(advertise = %advertise, latest_version = latest, env = %env_spec.id, "registered with the coordinator");

    let spec = ModelSpec {
        env: env_spec.clone(),
        model: config.model.clone(),
    };
    tch::manual_seed(args.seed);
    let mut trainer = trainer::Trainer::new(&config, &spec, device)?;
    let state_size = trainer.model().state_size();
    if latest > 0 {
        let (meta, blob) = troupe::client::fetch_policy(&mut client, latest)
            .await
            .context("fetching the latest policy to resume from")?;
        trainer.load(meta.version, meta.learner_step, meta.frames, &blob)?;
        tracing::info!(
            version = meta.version,
            learner_step = meta.learner_step,
            "resumed from the latest stored policy"
        );
    }

    let known_version = Arc::new(AtomicU64::new(latest));
    let (queue_tx, queue_rx) = mpsc::channel(config.learner.queue_capacity);
    let queue_bytes = Arc::new(AtomicU64::new(0));
    metrics::gauge!(names::LEARNER_QUEUE_CAPACITY).set(config.learner.queue_capacity as f64);
    // Every rejection reason exists from the start at 0, so the first rejection shows in
    // `increase()` (a counter that appears at 1 has no increase to show).
    for reason in ingest::RejectKind::ALL.iter().map(|k| k.label()).chain(["too_large"]) {
        metrics::counter!(names::LEARNER_ROLLOUTS_REJECTED, "reason" => reason).absolute(0);
    }
    let (snap_tx, snap_rx) = watch::channel(None);
    let checkpoint = match &args.checkpoint_dir {
        Some(dir) => Some(checkpoint::Checkpointer::new(dir, Duration::from_secs(30))?),
        None => None,
    };
    let publisher = tokio::spawn(publisher::run(coordinator, snap_rx, latest, checkpoint));
    device::watch_gpu_memory(device, shutdown.clone());

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
    };
    let model_thread = std::thread::Builder::new()
        .name("model".into())
        .spawn(move || trainer_loop.run())?;
    let mut model_done = tokio::task::spawn_blocking(move || model_thread.join());

    let service = ingest::LearnerService {
        spec: Arc::new(ingest::RolloutSpec {
            unroll_length: config.actor.unroll_length,
            max_envs: config.actor.num_envs * env_spec.num_agents,
            env: env_spec,
            state_size,
        }),
        latest_version: known_version,
        queue: queue_tx,
        queue_bytes,
        shutdown: shutdown.clone(),
    };
    if let Some(path) = &args.ready_file {
        write_ready_file(
            path,
            &serde_json::json!({"grpc": local.to_string(), "metrics": metrics_addr.to_string(), "device": device_name}),
        )?;
    }
    tracing::info!(listen = %local, "serving rollout streams");
    let (health, health_service) = troupe::health::health_service(troupe::health::LEARNER).await;
    health.set(troupe::health::ServingStatus::Serving).await;
    let server = troupe::process::grpc_server()
        .layer(troupe::grpc_metrics::GrpcMetricsLayer::new(&[
            proto::methods::GRPC_METHODS,
            troupe::grpc_metrics::HEALTH_METHODS,
        ]))
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
    let died = tokio::select! {
        r = &mut server => { r?; None }
        joined = &mut model_done => {
            model_joined = true;
            (!shutdown.is_cancelled()).then(|| why_it_ended(joined))
        }
    };
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
    Ok(())
}
