//! `sock_sendmsg4` (cgroup `sendmsg4`): a UDP datagram sent to a Service frontend goes to one of its backends.

use aya_ebpf::macros::cgroup_sock_addr;
use aya_ebpf::programs::SockAddrContext;

use crate::socket_lb;

#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    socket_lb::to_backend(&ctx)
}
