//! Per-interface packet and byte counters, shared by the XDP and TC entry points.

use aya_ebpf::bindings::BPF_NOEXIST;
use aya_ebpf::macros::map;
use aya_ebpf::maps::PerCpuHashMap;
use aya_ebpf::programs::{TcContext, XdpContext};
use keel_ebpf_common::{Hook, IfaceCounters, IfaceKey, stats::IFACE_STATS_MAX_ENTRIES};

/// Contract: `keel_ebpf_common::map::IFACE_STATS`.
#[map]
static IFACE_STATS: PerCpuHashMap<IfaceKey, IfaceCounters> =
    PerCpuHashMap::with_max_entries(IFACE_STATS_MAX_ENTRIES, 0);

/// Adds `packets` packets totalling `bytes` bytes to the counters of `(ifindex, hook)` on this CPU.
///
/// Counting never affects the packet: if the map is full the sample is lost, not the packet.
#[inline(always)]
pub fn count(ifindex: u32, hook: Hook, packets: u64, bytes: u64) {
    let key = IfaceKey {
        ifindex,
        hook: hook as u32,
    };
    if add_to_existing(&key, packets, bytes) {
        return;
    }
    let first = IfaceCounters { packets, bytes };
    // Another CPU may create the entry between our lookup and insert (EEXIST): then add to it.
    if IFACE_STATS
        .insert(key, first, u64::from(BPF_NOEXIST))
        .is_err()
    {
        add_to_existing(&key, packets, bytes);
    }
}

#[inline(always)]
fn add_to_existing(key: &IfaceKey, packets: u64, bytes: u64) -> bool {
    match IFACE_STATS.get_ptr_mut(key) {
        Some(counters) => {
            // SAFETY: the pointer comes from a successful map lookup and points at this CPU's
            // value, which only this program invocation touches while it runs (no preemption
            // of BPF programs on the same CPU for the same map slot).
            let counters = unsafe { &mut *counters };
            counters.packets = counters.packets.wrapping_add(packets);
            counters.bytes = counters.bytes.wrapping_add(bytes);
            true
        }
        None => false,
    }
}

/// Counts the packet a TC program (ingress or egress) sees.
#[inline(always)]
pub fn count_skb(ctx: &TcContext, hook: Hook) {
    let skb = ctx.skb.skb;
    // SAFETY: `skb` is the `__sk_buff` the kernel passed to this program; reading these fields
    // is what the verifier allows for a classifier.
    let (ifindex, gso_segs) = unsafe { ((*skb).ifindex, (*skb).gso_segs) };
    // A GSO packet leaves as `gso_segs` packets on the wire; a plain one has `gso_segs == 0`.
    let packets = u64::from(gso_segs.max(1));
    count(ifindex, hook, packets, u64::from(ctx.len()));
}

/// Counts the frame an XDP program sees under `hook`; returns the interface it arrived on.
#[inline(always)]
pub fn count_xdp(ctx: &XdpContext, hook: Hook) -> u32 {
    // SAFETY: `ctx.ctx` is the `xdp_md` the kernel passed to this program.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let bytes = ctx.data_end().saturating_sub(ctx.data()) as u64;
    count(ifindex, hook, 1, bytes);
    ifindex
}
