//! Maglev backend selection for the TC path (contract: `keel_ebpf_common::maglev`). Only the
//! agent writes `MAGLEV`: per service it fills a new inner table, then swaps the pointer in
//! one update, so a packet reads a whole old table or a whole new one.

use aya_ebpf::btf_maps::{Array, HashOfMaps};
use aya_ebpf::macros::btf_map;
use keel_ebpf_common::conntrack::CtKey;
use keel_ebpf_common::maglev::{
    MAGLEV_MAX_SERVICES, TABLE_FLAGS, TEMPLATE_ENTRIES, TableSlot, flow_hash,
};
use keel_ebpf_common::service::{Backend, ServiceValue};

use crate::service_maps::{BACKENDS, random_backend};

/// Contract: `map::MAGLEV`. `BPF_F_NO_PREALLOC` as `SERVICES`: tables exist for few services.
#[btf_map]
pub static MAGLEV: HashOfMaps<
    u32,
    Array<TableSlot, TEMPLATE_ENTRIES, { TABLE_FLAGS as usize }>,
    { MAGLEV_MAX_SERVICES as usize },
    { aya_ebpf::bindings::BPF_F_NO_PREALLOC as usize },
> = HashOfMaps::new();

/// The backend `service`'s Maglev table holds for the flow `key`; `None` if the service has
/// no table (or the table and the service disagree for a moment: the caller picks at random).
#[inline(always)]
pub fn maglev_backend(service: &ServiceValue, key: &CtKey) -> Option<(u32, Backend)> {
    // `checked_rem`: see `random_backend`.
    let entry = flow_hash(key).checked_rem(service.maglev_size)?;
    // SAFETY: a hash-of-maps lookup, then an array lookup; the inner array is not removed
    // while this program runs (RCU), and the value is copied at once.
    let slot = *unsafe { MAGLEV.get_value(&service.id, &(entry / 2)) }?;
    let backend_id = if entry % 2 == 0 { slot[0] } else { slot[1] };
    // SAFETY: a map lookup returning a reference into the map value, copied at once.
    let backend = *unsafe { BACKENDS.get(backend_id) }?;
    Some((backend_id, backend))
}

/// The backend a new flow `key` to `service` goes to: its Maglev table's entry, the same on
/// every node; without a table (or while it is being replaced by one without that entry) a
/// slot at random. `None`: the service has no backend.
#[inline(always)]
pub fn backend_for_flow(service: &ServiceValue, key: &CtKey) -> Option<(u32, Backend)> {
    match service.maglev_size {
        0 => random_backend(service),
        _ if service.count == 0 => None,
        _ => maglev_backend(service, key).or_else(|| random_backend(service)),
    }
}
