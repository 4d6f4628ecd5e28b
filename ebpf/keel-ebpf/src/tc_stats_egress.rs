//! `tc_stats_egress`: counts the packets an interface transmits, as the kernel stack sees them.

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};
use keel_ebpf_common::Hook;

use crate::iface_stats;

#[classifier]
pub fn tc_stats_egress(ctx: TcContext) -> i32 {
    iface_stats::count_skb(&ctx, Hook::TcEgress);
    // No verdict of its own: on a tcx hook TC_ACT_UNSPEC is TCX_NEXT, so the programs after
    // this one (the load balancer) still run, where TC_ACT_OK would end the chain; on a clsact
    // qdisc the next filter runs, and with none the packet passes.
    TC_ACT_UNSPEC
}
