//! CartPole-v1 learns in process (actor runner, learner edge, batcher, trainer; no network).

mod common;

use common::{train, Outcome};
use troupe::RunConfig;

/// Deterministic (one thread, fixed seeds, no network), so this is a fixed fact of the code,
/// not a flaky timing: with 4 updates of policy lag, as in a 2-actor cluster, the shipped
/// config reaches a mean return of 475 over 100 episodes.
#[test]
fn shipped_config_solves_cartpole_in_process_with_policy_lag() {
    let config = RunConfig::from_file(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../configs/cartpole.toml"
    )))
    .unwrap();
    let Outcome {
        mean_return: last,
        solved_at,
        ..
    } = train(&config, 3000, 1, 4, 475.0);
    eprintln!("solved after {solved_at} updates; mean return at the end {last:.1}");
    assert!(
        solved_at.is_finite(),
        "not solved within 3000 updates (mean return at the end {last:.1})"
    );
}

/// Cooperative LBF (native, 2 agents that must load each item together) with the shipped
/// config: one shared policy with the agent-id input, the team reward and a centralized
/// critic. Deterministic like the CartPole test above; the bound leaves room.
#[test]
fn shipped_config_learns_cooperative_foraging_in_process() {
    let config = RunConfig::from_file(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../configs/lbf-coop.toml"
    )))
    .unwrap();
    let start = std::time::Instant::now();
    let Outcome {
        mean_return: last,
        solved_at,
        ..
    } = train(&config, 4000, 1, 2, 0.9);
    eprintln!(
        "lbf-coop: solved after {solved_at} updates in {:.0} s; mean team return at the end {last:.2}",
        start.elapsed().as_secs_f64()
    );
    assert!(
        solved_at.is_finite(),
        "not solved within 4000 updates (mean team return at the end {last:.2})"
    );
}
