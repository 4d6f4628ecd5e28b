//! `sock_connect4` (cgroup `connect4`): a socket connecting to a Service frontend connects to one of its backends.

use aya_ebpf::macros::cgroup_sock_addr;
use aya_ebpf::programs::SockAddrContext;

use crate::socket_lb;

#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    socket_lb::to_backend(&ctx)
}
