//! Policy distribution cannot starve an actor: with a version published on every update and
//! only 2 kept, 64 slow watchers (each takes half a second before it fetches) always get the
//! latest; blobs come from memory, not Redis; and a version a live actor still acts with is not
//! dropped by retention.

use std::time::{Duration, Instant};

use proto::v1::{HeartbeatRequest, WatchPoliciesRequest};
use tests::{cartpole_config, eventually, scrape, Cluster};

const WATCHERS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_watchers_always_get_the_latest_and_retention_waits_for_actors() -> anyhow::Result<()> {
    let mut config = cartpole_config();
    config.coordinator.keep_versions = 2;
    let mut cluster = Cluster::start(&config).await?;
    cluster.add_actor().await?;
    let first = eventually("training publishes", Duration::from_secs(60), || async {
        let s = cluster.status().await?;
        Ok((s.latest_version >= 3).then_some(s.latest_version))
    })
    .await?;

    // A registered actor that keeps acting with version `first` (it never switches).
    let (id, secret) = cluster.register_fake_actor().await?;
    let mut as_actor = cluster.client_as(troupe::security::Role::Actor).await?;
    let pinned_by_use = tokio::spawn({
        let secret = secret.clone();
        async move {
            for seq in 1.. {
                let mut hb = tonic::Request::new(HeartbeatRequest {
                    actor_id: id,
                    policy_version: first,
                    seq,
                    ..Default::default()
                });
                hb.metadata_mut()
                    .insert(troupe::security::ACTOR_SECRET_HEADER, secret.parse().unwrap());
                // As a real actor does, it goes on after a transient transport error (a reset
                // connection under load); a lasting failure still shows as the actor timing out.
                if let Err(e) = as_actor.heartbeat(hb).await {
                    eprintln!("heartbeat {seq}: {e}");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });

    let until = Instant::now() + Duration::from_secs(8);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..WATCHERS {
        let mut client = cluster.client_as(troupe::security::Role::Evaluator).await?;
        tasks.spawn(async move {
            let mut stream = client
                .watch_policies(WatchPoliciesRequest::default())
                .await
                .expect("watch")
                .into_inner();
            let (mut got, mut newest) = (0u64, 0u64);
            while Instant::now() < until {
                let Some(meta) = stream.message().await.expect("the watch stream") else {
                    break;
                };
                // A slow actor: by the time it fetches, retention has moved on.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let (fetched, _) = troupe::client::fetch_policy(&mut client, 0)
                    .await
                    .unwrap_or_else(|e| panic!("fetching the latest after hearing of {}: {e:?}", meta.version));
                assert!(fetched.version >= meta.version && fetched.version >= newest);
                newest = fetched.version;
                got += 1;
            }
            (got, newest)
        });
    }
    let mut fetched = 0;
    while let Some(r) = tasks.join_next().await {
        let (got, newest) = r?;
        assert!(got >= 5, "a watcher fetched only {got} policies");
        assert!(newest > first);
        fetched += got;
    }
    let s = cluster.status().await?;
    assert!(s.latest_version > first + 10, "training went on: {}", s.latest_version);

    // The version the fake actor acts with outlived keep_versions = 2.
    let mut client = cluster.client().await?;
    let (meta, _) = troupe::client::fetch_policy(&mut client, first).await?;
    assert_eq!(meta.version, first);
    pinned_by_use.abort();

    let m = scrape(&cluster.coordinator_metrics)?;
    let from = |source: &str| {
        m.lines()
            .find(|l| {
                l.starts_with("troupe_coordinator_policy_fetches_total") && l.contains(&format!("source=\"{source}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(from("memory") >= fetched as f64, "{m}");
    assert_eq!(from("redis"), 0.0, "no blob read from Redis per request:\n{m}");
    Ok(())
}
