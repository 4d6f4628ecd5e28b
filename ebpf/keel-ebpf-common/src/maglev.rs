//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), the kernel/user contract: the flow
//! hash both sides compute, the lookup-table sizes, and the flags of the per-service tables.
//!
//! The agent computes a service's lookup table of `M` backend ids (`M` prime) and stores it as
//! an inner array of `MAGLEV`, keyed by the service id; `ServiceValue::maglev_size` says a
//! service has one and how large it is. A new flow's backend is entry
//! `flow_hash(tuple) % M`. The hash has a fixed seed, so every node that holds the same table
//! sends the same flow to the same backend.
//!
//! The kernel stores array values in 8-byte slots, so an inner array element is a
//! [`TableSlot`] of two entries: entry `i` is half `i % 2` of element `i / 2` (4 bytes per
//! entry, none wasted).

use crate::conntrack::CtKey;

/// Most services `MAGLEV` holds a table for (as many as `SERVICES` holds frontends).
pub const MAGLEV_MAX_SERVICES: u32 = crate::service::SERVICES_MAX_ENTRIES;

/// The table size Cilium uses by default (`--bpf-lb-maglev-table-size`).
pub const DEFAULT_TABLE_SIZE: u32 = 16_381;

/// The table sizes accepted, Cilium's: primes, each about twice the one before. A table should
/// be much larger than a service's backend count (the paper: `M > 100 N`) for an even spread.
pub const TABLE_SIZES: [u32; 10] = [
    251, 509, 1_021, 2_039, 4_093, 8_191, 16_381, 32_749, 65_521, 131_071,
];

/// `map_flags` of every inner table, and of the inner-map template in the object (the kernel
/// only accepts an inner map whose flags equal the template's): `BPF_F_INNER_MAP`, so tables
/// of different sizes fit the same outer map (kernel 5.10+), and `BPF_F_MMAPABLE`, so the
/// agent fills a new table with one memory copy instead of a syscall per entry.
pub const TABLE_FLAGS: u32 = BPF_F_INNER_MAP | BPF_F_MMAPABLE;

const BPF_F_MMAPABLE: u32 = 1 << 10;
const BPF_F_INNER_MAP: u32 = 1 << 12;

/// An element of an inner table: two consecutive entries, each a backend id.
pub type TableSlot = [u32; 2];

/// Elements of the inner array that holds a table of `size` entries.
pub const fn table_slots(size: u32) -> u32 {
    size.div_ceil(2)
}

/// Entries of the inner-map template in the object. With [`TABLE_FLAGS`] the kernel does not
/// compare sizes, and the verifier cannot assume one: lookups are bounds-checked at run time.
pub const TEMPLATE_ENTRIES: usize = 1;

/// Linux's `JHASH_INITVAL`.
const JHASH_INITVAL: u32 = 0xdead_beef;

/// The seed of the flow hash: fixed, so that nodes agree (no per-boot random value).
pub const FLOW_HASH_SEED: u32 = 0x6b65_656c;

/// The flow hash that indexes a Maglev table: Linux's `jhash_3words` of the source and
/// destination addresses and of both ports, the protocol mixed into the seed. Fields are
/// taken in host order (the key holds network order), so every architecture computes the
/// same value for the same packet.
#[inline(always)]
pub fn flow_hash(key: &CtKey) -> u32 {
    let ports = (u32::from(u16::from_be(key.sport)) << 16) | u32::from(u16::from_be(key.dport));
    jhash_3words(
        u32::from_be(key.saddr),
        u32::from_be(key.daddr),
        ports,
        FLOW_HASH_SEED ^ u32::from(key.protocol),
    )
}

/// Linux's `jhash_3words` (Bob Jenkins' lookup3 final mix of three words).
#[inline(always)]
pub fn jhash_3words(a: u32, b: u32, c: u32, initval: u32) -> u32 {
    let start = initval.wrapping_add(JHASH_INITVAL).wrapping_add(3 << 2);
    let (mut a, mut b, mut c) = (
        a.wrapping_add(start),
        b.wrapping_add(start),
        c.wrapping_add(start),
    );
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sport: u16) -> CtKey {
        CtKey {
            saddr: u32::from_be_bytes([198, 18, 0, 1]).to_be(),
            daddr: u32::from_be_bytes([198, 18, 100, 1]).to_be(),
            sport: sport.to_be(),
            dport: 80u16.to_be(),
            protocol: 6,
            pad: [0; 3],
        }
    }

    #[test]
    fn jhash_matches_linux() {
        // Values of include/linux/jhash.h's jhash_3words compiled with a C compiler.
        assert_eq!(jhash_3words(0, 0, 0, 0), 0x1b68_e557);
        assert_eq!(jhash_3words(1, 2, 3, 0), 0xa461_58f5);
        assert_eq!(flow_hash(&key(40_000)), 0xfe90_4190);
    }

    #[test]
    fn the_flow_hash_is_fixed_and_spreads_source_ports() {
        let mut buckets = [0u32; 8];
        for port in 30_000..38_000 {
            buckets[(flow_hash(&key(port)) % 8) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|n| (900..1_100).contains(n)),
            "{buckets:?}"
        );
    }

    #[test]
    fn table_sizes_are_primes() {
        for size in TABLE_SIZES {
            assert!(
                (2..size)
                    .take_while(|d| d * d <= size)
                    .all(|d| size % d != 0)
            );
        }
        assert!(TABLE_SIZES.contains(&DEFAULT_TABLE_SIZE));
    }
}
