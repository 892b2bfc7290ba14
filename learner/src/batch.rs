//! Validated rollout data as plain vectors, and assembly of [T, B] batches from them.
//!
//! A rollout is T steps of N env columns. The learner takes columns until it has B of them,
//! splitting a rollout when it straddles two batches.

/// T steps of N env columns, checked at the edge (see `ingest`). Arrays are row-major with the
/// step first: `[T, N, ..]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Columns {
    pub t: usize,
    pub n: usize,
    pub obs_size: usize,
    pub num_actions: usize,
    pub policy_version: u64,
    /// [T + 1, N, obs]: the T step observations, then the bootstrap observations.
    pub observations: Vec<f32>,
    /// [T, N].
    pub actions: Vec<i64>,
    pub rewards: Vec<f32>,
    pub terminated: Vec<bool>,
    pub truncated: Vec<bool>,
    /// [T, N, A].
    pub logits: Vec<f32>,
    /// (t, n) of each truncated step, in row-major order, with its last observation [K, obs].
    pub truncations: Vec<(usize, usize)>,
    pub truncation_observations: Vec<f32>,
}

/// Splits `[rows, n, width]` row-major data into columns `..at` and `at..`.
fn split_rows<T: Copy>(data: &[T], rows: usize, n: usize, width: usize, at: usize) -> (Vec<T>, Vec<T>) {
    let mut left = Vec::with_capacity(rows * at * width);
    let mut right = Vec::with_capacity(rows * (n - at) * width);
    for r in 0..rows {
        let row = &data[r * n * width..(r + 1) * n * width];
        left.extend_from_slice(&row[..at * width]);
        right.extend_from_slice(&row[at * width..]);
    }
    (left, right)
}

impl Columns {
    /// Splits into columns `..at` and `at..`.
    pub fn split(self, at: usize) -> (Columns, Columns) {
        assert!(at > 0 && at < self.n, "split at {at} of {} columns", self.n);
        let (t, n, o, a) = (self.t, self.n, self.obs_size, self.num_actions);
        let (obs_l, obs_r) = split_rows(&self.observations, t + 1, n, o, at);
        let (act_l, act_r) = split_rows(&self.actions, t, n, 1, at);
        let (rew_l, rew_r) = split_rows(&self.rewards, t, n, 1, at);
        let (term_l, term_r) = split_rows(&self.terminated, t, n, 1, at);
        let (trunc_l, trunc_r) = split_rows(&self.truncated, t, n, 1, at);
        let (log_l, log_r) = split_rows(&self.logits, t, n, a, at);
        let (mut tr_l, mut tr_r) = (Vec::new(), Vec::new());
        let (mut tro_l, mut tro_r) = (Vec::new(), Vec::new());
        for (k, &(step, col)) in self.truncations.iter().enumerate() {
            let row = &self.truncation_observations[k * o..(k + 1) * o];
            if col < at {
                tr_l.push((step, col));
                tro_l.extend_from_slice(row);
            } else {
                tr_r.push((step, col - at));
                tro_r.extend_from_slice(row);
            }
        }
        let make =
            |n, observations, actions, rewards, terminated, truncated, logits, truncations, truncation_observations| {
                Columns {
                    t,
                    n,
                    obs_size: o,
                    num_actions: a,
                    policy_version: self.policy_version,
                    observations,
                    actions,
                    rewards,
                    terminated,
                    truncated,
                    logits,
                    truncations,
                    truncation_observations,
                }
            };
        (
            make(at, obs_l, act_l, rew_l, term_l, trunc_l, log_l, tr_l, tro_l),
            make(n - at, obs_r, act_r, rew_r, term_r, trunc_r, log_r, tr_r, tro_r),
        )
    }
}

/// One [T, B] batch, ready to become tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub t: usize,
    pub b: usize,
    pub obs_size: usize,
    pub num_actions: usize,
    /// [T + 1, B, obs].
    pub observations: Vec<f32>,
    /// [T, B].
    pub actions: Vec<i64>,
    pub rewards: Vec<f32>,
    pub terminated: Vec<f32>,
    pub truncated: Vec<f32>,
    /// [T, B, A].
    pub logits: Vec<f32>,
    /// Flat (t * B + b) index of each truncated step, and its last observation [K, obs].
    pub truncation_index: Vec<i64>,
    pub truncation_observations: Vec<f32>,
    /// Policy version of each column.
    pub versions: Vec<u64>,
}

/// Collects columns into batches of exactly B.
pub struct Batcher {
    batch_size: usize,
    parts: Vec<Columns>,
    have: usize,
}

impl Batcher {
    pub fn new(batch_size: usize) -> Batcher {
        Batcher {
            batch_size,
            parts: Vec::new(),
            have: 0,
        }
    }

    /// Columns held back for the next batch.
    pub fn pending_columns(&self) -> usize {
        self.have
    }

    /// Adds a rollout; returns a batch when B columns are there. Columns past B stay for the
    /// next batch.
    pub fn push(&mut self, cols: Columns) -> Option<Batch> {
        self.have += cols.n;
        self.parts.push(cols);
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
        Some(assemble(&take))
    }
}

/// Lays columns side by side: [T, n1] + [T, n2] + .. = [T, B].
fn assemble(parts: &[Columns]) -> Batch {
    let first = &parts[0];
    let (t, o, a) = (first.t, first.obs_size, first.num_actions);
    let b: usize = parts.iter().map(|p| p.n).sum();
    let mut batch = Batch {
        t,
        b,
        obs_size: o,
        num_actions: a,
        observations: Vec::with_capacity((t + 1) * b * o),
        actions: Vec::with_capacity(t * b),
        rewards: Vec::with_capacity(t * b),
        terminated: Vec::with_capacity(t * b),
        truncated: Vec::with_capacity(t * b),
        logits: Vec::with_capacity(t * b * a),
        truncation_index: Vec::new(),
        truncation_observations: Vec::new(),
        versions: Vec::with_capacity(b),
    };
    for row in 0..=t {
        for p in parts {
            batch
                .observations
                .extend_from_slice(&p.observations[row * p.n * o..(row + 1) * p.n * o]);
        }
    }
    for row in 0..t {
        for p in parts {
            let r = row * p.n..(row + 1) * p.n;
            batch.actions.extend_from_slice(&p.actions[r.clone()]);
            batch.rewards.extend_from_slice(&p.rewards[r.clone()]);
            batch
                .terminated
                .extend(p.terminated[r.clone()].iter().map(|&x| x as u8 as f32));
            batch.truncated.extend(p.truncated[r].iter().map(|&x| x as u8 as f32));
            batch
                .logits
                .extend_from_slice(&p.logits[row * p.n * a..(row + 1) * p.n * a]);
        }
    }
    let mut offset = 0;
    for p in parts {
        for (k, &(step, col)) in p.truncations.iter().enumerate() {
            batch.truncation_index.push((step * b + offset + col) as i64);
            batch
                .truncation_observations
                .extend_from_slice(&p.truncation_observations[k * o..(k + 1) * o]);
        }
        batch.versions.extend(std::iter::repeat_n(p.policy_version, p.n));
        offset += p.n;
    }
    batch
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Columns whose every value encodes (id, t, n), so the assembled batch can be checked.
    pub fn tagged(id: u64, t: usize, n: usize, truncs: &[(usize, usize)]) -> Columns {
        let (o, a) = (2, 2);
        let v = |t: usize, c: usize, k: usize| (id * 10000 + t as u64 * 100 + c as u64 * 10 + k as u64) as f32;
        let mut c = Columns {
            t,
            n,
            obs_size: o,
            num_actions: a,
            policy_version: id,
            observations: Vec::new(),
            actions: Vec::new(),
            rewards: Vec::new(),
            terminated: Vec::new(),
            truncated: Vec::new(),
            logits: Vec::new(),
            truncations: truncs.to_vec(),
            truncation_observations: Vec::new(),
        };
        for s in 0..=t {
            for col in 0..n {
                c.observations.extend([v(s, col, 0), v(s, col, 1)]);
                if s < t {
                    c.actions.push((id * 1000 + s as u64 * 10 + col as u64) as i64);
                    c.rewards.push(v(s, col, 0));
                    c.terminated.push((s + col) % 3 == 0);
                    c.truncated.push(truncs.contains(&(s, col)));
                    c.logits.extend([v(s, col, 0), v(s, col, 1)]);
                }
            }
        }
        for &(s, col) in truncs {
            c.truncation_observations.extend([-v(s, col, 0), -v(s, col, 1)]);
        }
        c
    }

    #[test]
    fn batches_take_exactly_b_columns_and_keep_the_rest() {
        let mut batcher = Batcher::new(5);
        assert!(batcher.push(tagged(1, 3, 3, &[(0, 2)])).is_none());
        let batch = batcher.push(tagged(2, 3, 3, &[(1, 0), (2, 2)])).expect("6 >= 5");
        assert_eq!(batcher.pending_columns(), 1);
        assert_eq!((batch.t, batch.b), (3, 5));
        assert_eq!(batch.versions, vec![1, 1, 1, 2, 2]);
        // Row 1 of actions: rollout 1 columns 0..3, then rollout 2 columns 0..2.
        assert_eq!(&batch.actions[5..10], &[1010, 1011, 1012, 2010, 2011]);
        // Bootstrap row (t = 3), column 4 = rollout 2 column 1.
        let at = (3 * 5 + 4) * 2;
        assert_eq!(batch.observations[at], 20310.0);
        // Truncations: (0, 2) of rollout 1 -> flat 2; (1, 0) of rollout 2 -> flat 1 * 5 + 3.
        // (2, 2) of rollout 2 is column 2 of rollout 2, which went to the next batch.
        assert_eq!(batch.truncation_index, vec![2, 8]);
        assert_eq!(
            batch.truncation_observations,
            vec![-10020.0, -10021.0, -20100.0, -20101.0]
        );
        assert_eq!(batch.truncated.iter().filter(|&&x| x == 1.0).count(), 2);

        // The leftover column carries its truncation into the next batch, re-indexed.
        let batch = batcher.push(tagged(3, 3, 4, &[])).expect("1 + 4 = 5");
        assert_eq!(batch.versions, vec![2, 3, 3, 3, 3]);
        assert_eq!(batch.truncation_index, vec![2 * 5]);
        assert_eq!(batch.truncation_observations, vec![-20220.0, -20221.0]);
        assert_eq!(batch.actions[0], 2002);
        assert_eq!(batcher.pending_columns(), 0);
    }

    #[test]
    fn split_then_assemble_is_the_identity() {
        let c = tagged(4, 5, 6, &[(0, 1), (3, 4), (4, 5)]);
        let (l, r) = c.clone().split(2);
        assert_eq!((l.n, r.n), (2, 4));
        assert_eq!(r.truncations, vec![(3, 2), (4, 3)]);
        let whole = assemble(&[c]);
        let parts = assemble(&[l, r]);
        assert_eq!(whole, parts);
    }
}
