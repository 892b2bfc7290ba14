//! A harness for cluster tests: starts Redis and the real `coordinator`, `learner` and `actor`
//! binaries as processes on port 0, waits for their ready files, and talks to them over gRPC.
//!
//! The binaries are found next to the test executable (`target/<profile>/`); build them first
//! (`cargo build --release --workspace --bins`, as scripts/test.sh does).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use proto::v1::coordinator_client::CoordinatorClient;
use proto::v1::learner_client::LearnerClient;
use proto::v1::{RegisterActorRequest, StatusRequest, StatusResponse};
use troupe::process::GrpcChannel;
use troupe::security::{AuthArgs, Role, Security, TlsArgs};

/// Where the workspace's binaries are: the test executable lives in target/<profile>/deps.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --release --workspace --bins` first",
        path.display()
    );
    path
}

/// The site-packages of the hosted-env venv (gymnasium...), from `TROUPE_ENVS_SITE`, which
/// scripts/test.sh exports. Python-hosted actors and `load_policy.py` import from it.
pub fn envs_site_packages() -> String {
    let site = std::env::var("TROUPE_ENVS_SITE").unwrap_or_default();
    assert!(
        !site.is_empty() && Path::new(&site).join("gymnasium").exists(),
        "TROUPE_ENVS_SITE must name a site-packages with gymnasium (scripts/test.sh sets it from scripts/requirements-envs.txt); got {site:?}"
    );
    site
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Polls `check` until it returns `Ok(Some(v))` or `patience` runs out.
pub async fn eventually<T, F, Fut>(what: &str, patience: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + patience;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {patience:?} (last error: {last_err:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A child process killed (SIGKILL) when dropped. Its output goes to a log file.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    pub ready: Option<PathBuf>,
}

impl Proc {
    pub fn spawn(name: &str, dir: &Path, mut cmd: Command) -> anyhow::Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .env("RUST_LOG", "info")
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log,
            ready: None,
        })
    }

    /// Waits for the ready file and returns its JSON.
    pub async fn wait_ready(&mut self, patience: Duration) -> anyhow::Result<serde_json::Value> {
        let path = self.ready.clone().context("no ready file")?;
        let name = self.name.clone();
        let res = eventually(&format!("{name} ready"), patience, || {
            let exited = self.child.try_wait().ok().flatten();
            let path = path.clone();
            async move {
                if let Some(status) = exited {
                    bail!("exited at start-up with {status}");
                }
                match std::fs::read(&path) {
                    Ok(b) => Ok(Some(serde_json::from_slice(&b)?)),
                    Err(_) => Ok(None),
                }
            }
        })
        .await;
        res.map_err(|e| anyhow::anyhow!("{e}\n--- {} log ---\n{}", self.name, self.log_tail(30)))
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid touches no memory of ours.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait up to `patience` for a clean exit; returns the exit status.
    pub fn terminate(&mut self, patience: Duration) -> Option<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + patience;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `program`, run inside network namespace `ns` if given.
fn in_ns(ns: Option<&NetNs>, program: PathBuf) -> Command {
    match ns {
        Some(n) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &n.name]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A network namespace joined to this one by a veth pair: a separate "host" for partition
/// tests. `host_ip` is this side's address, `ns_ip` the namespace's. Cutting the link takes this
/// side of the veth down; dropping it deletes the namespace (and the pair). Needs root.
pub struct NetNs {
    pub name: String,
    pub host_if: String,
    pub ns_if: String,
    pub host_ip: String,
    pub ns_ip: String,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl NetNs {
    /// Namespace number `k` (0..=63) of this test process.
    pub fn create(k: u32) -> anyhow::Result<NetNs> {
        let tag = std::process::id() % 1000;
        let name = format!("troupe-t{tag}-{k}");
        let host_if = format!("tv{tag}h{k}");
        let ns_if = format!("tv{tag}n{k}");
        // 10.213.x.y/30 per (process, k): x from the pid, y from k.
        let x = tag % 250;
        let base = 4 * (k % 64);
        let host_ip = format!("10.213.{x}.{}", base + 1);
        let ns_ip = format!("10.213.{x}.{}", base + 2);
        let _ = ip(&["link", "del", &host_if]);
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name])?;
        let ns = NetNs {
            name: name.clone(),
            host_if: host_if.clone(),
            ns_if: ns_if.clone(),
            host_ip: host_ip.clone(),
            ns_ip: ns_ip.clone(),
        };
        ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if])?;
        ip(&["link", "set", &ns_if, "netns", &name])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&["-n", &name, "addr", "add", &format!("{ns_ip}/30"), "dev", &ns_if])?;
        ip(&["-n", &name, "link", "set", &ns_if, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Cuts the link: packets either way are lost (the peers see nothing, not a reset).
    pub fn cut(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.host_if, "down"])
    }

    pub fn restore(&self) -> anyhow::Result<()> {
        ip(&["link", "set", &self.host_if, "up"])
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// TLS material and role tokens made by `scripts/make-certs.sh` (what `train.sh` uses).
#[derive(Debug, Clone)]
pub struct Secrets {
    pub dir: PathBuf,
}

impl Secrets {
    /// A fresh throwaway CA, certificate and tokens under `dir`.
    pub fn make(dir: &Path) -> anyhow::Result<Secrets> {
        Secrets::make_for(dir, &[])
    }

    /// [`Secrets::make`] with the certificate also naming `sans` (IPs or DNS names).
    pub fn make_for(dir: &Path, sans: &[&str]) -> anyhow::Result<Secrets> {
        let mut cmd = Command::new(repo_root().join("scripts/make-certs.sh"));
        cmd.arg(dir);
        for s in sans {
            cmd.args(["--san", s]);
        }
        let out = cmd.output()?;
        if !out.status.success() {
            bail!("make-certs.sh failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(Secrets { dir: dir.to_path_buf() })
    }

    pub fn tls(&self, name: &str) -> PathBuf {
        self.dir.join("tls").join(name)
    }

    pub fn token(&self, role: Role) -> PathBuf {
        self.dir.join("tokens").join(role.name())
    }

    /// Flags for a server process (coordinator, learner): its certificate, the CA, every role's
    /// token, and `role`'s own token for its calls.
    pub fn server_flags(&self, role: Role) -> Vec<String> {
        let mut v = self.client_flags(role);
        v.extend([
            "--tls-cert".into(),
            self.tls("tls.crt").display().to_string(),
            "--tls-key".into(),
            self.tls("tls.key").display().to_string(),
            "--tokens-dir".into(),
            self.dir.join("tokens").display().to_string(),
        ]);
        v
    }

    /// Flags for a client-only process (actor, troupe-watch): the CA and `role`'s token.
    pub fn client_flags(&self, role: Role) -> Vec<String> {
        vec![
            "--tls-ca".into(),
            self.tls("ca.crt").display().to_string(),
            "--token-file".into(),
            self.token(role).display().to_string(),
        ]
    }

    /// The security a client of `role` in this process uses.
    pub fn client(&self, role: Role) -> Security {
        Security::load(
            &TlsArgs {
                tls_ca: Some(self.tls("ca.crt")),
                ..Default::default()
            },
            &AuthArgs {
                token_file: Some(self.token(role)),
                tokens_dir: None,
            },
        )
        .expect("the secrets make-certs.sh wrote")
    }
}

/// A private Redis on a unix socket in the cluster's temp dir, persisting to an append-only
/// file fsynced every second (as compose and the chart run it), so a restarted Redis keeps its
/// data.
pub fn start_redis(dir: &Path) -> anyhow::Result<(Proc, String)> {
    let sock = dir.join("redis.sock");
    let data = dir.join("redis-data");
    std::fs::create_dir_all(&data)?;
    let _ = std::fs::remove_file(&sock);
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        "0",
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--daemonize",
        "no",
        "--dir",
    ])
    .arg(&data)
    .arg("--unixsocket")
    .arg(&sock);
    let proc = Proc::spawn("redis", dir, cmd)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        if Instant::now() > deadline {
            bail!("redis did not create its socket: {}", proc.log_tail(10));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((proc, format!("redis+unix://{}", sock.display())))
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub redis: Proc,
    pub redis_url: String,
    pub config_path: PathBuf,
    /// TLS and tokens on every link (None: a plain cluster).
    pub secrets: Option<Secrets>,
    pub coordinator: Proc,
    pub coordinator_addr: String,
    pub coordinator_metrics: String,
    /// The coordinator's and the learner's plain gRPC health addresses.
    pub coordinator_health: String,
    /// Where a learner on this host listens (127.0.0.1 unless a test puts processes in network
    /// namespaces); the coordinator listens on 127.0.0.1, or on every address with namespaces.
    pub learner_ip: String,
    pub learner_health: String,
    pub learner: Option<Proc>,
    pub learner_metrics: String,
    pub learner_addr: String,
    pub actors: Vec<Proc>,
    pub actor_metrics: Vec<String>,
    /// Each actor's gRPC health address.
    pub actor_health: Vec<String>,
    next_actor: usize,
}

impl Cluster {
    /// Redis, a coordinator with `config` (TOML text) and a learner; no actors yet.
    pub async fn start(config: &troupe::RunConfig) -> anyhow::Result<Cluster> {
        Cluster::start_with_learner_args(config, &[]).await
    }

    /// [`Cluster::start`] with extra learner flags.
    pub async fn start_with_learner_args(config: &troupe::RunConfig, learner_args: &[&str]) -> anyhow::Result<Cluster> {
        Cluster::start_with(config, learner_args, true).await
    }

    /// A cluster with TLS and tokens off (for measuring what they cost).
    pub async fn start_plain(config: &troupe::RunConfig) -> anyhow::Result<Cluster> {
        Cluster::start_with(config, &[], false).await
    }

    /// Redis, a coordinator and a learner; with `secure`, TLS and role tokens on every link
    /// (certificates and tokens from `scripts/make-certs.sh`).
    pub async fn start_with(
        config: &troupe::RunConfig,
        learner_args: &[&str],
        secure: bool,
    ) -> anyhow::Result<Cluster> {
        Cluster::start_across(config, learner_args, secure, None, None).await
    }

    /// A cluster for partition tests: the coordinator listens on every address (host processes
    /// dial 127.0.0.1, processes in `ns` dial its host side); the learner runs in `learner_ns`
    /// if given, else on this host listening on `ns`'s host-side address. Certificates name
    /// every address used.
    pub async fn start_across(
        config: &troupe::RunConfig,
        learner_args: &[&str],
        secure: bool,
        ns: Option<&NetNs>,
        learner_ns: Option<&NetNs>,
    ) -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let mut sans: Vec<&str> = Vec::new();
        for n in ns.iter().chain(learner_ns.iter()) {
            sans.push(&n.host_ip);
            sans.push(&n.ns_ip);
        }
        let bind_ip = if ns.is_some() || learner_ns.is_some() {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        };
        let learner_ip = ns.map_or("127.0.0.1".to_string(), |n| n.host_ip.clone());
        let secrets = if secure {
            Some(Secrets::make_for(&dir.path().join("secrets"), &sans)?)
        } else {
            None
        };
        let (redis, redis_url) = start_redis(dir.path())?;
        let config_path = dir.path().join("run.toml");
        std::fs::write(&config_path, config.to_toml())?;
        let c = start_coordinator(
            dir.path(),
            &config_path,
            &redis_url,
            &format!("{bind_ip}:0"),
            secrets.as_ref(),
        )
        .await?;
        let mut cluster = Cluster {
            dir,
            redis,
            redis_url,
            config_path,
            secrets,
            coordinator: c.proc,
            coordinator_addr: c.addr,
            coordinator_metrics: c.metrics,
            coordinator_health: c.health,
            learner_ip,
            learner_health: String::new(),
            learner: None,
            learner_metrics: String::new(),
            learner_addr: String::new(),
            actors: Vec::new(),
            actor_metrics: Vec::new(),
            actor_health: Vec::new(),
            next_actor: 0,
        };
        cluster.spawn_learner_in(learner_ns, learner_args)?;
        if config.env.backend == troupe::config::EnvBackend::Native {
            cluster.wait_learner().await?;
        }
        Ok(cluster)
    }

    pub async fn start_learner(&mut self) -> anyhow::Result<()> {
        self.spawn_learner()?;
        self.wait_learner().await
    }

    /// Starts the learner without waiting for it: with a Python-hosted env it registers only
    /// once an actor has reported the env's spaces.
    pub fn spawn_learner(&mut self) -> anyhow::Result<()> {
        self.spawn_learner_with(&[])
    }

    /// [`Cluster::spawn_learner`] with extra flags.
    pub fn spawn_learner_with(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        self.spawn_learner_in(None, extra)
    }

    /// Starts the learner, in network namespace `ns` if given (listening on its address).
    pub fn spawn_learner_in(&mut self, ns: Option<&NetNs>, extra: &[&str]) -> anyhow::Result<()> {
        let p = self.learner_proc("learner", ns, extra)?;
        self.learner = Some(p);
        Ok(())
    }

    /// A learner process named `name` (its ready file `name.json`), on port 0 everywhere, in
    /// `ns` if given, with the cluster's secrets and `extra` flags.
    fn learner_proc(&self, name: &str, ns: Option<&NetNs>, extra: &[&str]) -> anyhow::Result<Proc> {
        let ready = self.dir.path().join(format!("{name}.json"));
        let _ = std::fs::remove_file(&ready);
        let ip = ns.map_or(self.learner_ip.clone(), |n| n.ns_ip.clone());
        let any = format!("{ip}:0");
        let coordinator = self.coordinator_addr_from(ns);
        let mut cmd = in_ns(ns, bin("learner"));
        cmd.args([
            "--coordinator",
            &coordinator,
            "--listen",
            &any,
            "--metrics-listen",
            &any,
            "--health-listen",
            &any,
            "--device",
            "cpu",
            "--ready-file",
        ])
        .arg(&ready)
        .args(self.secrets.iter().flat_map(|s| s.server_flags(Role::Learner)))
        .args(extra);
        let mut p = Proc::spawn(name, self.dir.path(), cmd)?;
        p.ready = Some(ready);
        Ok(p)
    }

    /// Starts a learner for `policy` beside the first (multi-policy runs), and waits until it
    /// serves. Its process is named `learner-POLICY`.
    pub async fn start_policy_learner(&mut self, policy: &str, extra: &[&str]) -> anyhow::Result<Proc> {
        let mut args = vec!["--policy", policy];
        args.extend_from_slice(extra);
        let mut p = self.learner_proc(&format!("learner-{policy}"), None, &args)?;
        p.wait_ready(Duration::from_secs(60)).await?;
        Ok(p)
    }

    /// Waits until the learner serves (it writes its ready file after registering).
    pub async fn wait_learner(&mut self) -> anyhow::Result<()> {
        let p = self.learner.as_mut().context("no learner spawned")?;
        let info = p.wait_ready(Duration::from_secs(60)).await?;
        self.learner_addr = format!("{}://{}", self.scheme(), info["grpc"].as_str().context("grpc")?);
        self.learner_metrics = info["metrics"].as_str().context("metrics")?.to_string();
        self.learner_health = info["health"].as_str().context("health")?.to_string();
        Ok(())
    }

    /// Starts one more actor and waits until it has registered.
    pub async fn add_actor(&mut self) -> anyhow::Result<u64> {
        self.add_actor_in(None).await
    }

    /// Starts one more actor, in network namespace `ns` if given, and waits until it has
    /// registered.
    pub async fn add_actor_in(&mut self, ns: Option<&NetNs>) -> anyhow::Result<u64> {
        self.next_actor += 1;
        let name = format!("actor-{}", self.next_actor);
        let ready = self.dir.path().join(format!("{name}.json"));
        let any = format!("{}:0", ns.map_or("127.0.0.1", |n| n.ns_ip.as_str()));
        let coordinator = self.coordinator_addr_from(ns);
        let mut cmd = in_ns(ns, bin("actor"));
        cmd.args([
            "--coordinator",
            &coordinator,
            "--metrics-listen",
            &any,
            "--health-listen",
            &any,
            "--ready-file",
        ])
        .arg(&ready)
        .args(self.secrets.iter().flat_map(|s| s.client_flags(Role::Actor)));
        let mut p = Proc::spawn(&name, self.dir.path(), cmd)?;
        p.ready = Some(ready);
        let info = p.wait_ready(Duration::from_secs(60)).await?;
        self.actors.push(p);
        self.actor_metrics
            .push(info["metrics"].as_str().context("metrics")?.to_string());
        self.actor_health
            .push(info["health"].as_str().context("health")?.to_string());
        info["actor_id"].as_u64().context("actor_id")
    }

    /// The coordinator's address as a process in `ns` dials it.
    pub fn coordinator_addr_from(&self, ns: Option<&NetNs>) -> String {
        match ns {
            Some(n) => self.coordinator_addr.replace("127.0.0.1", &n.host_ip),
            None => self.coordinator_addr.clone(),
        }
    }

    fn scheme(&self) -> &'static str {
        if self.secrets.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The security a client with `role`'s token uses against this cluster.
    pub fn security(&self, role: Role) -> Security {
        match &self.secrets {
            Some(s) => s.client(role),
            None => Security::insecure(),
        }
    }

    /// A coordinator client with the admin's token.
    pub async fn client(&self) -> anyhow::Result<CoordinatorClient<GrpcChannel>> {
        self.client_as(Role::Admin).await
    }

    /// A coordinator client with `role`'s token.
    pub async fn client_as(&self, role: Role) -> anyhow::Result<CoordinatorClient<GrpcChannel>> {
        Ok(CoordinatorClient::new(troupe::process::grpc_channel(
            &self.coordinator_addr,
            &self.security(role),
        )?)
        .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(proto::MAX_MESSAGE_BYTES))
    }

    /// Registers a client as an actor (as a test's hand-made actor would): its id and secret.
    pub async fn register_fake_actor(&self) -> anyhow::Result<(u64, String)> {
        let r = self
            .client_as(Role::Actor)
            .await?
            .register_actor(RegisterActorRequest {
                hostname: "test".into(),
            })
            .await?
            .into_inner();
        Ok((r.actor_id, r.actor_secret))
    }

    /// A learner client with the actor's token.
    pub fn learner_client(&self) -> anyhow::Result<LearnerClient<GrpcChannel>> {
        Ok(LearnerClient::new(troupe::process::grpc_channel(
            &self.learner_addr,
            &self.security(Role::Actor),
        )?)
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(proto::MAX_MESSAGE_BYTES))
    }

    pub async fn status(&self) -> anyhow::Result<StatusResponse> {
        Ok(self.client().await?.status(StatusRequest {}).await?.into_inner())
    }

    /// Kills the coordinator (SIGKILL) and starts a new one on the same port and Redis.
    pub async fn restart_coordinator(&mut self) -> anyhow::Result<()> {
        self.coordinator.kill9();
        let addr = self
            .coordinator_addr
            .split("://")
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let c = start_coordinator(
            self.dir.path(),
            &self.config_path,
            &self.redis_url,
            &addr,
            self.secrets.as_ref(),
        )
        .await?;
        self.coordinator = c.proc;
        self.coordinator_addr = c.addr;
        self.coordinator_metrics = c.metrics;
        self.coordinator_health = c.health;
        Ok(())
    }

    /// Kills Redis (SIGKILL) and starts it again on the same socket and data directory.
    pub fn restart_redis(&mut self) -> anyhow::Result<()> {
        self.restart_redis_with(false)
    }

    /// Kills Redis and starts it again with its data gone (a lost volume).
    pub fn restart_redis_empty(&mut self) -> anyhow::Result<()> {
        self.restart_redis_with(true)
    }

    fn restart_redis_with(&mut self, wipe: bool) -> anyhow::Result<()> {
        self.redis.kill9();
        if wipe {
            std::fs::remove_dir_all(self.dir.path().join("redis-data"))?;
        }
        let (redis, url) = start_redis(self.dir.path())?;
        assert_eq!(url, self.redis_url);
        self.redis = redis;
        Ok(())
    }

    /// Logs of every process, for a failed test's message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let procs = std::iter::once(&self.coordinator)
            .chain(self.learner.iter())
            .chain(self.actors.iter());
        for p in procs {
            out.push_str(&format!("\n--- {} ---\n{}\n", p.name, p.log_tail(15)));
        }
        out
    }
}

struct Started {
    proc: Proc,
    addr: String,
    metrics: String,
    health: String,
}

/// Starts a coordinator and waits for its ready file.
async fn start_coordinator(
    dir: &Path,
    config: &Path,
    redis_url: &str,
    listen: &str,
    secrets: Option<&Secrets>,
) -> anyhow::Result<Started> {
    let ready = dir.join("coordinator.json");
    let _ = std::fs::remove_file(&ready);
    let mut cmd = Command::new(bin("coordinator"));
    cmd.arg("--config")
        .arg(config)
        .args([
            "--listen",
            listen,
            "--metrics-listen",
            "127.0.0.1:0",
            "--redis-url",
            redis_url,
            "--health-listen",
            "127.0.0.1:0",
            "--ready-file",
        ])
        .arg(&ready)
        .args(secrets.iter().flat_map(|s| s.server_flags(Role::Admin)));
    let mut p = Proc::spawn("coordinator", dir, cmd)?;
    p.ready = Some(ready);
    let info = p.wait_ready(Duration::from_secs(30)).await?;
    let scheme = if secrets.is_some() { "https" } else { "http" };
    let addr = format!(
        "{scheme}://{}",
        info["grpc"].as_str().context("grpc")?.replace("0.0.0.0", "127.0.0.1")
    );
    let metrics = info["metrics"].as_str().context("metrics")?.to_string();
    let health = info["health"].as_str().context("health")?.to_string();
    Ok(Started {
        proc: p,
        addr,
        metrics,
        health,
    })
}

/// Runs `scripts/load_policy.py` on a policy file with `args` (the envs venv on PYTHONPATH)
/// and returns its JSON report.
pub fn load_policy(path: &Path, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new("python3")
        .env("PYTHONPATH", envs_site_packages())
        .arg(repo_root().join("scripts/load_policy.py"))
        .arg(path)
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "load_policy.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// GETs a Prometheus scrape over plain HTTP/1.0.
pub fn scrape(addr: &str) -> anyhow::Result<String> {
    http_get(addr, "/metrics")
}

/// The whole HTTP/1.0 response (status line, headers, body) to `GET path`.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// The value of a metric line (first match of `name` followed by optional labels).
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && (l[name.len()..].starts_with(' ') || l[name.len()..].starts_with('{')))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The shipped CartPole config, for a test to adjust.
pub fn cartpole_config() -> troupe::RunConfig {
    troupe::RunConfig::from_file(&repo_root().join("configs/cartpole.toml")).expect("configs/cartpole.toml")
}

/// The benchmarks' throughput layout (v0's CartPole run): IMPALA, 16 envs per actor, 2 rollouts
/// in flight, a queue of 4, B = 64.
pub fn throughput_config() -> troupe::RunConfig {
    let mut c = shipped_config("cartpole-impala");
    c.actor.num_envs = 16;
    c.actor.max_in_flight = 2;
    c.learner.queue_capacity = 4;
    c.learner.batch_size = 64;
    c
}

/// The frames the learner has trained on (0 if its metrics cannot be read).
pub fn learner_frames(c: &Cluster) -> f64 {
    metric(
        &scrape(&c.learner_metrics).unwrap_or_default(),
        "troupe_learner_frames_total",
    )
    .unwrap_or(0.0)
}

/// A shipped config (`configs/NAME.toml`), for a test to adjust.
pub fn shipped_config(name: &str) -> troupe::RunConfig {
    let path = repo_root().join(format!("configs/{name}.toml"));
    troupe::RunConfig::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Waits until the mean return of the last 100 episodes reaches `target`; panics with the
/// last status and the processes' logs if `within` runs out first.
pub async fn wait_solved(cluster: &Cluster, target: f64, within: Duration) -> StatusResponse {
    match try_solved(cluster, target, within).await {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

/// Like [`wait_solved`], but a run that does not reach `target` in time is an `Err` carrying
/// the last status and the processes' logs.
pub async fn try_solved(cluster: &Cluster, target: f64, within: Duration) -> Result<StatusResponse, String> {
    let solved = eventually(
        "mean return of the last 100 episodes reaches the target",
        within,
        || async {
            let s = cluster.status().await?;
            Ok((s.episodes_in_mean == 100 && s.mean_return_100 >= target).then_some(s))
        },
    )
    .await;
    match solved {
        Ok(s) => Ok(s),
        Err(e) => Err(format!(
            "{e} ({target})\nlast status: {:?}\n{}",
            cluster
                .status()
                .await
                .ok()
                .map(|s| (s.frames, s.mean_return_100, s.latest_version)),
            cluster.logs()
        )),
    }
}
