//! `sock_getpeername4` (cgroup `getpeername4`): a translated socket's peer reads as the frontend.

use aya_ebpf::macros::cgroup_sock_addr;
use aya_ebpf::programs::SockAddrContext;

use crate::socket_lb;

#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    socket_lb::to_frontend(&ctx)
}
