//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, section 3.4): a lookup table of M slots (M prime) in which every
//! backend holds about M/N slots; the datapath picks a flow's backend as
//! `table[hash(flow) % M]`.
//!
//! Each backend has its own permutation of the slots, `(offset + j * skip) mod M`, from two
//! hashes of its key; the backends take turns claiming the next free slot of their
//! permutation until the table is full. Two consequences the tests hold it to:
//! - every backend ends up with floor(M/N) or ceil(M/N) slots;
//! - a backend's permutation depends only on its own key, so removing one backend hands its
//!   slots to the others and moves only a few slots between the remaining ones.
//!
//! The table is a function of the backend *set*, the table size and the seed only: the
//! backends are processed in the order of their keys, whatever order the caller gives them
//! in, and the hashes are SipHash-2-4 under keys derived from the seed, so every node and every
//! build computes the same table.

use crate::hash::siphash24;

/// The table sizes accepted (`maglev.tableSize`): primes, so that every skip in 1..M generates
/// a full permutation; as in Cilium.
pub const MAGLEV_TABLE_SIZES: [u32; 10] = [
    251, 509, 1_021, 2_039, 4_093, 8_191, 16_381, 32_749, 65_521, 131_071,
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    #[error("Maglev table size {0} is not one of {MAGLEV_TABLE_SIZES:?}")]
    TableSize(u32),
    #[error("{0} backends are more than a Maglev table can index")]
    TooManyBackends(usize),
}

/// The Maglev table of `backends` (their keys; see [`crate::lb::BackendKey`] for the key the
/// load balancer uses): `table_size` slots, each the index in `backends` of the slot's
/// backend. Empty when there are no backends. Keys are expected to be distinct.
pub fn maglev_table<K: AsRef<[u8]>>(
    backends: &[K],
    table_size: u32,
    seed: &[u8],
) -> Result<Vec<u32>, MaglevError> {
    if !MAGLEV_TABLE_SIZES.contains(&table_size) {
        return Err(MaglevError::TableSize(table_size));
    }
    if backends.is_empty() {
        return Ok(Vec::new());
    }
    let indexes = (0..backends.len())
        .map(u32::try_from)
        .collect::<Result<Vec<u32>, _>>()
        .map_err(|_| MaglevError::TooManyBackends(backends.len()))?;
    let mut order = indexes;
    // A stable sort by key: the table does not depend on the order the caller lists them in.
    order.sort_by_key(|&i| backends[i as usize].as_ref());
    let hasher = MaglevHasher::new(seed);
    let mut walks: Vec<Walk> = order
        .iter()
        .map(|&i| hasher.walk(backends[i as usize].as_ref(), table_size, i))
        .collect();
    Ok(populate(&mut walks, table_size))
}

const EMPTY: u32 = u32::MAX;

/// One backend's progress through its permutation of the slots.
struct Walk {
    backend: u32,
    next: u32,
    skip: u32,
}

/// The backends, in turn, claim the next free slot of their permutation until none is left.
fn populate(walks: &mut [Walk], table_size: u32) -> Vec<u32> {
    let m = table_size;
    let mut table = vec![EMPTY; m as usize];
    let mut filled = 0u32;
    loop {
        for walk in walks.iter_mut() {
            // M is prime and 1 <= skip < M: the walk visits every slot, so one is free while
            // the table is not full.
            let mut slot = walk.next;
            while table[slot as usize] != EMPTY {
                slot = advance(slot, walk.skip, m);
            }
            table[slot as usize] = walk.backend;
            walk.next = advance(slot, walk.skip, m);
            filled += 1;
            if filled == m {
                return table;
            }
        }
    }
}

fn advance(slot: u32, skip: u32, m: u32) -> u32 {
    // slot < m and skip < m, so the sum fits in u64 and one subtraction reduces it.
    let next = u64::from(slot) + u64::from(skip);
    let m64 = u64::from(m);
    let reduced = if next >= m64 { next - m64 } else { next };
    reduced as u32
}

/// The two independent hashes of a backend key, under keys derived from the cluster's seed.
struct MaglevHasher {
    offset_key: (u64, u64),
    skip_key: (u64, u64),
}

impl MaglevHasher {
    fn new(seed: &[u8]) -> MaglevHasher {
        let word = |index: u8| {
            let mut message = seed.to_vec();
            message.push(index);
            siphash24(0, 0, &message)
        };
        MaglevHasher {
            offset_key: (word(0), word(1)),
            skip_key: (word(2), word(3)),
        }
    }

    fn walk(&self, key: &[u8], table_size: u32, backend: u32) -> Walk {
        let m = u64::from(table_size);
        let offset = siphash24(self.offset_key.0, self.offset_key.1, key) % m;
        let skip = siphash24(self.skip_key.0, self.skip_key.1, key) % (m - 1) + 1;
        // Both are below M <= 131071.
        Walk {
            backend,
            next: offset as u32,
            skip: skip as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Instant};

    use super::*;
    use crate::hash::Fnv1a;

    const SEED: &[u8] = b"weft-maglev-seed";
    const M: u32 = 16_381;

    fn keys(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.42.{}.{}:8080/TCP", i / 200, 10 + i % 200))
            .collect()
    }

    /// The table with each slot's backend key instead of its index.
    fn by_key<'a>(table: &[u32], keys: &'a [String]) -> Vec<&'a str> {
        table.iter().map(|&i| keys[i as usize].as_str()).collect()
    }

    fn slots_per_backend(table: &[u32], n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for &i in table {
            counts[i as usize] += 1;
        }
        counts
    }

    #[test]
    fn every_backend_gets_floor_or_ceil_of_m_over_n_slots() {
        // Backends claim slots in turns, one per turn, until the table is full: after the last
        // complete round they all hold the same number, and the last, partial round gives one
        // more to some. So the spread is exact, not statistical: max - min <= 1.
        for n in [1, 3, 10, 100, 1000] {
            let table = maglev_table(&keys(n), M, SEED).unwrap();
            assert_eq!(table.len(), M as usize);
            let counts = slots_per_backend(&table, n);
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            let floor = M as usize / n;
            assert!(*min == floor && *max <= floor + 1, "n={n}: {min}..{max}");
        }
    }

    /// Slots whose backend differs between two tables, given as keys.
    fn moved(before: &[&str], after: &[&str]) -> usize {
        before.iter().zip(after).filter(|(a, b)| a != b).count()
    }

    #[test]
    fn removing_one_of_n_backends_moves_its_slots_and_few_others() {
        for (n, m) in [(10, M), (100, M), (100, 65_521), (1000, 131_071)] {
            let all = keys(n);
            let before_table = maglev_table(&all, m, SEED).unwrap();
            let before = by_key(&before_table, &all);
            let removed = all[n / 2].clone();
            let rest: Vec<String> = all.iter().filter(|k| **k != removed).cloned().collect();
            let after_table = maglev_table(&rest, m, SEED).unwrap();
            let after = by_key(&after_table, &rest);

            let owned: Vec<usize> = (0..m as usize).filter(|&s| before[s] == removed).collect();
            assert!(owned.iter().all(|&s| after[s] != removed));
            let others_moved = moved(&before, &after) - owned.len();
            // Not zero: when the removed backend's slots free up, the others' walks claim them
            // and in turn skip past slots they used to take, so a few slots change hands
            // between the remaining backends too (the Maglev paper measures the same). It is
            // 0.6 % of the table at N=10, 1.3 % at N=100 with M=16381, 0.6 % at N=1000 with
            // M=131071 here; the bound: the other backends keep at least 98 % of their slots.
            let bound = (m as usize - owned.len()) / 50;
            assert!(
                others_moved <= bound,
                "n={n} m={m}: {others_moved} other slots moved (bound {bound})"
            );
            assert!(owned.len().abs_diff(m as usize / n) <= 1);
        }
    }

    #[test]
    fn adding_a_backend_gives_it_about_m_over_n_plus_one_slots_taken_from_the_others() {
        let n = 100;
        let all = keys(n + 1);
        let old = &all[..n];
        let before_table = maglev_table(old, M, SEED).unwrap();
        let after_table = maglev_table(&all, M, SEED).unwrap();
        let (before, after) = (by_key(&before_table, old), by_key(&after_table, &all));
        let gained = after.iter().filter(|k| **k == all[n]).count();
        assert!(gained.abs_diff(M as usize / (n + 1)) <= 1);
        let others_moved = moved(&before, &after) - gained;
        assert!(others_moved <= M as usize / 50, "{others_moved}");
    }

    #[test]
    fn the_table_depends_on_the_set_not_the_order_nor_the_run() {
        let forward = keys(50);
        let mut shuffled = forward.clone();
        // A fixed permutation: reverse, then rotate.
        shuffled.reverse();
        shuffled.rotate_left(17);
        let a = maglev_table(&forward, M, SEED).unwrap();
        let b = maglev_table(&forward, M, SEED).unwrap();
        let c = maglev_table(&shuffled, M, SEED).unwrap();
        assert_eq!(a, b);
        assert_eq!(by_key(&a, &forward), by_key(&c, &shuffled));
        let other_seed = maglev_table(&forward, M, b"another-seed").unwrap();
        assert_ne!(a, other_seed, "the seed changes the table");
    }

    #[test]
    fn the_table_is_the_same_on_every_build() {
        // A fixed digest of one table: a change of hash, key derivation or fill order (which
        // would give nodes running different builds different tables) fails here.
        let table = maglev_table(&keys(7), 251, SEED).unwrap();
        let mut digest = Fnv1a::new();
        for slot in &table {
            digest.bytes(&slot.to_le_bytes());
        }
        assert_eq!(&table[..12], &GOLDEN_PREFIX);
        assert_eq!(digest.finish(), GOLDEN_DIGEST);
    }

    const GOLDEN_PREFIX: [u32; 12] = [0, 0, 0, 3, 3, 0, 0, 0, 2, 2, 4, 4];
    const GOLDEN_DIGEST: u64 = 0x59b7_40b1_2e53_8303;

    #[test]
    fn only_the_listed_primes_are_table_sizes_and_no_backends_is_an_empty_table() {
        for size in MAGLEV_TABLE_SIZES {
            assert_eq!(
                maglev_table(&keys(3), size, SEED).unwrap().len(),
                size as usize
            );
        }
        for size in [0, 1, 250, 16_380, 16_383, 65_537, 131_072] {
            assert_eq!(
                maglev_table(&keys(3), size, SEED),
                Err(MaglevError::TableSize(size))
            );
        }
        let none: [&str; 0] = [];
        assert_eq!(maglev_table(&none, M, SEED), Ok(Vec::new()));
        let one = maglev_table(&["10.42.0.10:80/TCP"], 251, SEED).unwrap();
        assert!(one.iter().all(|&i| i == 0));
    }

    #[test]
    fn more_backends_than_slots_leave_some_without_slots_but_fill_the_table() {
        let table = maglev_table(&keys(300), 251, SEED).unwrap();
        assert!(table.iter().all(|&i| i < 300));
        let distinct: BTreeMap<u32, ()> = table.iter().map(|&i| (i, ())).collect();
        assert_eq!(distinct.len(), 251);
    }

    /// `cargo test -p weft-model --release -- --ignored --nocapture maglev_build_time`
    #[test]
    #[ignore = "timing report, not an assertion"]
    fn maglev_build_time() {
        for m in [16_381, 65_521, 131_071] {
            for n in [10, 100, 1000] {
                let k = keys(n);
                let start = Instant::now();
                let runs = 20;
                for _ in 0..runs {
                    std::hint::black_box(maglev_table(&k, m, SEED).unwrap());
                }
                let each = start.elapsed() / runs;
                println!("maglev M={m} N={n}: {each:?} per table");
            }
        }
    }
}
