//! Observation and action spaces, as plain data (Gymnasium's model): a space is a dtype, a shape,
//! and bounds or counts. An environment describes its spaces once, in an [`EnvSpec`]; rollouts
//! then carry only raw arrays, sized from the spec.
//!
//! Discrete and MultiDiscrete actions are 0-based here (a Python host adds Gymnasium's `start`
//! back when it steps the env). A legal-action mask has one u8 per choice: `n` for Discrete,
//! `sum(nvec)` for MultiDiscrete, 1 = legal.
//!
//! The spec is written with several agents in mind (PettingZoo's parallel API): `num_agents`
//! columns per environment, each with the same observation and action space.

use serde::{Deserialize, Serialize};

/// Element type of an observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObsDType {
    F32,
    /// Pixels: u8 on the wire and in batches, floats only on the learner's device.
    U8,
}

impl ObsDType {
    pub fn size(self) -> usize {
        match self {
            ObsDType::F32 => 4,
            ObsDType::U8 => 1,
        }
    }
}

/// A Box observation of any shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObservationSpace {
    pub shape: Vec<usize>,
    pub dtype: ObsDType,
}

impl ObservationSpace {
    pub fn f32(shape: &[usize]) -> ObservationSpace {
        ObservationSpace {
            shape: shape.to_vec(),
            dtype: ObsDType::F32,
        }
    }

    pub fn u8(shape: &[usize]) -> ObservationSpace {
        ObservationSpace {
            shape: shape.to_vec(),
            dtype: ObsDType::U8,
        }
    }

    /// Elements in one observation (saturating: a shape too large to count is refused by
    /// [`EnvSpec::validate`]).
    pub fn size(&self) -> usize {
        self.shape.iter().fold(1usize, |a, &d| a.saturating_mul(d))
    }

    /// Bytes in one observation.
    pub fn bytes(&self) -> usize {
        self.size() * self.dtype.size()
    }
}

/// What an agent may do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionSpace {
    /// One choice of `n`.
    Discrete { n: usize },
    /// One choice of `nvec[i]` for each i.
    MultiDiscrete { nvec: Vec<usize> },
    /// A vector of `low.len()` reals, each in `[low[i], high[i]]` (the env clips).
    Box { low: Vec<f32>, high: Vec<f32> },
}

impl ActionSpace {
    /// Elements in one action: 1, `nvec.len()` or the Box's dimension.
    pub fn dim(&self) -> usize {
        match self {
            ActionSpace::Discrete { .. } => 1,
            ActionSpace::MultiDiscrete { nvec } => nvec.len(),
            ActionSpace::Box { low, .. } => low.len(),
        }
    }

    pub fn is_continuous(&self) -> bool {
        matches!(self, ActionSpace::Box { .. })
    }

    /// The counts of each discrete component (empty for a Box).
    pub fn nvec(&self) -> Vec<usize> {
        match self {
            ActionSpace::Discrete { n } => vec![*n],
            ActionSpace::MultiDiscrete { nvec } => nvec.clone(),
            ActionSpace::Box { .. } => Vec::new(),
        }
    }

    /// Width of the distribution's parameters, as the policy head outputs them and rollouts
    /// carry them: logits (`n` or `sum(nvec)`), or the Gaussian's mean and log-std (`2 * dim`).
    pub fn dist_params(&self) -> usize {
        match self {
            ActionSpace::Discrete { n } => *n,
            ActionSpace::MultiDiscrete { nvec } => nvec.iter().sum(),
            ActionSpace::Box { low, .. } => 2 * low.len(),
        }
    }

    /// Width of a legal-action mask (`None` for a Box: masks are for discrete choices).
    pub fn mask_width(&self) -> Option<usize> {
        match self {
            ActionSpace::Box { .. } => None,
            _ => Some(self.nvec().iter().sum()),
        }
    }
}

/// Everything a learner and an actor must agree on about an environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvSpec {
    /// The env id of the run config.
    pub id: String,
    pub observation: ObservationSpace,
    pub action: ActionSpace,
    /// The env supplies a legal-action mask at every step.
    #[serde(default)]
    pub action_mask: bool,
    /// Agents per environment (columns of a rollout per env); 1 for single-agent envs.
    #[serde(default = "one")]
    pub num_agents: usize,
}

fn one() -> usize {
    1
}

/// A space Troupe cannot handle. The message names the environment and the space.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("environment {env}: unsupported {what}: {problem}")]
pub struct SpaceError {
    pub env: String,
    /// "observation space", "action space", ...
    pub what: &'static str,
    pub problem: String,
}

/// Largest number of elements in one observation (a 4-frame 210x160 RGB stack is ~400k).
pub const MAX_OBS_ELEMENTS: usize = 1 << 22;

/// Largest count of one discrete choice, of MultiDiscrete components, and of Box dimensions:
/// a spec comes from a peer, and its sizes become the model's head.
pub const MAX_CHOICES: usize = 1 << 16;

impl EnvSpec {
    /// Checks that Troupe can train on these spaces.
    pub fn validate(&self) -> Result<(), SpaceError> {
        let err = |what, problem: String| {
            Err(SpaceError {
                env: self.id.clone(),
                what,
                problem,
            })
        };
        let o = &self.observation;
        if o.shape.is_empty() || o.shape.contains(&0) || o.size() > MAX_OBS_ELEMENTS {
            return err(
                "observation space",
                format!(
                    "Box shape {:?}: expected 1 or more non-zero dimensions and at most {MAX_OBS_ELEMENTS} elements",
                    o.shape
                ),
            );
        }
        match &self.action {
            ActionSpace::Discrete { n } if *n < 1 || *n > MAX_CHOICES => {
                return err(
                    "action space",
                    format!("Discrete({n}): expected 1 <= n <= {MAX_CHOICES}"),
                );
            }
            ActionSpace::MultiDiscrete { nvec }
                if nvec.is_empty() || nvec.len() > MAX_CHOICES || nvec.iter().any(|&k| k == 0 || k > MAX_CHOICES) =>
            {
                return err(
                    "action space",
                    format!("MultiDiscrete({nvec:?}): expected 1 to {MAX_CHOICES} counts, each in 1..={MAX_CHOICES}"),
                );
            }
            ActionSpace::Box { low, high } => {
                if low.is_empty() || low.len() != high.len() || low.len() > MAX_CHOICES {
                    return err(
                        "action space",
                        format!(
                            "Box with {} lows and {} highs: expected a 1-D Box of equal lengths in 1..={MAX_CHOICES}",
                            low.len(),
                            high.len()
                        ),
                    );
                }
                if low
                    .iter()
                    .zip(high)
                    .any(|(l, h)| !(l.is_finite() && h.is_finite() && l < h))
                {
                    return err(
                        "action space",
                        format!("Box(low={low:?}, high={high:?}): expected finite bounds with low < high"),
                    );
                }
            }
            _ => {}
        }
        if self.action_mask && self.action.is_continuous() {
            return err(
                "action mask",
                "a legal-action mask needs a Discrete or MultiDiscrete action space".into(),
            );
        }
        if self.num_agents < 1 {
            return err("agents", "expected num_agents >= 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(action: ActionSpace) -> EnvSpec {
        EnvSpec {
            id: "Test-v0".into(),
            observation: ObservationSpace::f32(&[4]),
            action,
            action_mask: false,
            num_agents: 1,
        }
    }

    #[test]
    fn widths_follow_the_space() {
        let d = ActionSpace::Discrete { n: 6 };
        assert_eq!((d.dim(), d.dist_params(), d.mask_width()), (1, 6, Some(6)));
        let md = ActionSpace::MultiDiscrete { nvec: vec![3, 2, 4] };
        assert_eq!((md.dim(), md.dist_params(), md.mask_width()), (3, 9, Some(9)));
        let b = ActionSpace::Box {
            low: vec![-1.0; 2],
            high: vec![1.0; 2],
        };
        assert_eq!((b.dim(), b.dist_params(), b.mask_width()), (2, 4, None));
        assert_eq!(ObservationSpace::u8(&[4, 84, 84]).bytes(), 4 * 84 * 84);
    }

    #[test]
    fn unsupported_spaces_name_the_env_and_the_space() {
        let e = spec(ActionSpace::Discrete { n: 0 }).validate().unwrap_err().to_string();
        assert_eq!(
            e,
            "environment Test-v0: unsupported action space: Discrete(0): expected 1 <= n <= 65536"
        );
        let e = spec(ActionSpace::Discrete { n: 1 << 40 })
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected 1 <= n <= 65536"), "{e}");
        let mut huge = spec(ActionSpace::Discrete { n: 2 });
        huge.observation.shape = vec![1 << 32, 1 << 32];
        assert!(huge.validate().unwrap_err().to_string().contains("at most"));
        let e = spec(ActionSpace::Box {
            low: vec![0.0],
            high: vec![f32::INFINITY],
        })
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("Test-v0") && e.contains("expected finite bounds"), "{e}");
        let mut s = spec(ActionSpace::Discrete { n: 2 });
        s.observation.shape = vec![];
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("unsupported observation space: Box shape []"), "{e}");
    }

    #[test]
    fn specs_round_trip_as_json() {
        let s = spec(ActionSpace::MultiDiscrete { nvec: vec![2, 3] });
        let back: EnvSpec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
