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
use troupe::env::{one_group, Action, EnvError, Groups, ObsBuf, ResetOut, StepOut, VecEnv};
use troupe::spaces::{EnvSpec, ObsDType};

const HOST_SOURCE: &str = include_str!("pyhost.py");

pub struct PyVecEnv {
    host: Py<PyAny>,
    spec: EnvSpec,
    /// Environments (each has every agent's column).
    n: usize,
    groups: Groups,
    /// Where each agent's columns go: (group, index in the group).
    slot: Vec<(usize, usize)>,
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
            let groups = one_group(&spec);
            Ok(PyVecEnv {
                slot: slots(&groups, spec.agents.len()),
                groups,
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

    /// Copies agent `agent`'s observations (`[E, obs...]`) into its group's columns of `out`
    /// (column `e * a_g + k`), checking shape and values: one contiguous copy for a group of one
    /// agent.
    fn scatter_obs(
        &self,
        call: &'static str,
        agent: usize,
        obj: &Bound<'_, PyAny>,
        out: &mut ObsBuf<'_>,
    ) -> Result<(), EnvError> {
        let space = &self.spec.agents[agent].observation;
        let mut want = vec![self.n];
        want.extend(&space.shape);
        let o = space.size();
        let (g, k) = self.slot[agent];
        let a_g = self.groups[g].len();
        let field = "observation";
        match out {
            ObsBuf::F32(buf) => self.with_array::<f32, _>(call, field, obj, Some(&want), |src| {
                self.check_finite(call, field, src, o)?;
                scatter(src, buf, o, a_g, k);
                Ok(())
            }),
            ObsBuf::U8(buf) => self.with_array::<u8, _>(call, field, obj, Some(&want), |src| {
                scatter(src, buf, o, a_g, k);
                Ok(())
            }),
        }
    }

    /// Appends the `rows` final observations of agent `agent` (`[rows, obs...]`) as bytes.
    fn append_obs(
        &self,
        agent: usize,
        obj: &Bound<'_, PyAny>,
        rows: usize,
        bytes: &mut Vec<u8>,
    ) -> Result<(), EnvError> {
        let space = &self.spec.agents[agent].observation;
        let mut want = vec![rows];
        want.extend(&space.shape);
        let (call, field) = ("step", "final_obs");
        match space.dtype {
            ObsDType::F32 => self.with_array::<f32, _>(call, field, obj, Some(&want), |src| {
                self.check_finite(call, field, src, space.size())?;
                bytes.extend_from_slice(bytemuck::cast_slice(src));
                Ok(())
            }),
            ObsDType::U8 => self.with_array::<u8, _>(call, field, obj, Some(&want), |src| {
                bytes.extend_from_slice(src);
                Ok(())
            }),
        }
    }
}

/// (group, index in the group) of every agent.
fn slots(groups: &Groups, agents: usize) -> Vec<(usize, usize)> {
    let mut slot = vec![(0, 0); agents];
    for (g, members) in groups.iter().enumerate() {
        for (k, &a) in members.iter().enumerate() {
            slot[a] = (g, k);
        }
    }
    slot
}

/// Agent k's rows (`width` values each) out of a group's columns (`e * per + k`), in env order.
fn gather<T: Copy>(src: &[T], envs: usize, per: usize, k: usize, width: usize) -> Vec<T> {
    if per == 1 {
        return src.to_vec();
    }
    (0..envs)
        .flat_map(|e| {
            let c = e * per + k;
            src[c * width..(c + 1) * width].iter().copied()
        })
        .collect()
}

/// Rows of `width` values from `src` (`[E, width]`) into column `e * per + k` of `dst`.
fn scatter<T: Copy>(src: &[T], dst: &mut [T], width: usize, per: usize, k: usize) {
    if per == 1 {
        dst.copy_from_slice(src);
        return;
    }
    for (e, row) in src.chunks_exact(width).enumerate() {
        let c = e * per + k;
        dst[c * width..(c + 1) * width].copy_from_slice(row);
    }
}

impl PyVecEnv {
    /// `[E, A]` values of `obj` (rewards, flags) into each group's `[N_g]` slices.
    fn scatter_columns<T: numpy::Element + Copy>(
        &self,
        field: &str,
        obj: &Bound<'_, PyAny>,
        outs: &mut [&mut [T]],
    ) -> Result<(), EnvError> {
        let a = self.spec.agents.len();
        self.with_array::<T, _>("step", field, obj, Some(&[self.n, a]), |src| {
            for (e, row) in src.chunks_exact(a).enumerate() {
                for (agent, &v) in row.iter().enumerate() {
                    let (g, k) = self.slot[agent];
                    outs[g][e * self.groups[g].len() + k] = v;
                }
            }
            Ok(())
        })
    }

    /// Masks of every agent (a list, None where an agent has none) into its group's buffer.
    fn scatter_masks(
        &self,
        call: &'static str,
        obj: &Bound<'_, PyAny>,
        outs: &mut [Option<&mut [u8]>],
    ) -> Result<(), EnvError> {
        let wrap = |e: PyErr| self.err("action_mask", e.to_string(), call);
        for agent in 0..self.spec.agents.len() {
            let (g, k) = self.slot[agent];
            let Some(buf) = outs[g].as_deref_mut() else { continue };
            let m = obj.get_item(agent).map_err(wrap)?;
            let width = self.spec.agents[agent].action.mask_width().unwrap_or(0);
            let a_g = self.groups[g].len();
            self.with_array::<u8, _>(call, "action_mask", &m, Some(&[self.n, width]), |src| {
                scatter(src, buf, width, a_g, k);
                Ok(())
            })?;
        }
        Ok(())
    }

    /// `[E, S]` states into every column of each group that takes them.
    fn scatter_states(
        &self,
        call: &'static str,
        obj: &Bound<'_, PyAny>,
        outs: &mut [Option<&mut [f32]>],
    ) -> Result<(), EnvError> {
        let Some(space) = &self.spec.state else { return Ok(()) };
        if outs.iter().all(|o| o.is_none()) {
            return Ok(());
        }
        let s = space.size();
        self.with_array::<f32, _>(call, "state", obj, Some(&[self.n, s]), |src| {
            self.check_finite(call, "state", src, s)?;
            for (g, out) in outs.iter_mut().enumerate() {
                let Some(buf) = out.as_deref_mut() else { continue };
                let a_g = self.groups[g].len();
                for (e, row) in src.chunks_exact(s).enumerate() {
                    for k in 0..a_g {
                        let c = e * a_g + k;
                        buf[c * s..(c + 1) * s].copy_from_slice(row);
                    }
                }
            }
            Ok(())
        })
    }
}

impl VecEnv for PyVecEnv {
    fn spec(&self) -> &EnvSpec {
        &self.spec
    }

    fn num_envs(&self) -> usize {
        self.n
    }

    fn set_groups(&mut self, groups: Groups) {
        self.slot = slots(&groups, self.spec.agents.len());
        self.groups = groups;
    }

    fn groups(&self) -> &Groups {
        &self.groups
    }

    fn reset(&mut self, outs: &mut [ResetOut<'_>]) -> Result<(), EnvError> {
        Python::attach(|py| {
            let wrap = |e: PyErr| env_error(py, &self.spec.id, "reset", e);
            let res = self.host.bind(py).call_method0("reset").map_err(wrap)?;
            let obs = res.get_item(0).map_err(wrap)?;
            for agent in 0..self.spec.agents.len() {
                let (g, _) = self.slot[agent];
                let o = obs.get_item(agent).map_err(wrap)?;
                self.scatter_obs("reset", agent, &o, &mut outs[g].obs)?;
            }
            let mut masks: Vec<Option<&mut [u8]>> = outs.iter_mut().map(|o| o.masks.as_deref_mut()).collect();
            if masks.iter().any(|m| m.is_some()) {
                self.scatter_masks("reset", &res.get_item(1).map_err(wrap)?, &mut masks)?;
            }
            let mut states: Vec<Option<&mut [f32]>> = outs.iter_mut().map(|o| o.states.as_deref_mut()).collect();
            let st = res.get_item(2).map_err(wrap)?;
            if !st.is_none() {
                self.scatter_states("reset", &st, &mut states)?;
            }
            Ok(())
        })
    }

    fn step(&mut self, actions: &[Action<'_>], outs: &mut [StepOut<'_>], ended: &mut [u8]) -> Result<(), EnvError> {
        Python::attach(|py| {
            let wrap = |e: PyErr| env_error(py, &self.spec.id, "step", e);
            // One [E, d] array per agent, gathered from its group's columns.
            let per_agent = pyo3::types::PyList::empty(py);
            for agent in 0..self.spec.agents.len() {
                let (g, k) = self.slot[agent];
                let a_g = self.groups[g].len();
                let d = self.spec.agents[agent].action.dim();
                let arr = match actions[g] {
                    Action::Discrete(a) => PyArray1::from_vec(py, gather(a, self.n, a_g, k, d))
                        .reshape([self.n, d])
                        .map_err(wrap)?
                        .into_any(),
                    Action::Continuous(a) => PyArray1::from_vec(py, gather(a, self.n, a_g, k, d))
                        .reshape([self.n, d])
                        .map_err(wrap)?
                        .into_any(),
                };
                per_agent.append(arr).map_err(wrap)?;
            }
            let res = self.host.bind(py).call_method1("step", (per_agent,)).map_err(wrap)?;
            let item = |i: usize| res.get_item(i).map_err(wrap);
            let obs = item(0)?;
            for agent in 0..self.spec.agents.len() {
                let (g, _) = self.slot[agent];
                let o = obs.get_item(agent).map_err(wrap)?;
                self.scatter_obs("step", agent, &o, &mut outs[g].obs)?;
            }
            {
                let rewards_obj = item(1)?;
                let a = self.spec.agents.len();
                self.with_array::<f32, _>("step", "reward", &rewards_obj, Some(&[self.n, a]), |src| {
                    self.check_finite("step", "reward", src, a)
                })?;
                let mut r: Vec<&mut [f32]> = outs.iter_mut().map(|o| &mut *o.rewards).collect();
                self.scatter_columns("reward", &rewards_obj, &mut r)?;
            }
            let mut term: Vec<&mut [u8]> = outs.iter_mut().map(|o| &mut *o.terminated).collect();
            self.scatter_columns("terminated", &item(2)?, &mut term)?;
            drop(term);
            let mut trunc: Vec<&mut [u8]> = outs.iter_mut().map(|o| &mut *o.truncated).collect();
            self.scatter_columns("truncated", &item(3)?, &mut trunc)?;
            drop(trunc);
            let valid = item(6)?;
            if !valid.is_none() {
                let mut v: Vec<&mut [u8]> = outs.iter_mut().map(|o| &mut *o.valid).collect();
                self.scatter_columns("valid", &valid, &mut v)?;
            }
            let mut masks: Vec<Option<&mut [u8]>> = outs.iter_mut().map(|o| o.masks.as_deref_mut()).collect();
            if masks.iter().any(|m| m.is_some()) {
                self.scatter_masks("step", &item(5)?, &mut masks)?;
            }
            drop(masks);
            let st = item(7)?;
            if !st.is_none() {
                let mut states: Vec<Option<&mut [f32]>> = outs.iter_mut().map(|o| o.states.as_deref_mut()).collect();
                self.scatter_states("step", &st, &mut states)?;
            }
            // Final observations (and states) of truncated agents, appended in each group's
            // column order: env-major, then the group's agents.
            let finals = item(4)?;
            let final_states = item(8)?;
            let s = self.spec.state.as_ref().map_or(0, |x| x.size());
            for (g, members) in self.groups.clone().iter().enumerate() {
                let a_g = members.len();
                // Per agent of the group: its final rows, in env order, and how far we are.
                let mut taken = vec![0usize; a_g];
                let rows: Vec<Option<Vec<u8>>> = members
                    .iter()
                    .map(|&agent| {
                        let f = finals.get_item(agent).map_err(wrap)?;
                        if f.is_none() {
                            return Ok(None);
                        }
                        let k = (0..self.n)
                            .filter(|&e| outs[g].truncated[e * a_g + self.slot[agent].1] == 1)
                            .count();
                        let mut bytes = Vec::new();
                        self.append_obs(agent, &f, k, &mut bytes)?;
                        Ok(Some(bytes))
                    })
                    .collect::<Result<_, EnvError>>()?;
                let state_rows: Vec<Option<Vec<f32>>> = members
                    .iter()
                    .map(|&agent| {
                        if s == 0 || outs[g].final_states.is_none() || final_states.is_none() {
                            return Ok(None);
                        }
                        let f = final_states.get_item(agent).map_err(wrap)?;
                        if f.is_none() {
                            return Ok(None);
                        }
                        self.with_array::<f32, _>("step", "final_state", &f, None, |src| Ok(Some(src.to_vec())))
                    })
                    .collect::<Result<_, EnvError>>()?;
                let out = &mut outs[g];
                for e in 0..self.n {
                    for (k, &agent) in members.iter().enumerate() {
                        if out.truncated[e * a_g + k] != 1 {
                            continue;
                        }
                        let ob = self.spec.agents[agent].observation.bytes();
                        let Some(bytes) = &rows[k] else {
                            return Err(self.err(
                                "final_obs",
                                format!("agent {agent}: truncated without a final observation"),
                                "step",
                            ));
                        };
                        let j = taken[k];
                        out.final_obs.extend_from_slice(&bytes[j * ob..(j + 1) * ob]);
                        if let (Some(fs), Some(srows)) = (out.final_states.as_deref_mut(), &state_rows[k]) {
                            fs.extend_from_slice(&srows[j * s..(j + 1) * s]);
                        }
                        taken[k] += 1;
                    }
                }
            }
            let e = item(9)?;
            self.with_array::<u8, _>("step", "ended", &e, Some(&[self.n]), |src| {
                ended.copy_from_slice(src);
                Ok(())
            })?;
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
