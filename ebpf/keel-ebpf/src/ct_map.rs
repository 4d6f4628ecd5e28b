//! The connection-tracking map of the TC load-balancing path (contract:
//! `keel_ebpf_common::conntrack`). Only the programs write it.

use aya_ebpf::macros::map;
use aya_ebpf::maps::LruHashMap;
use keel_ebpf_common::conntrack::{CT4_MAX_ENTRIES, CtKey, CtValue};

/// Contract: `map::CT4`.
#[map]
pub static CT4: LruHashMap<CtKey, CtValue> = LruHashMap::with_max_entries(CT4_MAX_ENTRIES, 0);
