//! `xdp_stats`: counts every frame an interface receives, before the kernel stack.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use keel_ebpf_common::Hook;

use crate::iface_stats;

#[xdp]
pub fn xdp_stats(ctx: XdpContext) -> u32 {
    // SAFETY: `ctx.ctx` is the `xdp_md` the kernel passed to this program.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let bytes = ctx.data_end().saturating_sub(ctx.data()) as u64;
    iface_stats::count(ifindex, Hook::Xdp, 1, bytes);
    xdp_action::XDP_PASS
}
