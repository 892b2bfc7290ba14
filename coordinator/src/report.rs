//! What a run leaves behind: `summary.json` and `learning_curve.png`.

use std::path::Path;

use serde::Serialize;

/// One observation of the run's progress.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub wall_s: f64,
    pub frames: u64,
    /// The team's: every agent's rewards summed per episode.
    pub mean_return_100: f64,
    /// Each policy's (the summed rewards of its agents), in multi-policy runs.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub policies: std::collections::BTreeMap<String, f64>,
}

/// One policy of a multi-policy run, as the summary reports it.
#[derive(Debug, Clone, Serialize)]
pub struct PolicySummary {
    pub policy: String,
    pub agents: Vec<String>,
    pub mean_return_100: Option<f64>,
    pub policy_version: u64,
    pub policy_path: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The run's env id and algorithm, from the run config.
    pub env: String,
    pub algorithm: String,
    pub solved: bool,
    /// The config's `target_return` (mean return of the last 100 episodes).
    pub target_return: f64,
    pub mean_return_100: Option<f64>,
    pub episodes: u64,
    pub frames: u64,
    pub wall_s: f64,
    /// From the watcher's start (the cluster is up) to the solve.
    pub time_to_solve_s: Option<f64>,
    /// From the first trained frame (the first trained version published) to the solve.
    pub solve_from_first_frame_s: Option<f64>,
    /// From the launch of the run (`--launched-at`, `scripts/train.sh`'s start) to the solve.
    pub solve_from_launch_s: Option<f64>,
    /// From the launch to the first trained frame.
    pub launch_to_first_frame_s: Option<f64>,
    pub frames_to_solve: Option<u64>,
    pub frames_per_s: f64,
    pub policy_version: u64,
    pub policy_path: Option<String>,
    /// Every policy of the run (one, `default`, for a single-agent run).
    pub policies: Vec<PolicySummary>,
    pub curve: Vec<Point>,
}

/// Plots mean return (last 100 episodes) against frames.
pub fn plot_curve(points: &[Point], target: f64, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).map_err(|_| anyhow::anyhow!("bad font"))?;
    let root = BitMapBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let pts: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| p.mean_return_100.is_finite())
        .map(|p| (p.frames as f64, p.mean_return_100))
        .collect();
    let max_x = pts.iter().map(|p| p.0).fold(1.0, f64::max);
    // The y range follows the env's returns, negative ones too (Acrobot, Pendulum).
    let (lo, hi) = pts
        .iter()
        .map(|p| p.1)
        .fold((target.min(0.0), target.max(0.0)), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let pad = ((hi - lo) * 0.05).max(1.0);
    let (min_y, max_y) = (lo - pad, hi + pad);
    let mut chart = ChartBuilder::on(&root)
        .caption("Troupe: mean return (last 100 episodes) vs frames", ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, min_y..max_y)?;
    chart.configure_mesh().x_desc("frames").y_desc("mean return").draw()?;
    chart
        .draw_series(LineSeries::new([(0.0, target), (max_x, target)], RED.mix(0.6)))?
        .label(format!("target {target}"))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    chart
        .draw_series(LineSeries::new(pts, BLUE.stroke_width(2)))?
        .label("mean return (100), team")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    // Each policy's returns, in multi-policy runs.
    let names: std::collections::BTreeSet<&String> = points.iter().flat_map(|p| p.policies.keys()).collect();
    for (i, name) in names.into_iter().enumerate() {
        let color = Palette99::pick(i + 2).to_rgba();
        let series: Vec<(f64, f64)> = points
            .iter()
            .filter_map(|p| {
                p.policies
                    .get(name)
                    .filter(|v| v.is_finite())
                    .map(|&v| (p.frames as f64, v))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(series, color.stroke_width(1)))?
            .label(format!("policy {name}"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curve_is_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.png");
        let pts: Vec<Point> = (0..50)
            .map(|i| Point {
                wall_s: i as f64,
                frames: i * 1000,
                mean_return_100: if i == 0 { f64::NAN } else { (i * 10) as f64 },
                policies: [("red".to_string(), i as f64), ("blue".to_string(), -(i as f64))]
                    .into_iter()
                    .collect(),
            })
            .collect();
        plot_curve(&pts, 475.0, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(bytes.len() > 5000);
        // Negative returns (Acrobot-like) plot too.
        let neg: Vec<Point> = pts
            .iter()
            .map(|p| Point {
                mean_return_100: -500.0 + p.mean_return_100,
                ..p.clone()
            })
            .collect();
        plot_curve(&neg, -100.0, &path).unwrap();
    }
}
