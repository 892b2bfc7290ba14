//! Troupe's native Level-Based Foraging against the `lbforaging` package (2.0.0), live.
//!
//! `scripts/lbf_reference.py` records episodes from the package, each from a constructed state
//! (a real reset's field, players moved next to food with random levels, a random step
//! counter) under random actions. Each episode is replayed on the Rust env from the same state
//! with the same actions: every agent's observation, every reward (to the bit), `done`, and the
//! field and players after each step must agree exactly.
//!
//! Needs TROUPE_PYTHON (a Python with scripts/requirements-envs.txt); without it the tests fail.

use std::path::Path;
use std::process::Command;

use serde::Deserialize;
use troupe::env::foraging::{Foraging, Player};

#[derive(Deserialize)]
struct Recording {
    env: String,
    episodes: Vec<Episode>,
}

#[derive(Deserialize)]
struct Episode {
    start: Start,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
struct Start {
    field: Vec<u32>,
    players: Vec<[u32; 3]>,
    food_spawned: u32,
    current_step: u32,
    obs: Vec<Vec<f32>>,
}

#[derive(Deserialize)]
struct Step {
    field: Vec<u32>,
    players: Vec<[u32; 3]>,
    actions: Vec<usize>,
    obs: Vec<Vec<f32>>,
    /// Python's `repr` of each float: parses back to the same bits.
    rewards: Vec<String>,
    done: bool,
    truncated: bool,
}

fn players(p: &[[u32; 3]]) -> Vec<Player> {
    p.iter()
        .map(|&[row, col, level]| Player {
            row: row as usize,
            col: col as usize,
            level,
        })
        .collect()
}

fn record(id: &str, episodes: usize, seed: u64) -> Recording {
    let python = std::env::var("TROUPE_PYTHON").expect("TROUPE_PYTHON: a Python with scripts/requirements-envs.txt");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lbf.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lbf_reference.py");
    let status = Command::new(python)
        .arg("-W")
        .arg("ignore")
        .arg(&script)
        .args([
            "--env",
            id,
            "--episodes",
            &episodes.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run lbf_reference.py");
    assert!(status.success(), "lbf_reference.py failed");
    serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap()
}

fn observations(env: &Foraging) -> Vec<Vec<f32>> {
    let o = env.config().observation_size();
    (0..env.config().players)
        .map(|i| {
            let mut v = vec![0f32; o];
            env.observe_player(i, &mut v);
            v
        })
        .collect()
}

/// Replays every recorded episode; returns (steps, steps with a reward, loads that failed).
fn compare(id: &str, episodes: usize, seed: u64) -> (usize, usize) {
    let rec = record(id, episodes, seed);
    assert_eq!(rec.env, id);
    let (mut steps, mut rewarded) = (0, 0);
    for (k, ep) in rec.episodes.iter().enumerate() {
        let mut env = Foraging::new(id, 0).expect("a native id");
        let s = &ep.start;
        env.set_state(&s.field, &players(&s.players), s.food_spawned, s.current_step);
        assert_eq!(observations(&env), s.obs, "{id} episode {k}: first observations");
        for (t, st) in ep.steps.iter().enumerate() {
            let at = || format!("{id} episode {k} step {t} (actions {:?})", st.actions);
            let got = env.step_actions(&st.actions).to_vec();
            let want: Vec<f64> = st.rewards.iter().map(|r| r.parse().unwrap()).collect();
            assert_eq!(got, want, "{}: rewards", at());
            assert_eq!(env.field(), st.field.as_slice(), "{}: field", at());
            assert_eq!(env.players(), players(&st.players).as_slice(), "{}: players", at());
            assert_eq!(observations(&env), st.obs, "{}: observations", at());
            // The package reports the step limit as done; here it is truncation.
            assert_eq!(env.terminated() || env.truncated(), st.done, "{}: done", at());
            assert!(!st.truncated);
            if st.done && !env.terminated() {
                assert!(env.truncated() && env.current_step() >= 50, "{}", at());
            }
            steps += 1;
            rewarded += want.iter().any(|&r| r > 0.0) as usize;
        }
    }
    (steps, rewarded)
}

#[test]
fn cooperative_foraging_matches_lbforaging() {
    let (steps, rewarded) = compare("Foraging-8x8-2p-2f-coop-v3", 600, 1);
    assert!(steps > 5000, "{steps} steps");
    assert!(rewarded > 50, "loads happen: {rewarded}");
}

#[test]
fn three_players_with_levels_match_lbforaging() {
    let (steps, rewarded) = compare("Foraging-8x8-3p-3f-v3", 400, 2);
    assert!(steps > 3000 && rewarded > 100, "{steps} steps, {rewarded} rewarded");
}

#[test]
fn partial_observations_match_lbforaging() {
    let (steps, rewarded) = compare("Foraging-2s-10x10-3p-3f-v3", 300, 3);
    assert!(steps > 2000 && rewarded > 50, "{steps} steps, {rewarded} rewarded");
}
