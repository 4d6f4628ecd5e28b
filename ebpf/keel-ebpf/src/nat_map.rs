//! The SNAT maps of the TC load-balancing path (contract: `keel_ebpf_common::nat`). The
//! programs write `NAT4`; only the agent writes `NODE_NAT` (and deletes `NAT4` entries of
//! idle flows and removed backends).

use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, LruHashMap};
use keel_ebpf_common::conntrack::CtKey;
use keel_ebpf_common::nat::{NAT4_MAX_ENTRIES, NatValue, NodeNat};

/// Contract: `map::NAT4`.
#[map]
pub static NAT4: LruHashMap<CtKey, NatValue> = LruHashMap::with_max_entries(NAT4_MAX_ENTRIES, 0);

/// Contract: `map::NODE_NAT`.
#[map]
pub static NODE_NAT: Array<NodeNat> = Array::with_max_entries(1, 0);
