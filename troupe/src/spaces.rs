//! Observation and action spaces, as plain data (Gymnasium's model): a space is a dtype, a shape,
//! and bounds or counts. An environment describes its spaces once, in an [`EnvSpec`]; rollouts
//! then carry only raw arrays, sized from the spec.
//!
//! Discrete and MultiDiscrete actions are 0-based here (a Python host adds Gymnasium's `start`
//! back when it steps the env). A legal-action mask has one u8 per choice: `n` for Discrete,
//! `sum(nvec)` for MultiDiscrete, 1 = legal.
//!
//! An [`EnvSpec`] follows PettingZoo's parallel API: a fixed list of agents, each with its own
//! spaces, and an optional global state. A single-agent env has one agent. A [`PolicySpec`] is
//! what one policy sees: the agents mapped to it (whose spaces must agree), so a rollout of that
//! policy has one column per env and agent, all of the same spaces.

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

/// One agent of an environment (an entry of PettingZoo's `possible_agents`) and its spaces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    pub id: String,
    pub observation: ObservationSpace,
    pub action: ActionSpace,
    /// The env supplies a legal-action mask for this agent at every step.
    #[serde(default)]
    pub action_mask: bool,
}

/// Everything the actors and learners must agree on about an environment: its agents, in a
/// fixed order (one for a single-agent env), and the global state a centralized critic reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvSpec {
    /// The env id of the run config.
    pub id: String,
    pub agents: Vec<AgentSpec>,
    /// The env's global state (PettingZoo's `state()`), when it has one.
    #[serde(default)]
    pub state: Option<ObservationSpace>,
}

/// The id of a single-agent env's one agent.
pub const SINGLE_AGENT: &str = "agent_0";

/// Most agents in one environment.
pub const MAX_AGENTS: usize = 256;

/// What one policy is trained on: the spaces of the agents mapped to it (which must agree),
/// and so of every column of its rollouts. Each env gives `agents.len()` columns, in this order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// The env id of the run config.
    pub id: String,
    /// The policy's name (`default` for a single-agent run).
    pub policy: String,
    /// The env's agents this policy acts for.
    pub agents: Vec<String>,
    pub observation: ObservationSpace,
    pub action: ActionSpace,
    #[serde(default)]
    pub action_mask: bool,
    /// The model also sees a one-hot of the column's agent (its index in `agents`), so one
    /// shared policy can act differently for each agent (EPyMARL's agent-id input).
    #[serde(default)]
    pub agent_id_input: bool,
    /// With a centralized critic: the env's global state, which rollouts then carry and the
    /// value function reads (with the agent one-hot) instead of the agent's observation.
    #[serde(default)]
    pub state: Option<ObservationSpace>,
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

fn check_observation(env: &str, what: &'static str, o: &ObservationSpace) -> Result<(), SpaceError> {
    if o.shape.is_empty() || o.shape.contains(&0) || o.size() > MAX_OBS_ELEMENTS {
        return Err(SpaceError {
            env: env.to_string(),
            what,
            problem: format!(
                "Box shape {:?}: expected 1 or more non-zero dimensions and at most {MAX_OBS_ELEMENTS} elements",
                o.shape
            ),
        });
    }
    Ok(())
}

fn check_action(env: &str, action: &ActionSpace, action_mask: bool) -> Result<(), SpaceError> {
    let err = |what, problem: String| {
        Err(SpaceError {
            env: env.to_string(),
            what,
            problem,
        })
    };
    match action {
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
    if action_mask && action.is_continuous() {
        return err(
            "action mask",
            "a legal-action mask needs a Discrete or MultiDiscrete action space".into(),
        );
    }
    Ok(())
}

impl EnvSpec {
    /// A single-agent env: one agent, [`SINGLE_AGENT`], and no global state.
    pub fn single(id: &str, observation: ObservationSpace, action: ActionSpace, action_mask: bool) -> EnvSpec {
        EnvSpec {
            id: id.to_string(),
            agents: vec![AgentSpec {
                id: SINGLE_AGENT.to_string(),
                observation,
                action,
                action_mask,
            }],
            state: None,
        }
    }

    pub fn num_agents(&self) -> usize {
        self.agents.len()
    }

    /// The agent of this id and its index.
    pub fn agent(&self, id: &str) -> Option<(usize, &AgentSpec)> {
        self.agents.iter().enumerate().find(|(_, a)| a.id == id)
    }

    /// Checks that Troupe can train on these spaces.
    pub fn validate(&self) -> Result<(), SpaceError> {
        let err = |what, problem: String| {
            Err(SpaceError {
                env: self.id.clone(),
                what,
                problem,
            })
        };
        if self.agents.is_empty() || self.agents.len() > MAX_AGENTS {
            return err(
                "agents",
                format!("{} agents: expected 1 to {MAX_AGENTS}", self.agents.len()),
            );
        }
        for (i, a) in self.agents.iter().enumerate() {
            if a.id.is_empty() || a.id.len() > 128 {
                return err(
                    "agents",
                    format!("agents[{i}].id {:?}: expected 1 to 128 characters", a.id),
                );
            }
            if self.agents[..i].iter().any(|b| b.id == a.id) {
                return err("agents", format!("agents[{i}].id {:?}: appears twice", a.id));
            }
            check_observation(&self.id, "observation space", &a.observation)?;
            check_action(&self.id, &a.action, a.action_mask)?;
        }
        if let Some(state) = &self.state {
            check_observation(&self.id, "state space", state)?;
        }
        Ok(())
    }

    /// The first difference from `other`, naming the field (for peers that disagree).
    pub fn difference(&self, other: &EnvSpec) -> Option<String> {
        if self.id != other.id {
            return Some(format!("id: {:?} against {:?}", self.id, other.id));
        }
        if self.agents.len() != other.agents.len() {
            let ids = |s: &EnvSpec| s.agents.iter().map(|a| a.id.clone()).collect::<Vec<_>>();
            return Some(format!("agents: {:?} against {:?}", ids(self), ids(other)));
        }
        for (i, (a, b)) in self.agents.iter().zip(&other.agents).enumerate() {
            if a.id != b.id {
                return Some(format!("agents[{i}].id: {:?} against {:?}", a.id, b.id));
            }
            let differs = |field: &str, mine: String, theirs: String| {
                Some(format!("agents[{i}] ({}).{field}: {mine} against {theirs}", a.id))
            };
            if a.observation != b.observation {
                return differs("observation", json(&a.observation), json(&b.observation));
            }
            if a.action != b.action {
                return differs("action", json(&a.action), json(&b.action));
            }
            if a.action_mask != b.action_mask {
                return differs("action_mask", a.action_mask.to_string(), b.action_mask.to_string());
            }
        }
        if self.state != other.state {
            return Some(format!("state: {} against {}", json(&self.state), json(&other.state)));
        }
        None
    }
}

/// A spec part as compact JSON, for messages.
fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

impl PolicySpec {
    /// The policy of a single-agent run: named `default`, acting for the env's one agent.
    pub fn single(env: &EnvSpec) -> PolicySpec {
        let a = &env.agents[0];
        PolicySpec {
            id: env.id.clone(),
            policy: DEFAULT_POLICY.to_string(),
            agents: vec![a.id.clone()],
            observation: a.observation.clone(),
            action: a.action.clone(),
            action_mask: a.action_mask,
            agent_id_input: false,
            state: None,
        }
    }

    /// Columns each env gives this policy.
    pub fn agents_per_env(&self) -> usize {
        self.agents.len()
    }

    /// Width of the agent one-hot the model reads (0 without the agent-id input).
    pub fn agent_id_width(&self) -> usize {
        if self.agent_id_input {
            self.agents.len()
        } else {
            0
        }
    }

    /// Checks that Troupe can train on these spaces.
    pub fn validate(&self) -> Result<(), SpaceError> {
        let err = |what, problem: String| {
            Err(SpaceError {
                env: self.id.clone(),
                what,
                problem,
            })
        };
        if self.agents.is_empty() || self.agents.len() > MAX_AGENTS {
            return err(
                "agents",
                format!(
                    "policy {}: {} agents, expected 1 to {MAX_AGENTS}",
                    self.policy,
                    self.agents.len()
                ),
            );
        }
        check_observation(&self.id, "observation space", &self.observation)?;
        check_action(&self.id, &self.action, self.action_mask)?;
        if let Some(state) = &self.state {
            check_observation(&self.id, "state space", state)?;
        }
        Ok(())
    }
}

/// The name of a single-agent run's policy, and of the one shared policy of a multi-agent run.
pub const DEFAULT_POLICY: &str = "default";

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(action: ActionSpace) -> EnvSpec {
        EnvSpec::single("Test-v0", ObservationSpace::f32(&[4]), action, false)
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
        huge.agents[0].observation.shape = vec![1 << 32, 1 << 32];
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
        s.agents[0].observation.shape = vec![];
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
