//! Malformed rollouts sent straight to the learner (wrong shape, NaN, an unknown policy version,
//! a wrong dtype) each get `InvalidArgument` with a message naming the problem, and the learner
//! keeps training on the well-formed streams.

use std::time::Duration;

use proto::v1::{Rollout, Tensor};
use tests::{cartpole_config, eventually, metric, scrape, Cluster};

/// A well-formed CartPole rollout for the given policy version.
fn rollout(t: usize, n: usize, version: u64) -> Rollout {
    Rollout {
        actor_id: 999,
        policy_version: version,
        observations: Some(Tensor::from_slice(&[t + 1, n, 4], &vec![0.01f32; (t + 1) * n * 4])),
        actions: Some(Tensor::from_slice(&[t, n, 1], &vec![1i64; t * n])),
        rewards: Some(Tensor::from_slice(&[t, n], &vec![1.0f32; t * n])),
        terminated: Some(Tensor::from_slice(&[t, n], &vec![0u8; t * n])),
        truncated: Some(Tensor::from_slice(&[t, n], &vec![0u8; t * n])),
        behaviour_params: Some(Tensor::from_slice(&[t, n, 2], &vec![0.0f32; t * n * 2])),
        truncation_observations: Some(Tensor::from_slice(&[0, 4], &[] as &[f32])),
        action_masks: None,
        initial_state: None,
        valid: None,
        ..Default::default()
    }
}

/// Sends the rollouts on one stream, as a registered actor (TLS, the actor's token, its id and
/// secret), and reads acks until the learner ends it; returns how many were accepted, or the
/// status the stream ended with.
async fn send(cluster: &Cluster, mut rollouts: Vec<Rollout>) -> Result<u64, tonic::Status> {
    let (id, secret) = cluster.register_fake_actor().await.expect("register an actor");
    let mut client = cluster.learner_client().expect("learner client");
    for r in &mut rollouts {
        r.actor_id = id;
    }
    let n = rollouts.len() as u64;
    let mut req = tonic::Request::new(tokio_stream::iter(rollouts));
    req.metadata_mut()
        .insert(troupe::security::ACTOR_ID_HEADER, id.to_string().parse().unwrap());
    req.metadata_mut()
        .insert(troupe::security::ACTOR_SECRET_HEADER, secret.parse().unwrap());
    req.set_timeout(Duration::from_secs(20));
    let mut acks = client.stream_rollouts(req).await?.into_inner();
    let mut accepted = 0;
    while let Some(ack) = acks.message().await? {
        accepted = ack.accepted;
        if accepted == n {
            break;
        }
    }
    Ok(accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_rollouts_get_invalid_argument_and_training_goes_on() -> anyhow::Result<()> {
    let config = cartpole_config();
    let t = config.actor.unroll_length;
    let mut cluster = Cluster::start(&config).await?;
    cluster.add_actor().await?;
    let version = eventually("training has started", Duration::from_secs(60), || async {
        let s = cluster.status().await?;
        Ok((s.latest_version >= 3).then_some(s.latest_version))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}{}", cluster.logs()))?;

    // A good rollout is accepted on a hand-made stream too.
    assert_eq!(send(&cluster, vec![rollout(t, 4, version)]).await?, 1);

    let mut wrong_shape = rollout(t, 4, version);
    wrong_shape.observations = Some(Tensor::from_slice(&[t + 1, 4, 3], &vec![0.0f32; (t + 1) * 4 * 3]));
    let mut nan = rollout(t, 4, version);
    let mut rewards = vec![1.0f32; t * 4];
    rewards[5] = f32::NAN;
    nan.rewards = Some(Tensor::from_slice(&[t, 4], &rewards));
    let unknown = rollout(t, 4, 1_000_000);
    let mut wrong_dtype = rollout(t, 4, version);
    wrong_dtype.actions = Some(Tensor::from_slice(&[t, 4, 1], &vec![1.0f32; t * 4]));
    let mut short_bytes = rollout(t, 4, version);
    if let Some(b) = short_bytes.behaviour_params.as_mut() {
        b.data = b.data.slice(..b.data.len() - 4);
    }
    let cases = [
        (wrong_shape, format!("observations: expected shape [{}, N, 4]", t + 1)),
        (nan, "rewards: element 5 is NaN, expected a finite number".to_string()),
        (unknown, "policy_version: unknown version 1000000".to_string()),
        (wrong_dtype, "actions: expected dtype i64, got f32".to_string()),
        (
            short_bytes,
            format!("behaviour_params: shape [{t}, 4, 2] needs {} bytes", t * 4 * 2 * 4),
        ),
    ];
    for (bad, want) in cases {
        let before = metric(&scrape(&cluster.learner_metrics)?, "troupe_learner_updates_total").unwrap_or(0.0);
        // Good rollouts before the bad one are accepted; the bad one ends the stream.
        let err = send(&cluster, vec![rollout(t, 4, version), bad])
            .await
            .expect_err("malformed rollout is rejected");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains(&want),
            "message {:?} should contain {want:?}",
            err.message()
        );
        // The learner goes on training from the real actor.
        eventually("the learner keeps training", Duration::from_secs(30), || async {
            let now = metric(&scrape(&cluster.learner_metrics)?, "troupe_learner_updates_total").unwrap_or(0.0);
            Ok((now > before + 20.0).then_some(()))
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}{}", cluster.logs()))?;
    }
    // A message over the 16 MiB cap (20 MiB of observations) is refused with RESOURCE_EXHAUSTED,
    // not a silent OK, and training goes on.
    let n = (20 << 20) / ((t + 1) * 16);
    let big = rollout(t, n, version);
    let err = send(&cluster, vec![big])
        .await
        .expect_err("oversized rollout is refused");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("split rollouts"), "{}", err.message());
    eventually(
        "the learner logs the oversized message",
        Duration::from_secs(10),
        || async {
            Ok(cluster
                .logs()
                .contains("refused an oversized rollout message")
                .then_some(()))
        },
    )
    .await?;

    let m = scrape(&cluster.learner_metrics)?;
    let rejected: f64 = m
        .lines()
        .filter(|l| l.starts_with("troupe_learner_rollouts_rejected_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(rejected, 6.0, "each malformed rollout is counted once:\n{m}");
    assert!(
        cluster.learner.as_mut().unwrap().child.try_wait()?.is_none(),
        "the learner is still running"
    );
    Ok(())
}
