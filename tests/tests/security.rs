//! The probes a hostile or careless client tried against v0, each as a test against a real
//! cluster with TLS and role tokens on: every one gets a clear error, and training goes on.

use std::io::Read;
use std::time::{Duration, Instant};

use proto::v1::{
    HeartbeatRequest, PolicyChunk, PolicyMeta, RegisterLearnerRequest, RenewLearnerLeaseRequest, Rollout, StatusRequest,
};
use tests::{cartpole_config, eventually, metric, scrape, Cluster, Secrets};
use troupe::process::grpc_channel;
use troupe::security::{AuthArgs, Role, Security, TlsArgs};

fn chunk(version: u64, blob: bytes::Bytes, epoch: u64) -> PolicyChunk {
    PolicyChunk {
        meta: Some(PolicyMeta {
            version,
            size_bytes: blob.len() as u64,
            ..Default::default()
        }),
        data: blob,
        epoch,
    }
}

async fn latest_at_least(cluster: &Cluster, v: u64) -> anyhow::Result<u64> {
    eventually("training publishes versions", Duration::from_secs(60), || async {
        let s = cluster.status().await?;
        Ok((s.latest_version >= v).then_some(s.latest_version))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", cluster.logs()))
}

fn epoch(cluster: &Cluster) -> u64 {
    metric(
        &scrape(&cluster.coordinator_metrics).unwrap(),
        "troupe_coordinator_learner_epoch",
    )
    .expect("epoch gauge") as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_tokens_refuse_strangers_and_wrong_roles() -> anyhow::Result<()> {
    let mut config = cartpole_config();
    config.learner.stream_idle_timeout_s = 2.0;
    config.learner.max_policy_lag = 20;
    let mut cluster = Cluster::start(&config).await?;
    cluster.add_actor().await?;
    let secrets = cluster.secrets.clone().expect("a secure cluster");
    let before = latest_at_least(&cluster, 2).await?;

    // A client that trusts another CA refuses the server's certificate.
    let other = Secrets::make(&cluster.dir.path().join("other-secrets"))?;
    let stranger = proto::v1::coordinator_client::CoordinatorClient::new(grpc_channel(
        &cluster.coordinator_addr,
        &Security::load(
            &TlsArgs {
                tls_ca: Some(other.tls("ca.crt")),
                ..Default::default()
            },
            &AuthArgs {
                token_file: Some(secrets.token(Role::Admin)),
                tokens_dir: None,
            },
        )?,
    )?)
    .status(StatusRequest {})
    .await
    .expect_err("a server certificate from another CA is refused");
    assert_eq!(stranger.code(), tonic::Code::Unavailable, "{stranger:?}");
    // Plain text to the TLS port gets nowhere either.
    let plain = tonic::transport::Endpoint::from_shared(cluster.coordinator_addr.replace("https://", "http://"))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .connect_lazy();
    let err = proto::v1::coordinator_client::CoordinatorClient::new(plain)
        .status(StatusRequest {})
        .await
        .expect_err("plain text to a TLS port");
    assert_ne!(err.code(), tonic::Code::Ok);

    // TLS without a token: UNAUTHENTICATED. A made-up token: UNAUTHENTICATED.
    let no_token = Security::load(
        &TlsArgs {
            tls_ca: Some(secrets.tls("ca.crt")),
            ..Default::default()
        },
        &AuthArgs::default(),
    )?;
    let err =
        proto::v1::coordinator_client::CoordinatorClient::new(grpc_channel(&cluster.coordinator_addr, &no_token)?)
            .status(StatusRequest {})
            .await
            .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let fake = cluster.dir.path().join("fake-token");
    std::fs::write(&fake, "not-a-real-token-0123456789")?;
    let err = proto::v1::coordinator_client::CoordinatorClient::new(grpc_channel(
        &cluster.coordinator_addr,
        &Security::load(
            &TlsArgs {
                tls_ca: Some(secrets.tls("ca.crt")),
                ..Default::default()
            },
            &AuthArgs {
                token_file: Some(fake),
                tokens_dir: None,
            },
        )?,
    )?)
    .status(StatusRequest {})
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");

    // An actor's token may not register a learner, publish, or pin.
    let mut as_actor = cluster.client_as(Role::Actor).await?;
    let err = as_actor
        .register_learner(RegisterLearnerRequest {
            advertise_address: "https://127.0.0.1:1".into(),
            learner_id: "intruder".into(),
            checkpoint_version: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("actor role"), "{}", err.message());
    let (_, blob) = troupe::client::fetch_policy(&mut cluster.client().await?, 0).await?;
    let err = as_actor
        .publish_policy(tokio_stream::iter(vec![chunk(u64::MAX, blob.clone(), epoch(&cluster))]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let err = as_actor
        .pin_policy(proto::v1::PinPolicyRequest {
            version: before,
            pinned: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    // An evaluator reads but does not write.
    let mut as_evaluator = cluster.client_as(Role::Evaluator).await?;
    as_evaluator.status(StatusRequest {}).await?;
    let err = as_evaluator
        .heartbeat(HeartbeatRequest {
            actor_id: 1,
            seq: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    // Heartbeats only from registered actors, with their own secret.
    let frames_before = cluster.status().await?.frames;
    let err = as_actor
        .heartbeat(HeartbeatRequest {
            actor_id: 1_000_000,
            frames: 1 << 40,
            seq: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "no secret: {err:?}");
    let (id, secret) = cluster.register_fake_actor().await?;
    let mut hb = tonic::Request::new(HeartbeatRequest {
        actor_id: 1,
        frames: 1 << 40,
        seq: 1,
        ..Default::default()
    });
    hb.metadata_mut()
        .insert(troupe::security::ACTOR_SECRET_HEADER, secret.parse()?);
    let err = as_actor.heartbeat(hb).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "another actor's id: {err:?}");
    // An id never issued, even with a well-formed secret for it (made here with the learner's
    // token, which an actor does not have): NOT_FOUND, nothing counted.
    let binding = troupe::security::ActorBinding::from_learner_token(
        std::fs::read_to_string(secrets.token(Role::Learner))?.trim(),
    );
    let mut hb = tonic::Request::new(HeartbeatRequest {
        actor_id: 1_000_000,
        frames: 1 << 40,
        seq: 1,
        ..Default::default()
    });
    hb.metadata_mut().insert(
        troupe::security::ACTOR_SECRET_HEADER,
        binding.secret(1_000_000).parse()?,
    );
    let err = as_actor.heartbeat(hb).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(err.message().contains("no actor was registered"), "{}", err.message());
    // Its own id: counted once, however often the same report is retried.
    for _ in 0..3 {
        let mut hb = tonic::Request::new(HeartbeatRequest {
            actor_id: id,
            frames: 1000,
            seq: 1,
            ..Default::default()
        });
        hb.metadata_mut()
            .insert(troupe::security::ACTOR_SECRET_HEADER, secret.parse()?);
        as_actor.heartbeat(hb).await?;
    }
    let s = cluster.status().await?;
    let fake = s.actors.iter().find(|a| a.actor_id == id).expect("the fake actor");
    assert_eq!(fake.frames, 1000, "a retried report is applied once");
    assert!(
        s.frames - frames_before < 1 << 39,
        "no forged frames: {}",
        s.frames - frames_before
    );

    // A rollout stream needs the actor's id and secret.
    let mut learner = cluster.learner_client()?;
    let err = learner
        .stream_rollouts(tokio_stream::iter(Vec::<Rollout>::new()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let open = |id: u64, secret: &str| {
        let mut req = tonic::Request::new(tokio_stream::pending::<Rollout>());
        req.metadata_mut()
            .insert(troupe::security::ACTOR_ID_HEADER, id.to_string().parse().unwrap());
        req.metadata_mut()
            .insert(troupe::security::ACTOR_SECRET_HEADER, secret.parse().unwrap());
        req
    };
    // At most max_streams_per_actor (2) streams per actor id.
    let s1 = learner.stream_rollouts(open(id, &secret)).await?;
    let s2 = learner.stream_rollouts(open(id, &secret)).await?;
    let err = learner.stream_rollouts(open(id, &secret)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    // An idle stream is closed after learner.stream_idle_timeout_s (2 s here).
    let start = Instant::now();
    let mut acks = s1.into_inner();
    let ended = tokio::time::timeout(Duration::from_secs(10), acks.message()).await?;
    let err = ended.expect_err("the idle stream ends with an error");
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(6), "{:?}", start.elapsed());
    drop(s2);

    // A rollout acted with a policy more than learner.max_policy_lag (20 here) versions old
    // is dropped, acknowledged (the actor's credit goes on) and counted as stale.
    let latest = latest_at_least(&cluster, 25).await?;
    let t = config.actor.unroll_length;
    let n = 2;
    let stale = Rollout {
        actor_id: id,
        policy_version: latest - 21,
        observations: Some(proto::v1::Tensor::from_slice(
            &[t + 1, n, 4],
            &vec![0.01f32; (t + 1) * n * 4],
        )),
        actions: Some(proto::v1::Tensor::from_slice(&[t, n, 1], &vec![1i64; t * n])),
        rewards: Some(proto::v1::Tensor::from_slice(&[t, n], &vec![1.0f32; t * n])),
        terminated: Some(proto::v1::Tensor::from_slice(&[t, n], &vec![0u8; t * n])),
        truncated: Some(proto::v1::Tensor::from_slice(&[t, n], &vec![0u8; t * n])),
        behaviour_params: Some(proto::v1::Tensor::from_slice(&[t, n, 2], &vec![0.0f32; t * n * 2])),
        truncation_observations: Some(proto::v1::Tensor::from_slice(&[0, 4], &[] as &[f32])),
        ..Default::default()
    };
    let mut req = tonic::Request::new(tokio_stream::iter(vec![stale]));
    req.metadata_mut()
        .insert(troupe::security::ACTOR_ID_HEADER, id.to_string().parse()?);
    req.metadata_mut()
        .insert(troupe::security::ACTOR_SECRET_HEADER, secret.parse()?);
    let ack = learner
        .stream_rollouts(req)
        .await?
        .into_inner()
        .message()
        .await?
        .expect("an ack");
    assert_eq!(ack.accepted, 1);
    let stale_count = scrape(&cluster.learner_metrics)?
        .lines()
        .find(|l| l.starts_with("troupe_learner_rollouts_rejected_total{policy=\"default\",reason=\"stale\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert_eq!(stale_count, Some(1.0));

    // A TCP connection that never starts TLS is dropped after the handshake timeout.
    let addr = cluster.coordinator_addr.trim_start_matches("https://").to_string();
    let idle = tokio::task::spawn_blocking(move || {
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 16];
        let n = sock.read(&mut buf).unwrap_or(0);
        (n, start.elapsed())
    })
    .await?;
    assert_eq!(idle.0, 0, "the server closes the idle socket");
    assert!(idle.1 < Duration::from_secs(15), "closed after {:?}", idle.1);

    // Refused calls are counted; training went on through all of it.
    let m = scrape(&cluster.coordinator_metrics)?;
    assert!(
        m.contains("troupe_auth_refused_total{code=\"PERMISSION_DENIED\"}"),
        "{m}"
    );
    assert!(m.contains("troupe_auth_refused_total{code=\"UNAUTHENTICATED\"}"), "{m}");
    latest_at_least(&cluster, before + 5).await?;
    Ok(())
}

/// One learner holds the lease; a second id is refused while it is live; the coordinator mints
/// versions (a huge one asked for is not taken); taking the lease over fences the old learner,
/// whose epoch is refused from then on, and which exits with status 75.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_learner_lease_fences_a_second_learner_and_versions_are_minted() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(&cartpole_config()).await?;
    cluster.add_actor().await?;
    let before = latest_at_least(&cluster, 3).await?;
    let mut as_learner = cluster.client_as(Role::Learner).await?;
    let err = as_learner
        .register_learner(RegisterLearnerRequest {
            advertise_address: "https://127.0.0.1:1".into(),
            learner_id: "second-learner".into(),
            checkpoint_version: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("lease is held by learner"), "{}", err.message());

    // Publishing version 2^64 - 1 under the current epoch: stored as the next version.
    let current = epoch(&cluster);
    let (_, blob) = troupe::client::fetch_policy(&mut cluster.client().await?, 0).await?;
    let meta = as_learner
        .publish_policy(tokio_stream::iter(vec![chunk(u64::MAX, blob.clone(), current)]))
        .await?
        .into_inner()
        .meta
        .unwrap();
    assert!(
        meta.version > before && meta.version < before + 10_000,
        "minted {}",
        meta.version
    );
    // A stale or made-up epoch may not publish.
    for e in [0, current + 1, current - 1] {
        let err = as_learner
            .publish_policy(tokio_stream::iter(vec![chunk(1, blob.clone(), e)]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "epoch {e}: {err:?}");
        assert!(err.message().contains("stale"), "{}", err.message());
    }
    // The real learner keeps publishing.
    latest_at_least(&cluster, meta.version + 3).await?;

    // The same learner id takes the lease over at once: the running learner is fenced off.
    let hostname = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "learner".to_string());
    let taken = as_learner
        .register_learner(RegisterLearnerRequest {
            advertise_address: cluster.learner_addr.clone(),
            learner_id: hostname,
            checkpoint_version: 0,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(taken.epoch, current + 1);
    let err = as_learner
        .renew_learner_lease(RenewLearnerLeaseRequest {
            epoch: current,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let learner = cluster.learner.as_mut().unwrap();
    let status = eventually("the fenced learner exits", Duration::from_secs(30), || {
        let s = learner.child.try_wait();
        async move { Ok(s?) }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", cluster.logs()))?;
    assert_eq!(
        status.code(),
        Some(75),
        "EX_TEMPFAIL, the learner's fenced exit: {}",
        cluster.logs()
    );
    assert!(cluster.logs().contains("fenced"), "{}", cluster.logs());
    Ok(())
}

/// A second learner with `--on-fenced wait` stands by (alive, not ready) while the first holds
/// the lease, and takes over when the first dies and its lease runs out: training goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_learner_takes_over_when_the_lease_runs_out() -> anyhow::Result<()> {
    use troupe::health::{check, ServingStatus};
    let mut config = cartpole_config();
    config.coordinator.learner_lease_s = 3.0;
    let mut cluster = Cluster::start(&config).await?;
    cluster.add_actor().await?;
    let before = latest_at_least(&cluster, 3).await?;
    let secrets = cluster.secrets.clone().unwrap();
    let ready = cluster.dir.path().join("standby.json");
    let mut cmd = std::process::Command::new(tests::bin("learner"));
    cmd.args(["--coordinator", &cluster.coordinator_addr])
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--health-listen", "127.0.0.1:0", "--device", "cpu"])
        .args(["--learner-id", "standby", "--on-fenced", "wait", "--ready-file"])
        .arg(&ready)
        .args(secrets.server_flags(Role::Learner));
    let mut standby = tests::Proc::spawn("standby", cluster.dir.path(), cmd)?;
    standby.ready = Some(ready);
    // It stands by: no ready file while the first learner holds the lease.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(standby.child.try_wait()?.is_none(), "{}", standby.log_tail(20));
    assert!(!cluster.dir.path().join("standby.json").exists());
    assert!(
        standby.log_tail(50).contains("lease is held by learner"),
        "{}",
        standby.log_tail(20)
    );
    let v = latest_at_least(&cluster, before + 3).await?;

    cluster.learner.as_mut().unwrap().kill9();
    let info = standby.wait_ready(Duration::from_secs(60)).await?;
    let health = info["health"].as_str().unwrap().to_string();
    assert_eq!(
        check(&health, troupe::health::LEARNER, Duration::from_secs(3)).await?,
        ServingStatus::Serving
    );
    // The actor follows the new learner's address; versions go on from where they were.
    latest_at_least(&cluster, v + 10)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n--- standby ---\n{}", standby.log_tail(30)))?;
    assert!(epoch(&cluster) >= 2);
    Ok(())
}
