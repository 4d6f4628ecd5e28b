//! `tc_lb_egress` (TC egress on node interfaces): replies of flows `tc_lb_ingress` translated
//! leave with the frontend as their source.

use aya_ebpf::bindings::TC_ACT_SHOT;
use aya_ebpf::macros::classifier;
use aya_ebpf::programs::TcContext;

use crate::{drop_stats, tc_lb};

#[classifier]
pub fn tc_lb_egress(ctx: TcContext) -> i32 {
    match tc_lb::egress(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            drop_stats::record(reason);
            TC_ACT_SHOT
        }
    }
}
