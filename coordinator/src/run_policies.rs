//! The env's spaces and the run's policies, fixed once the spaces are known: from the config
//! for a native env (at start-up), or from the first actor's report of a Python-hosted env
//! (kept in Redis, so a restarted coordinator knows them at once).
//!
//! The config's mapping of agents to policies is checked against the spaces here; a mapping
//! that does not fit is refused with a message naming the agent and the policy.

use std::sync::Arc;

use troupe::spaces::{EnvSpec, PolicySpec};
use troupe::{Error, RunConfig};

use crate::policies::PolicyState;
use crate::store::Store;

pub struct RunPolicies {
    pub env: EnvSpec,
    pub specs: Vec<PolicySpec>,
    /// In the order of `specs`; the first answers for "" (the run's default policy).
    pub states: Vec<Arc<PolicyState>>,
}

impl RunPolicies {
    /// Every policy of `env` under `config`'s mapping, recovered from Redis.
    pub async fn recover(config: &RunConfig, env: EnvSpec, store: &Store) -> Result<RunPolicies, Error> {
        let specs =
            troupe::policy_map::policy_specs(config, &env).map_err(|e| Error::FailedPrecondition(e.to_string()))?;
        let mut states = Vec::new();
        for s in &specs {
            states.push(Arc::new(
                PolicyState::recover(
                    &s.policy,
                    s.agents.clone(),
                    store.policy(&s.policy),
                    config.coordinator.learner_lease_s,
                )
                .await?,
            ));
        }
        Ok(RunPolicies { env, specs, states })
    }

    /// The policy of this name ("" for the first), or NotFound naming the run's policies.
    pub fn get(&self, name: &str) -> Result<&Arc<PolicyState>, Error> {
        if name.is_empty() {
            return Ok(&self.states[0]);
        }
        self.states.iter().find(|p| p.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.states.iter().map(|p| p.name.as_str()).collect();
            Error::NotFound(format!(
                "policy {name:?}: not a policy of this run (its policies: {names:?})"
            ))
        })
    }

    pub fn first(&self) -> &Arc<PolicyState> {
        &self.states[0]
    }
}
