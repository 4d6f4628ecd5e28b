//! `xdp_stats`: counts every frame an interface receives, before the kernel stack.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use keel_ebpf_common::Hook;

use crate::iface_stats;

#[xdp]
pub fn xdp_stats(ctx: XdpContext) -> u32 {
    iface_stats::count_xdp(&ctx, Hook::Xdp);
    xdp_action::XDP_PASS
}
