//! CartPole-v1 learns in process (actor runner, learner edge, batcher, trainer; no network).
//! `common::train` takes any run config; cooperative LBF learns through a real cluster in
//! tests/tests/learning.rs.

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
