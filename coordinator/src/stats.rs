//! The run's totals (frames, episodes) and the team's recent returns: what Redis's heartbeat
//! script answered, held for Status and the gauges.

use std::collections::VecDeque;

use crate::store::{Totals, RETURN_WINDOW};

#[derive(Default)]
pub struct RunStats {
    pub frames: u64,
    pub episodes: u64,
    returns: VecDeque<f32>,
}

impl RunStats {
    pub fn from_totals(t: Totals) -> RunStats {
        RunStats {
            frames: t.frames,
            episodes: t.episodes,
            returns: t.returns.into_iter().collect(),
        }
    }

    fn mean_return(&self) -> f64 {
        if self.returns.is_empty() {
            f64::NAN
        } else {
            self.returns.iter().map(|&r| r as f64).sum::<f64>() / self.returns.len() as f64
        }
    }

    /// A report applied: Redis's run totals after it (the same numbers whatever else was
    /// cancelled), and its episodes' returns. Returns the mean of the window.
    pub fn apply(&mut self, run_frames: u64, run_episodes: u64, returns: &[f32]) -> f64 {
        (self.frames, self.episodes) = (self.frames.max(run_frames), self.episodes.max(run_episodes));
        for &x in returns {
            if self.returns.len() == RETURN_WINDOW {
                self.returns.pop_front();
            }
            self.returns.push_back(x);
        }
        self.mean_return()
    }

    /// (frames, episodes, mean return of the window, episodes in it).
    pub fn summary(&self) -> (u64, u64, f64, usize) {
        (self.frames, self.episodes, self.mean_return(), self.returns.len())
    }
}
