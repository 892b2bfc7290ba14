//! Validated rollout data as raw bytes, and assembly of [T, B] batches from it.
//!
//! A rollout is T steps of N env columns. Every array is kept as the little-endian bytes it
//! arrived in (u8 pixels stay u8, actions stay i64 or f32), so decoding is one copy from the
//! wire and assembling a batch is one more; the arrays become tensors in the trainer.
//!
//! The batcher takes columns until it has B of them, splitting a rollout that straddles two
//! batches. When full, it holds at most `B - 1` columns plus the rollout just pushed: the model
//! thread drains every complete batch before it takes the next rollout.

/// `rows` rows of `n` columns, `width` bytes per column per row, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    pub rows: usize,
    pub width: usize,
    pub data: Vec<u8>,
}

impl Rows {
    pub fn new(rows: usize, width: usize, data: Vec<u8>) -> Rows {
        Rows { rows, width, data }
    }

    /// Splits `n` columns into `..at` and `at..`.
    fn split(&self, n: usize, at: usize) -> (Rows, Rows) {
        let w = self.width;
        let mut left = Vec::with_capacity(self.rows * at * w);
        let mut right = Vec::with_capacity(self.rows * (n - at) * w);
        for r in 0..self.rows {
            let row = &self.data[r * n * w..(r + 1) * n * w];
            left.extend_from_slice(&row[..at * w]);
            right.extend_from_slice(&row[at * w..]);
        }
        (Rows::new(self.rows, w, left), Rows::new(self.rows, w, right))
    }

    /// Lays parts side by side: `[rows, n1] + [rows, n2] + .. = [rows, sum n]`.
    fn concat<'a>(parts: impl Iterator<Item = (&'a Rows, usize)> + Clone) -> Rows {
        let mut it = parts.clone();
        let (first, _) = it.next().expect("one or more parts");
        let (rows, w) = (first.rows, first.width);
        let total: usize = parts.clone().map(|(_, n)| n).sum();
        let mut data = Vec::with_capacity(rows * total * w);
        for r in 0..rows {
            for (p, n) in parts.clone() {
                data.extend_from_slice(&p.data[r * n * w..(r + 1) * n * w]);
            }
        }
        Rows::new(rows, w, data)
    }
}

/// T steps of N env columns, checked at the edge (see `ingest`).
#[derive(Debug, Clone, PartialEq)]
pub struct Columns {
    pub t: usize,
    pub n: usize,
    pub policy_version: u64,
    /// T + 1 rows of observations (the last is the bootstrap observation).
    pub observations: Rows,
    /// T rows of actions (`action_dim` i64 or f32 each).
    pub actions: Rows,
    /// T rows of f32.
    pub rewards: Rows,
    /// T rows of u8 0/1.
    pub terminated: Rows,
    pub truncated: Rows,
    /// T rows of u8: 0 where a step was only an env's reset (no transition), else 1.
    pub valid: Rows,
    /// T rows of the behaviour distribution's parameters (f32).
    pub params: Rows,
    /// T rows of u8 legal-action masks, when the env has them.
    pub masks: Option<Rows>,
    /// One row: the recurrent state at the start of the unroll (f32), with an LSTM core.
    pub state: Option<Rows>,
    /// (t, n) of each truncated step, in row-major order, with its last observation.
    pub truncations: Vec<(usize, usize)>,
    /// `[K, obs bytes]`.
    pub truncation_observations: Vec<u8>,
    /// Each column's agent: its index among the policy's agents.
    pub agent_index: Vec<i64>,
    /// T + 1 rows of the env's state (f32), with a centralized critic.
    pub states: Option<Rows>,
    /// `[K, state bytes]`, with a centralized critic.
    pub truncation_states: Vec<u8>,
}

impl Columns {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        let rows = [
            Some(&self.observations),
            Some(&self.actions),
            Some(&self.rewards),
            Some(&self.terminated),
            Some(&self.truncated),
            Some(&self.valid),
            Some(&self.params),
            self.masks.as_ref(),
            self.state.as_ref(),
            self.states.as_ref(),
        ];
        rows.iter().flatten().map(|r| r.data.len()).sum::<usize>()
            + self.truncation_observations.len()
            + self.truncation_states.len()
            + self.agent_index.len() * 8
    }

    /// Splits into columns `..at` and `at..`.
    pub fn split(self, at: usize) -> (Columns, Columns) {
        assert!(at > 0 && at < self.n, "split at {at} of {} columns", self.n);
        let n = self.n;
        let split = |r: &Rows| r.split(n, at);
        let split_opt = |r: &Option<Rows>| match r {
            Some(r) => {
                let (a, b) = r.split(n, at);
                (Some(a), Some(b))
            }
            None => (None, None),
        };
        let (obs_l, obs_r) = split(&self.observations);
        let (act_l, act_r) = split(&self.actions);
        let (rew_l, rew_r) = split(&self.rewards);
        let (term_l, term_r) = split(&self.terminated);
        let (trunc_l, trunc_r) = split(&self.truncated);
        let (valid_l, valid_r) = split(&self.valid);
        let (par_l, par_r) = split(&self.params);
        let (mask_l, mask_r) = split_opt(&self.masks);
        let (state_l, state_r) = split_opt(&self.state);
        let (states_l, states_r) = split_opt(&self.states);
        let ob = self.observations.width;
        let sb = self.states.as_ref().map_or(0, |r| r.width);
        let (mut tr_l, mut tr_r) = (Vec::new(), Vec::new());
        let (mut tro_l, mut tro_r) = (Vec::new(), Vec::new());
        let (mut trs_l, mut trs_r) = (Vec::new(), Vec::new());
        for (k, &(step, col)) in self.truncations.iter().enumerate() {
            let row = &self.truncation_observations[k * ob..(k + 1) * ob];
            let srow = &self.truncation_states[k * sb..(k + 1) * sb];
            if col < at {
                tr_l.push((step, col));
                tro_l.extend_from_slice(row);
                trs_l.extend_from_slice(srow);
            } else {
                tr_r.push((step, col - at));
                tro_r.extend_from_slice(row);
                trs_r.extend_from_slice(srow);
            }
        }
        let left = Columns {
            t: self.t,
            n: at,
            policy_version: self.policy_version,
            observations: obs_l,
            actions: act_l,
            rewards: rew_l,
            terminated: term_l,
            truncated: trunc_l,
            valid: valid_l,
            params: par_l,
            masks: mask_l,
            state: state_l,
            truncations: tr_l,
            truncation_observations: tro_l,
            agent_index: self.agent_index[..at].to_vec(),
            states: states_l,
            truncation_states: trs_l,
        };
        let right = Columns {
            t: self.t,
            n: n - at,
            policy_version: self.policy_version,
            observations: obs_r,
            actions: act_r,
            rewards: rew_r,
            terminated: term_r,
            truncated: trunc_r,
            valid: valid_r,
            params: par_r,
            masks: mask_r,
            state: state_r,
            truncations: tr_r,
            truncation_observations: tro_r,
            agent_index: self.agent_index[at..].to_vec(),
            states: states_r,
            truncation_states: trs_r,
        };
        (left, right)
    }
}

/// One [T, B] batch: B columns side by side, ready to become tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub cols: Columns,
    /// Flat (t * B + b) index of each truncated step (same order as the observations).
    pub truncation_index: Vec<i64>,
    /// Policy version of each column.
    pub versions: Vec<u64>,
}

impl Batch {
    pub fn t(&self) -> usize {
        self.cols.t
    }

    pub fn b(&self) -> usize {
        self.cols.n
    }
}

/// Collects columns into batches of exactly B.
pub struct Batcher {
    batch_size: usize,
    parts: Vec<Columns>,
    have: usize,
    bytes: usize,
}

impl Batcher {
    pub fn new(batch_size: usize) -> Batcher {
        Batcher {
            batch_size,
            parts: Vec::new(),
            have: 0,
            bytes: 0,
        }
    }

    /// Columns held back for the next batch.
    pub fn pending_columns(&self) -> usize {
        self.have
    }

    /// Bytes held back for the next batch.
    pub fn pending_bytes(&self) -> usize {
        self.bytes
    }

    /// Adds a rollout's columns. Take the complete batches with [`Batcher::next_batch`]
    /// until it returns `None` before pushing again.
    pub fn push(&mut self, cols: Columns) {
        self.have += cols.n;
        self.bytes += cols.bytes();
        self.parts.push(cols);
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Batches from now on have `b` columns (a learner with replay takes B less the replayed
    /// share from the stream, or all B when replay cannot give its share).
    pub fn set_batch_size(&mut self, b: usize) {
        assert!(b > 0, "a batch of 0 columns");
        self.batch_size = b;
    }

    /// Puts columns taken with [`Batcher::next_parts`] back, first in line.
    pub fn unshift(&mut self, parts: Vec<Columns>) {
        for p in &parts {
            self.have += p.n;
            self.bytes += p.bytes();
        }
        let rest = std::mem::take(&mut self.parts);
        self.parts = parts;
        self.parts.extend(rest);
    }

    /// The next batch of exactly B columns, if there are that many.
    pub fn next_batch(&mut self) -> Option<Batch> {
        self.next_parts().map(|p| assemble(&p))
    }

    /// The columns of the next batch, as parts in arrival order, before [`assemble`].
    pub fn next_parts(&mut self) -> Option<Vec<Columns>> {
        if self.have < self.batch_size {
            return None;
        }
        let mut take = Vec::new();
        let mut need = self.batch_size;
        let mut rest = Vec::new();
        for p in self.parts.drain(..) {
            if need == 0 {
                rest.push(p);
            } else if p.n <= need {
                need -= p.n;
                take.push(p);
            } else {
                let (l, r) = p.split(need);
                need = 0;
                take.push(l);
                rest.push(r);
            }
        }
        self.parts = rest;
        self.have -= self.batch_size;
        self.bytes = self.parts.iter().map(Columns::bytes).sum();
        Some(take)
    }
}

/// Lays columns side by side: [T, n1] + [T, n2] + .. = [T, B].
pub fn assemble(parts: &[Columns]) -> Batch {
    let first = &parts[0];
    let b: usize = parts.iter().map(|p| p.n).sum();
    let side = |f: fn(&Columns) -> &Rows| Rows::concat(parts.iter().map(move |p| (f(p), p.n)));
    let side_opt = |f: fn(&Columns) -> Option<&Rows>| {
        if f(first).is_some() {
            Some(Rows::concat(
                parts
                    .iter()
                    .map(move |p| (f(p).expect("same spec for every part"), p.n)),
            ))
        } else {
            None
        }
    };
    let mut truncations = Vec::new();
    let mut truncation_observations = Vec::new();
    let mut truncation_states = Vec::new();
    let mut truncation_index = Vec::new();
    let mut agent_index = Vec::with_capacity(b);
    let mut versions = Vec::with_capacity(b);
    let mut offset = 0;
    for p in parts {
        for &(step, col) in &p.truncations {
            truncations.push((step, offset + col));
            truncation_index.push((step * b + offset + col) as i64);
        }
        truncation_observations.extend_from_slice(&p.truncation_observations);
        truncation_states.extend_from_slice(&p.truncation_states);
        agent_index.extend_from_slice(&p.agent_index);
        versions.extend(std::iter::repeat_n(p.policy_version, p.n));
        offset += p.n;
    }
    let cols = Columns {
        t: first.t,
        n: b,
        policy_version: parts.iter().map(|p| p.policy_version).min().unwrap_or(0),
        observations: side(|c| &c.observations),
        actions: side(|c| &c.actions),
        rewards: side(|c| &c.rewards),
        terminated: side(|c| &c.terminated),
        truncated: side(|c| &c.truncated),
        valid: side(|c| &c.valid),
        params: side(|c| &c.params),
        masks: side_opt(|c| c.masks.as_ref()),
        state: side_opt(|c| c.state.as_ref()),
        truncations,
        truncation_observations,
        agent_index,
        states: side_opt(|c| c.states.as_ref()),
        truncation_states,
    };
    Batch {
        cols,
        truncation_index,
        versions,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::{prop, prop_assert, prop_assert_eq, proptest, ProptestConfig};

    /// Columns whose every value encodes (id, t, n), so an assembled batch can be checked. Two
    /// f32 observation values, one i64 action, two params, a 2-wide mask and a 1-float state.
    pub fn tagged(id: u64, t: usize, n: usize, truncs: &[(usize, usize)]) -> Columns {
        let v = |t: usize, c: usize, k: usize| (id * 10000 + t as u64 * 100 + c as u64 * 10 + k as u64) as f32;
        let f32s = |x: &[f32]| bytemuck::cast_slice::<f32, u8>(x).to_vec();
        let (mut obs, mut act, mut rew, mut term, mut trunc, mut par, mut mask) =
            (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
        for s in 0..=t {
            for col in 0..n {
                obs.extend([v(s, col, 0), v(s, col, 1)]);
                if s < t {
                    act.push((id * 1000 + s as u64 * 10 + col as u64) as i64);
                    rew.push(v(s, col, 0));
                    term.push(((s + col) % 3 == 0) as u8);
                    trunc.push(truncs.contains(&(s, col)) as u8);
                    par.extend([v(s, col, 0), v(s, col, 1)]);
                    mask.extend([1u8, (col % 2) as u8]);
                }
            }
        }
        let state: Vec<f32> = (0..n).map(|col| v(0, col, 9)).collect();
        let mut tro = Vec::new();
        for &(s, col) in truncs {
            tro.extend([-v(s, col, 0), -v(s, col, 1)]);
        }
        Columns {
            t,
            n,
            policy_version: id,
            observations: Rows::new(t + 1, 8, f32s(&obs)),
            actions: Rows::new(t, 8, bytemuck::cast_slice(&act).to_vec()),
            rewards: Rows::new(t, 4, f32s(&rew)),
            terminated: Rows::new(t, 1, term),
            truncated: Rows::new(t, 1, trunc),
            valid: Rows::new(t, 1, vec![1; t * n]),
            params: Rows::new(t, 8, f32s(&par)),
            masks: Some(Rows::new(t, 2, mask)),
            state: Some(Rows::new(1, 4, f32s(&state))),
            truncations: truncs.to_vec(),
            truncation_observations: f32s(&tro),
            agent_index: (0..n as i64).collect(),
            states: None,
            truncation_states: Vec::new(),
        }
    }

    fn f32_at(r: &Rows, i: usize) -> f32 {
        bytemuck::pod_read_unaligned(&r.data[i * 4..i * 4 + 4])
    }

    fn i64s(r: &Rows) -> Vec<i64> {
        bytemuck::pod_collect_to_vec(&r.data)
    }

    #[test]
    fn batches_take_exactly_b_columns_and_keep_the_rest() {
        let mut batcher = Batcher::new(5);
        batcher.push(tagged(1, 3, 3, &[(0, 2)]));
        assert!(batcher.next_batch().is_none());
        batcher.push(tagged(2, 3, 3, &[(1, 0), (2, 2)]));
        let batch = batcher.next_batch().expect("6 >= 5");
        assert!(batcher.next_batch().is_none());
        assert_eq!(batcher.pending_columns(), 1);
        assert_eq!((batch.t(), batch.b()), (3, 5));
        assert_eq!(batch.versions, vec![1, 1, 1, 2, 2]);
        // Row 1 of actions: rollout 1 columns 0..3, then rollout 2 columns 0..2.
        assert_eq!(&i64s(&batch.cols.actions)[5..10], &[1010, 1011, 1012, 2010, 2011]);
        // Bootstrap row (t = 3), column 4 = rollout 2 column 1.
        assert_eq!(f32_at(&batch.cols.observations, (3 * 5 + 4) * 2), 20310.0);
        // Truncations: (0, 2) of rollout 1 -> flat 2; (1, 0) of rollout 2 -> flat 1 * 5 + 3.
        // (2, 2) of rollout 2 is column 2 of rollout 2, which went to the next batch.
        assert_eq!(batch.truncation_index, vec![2, 8]);
        let tro: Vec<f32> = bytemuck::pod_collect_to_vec(&batch.cols.truncation_observations);
        assert_eq!(tro, vec![-10020.0, -10021.0, -20100.0, -20101.0]);
        // States and masks travel with their columns.
        let states: Vec<f32> = bytemuck::pod_collect_to_vec(&batch.cols.state.as_ref().unwrap().data);
        assert_eq!(states, vec![10009.0, 10019.0, 10029.0, 20009.0, 20019.0]);
        assert_eq!(
            &batch.cols.masks.as_ref().unwrap().data[..10],
            &[1, 0, 1, 1, 1, 0, 1, 0, 1, 1]
        );

        // The leftover column carries its truncation into the next batch, re-indexed.
        batcher.push(tagged(3, 3, 4, &[]));
        let batch = batcher.next_batch().expect("1 + 4 = 5");
        assert_eq!(batch.versions, vec![2, 3, 3, 3, 3]);
        assert_eq!(batch.truncation_index, vec![2 * 5]);
        let tro: Vec<f32> = bytemuck::pod_collect_to_vec(&batch.cols.truncation_observations);
        assert_eq!(tro, vec![-20220.0, -20221.0]);
        assert_eq!(i64s(&batch.cols.actions)[0], 2002);
        assert_eq!(batcher.pending_columns(), 0);
        assert_eq!(batcher.pending_bytes(), 0);
    }

    #[test]
    fn split_then_assemble_is_the_identity() {
        let c = tagged(4, 5, 6, &[(0, 1), (3, 4), (4, 5)]);
        let (l, r) = c.clone().split(2);
        assert_eq!((l.n, r.n), (2, 4));
        assert_eq!(r.truncations, vec![(3, 2), (4, 3)]);
        let whole = assemble(std::slice::from_ref(&c));
        let parts = assemble(&[l, r]);
        assert_eq!(whole, parts);
        assert_eq!(whole.cols, c);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Against a simple model (a queue of (rollout, column) ids): every column comes out
        /// once, in order, in batches of exactly B, and the backlog never exceeds B - 1 columns
        /// after draining, whether rollouts are wider than, as wide as or narrower than B.
        #[test]
        fn batcher_matches_a_column_queue_and_stays_bounded(
            batch_size in 1usize..9,
            widths in prop::collection::vec(1usize..20, 1..30),
        ) {
            let mut batcher = Batcher::new(batch_size);
            let mut model: std::collections::VecDeque<(u64, usize)> = Default::default();
            for (i, &n) in widths.iter().enumerate() {
                let id = i as u64 + 1;
                batcher.push(tagged(id, 2, n, &[]));
                model.extend((0..n).map(|c| (id, c)));
                while let Some(batch) = batcher.next_batch() {
                    prop_assert_eq!(batch.b(), batch_size);
                    let acts = i64s(&batch.cols.actions);
                    for (&version, &act) in batch.versions.iter().zip(&acts[..batch_size]) {
                        let (id, c) = model.pop_front().expect("the model has the column");
                        prop_assert_eq!(version, id);
                        // Row 0's action encodes (id, t = 0, original column).
                        prop_assert_eq!(act, (id * 1000 + c as u64) as i64);
                    }
                }
                prop_assert_eq!(batcher.pending_columns(), model.len());
                prop_assert!(batcher.pending_columns() < batch_size);
            }
        }
    }
}
