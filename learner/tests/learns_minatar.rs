//! Pixels through the Python host, in process: MinAtar Breakout with the conv torso.

mod common;

use common::train;
use troupe::RunConfig;

/// Pixels through the Python host: MinAtar Breakout (the `minatar` package) with the conv torso.
/// Frames travel as u8 (binary frames as 0/255) and become floats only in the model; a short
/// run trains: the value net's unexplained share of the target variance (its loss, normalised
/// by the targets' scale, which grows with the returns) goes down, and the returns climb well
/// above the untrained policy's. Two seeds.
#[test]
fn minatar_breakout_trains_from_u8_frames_through_the_host() {
    let mut config = RunConfig::from_file(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../configs/minatar-breakout.toml"
    )))
    .unwrap();
    config.actor.num_envs = 16;
    for seed in [1, 2] {
        let out = train(&config, 400, seed, 2, f64::INFINITY);
        assert_eq!(out.wire_obs_dtype, Some(proto::v1::DType::DtypeU8));
        let unexplained: Vec<f64> = out.explained_variance.iter().map(|ev| 1.0 - ev).collect();
        assert_eq!(unexplained.len(), 400);
        let mean = |s: &[f64]| {
            let v: Vec<f64> = s.iter().copied().filter(|x| x.is_finite()).collect();
            v.iter().sum::<f64>() / v.len().max(1) as f64
        };
        let (early, late) = (mean(&unexplained[..50]), mean(&unexplained[350..]));
        eprintln!(
            "seed {seed}: normalised value loss {early:.3} -> {late:.3}; mean return {:.2} -> {:.2} over {} episodes",
            out.first_mean_return, out.mean_return, out.episodes
        );
        assert!(
            late < 0.8 * early,
            "seed {seed}: the normalised value loss goes down: {early} -> {late}"
        );
        assert!(
            out.mean_return > 1.5 && out.mean_return > 3.0 * out.first_mean_return,
            "seed {seed}: returns climb: {} -> {}",
            out.first_mean_return,
            out.mean_return
        );
    }
}
