//! A sum tree over slot priorities: O(log n) update, O(log n) sampling in proportion to
//! priority, O(1) total. The index behind prioritized replay (Schaul et al. 2016; Reverb's
//! `PrioritizedSelector` and Ape-X use the same structure).
//!
//! Leaves are slots `0..capacity`; the tree grows (doubling) when a slot beyond it is set.
//! Sums are kept in f64; a leaf is set, never added to, so rounding does not accumulate in the
//! leaves, and the inner sums are recomputed from their two children on every update.

#[derive(Debug, Clone, Default)]
pub struct SumTree {
    /// `2 * cap` nodes: node 1 is the root, node i's children are 2i and 2i + 1, leaf s is
    /// node `cap + s`. Node 0 is unused.
    nodes: Vec<f64>,
    cap: usize,
}

impl SumTree {
    pub fn new() -> SumTree {
        SumTree {
            nodes: vec![0.0; 2],
            cap: 1,
        }
    }

    /// Slots the tree holds without growing.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The sum of every slot's priority.
    pub fn total(&self) -> f64 {
        self.nodes[1]
    }

    pub fn get(&self, slot: usize) -> f64 {
        if slot >= self.cap {
            return 0.0;
        }
        self.nodes[self.cap + slot]
    }

    /// Sets slot's priority (finite and >= 0; 0 frees it from sampling).
    pub fn set(&mut self, slot: usize, priority: f64) {
        debug_assert!(priority.is_finite() && priority >= 0.0, "{priority}");
        while slot >= self.cap {
            self.grow();
        }
        let mut i = self.cap + slot;
        self.nodes[i] = priority;
        while i > 1 {
            i /= 2;
            self.nodes[i] = self.nodes[2 * i] + self.nodes[2 * i + 1];
        }
    }

    fn grow(&mut self) {
        let cap = self.cap * 2;
        let mut nodes = vec![0.0; 2 * cap];
        nodes[cap..cap + self.cap].copy_from_slice(&self.nodes[self.cap..]);
        for i in (1..cap).rev() {
            nodes[i] = nodes[2 * i] + nodes[2 * i + 1];
        }
        self.nodes = nodes;
        self.cap = cap;
    }

    /// The slot whose cumulative range holds `u * total` (`u` in [0, 1)); `None` when every
    /// priority is 0. A slot of priority 0 is never returned.
    pub fn find(&self, u: f64) -> Option<usize> {
        let total = self.total();
        if total <= 0.0 {
            return None;
        }
        let mut target = u.clamp(0.0, 1.0) * total;
        let mut i = 1;
        while i < self.cap {
            let left = self.nodes[2 * i];
            // Rounding can leave `target` a hair above the left sum of a right child that is 0:
            // go where the mass is.
            if (target < left && left > 0.0) || self.nodes[2 * i + 1] <= 0.0 {
                i *= 2;
            } else {
                target -= left;
                i = 2 * i + 1;
            }
        }
        let slot = i - self.cap;
        (self.nodes[i] > 0.0).then_some(slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// After any sequence of sets, the total is the sum of the leaves and `find` returns
        /// the slot a linear prefix scan gives (a model of the tree).
        #[test]
        fn matches_a_prefix_scan(
            sets in prop::collection::vec((0usize..40, 0u32..100), 1..120),
            us in prop::collection::vec(0.0f64..1.0, 1..40),
        ) {
            let mut tree = SumTree::new();
            let mut model = vec![0.0f64; 40];
            for (slot, p) in sets {
                let p = p as f64 / 7.0;
                tree.set(slot, p);
                model[slot] = p;
            }
            let total: f64 = model.iter().sum();
            prop_assert!((tree.total() - total).abs() < 1e-9 * total.max(1.0));
            for u in us {
                let got = tree.find(u);
                if total == 0.0 {
                    prop_assert_eq!(got, None);
                    continue;
                }
                let slot = got.expect("mass somewhere");
                prop_assert!(model[slot] > 0.0, "slot {slot} has no priority");
                let before: f64 = model[..slot].iter().sum();
                let target = u * total;
                let tol = 1e-9 * total.max(1.0);
                prop_assert!(before <= target + tol && target < before + model[slot] + tol,
                    "u {u}: slot {slot} covers [{before}, {}) of {total}", before + model[slot]);
            }
        }
    }

    #[test]
    fn zero_priorities_are_never_found() {
        let mut t = SumTree::new();
        assert_eq!(t.find(0.5), None);
        t.set(5, 1.0);
        t.set(2, 0.0);
        for k in 0..100 {
            assert_eq!(t.find(k as f64 / 100.0), Some(5));
        }
        assert_eq!(t.find(1.0), Some(5));
        t.set(5, 0.0);
        assert_eq!(t.find(0.3), None);
    }
}
