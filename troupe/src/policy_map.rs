//! Which policy acts for which agent: the run config's `[policies]` applied to an env's spec.
//!
//! Each policy gets a [`PolicySpec`]: the agents mapped to it, in the env's agent order, and
//! their spaces, which must agree. An actor splits its env's columns into one group per policy
//! ([`groups`]); each policy's rollouts, learner, versions and checkpoints are its own.
//!
//! Mistakes are start-up errors that name both sides: an agent mapped to a policy that does not
//! exist (caught with the config, [`crate::config::PoliciesConfig::validate`]), an agent the
//! map names that the env does not have, an agent of the env no policy covers, and agents of
//! one policy whose spaces differ.

use crate::config::{PolicyMapping, RunConfig};
use crate::env::Groups;
use crate::spaces::{EnvSpec, PolicySpec, DEFAULT_POLICY};

/// The config's mapping does not fit the env. The message names the key and the agents.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("run config: {0}")]
pub struct MappingError(pub String);

/// The policies of a run on this env, in the config's order (`default` alone when shared).
pub fn policy_specs(cfg: &RunConfig, env: &EnvSpec) -> Result<Vec<PolicySpec>, MappingError> {
    let p = &cfg.policies;
    let ids: Vec<&str> = env.agents.iter().map(|a| a.id.as_str()).collect();
    let members: Vec<(String, Vec<usize>)> = match p.mapping {
        PolicyMapping::Shared => vec![(DEFAULT_POLICY.to_string(), (0..ids.len()).collect())],
        PolicyMapping::PerAgent => ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.to_string(), vec![i]))
            .collect(),
        PolicyMapping::Map => {
            if let Some(stray) = p.map.keys().find(|a| !ids.contains(&a.as_str())) {
                return Err(MappingError(format!(
                    "policies.map.{stray}: expected an agent of env {} (its agents: {ids:?}), got {stray:?}",
                    env.id
                )));
            }
            if let Some(left) = ids.iter().find(|a| !p.map.contains_key(**a)) {
                return Err(MappingError(format!(
                    "policies.map: agent {left:?} of env {} is covered by no policy (map every one of {ids:?})",
                    env.id
                )));
            }
            p.names
                .iter()
                .map(|name| {
                    let agents = (0..ids.len()).filter(|&i| p.map[ids[i]] == *name).collect();
                    (name.clone(), agents)
                })
                .collect()
        }
    };
    if let Some((name, _)) = members.iter().find(|(n, _)| !crate::config::valid_policy_name(n)) {
        return Err(MappingError(format!(
            "policies.mapping: policy {name:?} (from an agent id) is not a valid policy name: expected 1 to 64 letters, digits, '-' and '_'"
        )));
    }
    if cfg.model.central_critic && env.state.is_none() {
        return Err(MappingError(format!(
            "model.central_critic: expected an env with a global state, but env {} has none",
            env.id
        )));
    }
    members
        .into_iter()
        .map(|(name, agents)| {
            let first = &env.agents[agents[0]];
            for &i in &agents[1..] {
                let a = &env.agents[i];
                let differs = [
                    ("observation", a.observation != first.observation),
                    ("action", a.action != first.action),
                    ("action_mask", a.action_mask != first.action_mask),
                ];
                if let Some((what, _)) = differs.iter().find(|(_, d)| *d) {
                    let show = |x: &crate::spaces::AgentSpec| match *what {
                        "observation" => serde_json::to_string(&x.observation).unwrap_or_default(),
                        "action" => serde_json::to_string(&x.action).unwrap_or_default(),
                        _ => x.action_mask.to_string(),
                    };
                    return Err(MappingError(format!(
                        "policy {name:?}: agents {:?} and {:?} have different {what} spaces ({} against {}): map them to different policies",
                        first.id,
                        a.id,
                        show(first),
                        show(a)
                    )));
                }
            }
            let agent_id_input = p.agent_id_input.unwrap_or(agents.len() > 1);
            Ok(PolicySpec {
                id: env.id.clone(),
                policy: name,
                agents: agents.iter().map(|&i| env.agents[i].id.clone()).collect(),
                observation: first.observation.clone(),
                action: first.action.clone(),
                action_mask: first.action_mask,
                agent_id_input,
                state: if cfg.model.central_critic {
                    env.state.clone()
                } else {
                    None
                },
            })
        })
        .collect()
}

/// The env's agent indices of each policy: the groups an actor splits its columns into.
pub fn groups(env: &EnvSpec, policies: &[PolicySpec]) -> Groups {
    policies
        .iter()
        .map(|p| {
            p.agents
                .iter()
                .map(|id| {
                    env.agent(id)
                        .map(|(i, _)| i)
                        .expect("policy specs name the env's agents")
                })
                .collect()
        })
        .collect()
}

/// The spec of policy `name`, or an error naming the run's policies.
pub fn find<'a>(policies: &'a [PolicySpec], name: &str) -> Result<&'a PolicySpec, MappingError> {
    policies.iter().find(|p| p.policy == name).ok_or_else(|| {
        let names: Vec<&str> = policies.iter().map(|p| p.policy.as_str()).collect();
        MappingError(format!("policy {name:?}: expected one of the run's policies {names:?}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spaces::{ActionSpace, AgentSpec, ObservationSpace};

    fn env(obs: &[usize]) -> EnvSpec {
        EnvSpec {
            id: "Team-v0".into(),
            agents: obs
                .iter()
                .enumerate()
                .map(|(i, &o)| AgentSpec {
                    id: format!("agent_{i}"),
                    observation: ObservationSpace::f32(&[o]),
                    action: ActionSpace::Discrete { n: 5 },
                    action_mask: false,
                })
                .collect(),
            state: Some(ObservationSpace::f32(&[9])),
        }
    }

    fn cfg(toml: &str) -> RunConfig {
        RunConfig::from_toml(toml).unwrap()
    }

    #[test]
    fn shared_per_agent_and_map() {
        let e = env(&[4, 4, 4]);
        let shared = policy_specs(&cfg(""), &e).unwrap();
        assert_eq!(shared.len(), 1);
        assert_eq!(shared[0].policy, "default");
        assert_eq!(shared[0].agents, ["agent_0", "agent_1", "agent_2"]);
        assert!(shared[0].agent_id_input && shared[0].state.is_none());
        let per = policy_specs(&cfg("[policies]\nmapping = \"per_agent\""), &e).unwrap();
        assert_eq!(
            per.iter().map(|p| p.policy.as_str()).collect::<Vec<_>>(),
            ["agent_0", "agent_1", "agent_2"]
        );
        assert!(!per[0].agent_id_input);
        let teams = cfg(
            "[policies]\nmapping = \"map\"\nnames = [\"blue\", \"red\"]\nmap = { agent_0 = \"red\", agent_1 = \"blue\", agent_2 = \"red\" }\n[model]\ncentral_critic = true",
        );
        let t = policy_specs(&teams, &e).unwrap();
        assert_eq!(t[0].agents, ["agent_1"]);
        assert_eq!(t[1].agents, ["agent_0", "agent_2"]);
        assert_eq!(t[1].state, e.state);
        assert_eq!(groups(&e, &t), vec![vec![1], vec![0, 2]]);
    }

    #[test]
    fn mistakes_name_both_sides() {
        let e = env(&[4, 4, 6]);
        let err = policy_specs(&cfg(""), &e).unwrap_err().to_string();
        assert!(
            err.contains("policy \"default\": agents \"agent_0\" and \"agent_2\" have different observation spaces"),
            "{err}"
        );
        let two = "[policies]\nmapping = \"map\"\nnames = [\"a\", \"b\"]\n";
        let err = policy_specs(&cfg(&format!("{two}map = {{ agent_0 = \"a\", agent_1 = \"b\" }}")), &e)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("agent \"agent_2\" of env Team-v0 is covered by no policy"),
            "{err}"
        );
        let err = policy_specs(
            &cfg(&format!(
                "{two}map = {{ agent_0 = \"a\", agent_1 = \"b\", agent_2 = \"b\", agent_7 = \"a\" }}"
            )),
            &e,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("policies.map.agent_7: expected an agent of env Team-v0"),
            "{err}"
        );
        // A policy that does not exist is a config error on its own.
        let err = RunConfig::from_toml(&format!("{two}map = {{ agent_0 = \"a\", agent_1 = \"c\" }}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "policies.map.agent_1: expected one of the policies in policies.names [\"a\", \"b\"], got \"c\""
            ),
            "{err}"
        );
        let mut no_state = env(&[4, 4]);
        no_state.state = None;
        let err = policy_specs(&cfg("[model]\ncentral_critic = true"), &no_state)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("model.central_critic: expected an env with a global state"),
            "{err}"
        );
    }
}
