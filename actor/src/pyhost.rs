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
use troupe::spaces::{EnvSpec, ObsDType};

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
    pub fn new(cfg: &EnvConfig, seeds: &[u64], python_path: &[String]) -> Result<PyVecEnv, EnvError> {
        let id = cfg.id.clone();
        Python::attach(|py| {
            let make = || -> PyResult<(Py<PyAny>, String)> {
                let sys_path = py.import("sys")?.getattr("path")?;
                for p in python_path.iter().rev() {
                    if !sys_path.contains(p)? {
                        sys_path.call_method1("insert", (0, p))?;
                    }
                }
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

    /// Reads `obj` as a contiguous numpy array of `T` (of shape `want`, when given) and hands
    /// its data to `f`: the one copy out of numpy happens there.
    fn with_array<T: numpy::Element, R>(
        &self,
        call: &'static str,
        field: &str,
        obj: &Bound<'_, PyAny>,
        want: Option<&[usize]>,
        f: impl FnOnce(&[T]) -> Result<R, EnvError>,
    ) -> Result<R, EnvError> {
        let a: PyReadonlyArrayDyn<'_, T> = obj.extract().map_err(|e: pyo3::CastError<'_, '_>| {
            self.err(
                field,
                format!("expected a {} array: {e}", std::any::type_name::<T>()),
                call,
            )
        })?;
        if let Some(want) = want {
            if a.shape() != want {
                return Err(self.err(field, format!("expected shape {want:?}, got {:?}", a.shape()), call));
            }
        }
        f(a.as_slice().map_err(|e| self.err(field, e.to_string(), call))?)
    }

    /// Refuses NaN and infinities, naming the env (row of `width` values) and the element.
    fn check_finite(&self, call: &'static str, field: &str, values: &[f32], width: usize) -> Result<(), EnvError> {
        match values.iter().position(|x| !x.is_finite()) {
            None => Ok(()),
            Some(i) => Err(self.err(
                field,
                format!(
                    "env {}: element {} is {}, expected a finite number",
                    i / width,
                    i % width,
                    values[i]
                ),
                call,
            )),
        }
    }

    /// Copies a batch of observations (`[rows, obs...]`) into `out`, checking shape and values.
    fn copy_obs(
        &self,
        call: &'static str,
        field: &str,
        obj: &Bound<'_, PyAny>,
        rows: usize,
        out: ObsSink<'_, '_>,
    ) -> Result<(), EnvError> {
        let mut want = vec![rows];
        want.extend(&self.spec.observation.shape);
        let o = self.spec.observation.size();
        match out {
            ObsSink::Buf(ObsBuf::F32(buf)) => self.with_array::<f32, _>(call, field, obj, Some(&want), |src| {
                self.check_finite(call, field, src, o)?;
                buf.copy_from_slice(src);
                Ok(())
            }),
            ObsSink::Buf(ObsBuf::U8(buf)) => self.with_array::<u8, _>(call, field, obj, Some(&want), |src| {
                buf.copy_from_slice(src);
                Ok(())
            }),
            ObsSink::Append(bytes) => match self.spec.observation.dtype {
                ObsDType::F32 => self.with_array::<f32, _>(call, field, obj, Some(&want), |src| {
                    self.check_finite(call, field, src, o)?;
                    bytes.extend_from_slice(bytemuck::cast_slice(src));
                    Ok(())
                }),
                ObsDType::U8 => self.with_array::<u8, _>(call, field, obj, Some(&want), |src| {
                    bytes.extend_from_slice(src);
                    Ok(())
                }),
            },
        }
    }

    fn copy_u8(&self, call: &'static str, field: &str, obj: &Bound<'_, PyAny>, out: &mut [u8]) -> Result<(), EnvError> {
        self.with_array::<u8, _>(call, field, obj, None, |src| {
            if src.len() != out.len() {
                return Err(self.err(field, format!("expected {} values, got {}", out.len(), src.len()), call));
            }
            out.copy_from_slice(src);
            Ok(())
        })
    }
}

/// Where observations read from numpy go.
enum ObsSink<'a, 'b> {
    /// Into the rollout buffer.
    Buf(&'a mut ObsBuf<'b>),
    /// Appended as bytes (final observations of truncated episodes).
    Append(&'a mut Vec<u8>),
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
            let wrap = |e: PyErr| env_error(py, &self.spec.id, "reset", e);
            let out = self.host.bind(py).call_method0("reset").map_err(wrap)?;
            let o = out.get_item(0).map_err(wrap)?;
            self.copy_obs("reset", "observation", &o, self.n, ObsSink::Buf(&mut obs))?;
            match masks {
                Some(m) => self.copy_u8("reset", "action_mask", &out.get_item(1).map_err(wrap)?, m),
                None => Ok(()),
            }
        })
    }

    fn step(&mut self, actions: Action<'_>, mut out: StepOut<'_>) -> Result<(), EnvError> {
        let d = self.spec.action.dim();
        Python::attach(|py| {
            let wrap = |e: PyErr| env_error(py, &self.spec.id, "step", e);
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
            self.copy_obs("step", "observation", &item(0)?, self.n, ObsSink::Buf(&mut out.obs))?;
            self.with_array::<f32, _>("step", "reward", &item(1)?, Some(&[self.n]), |src| {
                self.check_finite("step", "reward", src, 1)?;
                out.rewards.copy_from_slice(src);
                Ok(())
            })?;
            self.copy_u8("step", "terminated", &item(2)?, out.terminated)?;
            self.copy_u8("step", "truncated", &item(3)?, out.truncated)?;
            let finals = item(4)?;
            if !finals.is_none() {
                let k = out.truncated.iter().filter(|&&x| x == 1).count();
                self.copy_obs("step", "final_obs", &finals, k, ObsSink::Append(out.final_obs))?;
            }
            if let Some(m) = out.masks {
                self.copy_u8("step", "action_mask", &item(5)?, m)?;
            }
            let valid = item(6)?;
            if !valid.is_none() {
                self.copy_u8("step", "valid", &valid, out.valid)?;
            }
            Ok(())
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
