//! A policy blob with a non-finite weight is refused by the coordinator, naming the tensor; the
//! run's versions are untouched.

use std::time::Duration;

use proto::v1::{PolicyChunk, PolicyMeta};
use tests::{cartpole_config, eventually, metric, scrape, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_refuses_a_nan_policy_by_tensor_name() -> anyhow::Result<()> {
    let cluster = Cluster::start(&cartpole_config()).await?;
    let mut client = cluster.client().await?;
    let latest = eventually("the learner published", Duration::from_secs(60), || async {
        let s = cluster.status().await?;
        Ok((s.latest_version >= 1).then_some(s.latest_version))
    })
    .await?;
    let (_, blob) = troupe::client::fetch_policy(&mut client, 0).await?;
    // Poison one weight of one tensor.
    let st = safetensors::SafeTensors::deserialize(&blob)?;
    let name = "value.head.bias";
    let view = st.tensor(name)?;
    let offset = view.data().as_ptr() as usize - blob.as_ptr() as usize;
    let mut bad = blob.to_vec();
    bad[offset..offset + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let meta = PolicyMeta {
        version: latest + 1000,
        learner_step: 1,
        frames: 1,
        parent_version: latest,
        size_bytes: bad.len() as u64,
        ..Default::default()
    };
    // Under the learner's current epoch, so that only the weights can be what is refused.
    let epoch = metric(
        &scrape(&cluster.coordinator_metrics)?,
        "troupe_coordinator_learner_epoch",
    )
    .expect("the epoch gauge") as u64;
    let chunk = PolicyChunk {
        meta: Some(meta),
        data: bad.into(),
        epoch,
    };
    let err = client
        .publish_policy(tokio_stream::iter(vec![chunk]))
        .await
        .expect_err("a NaN policy is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert_eq!(
        err.message(),
        format!("PolicyChunk.data: tensor {name}: element 0 is NaN, expected finite weights")
    );
    assert!(cluster.status().await?.latest_version < latest + 1000);
    Ok(())
}
