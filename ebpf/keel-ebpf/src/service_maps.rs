//! The Service load-balancing maps (contract: `keel_ebpf_common::service`). Only the agent
//! writes `SERVICES`, `BACKEND_SLOTS` and `BACKENDS`; the programs write `SOCK_REVNAT` and
//! `AFFINITY` (the agent only deletes `AFFINITY` entries of backends it removed).

use aya_ebpf::bindings::BPF_F_NO_PREALLOC;
use aya_ebpf::helpers::bpf_get_prandom_u32;
use aya_ebpf::macros::map;
use aya_ebpf::maps::{HashMap, LruHashMap};
use keel_ebpf_common::service::{
    AFFINITY_MAX_ENTRIES, AffinityKey, AffinityValue, BACKEND_SLOTS_MAX_ENTRIES,
    BACKENDS_MAX_ENTRIES, Backend, BackendSlotKey, SERVICES_MAX_ENTRIES, SOCK_REVNAT_MAX_ENTRIES,
    ServiceKey, ServiceValue, SockRevNatKey, SockRevNatValue,
};

/// Contract: `map::SERVICES`.
#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(SERVICES_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Contract: `map::BACKEND_SLOTS`.
#[map]
pub static BACKEND_SLOTS: HashMap<BackendSlotKey, u32> =
    HashMap::with_max_entries(BACKEND_SLOTS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Contract: `map::BACKENDS`.
#[map]
pub static BACKENDS: HashMap<u32, Backend> =
    HashMap::with_max_entries(BACKENDS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Contract: `map::SOCK_REVNAT`.
#[map]
pub static SOCK_REVNAT: LruHashMap<SockRevNatKey, SockRevNatValue> =
    LruHashMap::with_max_entries(SOCK_REVNAT_MAX_ENTRIES, 0);

/// Contract: `map::AFFINITY`.
#[map]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::with_max_entries(AFFINITY_MAX_ENTRIES, 0);

/// A backend of `service` from a slot chosen at random.
#[inline(always)]
pub fn random_backend(service: &ServiceValue) -> Option<(u32, Backend)> {
    // `checked_rem`: a division by a count the compiler cannot prove non-zero would leave a
    // panic path, which the verifier rejects.
    // SAFETY: bpf_get_prandom_u32 has no preconditions.
    let slot = unsafe { bpf_get_prandom_u32() }.checked_rem(service.count)? + 1;
    let slot_key = BackendSlotKey {
        service_id: service.id,
        slot,
    };
    // SAFETY: map lookups returning references into map values, copied at once.
    let backend_id = *unsafe { BACKEND_SLOTS.get(slot_key) }?;
    // SAFETY: as above.
    let backend = *unsafe { BACKENDS.get(backend_id) }?;
    Some((backend_id, backend))
}
