//! CartPole against trajectories recorded from Gymnasium's CartPole-v1
//! (scripts/gen_cartpole_fixture.py): same actions, same start state, same results.
#![allow(clippy::needless_range_loop)]

use troupe::env::{Action, CartPole, Env};

#[derive(serde::Deserialize)]
struct Fixture {
    episodes: Vec<Episode>,
}

#[derive(serde::Deserialize)]
struct Episode {
    initial_state: [f64; 4],
    steps: Vec<Step>,
}

#[derive(serde::Deserialize)]
struct Step {
    action: usize,
    obs: [f32; 4],
    state: [f64; 4],
    reward: f32,
    terminated: bool,
    truncated: bool,
}

#[test]
fn matches_gymnasium_step_for_step() {
    let fixture: Fixture = serde_json::from_str(include_str!("fixtures/cartpole_gymnasium.json")).unwrap();
    assert_eq!(fixture.episodes.len(), 3);
    let mut saw_truncation = false;
    for (e, ep) in fixture.episodes.iter().enumerate() {
        let mut env = CartPole::new(0);
        env.set_state(ep.initial_state);
        let mut obs = [0f32; 4];
        let mut max_diff = 0f64;
        for (t, want) in ep.steps.iter().enumerate() {
            let got = env.step(Action::Discrete(&[want.action as i64]), &mut obs);
            // libm's sin/cos may differ from numpy's by an ulp, and the pole amplifies that over
            // hundreds of steps; a wrong constant or update order is off by far more than this.
            for i in 0..4 {
                let diff = (env.state()[i] - want.state[i]).abs();
                max_diff = max_diff.max(diff);
                assert!(
                    diff < 1e-9,
                    "episode {e} step {t} state[{i}]: {} vs {}",
                    env.state()[i],
                    want.state[i]
                );
                assert!((obs[i] - want.obs[i]).abs() < 1e-6, "episode {e} step {t} obs[{i}]");
            }
            assert_eq!(got.reward, want.reward);
            assert_eq!(got.terminated, want.terminated, "episode {e} step {t}");
            assert_eq!(got.truncated, want.truncated, "episode {e} step {t}");
        }
        // The first steps agree to the last bit or close to it.
        assert!(max_diff < 1e-9);
        let last = ep.steps.last().unwrap();
        assert!(last.terminated || last.truncated);
        saw_truncation |= last.truncated && !last.terminated;
    }
    assert!(saw_truncation, "the fixture covers the 500-step truncation");
}

#[test]
fn reset_is_uniform_in_plus_minus_005_and_seeded() {
    let mut a = CartPole::new(42);
    let mut b = CartPole::new(42);
    let mut c = CartPole::new(43);
    let (mut oa, mut ob, mut oc) = ([0f32; 4], [0f32; 4], [0f32; 4]);
    let mut lo = [f64::MAX; 4];
    let mut hi = [f64::MIN; 4];
    let mut differ = false;
    for _ in 0..2000 {
        a.reset(&mut oa);
        b.reset(&mut ob);
        c.reset(&mut oc);
        assert_eq!(oa, ob, "same seed, same resets");
        differ |= oa != oc;
        for i in 0..4 {
            let s = a.state()[i];
            assert!((-0.05..0.05).contains(&s), "{s}");
            lo[i] = lo[i].min(s);
            hi[i] = hi[i].max(s);
        }
    }
    assert!(differ, "different seeds give different resets");
    for i in 0..4 {
        assert!(
            lo[i] < -0.049 && hi[i] > 0.049,
            "component {i} spans the range: {lo:?} {hi:?}"
        );
    }
}

#[test]
fn truncates_at_500_steps_and_rewards_every_step() {
    let mut obs = [0f32; 4];
    let mut env = CartPole::new(1);
    env.reset(&mut obs);
    let mut total = 0.0;
    let mut t = 0;
    loop {
        // Alternate pushes keep the cart near the middle long enough to be cut off.
        let [x, x_dot, theta, theta_dot] = env.state();
        let a = i64::from(theta + 0.5 * theta_dot + 0.01 * x + 0.1 * x_dot > 0.0);
        let s = env.step(Action::Discrete(&[a]), &mut obs);
        total += s.reward;
        t += 1;
        if s.terminated || s.truncated {
            assert!(s.truncated && !s.terminated, "stopped at {t} by termination");
            break;
        }
    }
    assert_eq!(t, 500);
    assert_eq!(total, 500.0);
}
