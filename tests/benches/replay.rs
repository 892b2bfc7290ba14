//! Replay throughput against Redis itself, in one run: items of 4 KiB inserted and sampled
//! through the replay service's gRPC (`coordinator --role replay`, a uniform table, batches of
//! 16, 4 concurrent clients), against `redis-benchmark` SET and GET of 4 KiB values with the
//! same pipelining (16) and clients (4) on the same Redis server; then the same with 2 shards.
//! Prints one JSON line: items/s of each, and the ratios.
//!
//!     cargo bench -p tests --bench replay -- [SECONDS]

use std::process::Command;
use std::time::{Duration, Instant};

use proto::v1::replay_client::ReplayClient;
use proto::v1::{InsertRequest, NamedTensor, ReplayItem, SampleRequest, Tensor};
use tests::{bin, start_redis, Proc};

const CONFIG: &str = r#"
name = "replay-bench"
[[replay.tables]]
name = "bench"
max_size = 20000
sampler = "uniform"
"#;
const ITEM_BYTES: usize = 4096;
const BATCH: usize = 16;
const CLIENTS: usize = 4;

fn item(i: u64) -> ReplayItem {
    let mut data = vec![0u8; ITEM_BYTES];
    data[..8].copy_from_slice(&i.to_le_bytes());
    ReplayItem {
        tensors: vec![NamedTensor {
            name: "x".into(),
            tensor: Some(Tensor::from_bytes(
                proto::v1::DType::DtypeU8,
                &[ITEM_BYTES],
                data.into(),
            )),
        }],
        priority: 1.0,
        policy_version: 1,
    }
}

async fn start_replay(dir: &std::path::Path, urls: &[String]) -> anyhow::Result<(Proc, String)> {
    std::fs::write(dir.join("run.toml"), CONFIG)?;
    let ready = dir.join("replay.json");
    let mut cmd = Command::new(bin("coordinator"));
    cmd.arg("--config")
        .arg(dir.join("run.toml"))
        .args([
            "--role",
            "replay",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(["--redis-url", &urls[0], "--replay-redis-url", &urls.join(",")])
        .arg("--ready-file")
        .arg(&ready);
    let mut p = Proc::spawn("replay", dir, cmd)?;
    p.ready = Some(ready);
    let info = p.wait_ready(Duration::from_secs(30)).await?;
    let addr = format!("http://{}", info["grpc"].as_str().unwrap_or_default());
    Ok((p, addr))
}

/// Items/s through the service for `seconds`, inserting (or sampling), from CLIENTS clients.
async fn through_service(addr: &str, seconds: f64, insert: bool) -> anyhow::Result<f64> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for c in 0..CLIENTS as u64 {
        let addr = addr.to_string();
        tasks.push(tokio::spawn(async move {
            let mut client = ReplayClient::connect(addr)
                .await
                .unwrap()
                .max_decoding_message_size(proto::MAX_MESSAGE_BYTES);
            let mut n = 0u64;
            let mut i = c << 40;
            while Instant::now() < deadline {
                if insert {
                    let items: Vec<ReplayItem> = (0..BATCH as u64).map(|k| item(i + k)).collect();
                    i += BATCH as u64;
                    client
                        .insert(InsertRequest {
                            table: "bench".into(),
                            policy: String::new(),
                            items,
                            timeout_s: 5.0,
                        })
                        .await
                        .unwrap();
                } else {
                    let r = client
                        .sample(SampleRequest {
                            table: "bench".into(),
                            policy: String::new(),
                            batch_size: BATCH as u32,
                            timeout_s: 5.0,
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(r.items.len(), BATCH);
                }
                n += BATCH as u64;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await?;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// redis-benchmark's requests/s for `test` (set or get) of 4 KiB values, pipelined like the
/// service's batches, on the Redis at `sock`.
fn redis_benchmark(sock: &str, test: &str, requests: u64) -> anyhow::Result<f64> {
    let out = Command::new("redis-benchmark")
        .args(["-s", sock, "-t", test, "-d", &ITEM_BYTES.to_string()])
        .args([
            "-P",
            &BATCH.to_string(),
            "-c",
            &CLIENTS.to_string(),
            "-n",
            &requests.to_string(),
            "--csv",
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "redis-benchmark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // "test","rps",...: the second line holds the figures.
    let line = text
        .lines()
        .find(|l| {
            l.to_ascii_uppercase()
                .contains(&format!("\"{}\"", test.to_ascii_uppercase()))
        })
        .ok_or_else(|| anyhow::anyhow!("no {test} line in: {text}"))?;
    let rps = line.split(',').nth(1).unwrap_or("").trim_matches('"').parse::<f64>()?;
    Ok(rps)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let seconds: f64 = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(10.0);
    let mut out = serde_json::Map::new();
    for shards in [1usize, 2] {
        let dir = tempfile::tempdir()?;
        let mut redis = Vec::new();
        let mut urls = Vec::new();
        let mut socks = Vec::new();
        for s in 0..shards {
            let d = dir.path().join(format!("shard{s}"));
            std::fs::create_dir_all(&d)?;
            let (p, url) = start_redis(&d)?;
            socks.push(d.join("redis.sock").display().to_string());
            urls.push(url);
            redis.push(p);
        }
        let (replay, addr) = start_replay(dir.path(), &urls).await?;
        let inserts = through_service(&addr, seconds, true).await?;
        let samples = through_service(&addr, seconds, false).await?;
        drop(replay);
        // The same Redis server(s), the same values, pipelining and clients; with 2 shards,
        // both servers at once (one redis-benchmark each, in parallel).
        let n = (inserts * seconds).max(20_000.0) as u64;
        let set = par_benchmark(&socks, "set", n)?;
        let get = par_benchmark(&socks, "get", n)?;
        let key = if shards == 1 {
            String::new()
        } else {
            format!("_{shards}_shards")
        };
        out.insert(format!("replay_insert_items_per_s{key}"), inserts.into());
        out.insert(format!("replay_sample_items_per_s{key}"), samples.into());
        out.insert(format!("redis_set_per_s{key}"), set.into());
        out.insert(format!("redis_get_per_s{key}"), get.into());
        out.insert(
            format!("replay_vs_redis_ratio{key}"),
            serde_json::json!({
                "insert_over_set": inserts / set,
                "sample_over_get": samples / get,
            }),
        );
        drop(redis);
    }
    out.insert("bench".into(), "replay".into());
    out.insert("item_bytes".into(), ITEM_BYTES.into());
    out.insert("batch".into(), BATCH.into());
    out.insert("clients".into(), CLIENTS.into());
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}

/// redis-benchmark on every socket at once; the sum of their requests/s.
fn par_benchmark(socks: &[String], test: &str, requests: u64) -> anyhow::Result<f64> {
    let per = requests / socks.len() as u64;
    let handles: Vec<_> = socks
        .iter()
        .map(|s| {
            let (s, t) = (s.clone(), test.to_string());
            std::thread::spawn(move || redis_benchmark(&s, &t, per))
        })
        .collect();
    let mut total = 0.0;
    for h in handles {
        total += h.join().expect("benchmark thread")?;
    }
    Ok(total)
}
