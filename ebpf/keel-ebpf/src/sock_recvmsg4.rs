//! `sock_recvmsg4` (cgroup `recvmsg4`): a datagram from a backend appears to come from the frontend the socket sent to.

use aya_ebpf::macros::cgroup_sock_addr;
use aya_ebpf::programs::SockAddrContext;

use crate::socket_lb;

#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    socket_lb::to_frontend(&ctx)
}
