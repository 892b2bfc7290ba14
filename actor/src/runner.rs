//! The actor's inner loop: N environments stepped in lockstep, one batched policy forward per
//! step (CPU, no_grad), unrolls of T steps packed into a [`Rollout`].

use proto::v1::{EpisodeStat, Rollout, Tensor as WireTensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};
use troupe::env::{self, Env};
use troupe::policy::{PolicyNet, PolicySpec};
use troupe::RunConfig;

pub struct EnvRunner {
    envs: Vec<Box<dyn Env>>,
    obs_size: usize,
    num_actions: usize,
    unroll_length: usize,
    /// Current observation of each env, [N, obs].
    obs: Vec<f32>,
    episode_return: Vec<f32>,
    episode_length: Vec<u32>,
    rng: StdRng,
}

/// Space for one unroll, reused between unrolls.
#[derive(Default)]
struct Buffers {
    observations: Vec<f32>,
    actions: Vec<i64>,
    rewards: Vec<f32>,
    terminated: Vec<u8>,
    truncated: Vec<u8>,
    logits: Vec<f32>,
    truncation_observations: Vec<f32>,
}

impl EnvRunner {
    /// One environment per seed.
    pub fn new(cfg: &RunConfig, seeds: &[u64]) -> EnvRunner {
        let mut envs: Vec<Box<dyn Env>> = seeds.iter().map(|&s| env::make(&cfg.env, s)).collect();
        let obs_size = envs[0].observation_size();
        let num_actions = envs[0].num_actions();
        let mut obs = vec![0f32; envs.len() * obs_size];
        for (e, o) in envs.iter_mut().zip(obs.chunks_exact_mut(obs_size)) {
            e.reset(o);
        }
        let n = envs.len();
        EnvRunner {
            envs,
            obs_size,
            num_actions,
            unroll_length: cfg.actor.unroll_length,
            obs,
            episode_return: vec![0.0; n],
            episode_length: vec![0; n],
            // Action sampling is seeded from the env seeds, so a run is repeatable.
            rng: StdRng::seed_from_u64(seeds.iter().fold(0x9e37_79b9_7f4a_7c15, |a, &s| a.rotate_left(7) ^ s)),
        }
    }

    pub fn num_envs(&self) -> usize {
        self.envs.len()
    }

    /// Runs T steps of every env with `net` and returns them as one rollout. Finished episodes
    /// are handed to `on_episode`.
    pub fn unroll(
        &mut self,
        net: &PolicyNet,
        actor_id: u64,
        policy_version: u64,
        on_episode: &mut dyn FnMut(EpisodeStat),
    ) -> Rollout {
        let (t_len, n, o, a) = (self.unroll_length, self.envs.len(), self.obs_size, self.num_actions);
        let mut b = Buffers::default();
        b.observations.reserve(t_len * n * o);
        b.actions.reserve(t_len * n);
        b.rewards.reserve(t_len * n);
        b.terminated.reserve(t_len * n);
        b.truncated.reserve(t_len * n);
        b.logits.reserve(t_len * n * a);
        let mut probs = vec![0f32; a];
        for _ in 0..t_len {
            b.observations.extend_from_slice(&self.obs);
            let logits = tch::no_grad(|| {
                let x = Tensor::from_slice(&self.obs).view([n as i64, o as i64]);
                let logits = net.logits(&x);
                Vec::<f32>::try_from(logits.to_kind(Kind::Float).flatten(0, -1)).expect("f32 logits")
            });
            for (i, env) in self.envs.iter_mut().enumerate() {
                let row = &logits[i * a..(i + 1) * a];
                let action = sample(row, &mut probs, &mut self.rng);
                let obs = &mut self.obs[i * o..(i + 1) * o];
                let step = env.step(action, obs);
                self.episode_return[i] += step.reward;
                self.episode_length[i] += 1;
                b.actions.push(action as i64);
                b.rewards.push(step.reward);
                b.terminated.push(step.terminated as u8);
                b.truncated.push(step.truncated as u8);
                if step.truncated {
                    b.truncation_observations.extend_from_slice(obs);
                }
                if step.terminated || step.truncated {
                    on_episode(EpisodeStat {
                        episode_return: self.episode_return[i],
                        length: self.episode_length[i],
                    });
                    self.episode_return[i] = 0.0;
                    self.episode_length[i] = 0;
                    env.reset(obs);
                }
            }
            b.logits.extend_from_slice(&logits);
        }
        let k = b.truncation_observations.len() / o;
        Rollout {
            actor_id,
            policy_version,
            observations: Some(WireTensor::from_slice(&[t_len, n, o], &b.observations)),
            actions: Some(WireTensor::from_slice(&[t_len, n], &b.actions)),
            rewards: Some(WireTensor::from_slice(&[t_len, n], &b.rewards)),
            terminated: Some(WireTensor::from_slice(&[t_len, n], &b.terminated)),
            truncated: Some(WireTensor::from_slice(&[t_len, n], &b.truncated)),
            behaviour_logits: Some(WireTensor::from_slice(&[t_len, n, a], &b.logits)),
            bootstrap_observations: Some(WireTensor::from_slice(&[n, o], &self.obs)),
            truncation_observations: Some(WireTensor::from_slice(&[k, o], &b.truncation_observations)),
        }
    }
}

/// Samples an action from softmax(logits).
fn sample(logits: &[f32], probs: &mut [f32], rng: &mut StdRng) -> usize {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for (p, &l) in probs.iter_mut().zip(logits) {
        *p = (l - max).exp();
        sum += *p;
    }
    let mut u = rng.random::<f32>() * sum;
    for (i, &p) in probs.iter().enumerate() {
        if u < p {
            return i;
        }
        u -= p;
    }
    probs.len() - 1
}

/// A policy network on the CPU for acting.
pub fn cpu_policy(spec: &PolicySpec) -> PolicyNet {
    PolicyNet::new(spec, Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::TensorView;

    #[test]
    fn sampling_follows_the_softmax() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut probs = [0f32; 2];
        let logits = [0.0f32, (3.0f32).ln()]; // p = [0.25, 0.75]
        let ones = (0..20000)
            .filter(|_| sample(&logits, &mut probs, &mut rng) == 1)
            .count();
        let frac = ones as f64 / 20000.0;
        assert!((frac - 0.75).abs() < 0.02, "{frac}");
    }

    #[test]
    fn unroll_has_the_protocol_shapes_and_consistent_episode_ends() {
        let mut cfg = RunConfig::default();
        cfg.actor.unroll_length = 64;
        let mut runner = EnvRunner::new(&cfg, &[1, 2, 3]);
        let net = cpu_policy(&troupe::policy::PolicySpec::for_run(&cfg));
        let mut episodes = Vec::new();
        let r = runner.unroll(&net, 7, 3, &mut |e| episodes.push(e));
        assert_eq!((r.actor_id, r.policy_version), (7, 3));
        let obs = TensorView::new::<f32>("observations", r.observations.as_ref()).unwrap();
        obs.expect_shape(&[Some(64), Some(3), Some(4)]).unwrap();
        let term = TensorView::new::<u8>("terminated", r.terminated.as_ref())
            .unwrap()
            .to_flags()
            .unwrap();
        let trunc = TensorView::new::<u8>("truncated", r.truncated.as_ref())
            .unwrap()
            .to_flags()
            .unwrap();
        let ends = term.iter().zip(&trunc).filter(|(a, b)| **a || **b).count();
        // A random policy ends CartPole episodes within ~10-40 steps.
        assert!(ends >= 3, "{ends}");
        assert_eq!(episodes.len(), ends);
        let total: f32 = episodes.iter().map(|e| e.episode_return).sum();
        assert!(total > 0.0);
        let logits = TensorView::new::<f32>("behaviour_logits", r.behaviour_logits.as_ref()).unwrap();
        logits.expect_shape(&[Some(64), Some(3), Some(2)]).unwrap();
        let k = trunc.iter().filter(|&&x| x).count();
        let tobs = TensorView::new::<f32>("truncation_observations", r.truncation_observations.as_ref()).unwrap();
        tobs.expect_shape(&[Some(k), Some(4)]).unwrap();
        // Observation at t+1 after an end is a fresh reset state (all |x| < 0.05).
        let o = obs.to_finite_f32().unwrap();
        for t in 0..63 {
            for n in 0..3 {
                if term[t * 3 + n] {
                    let next = &o[((t + 1) * 3 + n) * 4..((t + 1) * 3 + n) * 4 + 4];
                    assert!(next.iter().all(|v| v.abs() < 0.05), "{next:?}");
                }
            }
        }
    }
}
