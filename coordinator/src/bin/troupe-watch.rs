//! Follows a run through the coordinator's Status: one live progress line, then, when the mean
//! return over the last 100 episodes reaches the target or the budget ends, writes
//! `summary.json`, `policy.safetensors` and `learning_curve.png` into the output folder.
//!
//! Exit code: 0 when solved, 3 when the budget ended first.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use coordinator::report::{plot_curve, Point, PolicySummary, Summary};
use proto::v1::coordinator_client::CoordinatorClient;
use proto::v1::StatusRequest;

#[derive(Debug, Parser)]
#[command(
    name = "troupe-watch",
    about = "Follow a Troupe run and write its summary, policy and learning curve"
)]
struct Args {
    #[arg(long, env = "TROUPE_COORDINATOR", default_value = "http://127.0.0.1:50051")]
    coordinator: String,
    /// Output folder.
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// Stop when the mean return of the last 100 episodes reaches this (default: the run
    /// config's `target_return`).
    #[arg(long)]
    target_return: Option<f64>,
    /// Stop after this many seconds even if not solved.
    #[arg(long, default_value_t = 600.0)]
    budget_s: f64,
    /// Seconds between Status polls (also how late a solve can be noticed).
    #[arg(long, default_value_t = 0.1)]
    interval_s: f64,
    /// When the run was launched, in seconds since the Unix epoch (`date +%s.%N`), for the
    /// summary's times from launch.
    #[arg(long, env = "TROUPE_LAUNCHED_AT")]
    launched_at: Option<f64>,
    /// Print plain lines instead of one updating line.
    #[arg(long)]
    plain: bool,
    /// Wait until the run's policies are known (a Python-hosted env's once an actor reported
    /// its spaces), print their names one per line, and exit: `scripts/train.sh` starts one
    /// learner per policy from this.
    #[arg(long)]
    list_policies: bool,
    #[command(flatten)]
    tls: troupe::security::TlsArgs,
    /// --token-file: an evaluator's or the admin's token (Status needs one of them).
    #[command(flatten)]
    auth: troupe::security::AuthArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let security = troupe::security::Security::load(&args.tls, &args.auth)?;
    let channel = troupe::process::grpc_channel(&args.coordinator, &security)?;
    let mut client = CoordinatorClient::new(channel).max_decoding_message_size(proto::MAX_MESSAGE_BYTES);
    let bar = if args.plain {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new_spinner()
    };
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {msg}",
    )?);

    // The run config names the env and the target; the coordinator may still be starting.
    let config = loop {
        let mut req = tonic::Request::new(StatusRequest {});
        req.set_timeout(Duration::from_secs(5));
        match client.status(req).await {
            Ok(s) => break troupe::RunConfig::from_toml(&s.into_inner().run_config_toml)?,
            // Retrying cannot fix a token: say so rather than wait forever.
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                ) =>
            {
                anyhow::bail!(
                    "the coordinator refused troupe-watch ({:?}): {} (Status needs --token-file with the evaluator's or the admin's token)",
                    status.code(),
                    status.message()
                );
            }
            Err(status) => {
                bar.set_message(format!("waiting for the coordinator: {}", status.message()));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    if args.list_policies {
        let deadline = Instant::now() + Duration::from_secs_f64(args.budget_s);
        loop {
            let mut req = tonic::Request::new(StatusRequest {});
            req.set_timeout(Duration::from_secs(5));
            if let Ok(s) = client.status(req).await {
                let s = s.into_inner();
                if !s.policy_status.is_empty() {
                    for p in s.policy_status {
                        println!("{}", p.policy);
                    }
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!("the run's policies were not known within {} s", args.budget_s);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let Some(target) = args.target_return.or(config.target_return) else {
        anyhow::bail!("no target: the run config has no target_return and --target-return was not given");
    };
    let start = Instant::now();
    // Seconds from the launch to `start`.
    let launch_offset = args.launched_at.map(|t| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(t);
        (now - t).max(0.0)
    });
    // The first trained frame: the first version published after the one the run started from
    // (version 1 is a fresh run's initial weights).
    let mut first_frame: Option<f64> = None;
    let mut start_version: Option<u64> = None;
    let mut curve: Vec<Point> = Vec::new();
    let mut last = (Instant::now(), 0u64);
    let mut rate = 0.0;
    let mut solved_at: Option<(f64, u64)> = None;
    let mut latest = None;
    let mut stop = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let elapsed = start.elapsed().as_secs_f64();
        let mut req = tonic::Request::new(StatusRequest {});
        req.set_timeout(Duration::from_secs(5));
        match client.status(req).await {
            Ok(s) => {
                let s = s.into_inner();
                let from = *start_version.get_or_insert(s.latest_version.max(1));
                if s.latest_version > from && first_frame.is_none() {
                    first_frame = Some(elapsed);
                }
                let now = Instant::now();
                let dt = now.duration_since(last.0).as_secs_f64();
                if dt >= 1.0 {
                    rate = (s.frames.saturating_sub(last.1)) as f64 / dt;
                    last = (now, s.frames);
                }
                let per_policy: std::collections::BTreeMap<String, f64> = if s.policy_status.len() > 1 {
                    s.policy_status
                        .iter()
                        .map(|p| (p.policy.clone(), p.mean_return_100))
                        .collect()
                } else {
                    Default::default()
                };
                let versions: Vec<String> = if s.policy_status.len() > 1 {
                    s.policy_status
                        .iter()
                        .map(|p| format!("{} v{} {:.2}", p.policy, p.latest_version, p.mean_return_100))
                        .collect()
                } else {
                    vec![format!("policy v{}", s.latest_version)]
                };
                curve.push(Point {
                    wall_s: elapsed,
                    frames: s.frames,
                    mean_return_100: s.mean_return_100,
                    policies: per_policy,
                });
                let msg = format!(
                    "{} | frames {:>9} | {:>7.0} frames/s | mean return(100) {:>6.2} / {target} | {} | actors {}",
                    config.env.id,
                    s.frames,
                    rate,
                    s.mean_return_100,
                    versions.join(", "),
                    s.actors.len()
                );
                if args.plain {
                    println!("{elapsed:7.1}s {msg}");
                } else {
                    bar.set_message(msg);
                    bar.tick();
                }
                let full_window = s.episodes_in_mean as usize >= coordinator::store::RETURN_WINDOW;
                if full_window && s.mean_return_100 >= target {
                    solved_at = Some((elapsed, s.frames));
                }
                latest = Some(s);
            }
            Err(status) => bar.set_message(format!("coordinator unreachable: {}", status.message())),
        }
        if solved_at.is_some() || elapsed >= args.budget_s {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs_f64(args.interval_s)) => {}
            _ = &mut stop => { bar.println("interrupted"); break; }
        }
    }
    bar.finish();

    let wall_s = start.elapsed().as_secs_f64();
    let s = latest.unwrap_or_default();
    // Every policy's latest version: `policy.safetensors` for a run of one policy, else
    // `policy-NAME.safetensors` each (and `policy.safetensors` is the first's).
    let mut policies = Vec::new();
    let several = s.policy_status.len() > 1;
    for (i, p) in s.policy_status.iter().enumerate() {
        let mut entry = PolicySummary {
            policy: p.policy.clone(),
            agents: p.agents.clone(),
            mean_return_100: p.mean_return_100.is_finite().then_some(p.mean_return_100),
            policy_version: 0,
            policy_path: None,
        };
        match troupe::client::fetch_policy_of(&mut client, &p.policy, 0).await {
            Ok((meta, blob)) => {
                let file = if several {
                    format!("policy-{}.safetensors", p.policy)
                } else {
                    "policy.safetensors".to_string()
                };
                let path = args.out.join(file);
                std::fs::write(&path, &blob)?;
                if several && i == 0 {
                    std::fs::write(args.out.join("policy.safetensors"), &blob)?;
                }
                entry.policy_version = meta.version;
                entry.policy_path = Some(path.display().to_string());
            }
            Err(status) => eprintln!(
                "troupe-watch: could not fetch policy {}: {}",
                p.policy,
                status.message()
            ),
        }
        policies.push(entry);
    }
    let policy_version = policies.first().map_or(0, |p| p.policy_version);
    let policy_path = policies.first().and_then(|p| p.policy_path.clone());
    if let Err(e) = plot_curve(&curve, target, &args.out.join("learning_curve.png")) {
        eprintln!("troupe-watch: could not plot the learning curve: {e:#}");
    }
    let summary = Summary {
        env: config.env.id.clone(),
        algorithm: config.learner.algorithm.name().to_string(),
        solved: solved_at.is_some(),
        target_return: target,
        mean_return_100: s.mean_return_100.is_finite().then_some(s.mean_return_100),
        episodes: s.episodes,
        frames: s.frames,
        wall_s,
        time_to_solve_s: solved_at.map(|x| x.0),
        solve_from_first_frame_s: solved_at.zip(first_frame).map(|(x, f)| x.0 - f),
        solve_from_launch_s: solved_at.zip(launch_offset).map(|(x, l)| x.0 + l),
        launch_to_first_frame_s: first_frame.zip(launch_offset).map(|(f, l)| f + l),
        frames_to_solve: solved_at.map(|x| x.1),
        frames_per_s: s.frames as f64 / wall_s.max(1e-9),
        policy_version,
        policy_path,
        policies,
        curve,
    };
    std::fs::write(args.out.join("summary.json"), serde_json::to_vec_pretty(&summary)?)?;
    println!(
        "{} after {:.1}s: mean return(100) {:.1}, {} frames, policy v{} -> {}",
        if summary.solved { "solved" } else { "not solved" },
        wall_s,
        s.mean_return_100,
        s.frames,
        policy_version,
        args.out.display()
    );
    std::process::exit(if summary.solved { 0 } else { 3 });
}
