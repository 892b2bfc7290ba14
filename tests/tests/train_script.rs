//! `scripts/train.sh` stopped by a signal leaves nothing behind: for SIGTERM, SIGINT and SIGHUP
//! sent to the script alone (as `kill PID` does, not the terminal's whole process group), it
//! exits promptly, every process it started (Redis, coordinator, learners, actors, the
//! watcher) is gone, and its run directory, which holds the TLS key and the tokens, is deleted.
//! A two-policy run (configs/lbf-two-teams.toml, one learner per policy) is stopped too.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tests::repo_root;

/// Processes whose environment carries `TMPDIR=dir`: everything the script started.
fn started_by(dir: &Path) -> Vec<u32> {
    let needle = format!("TMPDIR={}", dir.display());
    let me = std::process::id();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

fn stop_with(signal: i32, name: &str, config: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let log = out.path().join("train.log");
    let mut cmd = Command::new("bash");
    // A shell cannot trap a signal ignored when it starts, and a test run launched in the
    // background (`cmd &`, nohup) hands its children SIGINT, SIGQUIT and SIGHUP ignored: give
    // the script the dispositions it would have when run from a terminal.
    // SAFETY: only async-signal-safe calls (signal(2)) between fork and exec.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| {
            for sig in [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP, libc::SIGTERM] {
                libc::signal(sig, libc::SIG_DFL);
            }
            Ok(())
        });
    }
    let mut child = cmd
        .arg(repo_root().join("scripts/train.sh"))
        .args(["--budget-s", "300", "--config", config, "--out"])
        .arg(out.path())
        .env("TMPDIR", tmp.path())
        // The binaries cargo built for this test: train.sh's own setup build is skipped.
        .env("TROUPE_PREBUILT", tests::bin("coordinator").parent().unwrap())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(out.path().join("train.err")).unwrap())
        .spawn()
        .unwrap();
    // Until the cluster is up: Redis, the coordinator, the learner and 2 actors run.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let err = std::fs::read_to_string(out.path().join("train.err")).unwrap_or_default();
        if err.contains("cluster up") {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "{name}: train.sh exited early:\n{err}"
        );
        assert!(Instant::now() < deadline, "{name}: the cluster did not come up:\n{err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let running = started_by(tmp.path());
    assert!(running.len() >= 5, "{name}: the cluster's processes: {running:?}");
    let run_dirs = std::fs::read_dir(tmp.path()).unwrap().count();
    assert!(run_dirs >= 1, "{name}: the run directory is in TMPDIR");

    let sent = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::kill(child.id() as i32, signal) };
    assert_eq!(rc, 0);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(40),
            "{name}: train.sh still running {:?} after the signal",
            sent.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "{name}: a stopped run is not a success: {status}");
    let left = started_by(tmp.path());
    assert!(left.is_empty(), "{name}: processes left running: {left:?}");
    let files: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(files.is_empty(), "{name}: left on disk: {files:?}");
}

#[test]
fn a_stopped_run_leaves_no_process_and_no_secret() {
    let cartpole = repo_root().join("configs/cartpole.toml");
    let teams = repo_root().join("configs/lbf-two-teams.toml");
    for (signal, name, config) in [
        (libc::SIGTERM, "SIGTERM", &cartpole),
        (libc::SIGINT, "SIGINT", &cartpole),
        (libc::SIGHUP, "SIGHUP", &cartpole),
        (libc::SIGTERM, "SIGTERM, two policies", &teams),
    ] {
        stop_with(signal, name, config.to_str().unwrap());
    }
}
