//! Level-Based Foraging (Papoudakis et al. 2021; Christianos et al. 2020), with the rules of the
//! `lbforaging` package, version 2.0.0 (`lbforaging/foraging/environment.py`, `ForagingEnv`):
//!
//! - **Field.** `size x size` cells; food items have a level, players have a level (1 or 2).
//! - **Spawning.** Players first, in a random permutation of their level ranges, each at a random
//!   empty cell with a level drawn from its range. Then up to `max_num_food` items at cells in
//!   rows and columns `1..size-1` whose 3x3 neighbourhood and distance-2 cross hold no food (1000
//!   attempts); each item's level is the sum of the (up to) three lowest player levels. With
//!   `force_coop` (the `-coop` ids) every item has that maximum level, so no player can load one
//!   alone.
//! - **Actions.** `NONE, NORTH, SOUTH, WEST, EAST, LOAD`. A move is valid when it stays on the
//!   field and its target holds no food; LOAD when a food item is next to the player. An invalid
//!   action becomes NONE. Validity is computed before the step, from the field alone.
//! - **Collisions.** Every player claims a cell (its target, or its own cell for NONE and LOAD);
//!   only the players alone on their claim move. (As in the package, a player can end on a cell
//!   a blocked player stays on.)
//! - **Loading.** Each loading player's food (the first of N, S, W, E next to it) is loaded by
//!   every loading player next to it when their levels sum to at least the food's level. Each of
//!   them gets `level * food / (sum of their levels * total food level spawned)`: the rewards of
//!   an episode that collects every item sum to 1.
//! - **End.** When no food is left, or after 50 steps. The package reports both as `done`; here
//!   the first is termination and the second truncation (the remaining food still has value),
//!   as EPyMARL's time-limit wrapper reads it.
//! - **Observations.** Per agent, `3 * max_num_food + 3 * players` floats: each food item in
//!   sight as `(row, col, level)` in row-major order, then the agent itself and every other
//!   player in sight as `(row, col, level)`, with absent slots `(-1, -1, 0)`. Coordinates are
//!   relative to the corner of the agent's view (the field itself at full sight).
//!
//! The reset's random draws use Troupe's RNG, not numpy's: the same seed gives other initial
//! states than the package (docs/CONFIG.md says so). Everything after a reset follows the
//! package exactly; `troupe/tests/foraging_vs_lbforaging.rs` drives both from the same states.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::{Action, AgentStep, MultiAgentEnv};
use crate::spaces::{ActionSpace, AgentSpec, EnvSpec, ObservationSpace};

/// `NONE, NORTH, SOUTH, WEST, EAST, LOAD`.
pub const NUM_ACTIONS: usize = 6;
const NONE: usize = 0;
const NORTH: usize = 1;
const SOUTH: usize = 2;
const WEST: usize = 3;
const EAST: usize = 4;
const LOAD: usize = 5;

/// The settings an lbforaging id names (`Foraging[-Ks]-SxS-Pp-Ff[-coop]-v3`).
#[derive(Debug, Clone, PartialEq)]
pub struct ForagingConfig {
    pub size: usize,
    pub players: usize,
    pub max_num_food: usize,
    pub sight: usize,
    pub force_coop: bool,
    pub min_player_level: u32,
    pub max_player_level: u32,
    pub min_food_level: u32,
    pub max_episode_steps: u32,
}

impl ForagingConfig {
    /// Parses an id the way the package registers them: sizes 5 to 19, 2 to 9 players, 1 to 4
    /// food items, an optional `-Ks` sight and `-coop`. (Grid observations, `-ind` and `-pen`
    /// are not implemented natively.)
    pub fn from_id(id: &str) -> Option<ForagingConfig> {
        let rest = id.strip_prefix("Foraging")?.strip_suffix("-v3")?;
        let mut parts: Vec<&str> = rest.split('-').collect();
        if parts.first() != Some(&"") {
            return None;
        }
        parts.remove(0);
        let sight = match parts.first() {
            Some(p) if p.ends_with('s') && !p.contains('x') => {
                let k: usize = p.strip_suffix('s')?.parse().ok()?;
                parts.remove(0);
                Some(k)
            }
            _ => None,
        };
        let (size, players, food, coop) = match parts.as_slice() {
            [field, p, f] => (*field, *p, *f, false),
            [field, p, f, "coop"] => (*field, *p, *f, true),
            _ => return None,
        };
        let (w, h) = size.split_once('x')?;
        let (w, h): (usize, usize) = (w.parse().ok()?, h.parse().ok()?);
        let players: usize = players.strip_suffix('p')?.parse().ok()?;
        let food: usize = food.strip_suffix('f')?.parse().ok()?;
        if w != h || !(5..20).contains(&w) || !(2..10).contains(&players) || !(1..5).contains(&food) {
            return None;
        }
        if sight.is_some_and(|k| k != 2) {
            return None; // the package registers only -2s for vector observations
        }
        Some(ForagingConfig {
            size: w,
            players,
            max_num_food: food,
            sight: sight.unwrap_or(w),
            force_coop: coop,
            min_player_level: 1,
            max_player_level: 2,
            min_food_level: 1,
            max_episode_steps: 50,
        })
    }

    pub fn observation_size(&self) -> usize {
        3 * self.max_num_food + 3 * self.players
    }
}

/// A player's state, as the package keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Player {
    pub row: usize,
    pub col: usize,
    pub level: u32,
}

pub struct Foraging {
    id: String,
    cfg: ForagingConfig,
    /// `size * size` food levels, row-major.
    field: Vec<u32>,
    players: Vec<Player>,
    /// The total food level at the episode's start (rewards are normalised by it).
    food_spawned: u32,
    current_step: u32,
    /// Valid actions per player, from the field before the step.
    valid: Vec<[bool; NUM_ACTIONS]>,
    /// Rewards of the last step, per player.
    rewards: Vec<f64>,
    rng: StdRng,
}

impl Foraging {
    pub fn new(id: &str, seed: u64) -> Option<Foraging> {
        let cfg = ForagingConfig::from_id(id)?;
        Some(Foraging {
            id: id.to_string(),
            field: vec![0; cfg.size * cfg.size],
            players: Vec::new(),
            food_spawned: 0,
            current_step: 0,
            valid: vec![[false; NUM_ACTIONS]; cfg.players],
            rewards: vec![0.0; cfg.players],
            rng: StdRng::seed_from_u64(seed),
            cfg,
        })
    }

    pub fn config(&self) -> &ForagingConfig {
        &self.cfg
    }

    fn at(&self, row: usize, col: usize) -> u32 {
        self.field[row * self.cfg.size + col]
    }

    /// Sets the whole state (as the package's own tests set `field`, `players`,
    /// `_food_spawned` and `current_step`): `field` is row-major food levels.
    pub fn set_state(&mut self, field: &[u32], players: &[Player], food_spawned: u32, current_step: u32) {
        assert_eq!(field.len(), self.field.len(), "field of {} cells", self.field.len());
        assert_eq!(players.len(), self.cfg.players, "{} players", self.cfg.players);
        self.field.copy_from_slice(field);
        self.players = players.to_vec();
        self.food_spawned = food_spawned;
        self.current_step = current_step;
        self.gen_valid_moves();
    }

    pub fn field(&self) -> &[u32] {
        &self.field
    }

    pub fn players(&self) -> &[Player] {
        &self.players
    }

    pub fn food_spawned(&self) -> u32 {
        self.food_spawned
    }

    fn is_empty_location(&self, row: usize, col: usize) -> bool {
        self.at(row, col) == 0 && !self.players.iter().any(|p| p.row == row && p.col == col)
    }

    /// Sum of the food in the (clipped) square of `distance` around a cell.
    fn neighborhood_sum(&self, row: usize, col: usize, distance: usize) -> u32 {
        let n = self.cfg.size;
        let mut s = 0;
        for r in row.saturating_sub(distance)..(row + distance + 1).min(n) {
            for c in col.saturating_sub(distance)..(col + distance + 1).min(n) {
                s += self.at(r, c);
            }
        }
        s
    }

    /// The package's `neighborhood(row, col, 2, ignore_diag=True)`: the column and the row
    /// through the cell, each within 2 (the cell itself counted twice).
    fn cross_sum(&self, row: usize, col: usize, distance: usize) -> u32 {
        let n = self.cfg.size;
        let column: u32 = (row.saturating_sub(distance)..(row + distance + 1).min(n))
            .map(|r| self.at(r, col))
            .sum();
        let line: u32 = (col.saturating_sub(distance)..(col + distance + 1).min(n))
            .map(|c| self.at(row, c))
            .sum();
        column + line
    }

    fn spawn_players(&mut self) {
        let levels: Vec<(u32, u32)> = (0..self.cfg.players)
            .map(|_| (self.cfg.min_player_level, self.cfg.max_player_level))
            .collect();
        let mut order: Vec<usize> = (0..levels.len()).collect();
        order.shuffle(&mut self.rng);
        self.players.clear();
        let n = self.cfg.size;
        for &k in &order {
            let (lo, hi) = levels[k];
            let mut placed = None;
            for _ in 0..1000 {
                let (row, col) = (self.rng.random_range(0..n), self.rng.random_range(0..n));
                if self.is_empty_location(row, col) {
                    placed = Some(Player {
                        row,
                        col,
                        level: self.rng.random_range(lo..=hi),
                    });
                    break;
                }
            }
            // The package leaves a player it could not place where it was; on an empty field
            // 1000 tries never all fail, so this keeps the first free cell instead.
            let p = placed.unwrap_or_else(|| {
                let cell = (0..n * n).find(|&c| self.is_empty_location(c / n, c % n)).unwrap_or(0);
                Player {
                    row: cell / n,
                    col: cell % n,
                    level: lo,
                }
            });
            self.players.push(p);
        }
    }

    fn spawn_food(&mut self) {
        let mut levels: Vec<u32> = self.players.iter().map(|p| p.level).collect();
        levels.sort_unstable();
        let max_level: u32 = levels.iter().take(3).sum();
        let min_level = if self.cfg.force_coop {
            max_level
        } else {
            self.cfg.min_food_level
        };
        let n = self.cfg.size;
        let mut count = 0;
        let mut attempts = 0;
        while count < self.cfg.max_num_food && attempts < 1000 {
            attempts += 1;
            let (row, col) = (self.rng.random_range(1..n - 1), self.rng.random_range(1..n - 1));
            if self.neighborhood_sum(row, col, 1) > 0
                || self.cross_sum(row, col, 2) > 0
                || !self.is_empty_location(row, col)
            {
                continue;
            }
            self.field[row * n + col] = if min_level == max_level {
                min_level
            } else {
                self.rng.random_range(min_level..=max_level)
            };
            count += 1;
        }
        self.food_spawned = self.field.iter().sum();
    }

    /// The package's `adjacent_food`: the four neighbours, clipped at the border (so a player
    /// on the border counts its own, empty, cell).
    fn adjacent_food(&self, row: usize, col: usize) -> u32 {
        let n = self.cfg.size;
        self.at(row.saturating_sub(1), col)
            + self.at((row + 1).min(n - 1), col)
            + self.at(row, col.saturating_sub(1))
            + self.at(row, (col + 1).min(n - 1))
    }

    /// The package's `adjacent_food_location`, with its `> 1` comparisons kept.
    fn adjacent_food_location(&self, row: usize, col: usize) -> Option<(usize, usize)> {
        let n = self.cfg.size;
        if row > 1 && self.at(row - 1, col) > 0 {
            Some((row - 1, col))
        } else if row < n - 1 && self.at(row + 1, col) > 0 {
            Some((row + 1, col))
        } else if col > 1 && self.at(row, col - 1) > 0 {
            Some((row, col - 1))
        } else if col < n - 1 && self.at(row, col + 1) > 0 {
            Some((row, col + 1))
        } else {
            None
        }
    }

    fn is_valid_action(&self, p: &Player, action: usize) -> bool {
        let n = self.cfg.size;
        match action {
            NONE => true,
            NORTH => p.row > 0 && self.at(p.row - 1, p.col) == 0,
            SOUTH => p.row < n - 1 && self.at(p.row + 1, p.col) == 0,
            WEST => p.col > 0 && self.at(p.row, p.col - 1) == 0,
            EAST => p.col < n - 1 && self.at(p.row, p.col + 1) == 0,
            LOAD => self.adjacent_food(p.row, p.col) > 0,
            _ => false,
        }
    }

    fn gen_valid_moves(&mut self) {
        self.valid = self
            .players
            .iter()
            .map(|p| std::array::from_fn(|a| self.is_valid_action(p, a)))
            .collect();
    }

    /// Valid actions of player `i` for the next step (the package's `_valid_actions`).
    pub fn valid_actions(&self, i: usize) -> [bool; NUM_ACTIONS] {
        self.valid[i]
    }

    fn food_left(&self) -> bool {
        self.field.iter().any(|&f| f > 0)
    }

    /// Applies one action per player; returns each player's reward.
    pub fn step_actions(&mut self, actions: &[usize]) -> &[f64] {
        self.current_step += 1;
        self.rewards.fill(0.0);
        let actions: Vec<usize> = actions
            .iter()
            .zip(&self.valid)
            .map(|(&a, valid)| if a < NUM_ACTIONS && valid[a] { a } else { NONE })
            .collect();
        // Each player claims a cell; only those alone on their claim move.
        let claims: Vec<(usize, usize)> = self
            .players
            .iter()
            .zip(&actions)
            .map(|(p, &a)| match a {
                NORTH => (p.row - 1, p.col),
                SOUTH => (p.row + 1, p.col),
                WEST => (p.row, p.col - 1),
                EAST => (p.row, p.col + 1),
                _ => (p.row, p.col),
            })
            .collect();
        for (i, &claim) in claims.iter().enumerate() {
            if claims.iter().filter(|&&c| c == claim).count() == 1 {
                (self.players[i].row, self.players[i].col) = claim;
            }
        }
        // Loading, in player order (no cell is next to two spawned food items, so the groups do
        // not depend on the order: the package's set order is arbitrary).
        let mut loading: Vec<bool> = actions.iter().map(|&a| a == LOAD).collect();
        for i in 0..self.players.len() {
            if !loading[i] {
                continue;
            }
            loading[i] = false;
            let p = self.players[i];
            let Some((frow, fcol)) = self.adjacent_food_location(p.row, p.col) else {
                continue; // the package would fail here; unreachable from spawned states
            };
            let food = self.at(frow, fcol);
            let group: Vec<usize> = (0..self.players.len())
                .filter(|&j| {
                    let q = &self.players[j];
                    let adjacent =
                        (q.row.abs_diff(frow) == 1 && q.col == fcol) || (q.col.abs_diff(fcol) == 1 && q.row == frow);
                    adjacent && (loading[j] || j == i)
                })
                .collect();
            let level: u32 = group.iter().map(|&j| self.players[j].level).sum();
            for &j in &group {
                loading[j] = false;
            }
            if level < food {
                continue; // failed to load (the package's penalty is 0 for these ids)
            }
            for &j in &group {
                let r = (self.players[j].level * food) as f64;
                self.rewards[j] = r / (level as f64 * self.food_spawned as f64);
            }
            let n = self.cfg.size;
            self.field[frow * n + fcol] = 0;
        }
        self.gen_valid_moves();
        &self.rewards
    }

    /// The episode ended with every food item collected.
    pub fn terminated(&self) -> bool {
        !self.food_left()
    }

    /// The episode reached the step limit with food left.
    pub fn truncated(&self) -> bool {
        self.food_left() && self.cfg.max_episode_steps <= self.current_step
    }

    /// Player `i`'s observation (see the module docs).
    pub fn observe_player(&self, i: usize, out: &mut [f32]) {
        let cfg = &self.cfg;
        let (n, sight) = (cfg.size, cfg.sight);
        let me = self.players[i];
        out.fill(0.0);
        for k in 0..cfg.max_num_food {
            out[3 * k] = -1.0;
            out[3 * k + 1] = -1.0;
        }
        let (r0, c0) = (me.row.saturating_sub(sight), me.col.saturating_sub(sight));
        let (r1, c1) = ((me.row + sight + 1).min(n), (me.col + sight + 1).min(n));
        let mut k = 0;
        for r in r0..r1 {
            for c in c0..c1 {
                let f = self.at(r, c);
                if f > 0 && k < cfg.max_num_food {
                    out[3 * k] = (r - r0) as f32;
                    out[3 * k + 1] = (c - c0) as f32;
                    out[3 * k + 2] = f as f32;
                    k += 1;
                }
            }
        }
        let base = 3 * cfg.max_num_food;
        for j in 0..cfg.players {
            out[base + 3 * j] = -1.0;
            out[base + 3 * j + 1] = -1.0;
        }
        // Relative to the view's corner: `position - center + min(sight, center)`, which can be
        // negative or past the view for players out of sight.
        let transform = |p: &Player| {
            (
                p.row as i64 - me.row as i64 + (sight as i64).min(me.row as i64),
                p.col as i64 - me.col as i64 + (sight as i64).min(me.col as i64),
            )
        };
        let in_sight = |t: (i64, i64)| t.0.min(t.1) >= 0 && t.0.max(t.1) <= 2 * sight as i64;
        let seen = std::iter::once(i).chain((0..cfg.players).filter(|&j| j != i));
        let mut slot = 0;
        for j in seen {
            let p = &self.players[j];
            let t = transform(p);
            if !in_sight(t) {
                continue;
            }
            out[base + 3 * slot] = t.0 as f32;
            out[base + 3 * slot + 1] = t.1 as f32;
            out[base + 3 * slot + 2] = p.level as f32;
            slot += 1;
        }
    }

    pub fn current_step(&self) -> u32 {
        self.current_step
    }
}

impl MultiAgentEnv for Foraging {
    fn spec(&self) -> EnvSpec {
        let o = self.cfg.observation_size();
        EnvSpec {
            id: self.id.clone(),
            agents: (0..self.cfg.players)
                .map(|i| AgentSpec {
                    id: format!("agent_{i}"),
                    observation: ObservationSpace::f32(&[o]),
                    action: ActionSpace::Discrete { n: NUM_ACTIONS },
                    action_mask: false,
                })
                .collect(),
            // EPyMARL's state for these envs: every agent's observation, side by side.
            state: Some(ObservationSpace::f32(&[o * self.cfg.players])),
        }
    }

    fn reset(&mut self) {
        self.field.fill(0);
        self.players.clear();
        self.spawn_players();
        self.spawn_food();
        self.current_step = 0;
        self.gen_valid_moves();
    }

    fn step(&mut self, actions: &[Action<'_>], steps: &mut [AgentStep]) {
        let chosen: Vec<usize> = actions
            .iter()
            .map(|a| match a {
                Action::Discrete(x) => x.first().map_or(NONE, |&v| usize::try_from(v).unwrap_or(NONE)),
                Action::Continuous(_) => NONE,
            })
            .collect();
        self.step_actions(&chosen);
        let (terminated, truncated) = (self.terminated(), self.truncated());
        for (s, &r) in steps.iter_mut().zip(&self.rewards) {
            *s = AgentStep {
                reward: r as f32,
                terminated,
                truncated,
            };
        }
    }

    fn observe(&self, agent: usize, out: &mut [f32]) {
        self.observe_player(agent, out);
    }

    fn state(&self, out: &mut [f32]) {
        let o = self.cfg.observation_size();
        for (i, row) in out.chunks_exact_mut(o).enumerate().take(self.cfg.players) {
            self.observe_player(i, row);
        }
    }

    fn is_live(&self, _agent: usize) -> bool {
        // Every player acts until the episode ends, for all of them at once.
        !(self.terminated() || self.truncated())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_as_the_package_registers_them() {
        let c = ForagingConfig::from_id("Foraging-8x8-2p-2f-coop-v3").unwrap();
        assert_eq!(
            (c.size, c.players, c.max_num_food, c.sight, c.force_coop),
            (8, 2, 2, 8, true)
        );
        let c = ForagingConfig::from_id("Foraging-2s-10x10-3p-3f-v3").unwrap();
        assert_eq!(
            (c.size, c.players, c.max_num_food, c.sight, c.force_coop),
            (10, 3, 3, 2, false)
        );
        for bad in [
            "Foraging-8x8-2p-2f-coop-v2",
            "Foraging-8x9-2p-2f-v3",
            "Foraging-4x4-2p-2f-v3",
            "Foraging-8x8-1p-2f-v3",
            "Foraging-8x8-2p-5f-v3",
            "Foraging-3s-8x8-2p-2f-v3",
            "Foraging-grid-8x8-2p-2f-v3",
            "Foraging8x8-2p-2f-v3",
        ] {
            assert!(ForagingConfig::from_id(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn spawned_states_follow_the_rules() {
        let mut env = Foraging::new("Foraging-8x8-2p-2f-coop-v3", 3).unwrap();
        for _ in 0..200 {
            env.reset();
            let levels: u32 = env.players().iter().map(|p| p.level).sum();
            let foods: Vec<(usize, u32)> = env
                .field()
                .iter()
                .copied()
                .enumerate()
                .filter(|&(_, f)| f > 0)
                .collect();
            assert_eq!(foods.len(), 2);
            for &(cell, f) in &foods {
                // Cooperative: every item needs both players.
                assert_eq!(f, levels);
                let (r, c) = (cell / 8, cell % 8);
                assert!((1..7).contains(&r) && (1..7).contains(&c), "food at {r},{c}");
                assert!(!env.players().iter().any(|p| (p.row, p.col) == (r, c)));
            }
            let (a, b) = (foods[0].0, foods[1].0);
            let (dr, dc) = ((a / 8).abs_diff(b / 8), (a % 8).abs_diff(b % 8));
            assert!(dr.max(dc) > 1 && !(dr == 0 && dc <= 2) && !(dc == 0 && dr <= 2));
            assert_eq!(env.food_spawned(), 2 * levels);
        }
    }

    #[test]
    fn loading_together_collects_and_rewards_sum_to_one() {
        let mut env = Foraging::new("Foraging-8x8-2p-1f-coop-v3", 0).unwrap();
        let mut field = vec![0; 64];
        field[3 * 8 + 3] = 3;
        let players = [
            Player {
                row: 2,
                col: 3,
                level: 1,
            },
            Player {
                row: 3,
                col: 4,
                level: 2,
            },
        ];
        env.set_state(&field, &players, 3, 0);
        // One alone cannot load a level-3 item.
        let r = env.step_actions(&[LOAD, NONE]).to_vec();
        assert_eq!(r, vec![0.0, 0.0]);
        assert!(!env.terminated());
        let r = env.step_actions(&[LOAD, LOAD]).to_vec();
        assert!(
            (r[0] - 1.0 / 3.0).abs() < 1e-12 && (r[1] - 2.0 / 3.0).abs() < 1e-12,
            "{r:?}"
        );
        assert!(env.terminated() && !env.truncated());
    }

    #[test]
    fn colliding_players_stay_and_swaps_pass() {
        let mut env = Foraging::new("Foraging-8x8-2p-1f-v3", 0).unwrap();
        let mut field = vec![0; 64];
        field[6 * 8 + 6] = 1;
        env.set_state(
            &field,
            &[
                Player {
                    row: 0,
                    col: 0,
                    level: 1,
                },
                Player {
                    row: 0,
                    col: 2,
                    level: 1,
                },
            ],
            1,
            0,
        );
        env.step_actions(&[EAST, WEST]);
        assert_eq!((env.players()[0].col, env.players()[1].col), (0, 2));
        env.step_actions(&[EAST, NONE]);
        env.step_actions(&[EAST, WEST]);
        assert_eq!((env.players()[0].col, env.players()[1].col), (2, 1));
    }

    #[test]
    fn the_step_limit_truncates() {
        let mut env = Foraging::new("Foraging-8x8-2p-2f-coop-v3", 1).unwrap();
        env.reset();
        for t in 1..=50 {
            env.step_actions(&[NONE, NONE]);
            assert_eq!(env.truncated(), t == 50);
            assert!(!env.terminated());
        }
    }
}
