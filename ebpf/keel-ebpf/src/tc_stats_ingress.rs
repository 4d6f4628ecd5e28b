//! `tc_stats_ingress`: counts the packets an interface receives, as the kernel stack sees them.

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use keel_ebpf_common::Hook;

use crate::iface_stats;

#[classifier]
pub fn tc_stats_ingress(ctx: TcContext) -> i32 {
    iface_stats::count_skb(&ctx, Hook::TcIngress);
    TC_ACT_OK
}
