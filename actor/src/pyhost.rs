//! Python-hosted environments inside the actor, through PyO3: Gymnasium envs by id (with
//! wrappers) and envs from a user's `module:function` factory.
//!
//! The embedded module `pyhost.py` builds the envs and steps them with same-step autoreset
//! (so no reset step ever reaches the learner as a transition), checking each env's output per
//! field. This side copies each batch of observations out of numpy once, straight into the
//! rollout buffer, and checks finiteness.
//!
//! Only the env thread touches Python: every call here takes the GIL for its own duration, and
//! the actor calls these from its env thread alone.

use std::ffi::CString;

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyModule;
use troupe::config::EnvConfig;
use troupe::env::{Action, EnvError, ObsBuf, StepOut, VecEnv};
use troupe::spaces::EnvSpec;

const HOST_SOURCE: &str = include_str!("pyhost.py");

pub struct PyVecEnv {
    host: Py<PyAny>,
    spec: EnvSpec,
    n: usize,
}

/// Turns a Python exception into an [`EnvError`]: the host's own `HostError` carries the call
/// and the field; anything else is the env's exception, with its type and message.
fn env_error(py: Python<'_>, env: &str, call: &'static str, e: PyErr) -> EnvError {
    let value = e.value(py);
    let is_host_error = value.get_type().name().map(|n| n.to_string()).ok().as_deref() == Some("HostError");
    if is_host_error {
        let get = |attr: &str| {
            value
                .getattr(attr)
                .and_then(|v| v.extract::<String>())
                .unwrap_or_default()
        };
        let call = match get("call").as_str() {
            "make" => "make",
            "reset" => "reset",
            _ => call,
        };
        return EnvError {
            env: env.to_string(),
            call,
            field: get("field"),
            problem: get("problem"),
        };
    }
    let kind = value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".into());
    EnvError {
        env: env.to_string(),
        call,
        field: "exception".into(),
        problem: format!("{kind}: {value}"),
    }
}

fn host_module(py: Python<'_>) -> PyResult<Bound<'_, PyModule>> {
    let code = CString::new(HOST_SOURCE).expect("no NUL in pyhost.py");
    PyModule::from_code(py, &code, c"troupe_pyhost.py", c"troupe_pyhost")
}

impl PyVecEnv {
    /// Builds `seeds.len()` envs as `cfg` says, and learns their spaces.
    pub fn new(cfg: &EnvConfig, seeds: &[u64]) -> Result<PyVecEnv, EnvError> {
        let id = cfg.id.clone();
        Python::attach(|py| {
            let make = || -> PyResult<(Py<PyAny>, String)> {
                let module = host_module(py)?;
                let cfg_json = serde_json::to_string(cfg).expect("env config serializes");
                let host = module.getattr("make")?.call1((cfg_json, seeds.len(), seeds.to_vec()))?;
                let spec: String = host.call_method0("describe")?.extract()?;
                Ok((host.unbind(), spec))
            };
            let (host, spec_json) = make().map_err(|e| env_error(py, &id, "make", e))?;
            let spec: EnvSpec = serde_json::from_str(&spec_json).map_err(|e| EnvError {
                env: id.clone(),
                call: "make",
                field: "spec".into(),
                problem: format!("the host described the spaces as {spec_json}, which does not parse: {e}"),
            })?;
            Ok(PyVecEnv {
                host,
                spec,
                n: seeds.len(),
            })
        })
    }

    fn err(&self, field: &str, problem: String, call: &'static str) -> EnvError {
        EnvError {
            env: self.spec.id.clone(),
            call,
            field: field.into(),
            problem,
        }
    }

    /// Copies a `[N, obs...]` numpy array into `out` after checking its shape and values.
    fn copy_obs(&self, call: &'static str, obs: &Bound<'_, PyAny>, out: &mut ObsBuf<'_>) -> Result<(), EnvError> {
        let mut want = vec![self.n];
        want.extend(&self.spec.observation.shape);
        let bad = |problem: String| self.err("observation", problem, call);
        match out {
            ObsBuf::F32(buf) => {
                let a: PyReadonlyArrayDyn<'_, f32> = obs
                    .extract()
                    .map_err(|e| bad(format!("expected a float32 array: {e}")))?;
                if a.shape() != want.as_slice() {
                    return Err(bad(format!("expected shape {want:?}, got {:?}", a.shape())));
                }
                let src = a.as_slice().map_err(|e| bad(e.to_string()))?;
                if let Some(i) = src.iter().position(|x| !x.is_finite()) {
                    let o = self.spec.observation.size();
                    return Err(bad(format!(
                        "env {}: element {} is {}, expected a finite number",
                        i / o,
                        i % o,
                        src[i]
                    )));
                }
                buf.copy_from_slice(src);
            }
            ObsBuf::U8(buf) => {
                let a: PyReadonlyArrayDyn<'_, u8> =
                    obs.extract().map_err(|e| bad(format!("expected a uint8 array: {e}")))?;
                if a.shape() != want.as_slice() {
                    return Err(bad(format!("expected shape {want:?}, got {:?}", a.shape())));
                }
                buf.copy_from_slice(a.as_slice().map_err(|e| bad(e.to_string()))?);
            }
        }
        Ok(())
    }

    fn copy_masks(&self, call: &'static str, masks: &Bound<'_, PyAny>, out: Option<&mut [u8]>) -> Result<(), EnvError> {
        let Some(out) = out else { return Ok(()) };
        let a: PyReadonlyArrayDyn<'_, u8> = masks
            .extract()
            .map_err(|e| self.err("action_mask", format!("expected a uint8 array: {e}"), call))?;
        let src = a.as_slice().map_err(|e| self.err("action_mask", e.to_string(), call))?;
        if src.len() != out.len() {
            return Err(self.err(
                "action_mask",
                format!("expected {} values, got {}", out.len(), src.len()),
                call,
            ));
        }
        out.copy_from_slice(src);
        Ok(())
    }
}

impl VecEnv for PyVecEnv {
    fn spec(&self) -> &EnvSpec {
        &self.spec
    }

    fn num_envs(&self) -> usize {
        self.n
    }

    fn reset(&mut self, mut obs: ObsBuf<'_>, masks: Option<&mut [u8]>) -> Result<(), EnvError> {
        Python::attach(|py| {
            let out = self
                .host
                .bind(py)
                .call_method0("reset")
                .map_err(|e| env_error(py, &self.spec.id, "reset", e))?;
            let o = out.get_item(0).map_err(|e| env_error(py, &self.spec.id, "reset", e))?;
            self.copy_obs("reset", &o, &mut obs)?;
            let m = out.get_item(1).map_err(|e| env_error(py, &self.spec.id, "reset", e))?;
            self.copy_masks("reset", &m, masks)
        })
    }

    fn step(&mut self, actions: Action<'_>, mut out: StepOut<'_>) -> Result<(), EnvError> {
        let d = self.spec.action.dim();
        Python::attach(|py| {
            let id = &self.spec.id;
            let wrap = |e: PyErr| env_error(py, id, "step", e);
            let arr = match actions {
                Action::Discrete(a) => PyArray1::from_slice(py, a)
                    .reshape([self.n, d])
                    .map_err(wrap)?
                    .into_any(),
                Action::Continuous(a) => PyArray1::from_slice(py, a)
                    .reshape([self.n, d])
                    .map_err(wrap)?
                    .into_any(),
            };
            let res = self.host.bind(py).call_method1("step", (arr,)).map_err(wrap)?;
            let item = |i: usize| res.get_item(i).map_err(wrap);
            self.copy_obs("step", &item(0)?, &mut out.obs)?;
            let rewards: PyReadonlyArrayDyn<'_, f32> = item(1)?
                .extract()
                .map_err(|e: pyo3::CastError<'_, '_>| wrap(e.into()))?;
            let rewards = rewards
                .as_slice()
                .map_err(|e| self.err("reward", e.to_string(), "step"))?;
            if let Some(i) = rewards.iter().position(|r| !r.is_finite()) {
                return Err(self.err(
                    "reward",
                    format!("env {i}: got {}, expected a finite number", rewards[i]),
                    "step",
                ));
            }
            out.rewards.copy_from_slice(rewards);
            for (field, dst, at) in [
                ("terminated", &mut *out.terminated, 2),
                ("truncated", &mut *out.truncated, 3),
            ] {
                let a: PyReadonlyArrayDyn<'_, u8> = item(at)?
                    .extract()
                    .map_err(|e: pyo3::CastError<'_, '_>| wrap(e.into()))?;
                dst.copy_from_slice(a.as_slice().map_err(|e| self.err(field, e.to_string(), "step"))?);
            }
            let finals = item(4)?;
            if !finals.is_none() {
                let k = out.truncated.iter().filter(|&&x| x == 1).count();
                let mut want = vec![k];
                want.extend(&self.spec.observation.shape);
                match self.spec.observation.dtype {
                    troupe::spaces::ObsDType::F32 => {
                        let a: PyReadonlyArrayDyn<'_, f32> =
                            finals.extract().map_err(|e: pyo3::CastError<'_, '_>| wrap(e.into()))?;
                        if a.shape() != want.as_slice() {
                            return Err(self.err(
                                "final_obs",
                                format!("expected shape {want:?}, got {:?}", a.shape()),
                                "step",
                            ));
                        }
                        let src = a.as_slice().map_err(|e| self.err("final_obs", e.to_string(), "step"))?;
                        if src.iter().any(|x| !x.is_finite()) {
                            return Err(self.err(
                                "final_obs",
                                "a non-finite value, expected finite numbers".into(),
                                "step",
                            ));
                        }
                        out.final_obs.extend_from_slice(bytemuck::cast_slice(src));
                    }
                    troupe::spaces::ObsDType::U8 => {
                        let a: PyReadonlyArrayDyn<'_, u8> =
                            finals.extract().map_err(|e: pyo3::CastError<'_, '_>| wrap(e.into()))?;
                        if a.shape() != want.as_slice() {
                            return Err(self.err(
                                "final_obs",
                                format!("expected shape {want:?}, got {:?}", a.shape()),
                                "step",
                            ));
                        }
                        out.final_obs
                            .extend_from_slice(a.as_slice().map_err(|e| self.err("final_obs", e.to_string(), "step"))?);
                    }
                }
            }
            self.copy_masks("step", &item(5)?, out.masks)
        })
    }
}

impl Drop for PyVecEnv {
    fn drop(&mut self) {
        Python::attach(|py| {
            let _ = self.host.bind(py).call_method0("close");
        });
    }
}
