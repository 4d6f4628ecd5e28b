//! `xdp_lb` (XDP on node interfaces, `--bpf-lb-acceleration native`): counts every frame as
//! `xdp_stats` does, and serves the NodePort / LoadBalancer / externalIP flows that go straight
//! back out of the interface (`XDP_TX`, counted apart); the rest passes to the stack and TC.

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use keel_ebpf_common::Hook;

use crate::{drop_stats, iface_stats, xdp_nat};

#[xdp]
pub fn xdp_lb(ctx: XdpContext) -> u32 {
    let ifindex = iface_stats::count_xdp(&ctx, Hook::Xdp);
    match xdp_nat::forward(&ctx, ifindex) {
        Ok(xdp_action::XDP_TX) => {
            iface_stats::count_xdp(&ctx, Hook::XdpTx);
            xdp_action::XDP_TX
        }
        Ok(action) => action,
        Err(reason) => {
            drop_stats::record(reason);
            xdp_action::XDP_DROP
        }
    }
}
