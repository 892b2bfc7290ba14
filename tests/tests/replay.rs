//! The replay service against real redis-server processes: `coordinator --role replay` over one or
//! two Redis shards. Acknowledged items survive a SIGKILL of the replay process, a restart of Redis
//! (appendonly) and of one shard of two: none lost, none twice, priorities as they were.
//! Overlapping callers on a full table lose nothing. The rate limiter holds its ratio under
//! concurrent inserters and samplers, and a wait past its deadline fails instead of hanging. Bad
//! requests are INVALID_ARGUMENT, naming the problem. A learner whose replay dies trains on, and
//! replays again once it is back.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use proto::v1::replay_client::ReplayClient;
use proto::v1::{
    InsertRequest, NamedTensor, ReplayItem, SampleRequest, TableInfoRequest, Tensor, UpdatePrioritiesRequest,
};
use tests::{bin, start_redis, Proc};
use tonic::transport::Channel;

const CONFIG: &str = r#"
name = "replay-test"
[[replay.tables]]
name = "queue"
max_size = 100000
sampler = "fifo"
max_times_sampled = 1
[[replay.tables]]
name = "prio"
max_size = 100000
sampler = "prioritized"
priority_exponent = 1.0
[[replay.tables]]
name = "ratio"
max_size = 100000
min_size_to_sample = 10
samples_per_insert = 2.0
error_buffer = 20.0
timeout_s = 5.0
[[replay.tables]]
name = "small"
max_size = 3
timeout_s = 0.5
[[replay.tables]]
name = "churn"
max_size = 64
max_times_sampled = 3
timeout_s = 2.0
"#;

/// Redis shards (each in its own folder) and a replay process over them.
struct Node {
    dir: tempfile::TempDir,
    shards: Vec<(Proc, String)>,
    replay: Option<Proc>,
    /// Where the replay process listens (port 0: a new port at each start).
    listen: String,
    addr: String,
}

impl Node {
    async fn start(shards: usize) -> anyhow::Result<Node> {
        Node::start_with(shards, CONFIG, "127.0.0.1:0").await
    }

    async fn start_with(shards: usize, config: &str, listen: &str) -> anyhow::Result<Node> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("run.toml"), config)?;
        let mut s = Vec::new();
        for i in 0..shards {
            let d = dir.path().join(format!("shard{i}"));
            std::fs::create_dir_all(&d)?;
            s.push(start_redis(&d)?);
        }
        let mut node = Node {
            dir,
            shards: s,
            replay: None,
            listen: listen.to_string(),
            addr: String::new(),
        };
        node.start_replay().await?;
        Ok(node)
    }

    async fn start_replay(&mut self) -> anyhow::Result<()> {
        let ready = self.dir.path().join("replay.json");
        let _ = std::fs::remove_file(&ready);
        let urls: Vec<&str> = self.shards.iter().map(|(_, u)| u.as_str()).collect();
        let mut cmd = Command::new(bin("coordinator"));
        cmd.arg("--config")
            .arg(self.dir.path().join("run.toml"))
            .args([
                "--role",
                "replay",
                "--listen",
                &self.listen,
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(["--redis-url", urls[0], "--replay-redis-url", &urls.join(",")])
            .arg("--ready-file")
            .arg(&ready);
        let mut p = Proc::spawn("replay", self.dir.path(), cmd)?;
        p.ready = Some(ready);
        let info = p.wait_ready(Duration::from_secs(30)).await?;
        self.addr = format!("http://{}", info["grpc"].as_str().unwrap_or_default());
        self.replay = Some(p);
        Ok(())
    }

    async fn client(&self) -> anyhow::Result<ReplayClient<Channel>> {
        Ok(ReplayClient::connect(self.addr.clone())
            .await?
            .max_decoding_message_size(proto::MAX_MESSAGE_BYTES))
    }

    /// Restarts shard `i` (SIGTERM: Redis writes its append-only file out, then exits).
    fn restart_shard(&mut self, i: usize) -> anyhow::Result<()> {
        let (p, url) = &mut self.shards[i];
        assert!(p.terminate(Duration::from_secs(10)).is_some(), "redis exits on SIGTERM");
        let d = self.dir.path().join(format!("shard{i}"));
        let (np, nu) = start_redis(&d)?;
        assert_eq!(&nu, url);
        *p = np;
        Ok(())
    }

    fn log(&self) -> String {
        self.replay.as_ref().map(|p| p.log_tail(30)).unwrap_or_default()
    }
}

/// An item whose one tensor holds `id` (f32 [2]: id / 65536 and id % 65536, exact in f32).
fn item(id: u64, priority: f64) -> ReplayItem {
    let v = [(id / 65536) as f32, (id % 65536) as f32];
    ReplayItem {
        tensors: vec![NamedTensor {
            name: "id".into(),
            tensor: Some(Tensor::from_slice(&[2], &v)),
        }],
        priority,
        policy_version: id,
    }
}

fn id_of(it: &ReplayItem) -> u64 {
    let t = it.tensors[0].tensor.as_ref().unwrap();
    let v: Vec<f32> = t
        .data
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    v[0] as u64 * 65536 + v[1] as u64
}

/// Inserts batches into `table` until `stop`, from ids `base..`; returns what was acknowledged
/// (key -> id) and the ids sent (`base..end`). Errors (the replay process or a shard down) are
/// retried after a pause.
async fn insert_until(
    addr: String,
    table: &'static str,
    base: u64,
    stop: tokio_util::sync::CancellationToken,
    priority: fn(u64) -> f64,
) -> (BTreeMap<u64, u64>, std::ops::Range<u64>) {
    let mut acked = BTreeMap::new();
    let mut next = base;
    while !stop.is_cancelled() {
        let Ok(mut c) = ReplayClient::connect(addr.clone()).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        while !stop.is_cancelled() {
            let ids: Vec<u64> = (next..next + 8).collect();
            next += 8;
            let req = InsertRequest {
                table: table.into(),
                policy: String::new(),
                items: ids.iter().map(|&i| item(i, priority(i))).collect(),
                timeout_s: 2.0,
            };
            match c.insert(req).await {
                Ok(r) => {
                    let keys = r.into_inner().keys;
                    assert_eq!(keys.len(), ids.len());
                    for (k, i) in keys.into_iter().zip(ids) {
                        assert!(acked.insert(k, i).is_none(), "key {k} acknowledged twice");
                    }
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    break;
                }
            }
        }
    }
    (acked, base..next)
}

/// Two [`insert_until`] tasks on `table` at once (ids from 0 and from 2^32), priority 1.
fn two_inserters(
    node: &Node,
    table: &'static str,
    stop: &tokio_util::sync::CancellationToken,
) -> Vec<tokio::task::JoinHandle<(BTreeMap<u64, u64>, std::ops::Range<u64>)>> {
    (0..2u64)
        .map(|w| tokio::spawn(insert_until(node.addr.clone(), table, w << 32, stop.clone(), |_| 1.0)))
        .collect()
}

/// Drains the FIFO queue (each item sampled once, then removed): key -> id, in order.
async fn drain(c: &mut ReplayClient<Channel>) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    loop {
        let info = c
            .table_info(TableInfoRequest {
                table: "queue".into(),
                policy: String::new(),
            })
            .await?
            .into_inner();
        if info.tables[0].size == 0 {
            return Ok(out);
        }
        let n = info.tables[0].size.min(256) as u32;
        let r = c
            .sample(SampleRequest {
                table: "queue".into(),
                policy: String::new(),
                batch_size: n,
                timeout_s: 5.0,
            })
            .await?
            .into_inner();
        for s in r.items {
            assert_eq!(s.times_sampled, 1);
            out.push((s.key, id_of(s.item.as_ref().unwrap())));
        }
    }
}

/// The drained queue against what was acknowledged: every acknowledged key there, with its
/// own item, none twice, in insertion (key) order; anything else only ids an inserter sent
/// (written, then the process died before it answered).
fn check_exactly_once(drained: &[(u64, u64)], acked: &BTreeMap<u64, u64>, sent: &[std::ops::Range<u64>]) {
    let keys: Vec<u64> = drained.iter().map(|d| d.0).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), keys.len(), "an item came back twice");
    assert_eq!(sorted, keys, "FIFO order is insertion order");
    let ids: BTreeSet<u64> = drained.iter().map(|d| d.1).collect();
    assert_eq!(ids.len(), drained.len(), "an item's payload came back twice");
    let got: BTreeMap<u64, u64> = drained.iter().copied().collect();
    for (k, id) in acked {
        assert_eq!(got.get(k), Some(id), "acknowledged key {k} (item {id}) lost");
    }
    for i in &ids {
        assert!(sent.iter().any(|r| r.contains(i)), "item {i}: no one sent it");
    }
}

/// Priorities of the prioritized table's items: a rule of their id, and 500 for the ones the
/// test re-prioritized before the restart.
fn priority_of(id: u64) -> f64 {
    if id >= 1 << 40 {
        500.0
    } else {
        (id % 97 + 1) as f64
    }
}

async fn kill_and_restart(
    shards: usize,
    restart: impl Fn(&mut Node) -> anyhow::Result<()>,
    name: &str,
) -> anyhow::Result<()> {
    let mut node = Node::start(shards).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = tokio::spawn(insert_until(node.addr.clone(), "queue", 0, stop.clone(), |_| 1.0));
    let prio_writer = tokio::spawn(insert_until(
        node.addr.clone(),
        "prio",
        1 << 30,
        stop.clone(),
        priority_of,
    ));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // Before the restart: some of the queue is delivered (sampled once, so removed), and 20
    // prioritized items get new priorities.
    let mut c = node.client().await?;
    let mut delivered = Vec::new();
    for _ in 0..4 {
        let r = c
            .sample(SampleRequest {
                table: "queue".into(),
                policy: String::new(),
                batch_size: 50,
                timeout_s: 5.0,
            })
            .await?
            .into_inner();
        delivered.extend(r.items.iter().map(|s| (s.key, id_of(s.item.as_ref().unwrap()))));
    }
    let reprioritized = c
        .insert(InsertRequest {
            table: "prio".into(),
            policy: String::new(),
            items: (0..20).map(|i| item((1 << 40) + i, 1.0)).collect(),
            timeout_s: 5.0,
        })
        .await?
        .into_inner()
        .keys;
    let updated = c
        .update_priorities(UpdatePrioritiesRequest {
            table: "prio".into(),
            policy: String::new(),
            keys: reprioritized.clone(),
            priorities: vec![500.0; 20],
        })
        .await?
        .into_inner()
        .updated;
    assert_eq!(updated, 20);
    let newest_before = c
        .table_info(TableInfoRequest {
            table: "queue".into(),
            policy: String::new(),
        })
        .await?
        .into_inner()
        .tables[0]
        .inserts;
    tokio::time::sleep(Duration::from_millis(500)).await;
    restart(&mut node)?;
    // Inserts go on against the restarted service (a new port after a replay restart).
    let late = tokio::spawn(insert_until(node.addr.clone(), "queue", 1 << 20, stop.clone(), |_| 1.0));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    let (mut acked, sent) = writer.await?;
    let (prio, prio_sent) = prio_writer.await?;
    let (late, late_sent) = late.await?;
    assert!(
        !acked.is_empty() && !late.is_empty(),
        "{name}: inserts before and after\n{}",
        node.log()
    );
    // A restart hands out no key again, even those of items sampled to their limit.
    let before_max = acked.keys().max().copied().unwrap_or(0);
    assert!(
        late.keys().all(|&k| k > before_max),
        "{name}: keys reused after the restart ({before_max}, {newest_before} inserts before)"
    );
    acked.extend(late);
    let mut c = node.client().await?;
    let mut drained = delivered.clone();
    drained.extend(drain(&mut c).await?);
    check_exactly_once(&drained, &acked, &[sent, late_sent]);
    println!(
        "{name}: {} items acknowledged, {} delivered before the restart, {} drained, {} prioritized",
        acked.len(),
        delivered.len(),
        drained.len() - delivered.len(),
        prio.len()
    );

    // The prioritized table samples with the priorities it was given, the updated ones too:
    // each draw's probability is its priority over the sum of all held items' (alpha = 1).
    let info = c
        .table_info(TableInfoRequest {
            table: "prio".into(),
            policy: String::new(),
        })
        .await?
        .into_inner();
    let held = info.tables[0].size as usize;
    let known = prio.len() + reprioritized.len();
    assert!(held >= known, "{name}: {held} held, {known} acknowledged");
    // The acknowledged items' priorities, plus at most 97 for each one written but not
    // acknowledged (the process died before it answered).
    let total_lo: f64 = prio.values().map(|&id| priority_of(id)).sum::<f64>() + 500.0 * 20.0;
    let total_hi = total_lo + (held - known) as f64 * 97.0;
    // The 20 items of 500 are drawn with probability at least 20 * 500 / total_hi each time:
    // enough draws that missing them all has odds under e^-14 (about 1e-6), however many
    // items the inserters got in.
    let p_updated = 20.0 * 500.0 / total_hi;
    let need = (14.0 / p_updated).ceil() as usize;
    let (mut drawn, mut saw_updated) = (0, 0);
    while drawn < need {
        let r = c
            .sample(SampleRequest {
                table: "prio".into(),
                policy: String::new(),
                batch_size: 1000,
                timeout_s: 5.0,
            })
            .await?
            .into_inner();
        for s in &r.items {
            let id = id_of(s.item.as_ref().unwrap());
            assert!(
                prio_sent.contains(&id) || id >= 1 << 40,
                "{name}: item {id}: no one sent it"
            );
            let p = priority_of(id);
            saw_updated += (p == 500.0) as usize;
            assert!(
                s.probability >= p / total_hi - 1e-12 && s.probability <= p / total_lo + 1e-12,
                "{name}: item {id} drawn with probability {} for priority {p} (sum {total_lo}..{total_hi})",
                s.probability
            );
        }
        drawn += r.items.len();
    }
    assert!(saw_updated > 0, "{name}: no re-prioritized item drawn in {drawn}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_items_survive_a_killed_replay_process() -> anyhow::Result<()> {
    kill_and_restart(
        1,
        |node| {
            node.replay.as_mut().unwrap().kill9();
            futures_lite_block_on(node.start_replay())
        },
        "replay SIGKILL",
    )
    .await
}

/// Redis restarts under appendonly; then the replay process too, so its index is rebuilt
/// from what the restarted Redis holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_items_survive_a_restarted_redis() -> anyhow::Result<()> {
    kill_and_restart(
        1,
        |node| {
            node.restart_shard(0)?;
            node.replay.as_mut().unwrap().kill9();
            futures_lite_block_on(node.start_replay())
        },
        "redis restart",
    )
    .await
}

/// One shard of two restarts while inserts and samples go on; then the replay process, so
/// the index is rebuilt from both shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_items_survive_one_of_two_shards_restarted() -> anyhow::Result<()> {
    kill_and_restart(
        2,
        |node| {
            node.restart_shard(1)?;
            node.replay.as_mut().unwrap().kill9();
            futures_lite_block_on(node.start_replay())
        },
        "shard 1 of 2 restarted",
    )
    .await
}

/// Runs a future to completion from sync code inside the test's runtime.
fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

/// Two inserters and two samplers on a table of 2 samples per insert (from 10 items, within
/// 20): at every moment `inserts * 2 - samples` is within [0, 40], and both sides go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limiter_holds_its_ratio_under_concurrent_callers() -> anyhow::Result<()> {
    let node = Node::start(1).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    for w in 0..2u64 {
        let addr = node.addr.clone();
        let stop_inserts = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = ReplayClient::connect(addr).await.unwrap();
            let mut n = 0u64;
            while !stop_inserts.is_cancelled() {
                let r = c
                    .insert(InsertRequest {
                        table: "ratio".into(),
                        policy: String::new(),
                        items: (0..2).map(|i| item(w << 32 | (n + i), 1.0)).collect(),
                        timeout_s: 1.0,
                    })
                    .await;
                if r.is_ok() {
                    n += 2;
                }
            }
            n
        }));
        let addr = node.addr.clone();
        let stop_samples = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = ReplayClient::connect(addr).await.unwrap();
            let mut n = 0u64;
            while !stop_samples.is_cancelled() {
                if let Ok(r) = c
                    .sample(SampleRequest {
                        table: "ratio".into(),
                        policy: String::new(),
                        batch_size: 3,
                        timeout_s: 1.0,
                    })
                    .await
                {
                    n += r.into_inner().items.len() as u64;
                }
            }
            n
        }));
    }
    let mut c = node.client().await?;
    let start = Instant::now();
    let mut checks = 0;
    while start.elapsed() < Duration::from_secs(3) {
        let t = c
            .table_info(TableInfoRequest {
                table: "ratio".into(),
                policy: String::new(),
            })
            .await?
            .into_inner()
            .tables
            .remove(0);
        assert_eq!((t.min_diff, t.max_diff), (0.0, 40.0), "2 * 10 -+ 20");
        let diff = t.inserts as f64 * 2.0 - t.samples as f64;
        assert!((0.0..=40.0).contains(&diff), "diff {diff} outside [0, 40] ({t:?})");
        checks += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await?);
    }
    let inserted = counts[0] + counts[2];
    let sampled = counts[1] + counts[3];
    println!("rate limiter: {inserted} inserted, {sampled} sampled, {checks} checks");
    assert!(inserted >= 50 && sampled >= 100, "both sides went on: {counts:?}");
    let diff = inserted as f64 * 2.0 - sampled as f64;
    assert!((0.0..=40.0).contains(&diff), "{inserted} inserts, {sampled} samples");
    Ok(())
}

async fn table_size(node: &Node, table: &str) -> anyhow::Result<u64> {
    let req = TableInfoRequest {
        table: table.into(),
        policy: String::new(),
    };
    Ok(node.client().await?.table_info(req).await?.into_inner().tables[0].size)
}

/// The item hashes shard 0's Redis holds for `table` (redis-cli over the shard's socket).
fn redis_items(node: &Node, table: &str) -> anyhow::Result<usize> {
    let sock = node.dir.path().join("shard0").join("redis.sock");
    let out = Command::new("redis-cli")
        .arg("-s")
        .arg(&sock)
        .args([
            "--scan",
            "--pattern",
            &format!("troupe:replay-test:replay:default:{table}:s0:item:*"),
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "redis-cli: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .count())
}

/// Two inserters and three samplers at once on a small table, full all along, whose items go
/// at their third sample: their Redis calls overlap (the table's lock is not held across
/// them), so draws read items that inserts evict and that other draws take to their limit
/// meanwhile. No sampled item misses its payload or comes back as another's, none is sampled
/// more than 3 times, and Redis holds exactly the items the index does, before and after a
/// restart rebuilds the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_callers_on_a_full_table_lose_nothing() -> anyhow::Result<()> {
    let mut node = Node::start(1).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let writers = two_inserters(&node, "churn", &stop);
    let mut samplers = Vec::new();
    for _ in 0..3 {
        let addr = node.addr.clone();
        let stop = stop.clone();
        samplers.push(tokio::spawn(async move {
            let mut c = ReplayClient::connect(addr).await.unwrap();
            let mut seen = Vec::new();
            let mut errors = Vec::new();
            while !stop.is_cancelled() {
                match c
                    .sample(SampleRequest {
                        table: "churn".into(),
                        policy: String::new(),
                        batch_size: 16,
                        timeout_s: 1.0,
                    })
                    .await
                {
                    Ok(r) => {
                        for s in r.into_inner().items {
                            seen.push((s.key, id_of(s.item.as_ref().unwrap()), s.times_sampled));
                        }
                    }
                    Err(e) if e.code() == tonic::Code::DeadlineExceeded => {}
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (seen, errors)
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    let mut acked = BTreeMap::new();
    for w in writers {
        acked.extend(w.await?.0);
    }
    let mut sampled = 0;
    for s in samplers {
        let (seen, errors) = s.await?;
        assert!(errors.is_empty(), "samples failed: {errors:?}\n{}", node.log());
        for (key, id, times) in &seen {
            assert_eq!(acked.get(key), Some(id), "key {key} came back with item {id}");
            assert!((1..=3).contains(times), "key {key} sampled {times} times");
        }
        sampled += seen.len();
    }
    println!("churn: {} inserted, {sampled} sampled", acked.len());
    assert!(acked.len() >= 500 && sampled >= 500, "both sides went on");
    let log = std::fs::read_to_string(&node.replay.as_ref().unwrap().log)?;
    assert!(
        !log.contains("gone from redis"),
        "a sampled item was missing:\n{}",
        node.log()
    );

    let before = table_size(&node, "churn").await?;
    assert!(before > 0 && before <= 64, "{before}");
    assert_eq!(
        redis_items(&node, "churn")?,
        before as usize,
        "Redis holds what the index does"
    );
    node.replay.as_mut().unwrap().kill9();
    node.start_replay().await?;
    assert_eq!(table_size(&node, "churn").await?, before, "the rebuilt index");
    assert_eq!(redis_items(&node, "churn")?, before as usize);
    Ok(())
}

/// Keys are never handed out twice, even when every item is gone before a restart: two
/// inserters at once fill the queue, a drain empties it, the replay process is killed and
/// restarted, and a new insert's key is above every key acknowledged before (the newest key is
/// kept in Redis, only ever raised, though concurrent inserts' transactions may land out of
/// order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_never_reused_after_a_restart() -> anyhow::Result<()> {
    let mut node = Node::start(1).await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let writers = two_inserters(&node, "queue", &stop);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let mut acked = BTreeMap::new();
    for w in writers {
        acked.extend(w.await?.0);
    }
    let newest = *acked.keys().next_back().expect("inserts were acknowledged");
    let drained = drain(&mut node.client().await?).await?;
    assert_eq!(drained.len(), acked.len());
    node.replay.as_mut().unwrap().kill9();
    node.start_replay().await?;
    let keys = node
        .client()
        .await?
        .insert(InsertRequest {
            table: "queue".into(),
            policy: String::new(),
            items: vec![item(1 << 40, 1.0)],
            timeout_s: 2.0,
        })
        .await?
        .into_inner()
        .keys;
    println!(
        "{} keys acknowledged, the newest {newest}; after the restart: {keys:?}",
        acked.len()
    );
    assert!(
        keys[0] > newest,
        "key {} handed out again (the newest was {newest})",
        keys[0]
    );
    Ok(())
}

/// IMPALA with half of each batch replayed (configs/cartpole-replay.toml), its replay on its
/// own (`coordinator --role replay` over a Redis of its own): when replay is killed, the
/// learner goes on training on fresh rollouts (each batch filled from the stream, replay asked
/// again after a backoff), and once replay is back on its address, rebuilt from Redis, the
/// learner draws from it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_learner_trains_on_while_replay_is_down_and_replays_again_once_it_is_back() -> anyhow::Result<()> {
    let config = tests::shipped_config("cartpole-replay");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut node = Node::start_with(1, &config.to_toml(), &format!("127.0.0.1:{port}")).await?;
    let mut cluster = tests::Cluster::start_with(&config, &["--replay", &node.addr], false).await?;
    cluster.add_actor().await?;
    let learner = |name: &'static str| {
        let m = tests::scrape(&cluster.learner_metrics).unwrap_or_default();
        tests::metric(&m, name).unwrap_or(0.0)
    };
    // Each replayed rollout's age is observed once: the histogram's count is what was replayed.
    const REPLAYED: &str = "troupe_learner_replay_sample_age_count";
    const UPDATES: &str = "troupe_learner_updates_total";
    const FAILURES: &str = "troupe_learner_replay_sample_failures_total";
    tests::eventually("the learner replays", Duration::from_secs(60), || async {
        Ok((learner(REPLAYED) > 0.0).then_some(()))
    })
    .await?;

    node.replay.as_mut().unwrap().kill9();
    let (replayed, updates, failures) = (learner(REPLAYED), learner(UPDATES), learner(FAILURES));
    tokio::time::sleep(Duration::from_secs(6)).await;
    let trained = learner(UPDATES) - updates;
    let failed = learner(FAILURES) - failures;
    println!("replay down for 6 s: {trained} updates, {failed} batches without replay");
    assert!(
        trained >= 20.0,
        "the learner went on training: {trained} updates in 6 s"
    );
    assert!(failed >= 1.0, "the learner noticed replay was down");
    assert!(
        learner(REPLAYED) - replayed <= 16.0,
        "nothing is replayed while replay is down (but what was under way)"
    );
    let log = cluster.learner.as_ref().unwrap().log_tail(400);
    assert!(log.contains("filling it from the stream"), "{log}");

    node.start_replay().await?;
    let before = learner(REPLAYED);
    let back = Instant::now();
    tests::eventually("the learner replays again", Duration::from_secs(30), || async {
        Ok((learner(REPLAYED) > before).then_some(()))
    })
    .await?;
    println!(
        "replaying again {:.1} s after replay came back",
        back.elapsed().as_secs_f64()
    );
    assert!(table_size(&node, "rollouts").await? > 0);
    Ok(())
}

/// With `learner.replay_inserter = "actors"` (Ape-X's arrangement), each actor writes the
/// rollouts it sends to its policy's table itself, through the coordinator's replay service:
/// the learner writes nothing, yet its batches are half replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actors_write_to_replay_when_the_config_says_so() -> anyhow::Result<()> {
    let mut config = tests::shipped_config("cartpole-replay");
    config.learner.replay_inserter = troupe::config::ReplayInserter::Actors;
    let mut cluster = tests::Cluster::start(&config).await?;
    cluster.add_actor().await?;
    cluster.add_actor().await?;
    let value = |addr: &str, name: &str| {
        let m = tests::scrape(addr).unwrap_or_default();
        tests::metric(&m, name).unwrap_or(0.0)
    };
    tests::eventually("the learner replays", Duration::from_secs(60), || async {
        Ok((value(&cluster.learner_metrics, "troupe_learner_replay_sample_age_count") >= 100.0).then_some(()))
    })
    .await?;
    let by_actors: Vec<f64> = cluster
        .actor_metrics
        .iter()
        .map(|a| value(a, "troupe_actor_replay_inserted_total"))
        .collect();
    let by_learner = value(&cluster.learner_metrics, "troupe_learner_replay_inserted_total");
    let inserted = value(&cluster.coordinator_metrics, "troupe_replay_inserts_total");
    println!("replay inserts: {by_actors:?} by the actors, {by_learner} by the learner, {inserted} in the table");
    assert!(by_actors.iter().all(|&n| n > 0.0), "every actor wrote: {by_actors:?}");
    assert_eq!(by_learner, 0.0, "the learner wrote nothing");
    // Read after the actors': a table counts an insert before its writer does.
    assert!(
        inserted >= by_actors.iter().sum::<f64>(),
        "the table got the actors' inserts"
    );
    let fraction = value(&cluster.learner_metrics, "troupe_learner_replayed_fraction");
    assert_eq!(fraction, 0.5);
    Ok(())
}

/// A sample of an empty table waits for its deadline, then fails; it does not hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_past_its_deadline_fails_instead_of_hanging() -> anyhow::Result<()> {
    let node = Node::start(1).await?;
    let mut c = node.client().await?;
    let start = Instant::now();
    let err = c
        .sample(SampleRequest {
            table: "small".into(),
            policy: String::new(),
            batch_size: 1,
            timeout_s: 0.3,
        })
        .await
        .expect_err("nothing to sample");
    let waited = start.elapsed();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err}");
    assert!(err.message().contains("rate limiter"), "{err}");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // An insert that fits wakes a waiting sampler at once.
    let addr = node.addr.clone();
    let waiter = tokio::spawn(async move {
        let mut c = ReplayClient::connect(addr).await.unwrap();
        let t = Instant::now();
        let r = c
            .sample(SampleRequest {
                table: "small".into(),
                policy: String::new(),
                batch_size: 1,
                timeout_s: 0.0,
            })
            .await;
        (r.map(|r| r.into_inner().items.len()), t.elapsed())
    });
    // The sampler waits (the table is empty); the insert at 200 ms wakes it, well before its
    // 500 ms deadline.
    tokio::time::sleep(Duration::from_millis(200)).await;
    c.insert(InsertRequest {
        table: "small".into(),
        policy: String::new(),
        items: vec![item(1, 1.0)],
        timeout_s: 0.0,
    })
    .await?;
    let (r, t) = waiter.await?;
    assert_eq!(r?, 1);
    assert!(
        t >= Duration::from_millis(150) && t < Duration::from_millis(450),
        "woken by the insert, not the deadline: {t:?}"
    );
    Ok(())
}

/// Bad requests name the problem: an unknown table, a payload of another shape or dtype than
/// the table's, a priority that is NaN, infinite or negative, a batch over the limit, a
/// mismatched update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_invalid_arguments_naming_the_problem() -> anyhow::Result<()> {
    let node = Node::start(1).await?;
    let mut c = node.client().await?;
    let ins = |table: &str, items: Vec<ReplayItem>| InsertRequest {
        table: table.into(),
        policy: String::new(),
        items,
        timeout_s: 0.0,
    };
    c.insert(ins("small", vec![item(1, 1.0)])).await?;
    let mut other_shape = item(2, 1.0);
    other_shape.tensors[0].tensor = Some(Tensor::from_slice(&[3], &[1.0f32, 2.0, 3.0]));
    let mut other_dtype = item(3, 1.0);
    other_dtype.tensors[0].tensor = Some(Tensor::from_slice(&[2], &[1i64, 2]));
    let mut torn = item(4, 1.0);
    torn.tensors[0].tensor.as_mut().unwrap().shape = vec![5];
    let cases: Vec<(InsertRequest, &str)> = vec![
        (
            ins("nope", vec![item(1, 1.0)]),
            "table: expected one of the run's replay tables",
        ),
        (ins("small", vec![other_shape]), "holds items of"),
        (ins("small", vec![other_dtype]), "holds items of"),
        (ins("small", vec![torn]), "shape [5] of f32 needs 20 bytes, got 8"),
        (ins("small", vec![item(5, f64::NAN)]), "items[0].priority"),
        (ins("small", vec![item(5, f64::INFINITY)]), "items[0].priority"),
        (ins("small", vec![item(1, 1.0), item(5, -1.0)]), "items[1].priority"),
        (
            ins("small", (0..4).map(|i| item(i, 1.0)).collect()),
            "items: expected 1 to 3",
        ),
        (ins("small", vec![]), "items: expected 1 to 3"),
    ];
    for (req, want) in cases {
        let err = c.insert(req).await.expect_err(want);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(err.message().contains(want), "{want:?} not in: {}", err.message());
    }
    // An encoded rollout's length varies with what it holds (varints, truncated episodes):
    // items of any length go in, but not another dtype or rank under its name.
    let rollout = |shape: &[usize], bytes: Vec<u8>| ReplayItem {
        tensors: vec![NamedTensor {
            name: troupe::replay::ROLLOUT.into(),
            tensor: Some(Tensor::from_bytes(proto::v1::DType::DtypeU8, shape, bytes.into())),
        }],
        priority: 1.0,
        policy_version: 1,
    };
    c.insert(ins(
        "queue",
        vec![rollout(&[10], vec![1; 10]), rollout(&[12], vec![2; 12])],
    ))
    .await?;
    let err = c
        .insert(ins("queue", vec![rollout(&[2, 5], vec![3; 10])]))
        .await
        .expect_err("another rank");
    assert!(err.message().contains("holds items of"), "{err}");
    for (batch_size, table) in [(0, "small"), (5000, "small"), (21, "ratio")] {
        let err = c
            .sample(SampleRequest {
                table: table.into(),
                policy: String::new(),
                batch_size,
                timeout_s: 0.0,
            })
            .await
            .expect_err("a batch over the limit");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        assert!(err.message().contains("batch_size: expected 1 to"), "{err}");
    }
    // A priority whose weight would overflow the table's total.
    let err = c
        .insert(InsertRequest {
            table: "prio".into(),
            policy: String::new(),
            items: vec![item(1, 1e301)],
            timeout_s: 0.0,
        })
        .await
        .expect_err("an overflowing weight");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("items[0].priority"), "{err}");
    let err = c
        .update_priorities(UpdatePrioritiesRequest {
            table: "small".into(),
            policy: String::new(),
            keys: vec![1, 2],
            priorities: vec![1.0],
        })
        .await
        .expect_err("one priority per key");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("one per key"), "{err}");
    let err = c
        .update_priorities(UpdatePrioritiesRequest {
            table: "small".into(),
            policy: String::new(),
            keys: vec![1],
            priorities: vec![f64::NAN],
        })
        .await
        .expect_err("NaN");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("priorities[0]"), "{err}");
    // The table still holds its one good item, and eviction keeps max_size.
    for i in 10..15 {
        c.insert(ins("small", vec![item(i, 1.0)])).await?;
    }
    let t = c
        .table_info(TableInfoRequest {
            table: "small".into(),
            policy: String::new(),
        })
        .await?
        .into_inner()
        .tables
        .remove(0);
    assert_eq!((t.size, t.inserts), (3, 6), "{t:?}");
    Ok(())
}
