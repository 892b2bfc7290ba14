//! EnvPool's CartPole-v1 through the Python host learns to 475, in process. EnvPool resets one
//! step late; those steps travel marked invalid and the learner leaves them out.

mod common;

use common::train;
use troupe::RunConfig;

#[test]
fn envpool_cartpole_solves_with_its_reset_steps_masked() {
    let config = RunConfig::from_file(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../configs/cartpole-envpool.toml"
    )))
    .unwrap();
    let out = train(&config, 3000, 1, 4, 475.0);
    eprintln!(
        "solved after {} updates; mean return {:.1}",
        out.solved_at, out.mean_return
    );
    assert!(
        out.solved_at.is_finite(),
        "not solved within 3000 updates (mean return {:.1})",
        out.mean_return
    );
}
