//! `tc_lb_ingress` (TC ingress on node interfaces): Service load-balancing for packets routed
//! through the node, which socket-level load-balancing never sees.

use aya_ebpf::bindings::TC_ACT_SHOT;
use aya_ebpf::macros::classifier;
use aya_ebpf::programs::TcContext;

use crate::{drop_stats, tc_lb};

#[classifier]
pub fn tc_lb_ingress(ctx: TcContext) -> i32 {
    match tc_lb::ingress(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            drop_stats::record(reason);
            TC_ACT_SHOT
        }
    }
}
