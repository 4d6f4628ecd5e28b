//! The Maglev lookup table (Eisenbud et al., NSDI 2016, section 3.4), computed in userspace
//! and independent of the kernel.
//!
//! Each backend has a permutation of the table's `M` entries, from two hashes of its stable
//! name (`offset = h1 % M`, `skip = h2 % (M - 1) + 1`; `M` prime, so every skip walks all
//! entries). Backends take turns claiming their next preferred free entry until the table is
//! full, so each gets about `M / N` entries, and a backend that leaves frees only its own
//! entries plus the few that shift in the refill. A backend of weight `w` takes a turn in
//! `w / max_weight` of the rounds (Katran's weighted variant); equal weights are the paper's
//! round robin.
//!
//! The result depends only on the names, weights and `M`: backends are ordered by name
//! first, so every node computes the same table for the same backend set.

use keel_ebpf_common::maglev::{DEFAULT_TABLE_SIZE, TABLE_SIZES};

use super::murmur3::murmur3_x64_128;

/// The seed of the permutation hash: fixed, the same on every node.
const PERMUTATION_SEED: u32 = 0;

/// A lookup table size `M`: one of the primes of `keel_ebpf_common::maglev::TABLE_SIZES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TableSize(u32);

/// A table size that is not one of the accepted primes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("maglev table size {size} is not supported: use one of {TABLE_SIZES:?}")]
pub struct TableSizeError {
    pub size: u32,
}

impl TableSize {
    /// `size` if it is one of the accepted primes.
    pub fn new(size: u32) -> Result<TableSize, TableSizeError> {
        if TABLE_SIZES.contains(&size) {
            Ok(TableSize(size))
        } else {
            Err(TableSizeError { size })
        }
    }

    /// The number of entries.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for TableSize {
    /// Cilium's default, 16381.
    fn default() -> Self {
        TableSize(DEFAULT_TABLE_SIZE)
    }
}

impl std::str::FromStr for TableSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let size: u32 = text
            .parse()
            .map_err(|_| format!("`{text}` is not a number"))?;
        TableSize::new(size).map_err(|error| error.to_string())
    }
}

/// One backend as the table sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableBackend {
    /// Stable and the same on every node, e.g. `10.244.1.5:8080`; distinct per backend.
    pub name: String,
    /// Relative share of the entries; 0 takes none.
    pub weight: u32,
}

/// The lookup table for `backends`: `size` entries, each an index into `backends`. Empty if
/// no backend has a weight.
pub fn lookup_table(backends: &[TableBackend], size: TableSize) -> Vec<u32> {
    let m = u64::from(size.get());
    let mut order: Vec<usize> = (0..backends.len())
        .filter(|&i| backends[i].weight > 0)
        .collect();
    order.sort_by(|&a, &b| backends[a].name.cmp(&backends[b].name));
    let Some(max_weight) = order.iter().map(|&i| u64::from(backends[i].weight)).max() else {
        return Vec::new();
    };
    // (next preferred entry, skip) per backend: its permutation, walked lazily.
    let mut cursors: Vec<(u64, u64)> = order
        .iter()
        .map(|&i| {
            let (h1, h2) = murmur3_x64_128(backends[i].name.as_bytes(), PERMUTATION_SEED);
            (h1 % m, h2 % (m - 1) + 1)
        })
        .collect();
    let mut credit = vec![0u64; order.len()];
    let mut table = vec![u32::MAX; m as usize];
    let mut filled = 0u64;
    loop {
        for (turn, &backend) in order.iter().enumerate() {
            credit[turn] += u64::from(backends[backend].weight);
            if credit[turn] < max_weight {
                continue;
            }
            credit[turn] -= max_weight;
            let (next, skip) = &mut cursors[turn];
            // Terminates: the walk visits every entry, and one is still free.
            while table[*next as usize] != u32::MAX {
                *next = (*next + *skip) % m;
            }
            table[*next as usize] = backend as u32;
            *next = (*next + *skip) % m;
            filled += 1;
            if filled == m {
                return table;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(count: usize) -> Vec<TableBackend> {
        (0..count)
            .map(|i| TableBackend {
                name: format!("10.244.{}.{}:8080", i / 250, i % 250 + 1),
                weight: 1,
            })
            .collect()
    }

    fn shares(table: &[u32], count: usize) -> Vec<usize> {
        let mut shares = vec![0; count];
        for &entry in table {
            shares[entry as usize] += 1;
        }
        shares
    }

    #[test]
    fn only_the_accepted_primes_are_sizes() {
        assert_eq!(TableSize::default().get(), 16_381);
        assert_eq!(TableSize::new(251).unwrap().get(), 251);
        assert_eq!(
            TableSize::new(16_384).unwrap_err().to_string(),
            "maglev table size 16384 is not supported: use one of \
             [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071]"
        );
        assert!("65521".parse::<TableSize>().is_ok());
        assert!(
            "many"
                .parse::<TableSize>()
                .unwrap_err()
                .contains("not a number")
        );
    }

    #[test]
    fn every_backend_gets_about_m_over_n_entries() {
        for count in [1, 2, 3, 10, 100] {
            let table = lookup_table(&backends(count), TableSize::default());
            assert_eq!(table.len(), 16_381);
            let fair = 16_381.0 / count as f64;
            for share in shares(&table, count) {
                // The paper's round robin gives every backend its turn in every round: the
                // shares differ by at most one entry (plus 1 % for the last round's order).
                assert!(
                    (share as f64 - fair).abs() <= 1.0 + fair * 0.01,
                    "{count} backends: a share of {share}, fair {fair:.1}"
                );
            }
        }
    }

    #[test]
    fn the_table_is_the_same_whatever_the_order_of_the_backends() {
        let forward = backends(7);
        let mut backward = forward.clone();
        backward.reverse();
        let names = |list: &[TableBackend]| -> Vec<String> {
            lookup_table(list, TableSize::default())
                .iter()
                .map(|&i| list[i as usize].name.clone())
                .collect()
        };
        assert_eq!(names(&forward), names(&backward));
    }

    #[test]
    fn the_table_is_fixed_across_runs_and_versions() {
        // Golden values: every agent of a cluster must compute the same table, so a change
        // here is a change of every node's choices, not a refactoring.
        let list: Vec<TableBackend> = ["10.244.0.1:8080", "10.244.0.2:8080", "10.244.1.7:8080"]
            .iter()
            .map(|name| TableBackend {
                name: name.to_string(),
                weight: 1,
            })
            .collect();
        let small = lookup_table(&list, TableSize::new(251).unwrap());
        assert_eq!(
            small[..24],
            [
                0, 1, 2, 2, 0, 1, 0, 0, 2, 0, 0, 2, 0, 1, 0, 1, 2, 1, 2, 0, 2, 1, 2, 1
            ]
        );
        let digest: u64 = lookup_table(&list, TableSize::default())
            .iter()
            .enumerate()
            .map(|(entry, &backend)| (entry as u64 + 1) * (u64::from(backend) + 1))
            .sum();
        assert_eq!(digest, 268_230_946);
    }

    #[test]
    fn removing_one_backend_moves_its_entries_and_few_others() {
        for count in [3, 10, 50] {
            let all = backends(count);
            let size = TableSize::default();
            let before = lookup_table(&all, size);
            let gone = count / 2;
            let rest: Vec<TableBackend> = all
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != gone)
                .map(|(_, b)| b.clone())
                .collect();
            let after = lookup_table(&rest, size);
            let name = |list: &[TableBackend], i: u32| list[i as usize].name.clone();
            let mut moved_elsewhere = 0;
            for (old, new) in before.iter().zip(&after) {
                if *old as usize == gone {
                    continue;
                }
                if name(&all, *old) != name(&rest, *new) {
                    moved_elsewhere += 1;
                }
            }
            // The paper's figure: a removal disturbs a few per cent of the other entries at
            // most when M >> N.
            let others = before.iter().filter(|&&i| i as usize != gone).count();
            assert!(
                moved_elsewhere * 100 <= others * 2,
                "{count} backends: {moved_elsewhere} of {others} other entries moved"
            );
        }
    }

    #[test]
    fn weights_share_the_table_in_proportion_and_zero_takes_nothing() {
        let mut list = backends(3);
        list[0].weight = 3;
        list[2].weight = 0;
        let table = lookup_table(&list, TableSize::new(4_093).unwrap());
        let shares = shares(&table, 3);
        assert_eq!(shares[2], 0);
        assert!((3 * shares[1]).abs_diff(shares[0]) <= 4, "{shares:?}");
        list[0].weight = 0;
        list[1].weight = 0;
        assert!(lookup_table(&list, TableSize::new(251).unwrap()).is_empty());
        assert!(lookup_table(&[], TableSize::default()).is_empty());
    }
}
