//! One replay table's in-memory index: which items it holds, in insertion order, with their
//! priorities and sample counts; the sampler and remover; the rate limiter's counters. Item
//! payloads are not here: they live in Redis ([`super::storage`]), and this index is rebuilt
//! from Redis when the process restarts.
//!
//! Semantics follow Reverb's `Table`: an insert beyond `max_size` evicts the oldest item (the
//! FIFO remover); each draw of a sample is independent (with replacement) for the uniform and
//! prioritized samplers, and the oldest item for the FIFO sampler; an item drawn
//! `max_times_sampled` times is removed at once, so a batch never holds it twice after that.

use std::collections::{BTreeMap, HashMap};

use rand::Rng;

use super::rate_limiter::{Counts, RateLimiter};
use super::sum_tree::SumTree;

/// How a table draws its items.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    Uniform,
    /// Proportional prioritization: item i with probability `p_i^alpha / sum_j p_j^alpha`.
    Prioritized {
        alpha: f64,
    },
    /// The oldest item.
    Fifo,
}

/// What the index keeps of an item.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemInfo {
    pub priority: f64,
    pub times_sampled: u64,
    /// The Redis shard holding its payload.
    pub shard: usize,
    /// The policy version that produced it (for sample age).
    pub version: u64,
    /// Its payload's bytes.
    pub bytes: u64,
    slot: usize,
}

/// One draw of a sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Drawn {
    pub key: u64,
    /// The probability this draw had of picking it.
    pub probability: f64,
    /// Its sample count, this draw included.
    pub times_sampled: u64,
    pub shard: usize,
    pub version: u64,
    /// This draw was its last: it is gone from the table.
    pub removed: bool,
    /// Its priority and payload bytes (to put it back if the sample's writes fail).
    pub priority: f64,
    pub bytes: u64,
}

/// An item to add: its key (unique, increasing with insertion order) and what the index keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct NewItem {
    pub key: u64,
    pub priority: f64,
    pub shard: usize,
    pub version: u64,
    pub bytes: u64,
    /// Already sampled this often (an item rebuilt from Redis).
    pub times_sampled: u64,
}

#[derive(Debug)]
pub struct Table {
    pub max_size: u64,
    pub max_times_sampled: u64,
    pub sampler: Sampler,
    pub limiter: RateLimiter,
    items: HashMap<u64, ItemInfo>,
    /// Insertion order: key -> slot (keys increase with insertion).
    order: BTreeMap<u64, usize>,
    tree: SumTree,
    /// slot -> key.
    slots: Vec<Option<u64>>,
    free: Vec<usize>,
    counts: Counts,
    bytes: u64,
}

impl Table {
    pub fn new(max_size: u64, max_times_sampled: u64, sampler: Sampler, limiter: RateLimiter) -> Table {
        Table {
            max_size,
            max_times_sampled,
            sampler,
            limiter,
            items: HashMap::new(),
            order: BTreeMap::new(),
            tree: SumTree::new(),
            slots: Vec::new(),
            free: Vec::new(),
            counts: Counts::default(),
            bytes: 0,
        }
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Sets the lifetime counters (rebuilt from Redis); `size` stays what the index holds.
    pub fn set_totals(&mut self, inserts: u64, samples: u64) {
        self.counts.inserts = inserts;
        self.counts.samples = samples;
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Payload bytes of the items held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn get(&self, key: u64) -> Option<&ItemInfo> {
        self.items.get(&key)
    }

    /// Keys in insertion order.
    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.order.keys().copied()
    }

    /// The newest key held (keys of new items must be above it).
    pub fn last_key(&self) -> Option<u64> {
        self.order.keys().next_back().copied()
    }

    fn weight(&self, priority: f64) -> f64 {
        match self.sampler {
            Sampler::Prioritized { alpha } => priority.powf(alpha),
            Sampler::Uniform | Sampler::Fifo => 1.0,
        }
    }

    /// Adds items (counted as inserts unless `rebuilt`), then evicts the oldest beyond
    /// `max_size`. Returns the evicted keys, with their shards.
    pub fn add(&mut self, new: Vec<NewItem>, rebuilt: bool) -> Vec<(u64, usize)> {
        for it in new {
            debug_assert!(!self.items.contains_key(&it.key), "key {} twice", it.key);
            let slot = self.free.pop().unwrap_or_else(|| {
                self.slots.push(None);
                self.slots.len() - 1
            });
            self.slots[slot] = Some(it.key);
            self.tree.set(slot, self.weight(it.priority));
            self.order.insert(it.key, slot);
            self.bytes += it.bytes;
            self.items.insert(
                it.key,
                ItemInfo {
                    priority: it.priority,
                    times_sampled: it.times_sampled,
                    shard: it.shard,
                    version: it.version,
                    bytes: it.bytes,
                    slot,
                },
            );
            if !rebuilt {
                self.counts.inserts += 1;
            }
        }
        let mut evicted = Vec::new();
        while self.items.len() as u64 > self.max_size {
            let oldest = *self.order.keys().next().expect("non-empty");
            let shard = self.remove(oldest).expect("held").shard;
            evicted.push((oldest, shard));
        }
        self.counts.size = self.items.len() as u64;
        evicted
    }

    /// Takes `key` out of the index.
    pub fn remove(&mut self, key: u64) -> Option<ItemInfo> {
        let info = self.items.remove(&key)?;
        self.order.remove(&key);
        self.tree.set(info.slot, 0.0);
        self.slots[info.slot] = None;
        self.free.push(info.slot);
        self.bytes -= info.bytes;
        self.counts.size = self.items.len() as u64;
        Some(info)
    }

    /// Draws `n` items (the caller checked the rate limiter). Counts `n` samples.
    pub fn draw(&mut self, n: usize, rng: &mut impl Rng) -> Vec<Drawn> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let (key, probability) = match self.sampler {
                Sampler::Fifo => match self.order.keys().next() {
                    Some(&k) => (k, 1.0),
                    None => break,
                },
                Sampler::Uniform | Sampler::Prioritized { .. } => {
                    let Some(slot) = self.pick(rng) else { break };
                    let key = self.slots[slot].expect("a held slot");
                    let total = self.tree.total();
                    let p = if total > 0.0 {
                        self.tree.get(slot) / total
                    } else {
                        1.0 / self.items.len() as f64
                    };
                    (key, p)
                }
            };
            let info = self.items.get_mut(&key).expect("held");
            info.times_sampled += 1;
            let (times_sampled, shard, version) = (info.times_sampled, info.shard, info.version);
            let (priority, bytes) = (info.priority, info.bytes);
            let removed = self.max_times_sampled > 0 && times_sampled >= self.max_times_sampled;
            if removed {
                self.remove(key);
            }
            self.counts.samples += 1;
            out.push(Drawn {
                key,
                probability,
                times_sampled,
                shard,
                version,
                removed,
                priority,
                bytes,
            });
        }
        out
    }

    /// Takes back a draw whose writes to Redis failed: sample counts and removals as before.
    /// Returns what putting removed items back evicted (inserts may have filled the table
    /// since the draw).
    pub fn undo(&mut self, drawn: &[Drawn]) -> Vec<(u64, usize)> {
        let mut evicted = Vec::new();
        for d in drawn.iter().rev() {
            if d.removed {
                let out = self.add(
                    vec![NewItem {
                        key: d.key,
                        priority: d.priority,
                        shard: d.shard,
                        version: d.version,
                        bytes: d.bytes,
                        times_sampled: d.times_sampled - 1,
                    }],
                    true,
                );
                evicted.extend(out);
            } else if let Some(info) = self.items.get_mut(&d.key) {
                info.times_sampled = info.times_sampled.saturating_sub(1);
            }
            self.counts.samples -= 1;
        }
        evicted
    }

    fn pick(&self, rng: &mut impl Rng) -> Option<usize> {
        if self.items.is_empty() {
            return None;
        }
        // A sum of weights that rounded to 0 (all priorities 0 under prioritization): uniform.
        match self.tree.find(rng.random::<f64>()) {
            Some(slot) => Some(slot),
            None => {
                let k = rng.random_range(0..self.items.len());
                self.order.values().nth(k).copied()
            }
        }
    }

    /// New priorities for held items; keys no longer held are skipped (sampled to death or
    /// evicted since). Returns the keys updated.
    pub fn update_priorities(&mut self, updates: &[(u64, f64)]) -> Vec<u64> {
        let mut done = Vec::new();
        for &(key, priority) in updates {
            let Some(info) = self.items.get_mut(&key) else { continue };
            info.priority = priority;
            let slot = info.slot;
            let w = self.weight(priority);
            self.tree.set(slot, w);
            done.push(key);
        }
        done
    }

    /// Probability of each item under the sampler now (for tests and table info).
    pub fn probability(&self, key: u64) -> Option<f64> {
        let info = self.items.get(&key)?;
        Some(match self.sampler {
            Sampler::Fifo => (self.order.keys().next() == Some(&key)) as u8 as f64,
            _ if self.tree.total() > 0.0 => self.tree.get(info.slot) / self.tree.total(),
            _ => 1.0 / self.items.len() as f64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// The simplest model of a table: a Vec in insertion order.
    #[derive(Debug, Default)]
    struct Model {
        items: Vec<(u64, f64, u64)>, // key, priority, times_sampled
        inserts: u64,
        samples: u64,
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(Vec<u32>),
        Sample(usize),
        Update(usize, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            prop::collection::vec(0u32..50, 1..6).prop_map(Op::Insert),
            (1usize..6).prop_map(Op::Sample),
            (0usize..20, 0u32..50).prop_map(|(i, p)| Op::Update(i, p)),
        ]
    }

    fn sampler() -> impl Strategy<Value = Sampler> {
        prop_oneof![
            Just(Sampler::Uniform),
            Just(Sampler::Fifo),
            Just(Sampler::Prioritized { alpha: 0.6 })
        ]
    }

    proptest! {
        /// After random inserts, samples and priority updates, the index agrees with the
        /// model: sizes, eviction order, `max_times_sampled` deletions, what a FIFO draw
        /// picks, priorities and probabilities, and the rate limiter's decisions on the same
        /// counters.
        #[test]
        fn agrees_with_a_simple_model(
            ops in prop::collection::vec(op(), 1..80),
            max_size in 1u64..12,
            max_times in 0u64..4,
            s in sampler(),
            seed in 0u64..1000,
        ) {
            let limiter = RateLimiter::sample_to_insert_ratio(2.0, 2, 6.0);
            let mut t = Table::new(max_size, max_times, s, limiter);
            let mut m = Model::default();
            let mut rng = StdRng::seed_from_u64(seed);
            let mut next = 1u64;
            for op in ops {
                let c = t.counts();
                let model_counts = Counts { inserts: m.inserts, samples: m.samples, size: m.items.len() as u64 };
                prop_assert_eq!(c, model_counts);
                match op {
                    Op::Insert(ps) => {
                        prop_assert_eq!(limiter.can_insert(&c, ps.len() as u64),
                            c.size < 2
                                || ((c.inserts + ps.len() as u64) as f64 * 2.0 - c.samples as f64) <= 4.0 + 6.0);
                        let new: Vec<NewItem> = ps.iter().map(|&p| {
                            let key = next;
                            next += 1;
                            NewItem { key, priority: p as f64, shard: (key % 2) as usize, version: key, bytes: 10, times_sampled: 0 }
                        }).collect();
                        for it in &new {
                            m.items.push((it.key, it.priority, 0));
                            m.inserts += 1;
                        }
                        let mut want_evicted = Vec::new();
                        while m.items.len() as u64 > max_size {
                            want_evicted.push(m.items.remove(0).0);
                        }
                        let evicted: Vec<u64> = t.add(new, false).into_iter().map(|(k, _)| k).collect();
                        prop_assert_eq!(evicted, want_evicted);
                    }
                    Op::Sample(n) => {
                        if m.items.is_empty() { continue; }
                        let drawn = t.draw(n, &mut rng);
                        for d in &drawn {
                            let at = m.items.iter().position(|x| x.0 == d.key);
                            prop_assert!(at.is_some(), "drew {} which is not held", d.key);
                            let at = at.unwrap();
                            if s == Sampler::Fifo {
                                prop_assert_eq!(at, 0, "FIFO draws the oldest");
                                prop_assert_eq!(d.probability, 1.0);
                            } else {
                                let w = |p: f64| if let Sampler::Prioritized { alpha } = s { p.powf(alpha) } else { 1.0 };
                                let total: f64 = m.items.iter().map(|x| w(x.1)).sum();
                                if total > 0.0 {
                                    let want = w(m.items[at].1) / total;
                                    prop_assert!((d.probability - want).abs() < 1e-9, "{} vs {}", d.probability, want);
                                    prop_assert!(m.items[at].1 > 0.0 || s == Sampler::Uniform);
                                }
                            }
                            m.items[at].2 += 1;
                            m.samples += 1;
                            prop_assert_eq!(d.times_sampled, m.items[at].2);
                            let gone = max_times > 0 && m.items[at].2 >= max_times;
                            prop_assert_eq!(d.removed, gone);
                            if gone {
                                m.items.remove(at);
                            }
                            if m.items.is_empty() { break; }
                        }
                    }
                    Op::Update(i, p) => {
                        if m.items.is_empty() { continue; }
                        let i = i % m.items.len();
                        let key = m.items[i].0;
                        m.items[i].1 = p as f64;
                        prop_assert_eq!(t.update_priorities(&[(key, p as f64), (u64::MAX, 1.0)]), vec![key]);
                    }
                }
                prop_assert_eq!(t.len(), m.items.len());
                prop_assert_eq!(t.keys().collect::<Vec<_>>(), m.items.iter().map(|x| x.0).collect::<Vec<_>>());
                for (k, p, ts) in &m.items {
                    let info = t.get(*k).unwrap();
                    prop_assert_eq!(info.priority, *p);
                    prop_assert_eq!(info.times_sampled, *ts);
                }
                prop_assert_eq!(t.bytes(), 10 * m.items.len() as u64);
            }
        }
    }

    /// A draw taken back (its Redis writes failed) leaves the table as it was: items sampled
    /// to their limit are back in order, counts and sample counters restored.
    #[test]
    fn an_undone_draw_leaves_the_table_as_it_was() {
        let mut t = Table::new(10, 2, Sampler::Uniform, RateLimiter::min_size(1));
        let items = (1..=6)
            .map(|k| NewItem {
                key: k,
                priority: 1.0,
                shard: (k % 2) as usize,
                version: k,
                bytes: 3,
                times_sampled: (k % 2),
            })
            .collect();
        t.add(items, false);
        let snapshot = |t: &Table| {
            let held: Vec<(u64, u64)> = t.keys().map(|k| (k, t.get(k).unwrap().times_sampled)).collect();
            (held, t.counts(), t.bytes())
        };
        let before = snapshot(&t);
        let mut rng = StdRng::seed_from_u64(3);
        let drawn = t.draw(8, &mut rng);
        assert!(drawn.iter().any(|d| d.removed), "some item reached its limit");
        assert_ne!(snapshot(&t), before);
        t.undo(&drawn);
        assert_eq!(snapshot(&t), before);
    }

    /// Prioritized draws land on each item in proportion to `p^alpha`: over 200,000 draws of
    /// 5 items, each frequency is within 4.5 standard deviations of its probability (a
    /// binomial's; a false alarm about once in 150,000 runs per item).
    #[test]
    fn prioritized_frequencies_match_the_priorities() {
        let alpha = 0.7;
        let mut t = Table::new(10, 0, Sampler::Prioritized { alpha }, RateLimiter::min_size(1));
        let priorities = [0.5, 1.0, 2.0, 4.0, 0.0];
        t.add(
            priorities
                .iter()
                .enumerate()
                .map(|(i, &p)| NewItem {
                    key: i as u64 + 1,
                    priority: p,
                    shard: 0,
                    version: 0,
                    bytes: 1,
                    times_sampled: 0,
                })
                .collect(),
            false,
        );
        let mut rng = StdRng::seed_from_u64(7);
        let n = 200_000usize;
        let mut hits = [0usize; 5];
        for d in t.draw(n, &mut rng) {
            hits[(d.key - 1) as usize] += 1;
        }
        let total: f64 = priorities.iter().map(|p: &f64| p.powf(alpha)).sum();
        for (i, &p) in priorities.iter().enumerate() {
            let q = p.powf(alpha) / total;
            let sd = (n as f64 * q * (1.0 - q)).sqrt();
            let dev = (hits[i] as f64 - n as f64 * q).abs();
            assert!(
                dev <= 4.5 * sd.max(1e-9),
                "item {i}: {} hits, expected {:.0} +- {sd:.0}",
                hits[i],
                n as f64 * q
            );
        }
        assert_eq!(hits[4], 0, "priority 0 is never drawn");
    }
}
