//! Building the configured environment: native Rust envs, or Python-hosted ones (Gymnasium by
//! id with wrappers, a user's factory, or an EnvPool) through [`crate::pyhost`].

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use troupe::config::{EnvBackend, EnvConfig};
use troupe::env::{EnvError, NativeVecEnv, VecEnv};

/// Builds N columns of the configured env, one seed each. `python_path` goes on Python's
/// `sys.path` first (the actor's `--python-path`: where gymnasium and the envs' packages are).
pub fn make(cfg: &EnvConfig, seeds: &[u64], python_path: &[String]) -> Result<Box<dyn VecEnv>, EnvError> {
    let env: Box<dyn VecEnv> = match cfg.backend {
        EnvBackend::Native => Box::new(NativeVecEnv::new(&cfg.id, seeds).ok_or_else(|| EnvError {
            env: cfg.id.clone(),
            call: "make",
            field: "env.id".into(),
            problem: format!("not a native env; native ids are {:?}", troupe::env::NATIVE_IDS),
        })?),
        _ => Box::new(crate::pyhost::PyVecEnv::new(cfg, seeds, python_path)?),
    };
    env.spec().validate().map_err(|e| EnvError {
        env: cfg.id.clone(),
        call: "make",
        field: e.what.to_string(),
        problem: e.to_string(),
    })?;
    Ok(env)
}

/// Builds the env, retrying a few times with a pause when it fails (a flaky import, a
/// resource that is not there yet). Returns `None` on shutdown, an error after the last try.
pub fn make_with_retry(
    cfg: &EnvConfig,
    seeds: &[u64],
    python_path: &[String],
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Box<dyn VecEnv>>> {
    const TRIES: u32 = 5;
    let mut pause = Duration::from_millis(200);
    for attempt in 1..=TRIES {
        match make(cfg, seeds, python_path) {
            Ok(env) => return Ok(Some(env)),
            // Spaces Troupe cannot handle will not get better on a retry.
            Err(e) if e.call == "make" && e.field.contains("space") => return Err(e.into()),
            Err(e) if attempt == TRIES => {
                return Err(anyhow::Error::new(e).context(format!("building env {} failed {TRIES} times", cfg.id)))
            }
            Err(e) => tracing::warn!(attempt, error = %e, "building the env failed, retrying"),
        }
        if shutdown.is_cancelled() {
            return Ok(None);
        }
        std::thread::sleep(pause);
        pause *= 2;
    }
    Ok(None)
}
