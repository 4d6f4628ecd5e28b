//! The per-reason drop counter every dropping program goes through.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use keel_ebpf_common::DropReason;

/// Contract: `keel_ebpf_common::map::DROP_STATS`, indexed by `DropReason`.
#[map]
static DROP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(DropReason::COUNT, 0);

/// Records one packet dropped for `reason` on this CPU.
///
/// The stats programs never drop; the NAT and policy programs call this on every drop path.
#[inline(always)]
pub fn record(reason: DropReason) {
    if let Some(slot) = DROP_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: a successful per-CPU array lookup points at this CPU's slot.
        unsafe { *slot = (*slot).wrapping_add(1) };
    }
}
