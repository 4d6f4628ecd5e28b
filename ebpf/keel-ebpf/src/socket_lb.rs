//! Socket-level Service load-balancing: translate a socket's destination from a Service
//! frontend to a backend once, at `connect` (or per datagram at `sendmsg`), and translate the
//! backend back into the frontend wherever the application reads its peer.

use aya_ebpf::EbpfContext as _;
use aya_ebpf::helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns};
use aya_ebpf::programs::SockAddrContext;
use keel_ebpf_common::DropReason;
use keel_ebpf_common::service::{
    AffinityKey, AffinityValue, Backend, ServiceKey, ServiceValue, SockRevNatKey, SockRevNatValue,
};

use crate::drop_stats;
use crate::service_maps::{AFFINITY, BACKENDS, SERVICES, SOCK_REVNAT, random_backend};

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// What a cgroup sock_addr hook tells the kernel.
pub const ALLOW: i32 = 1;
/// Fails the call with EPERM: a Service with no ready backend refuses at once instead of
/// letting the client time out against an address nobody answers.
pub const REJECT: i32 = 0;

/// `connect4` and `sendmsg4`: if the destination is a frontend, send it to a backend.
#[inline(always)]
pub fn to_backend(ctx: &SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    // SAFETY: `addr` is the `bpf_sock_addr` the kernel passed; these fields are readable here.
    let (address, port, protocol) =
        unsafe { ((*addr).user_ip4, (*addr).user_port, (*addr).protocol) };
    let key = ServiceKey {
        address,
        // The kernel keeps the network-order port in the low 16 bits.
        port: port as u16,
        protocol: protocol as u8,
        pad: 0,
    };
    // SAFETY: a map lookup returning a reference into the map value, read at once.
    let Some(service) = (unsafe { SERVICES.get(key) }) else {
        return ALLOW;
    };
    if service.count == 0 {
        drop_stats::record(DropReason::NoBackend);
        return REJECT;
    }
    let Some((_, backend)) = choose_backend(ctx, service) else {
        drop_stats::record(DropReason::NoBackend);
        return REJECT;
    };
    let (backend_address, backend_port) = (backend.address, backend.port);
    // SAFETY: user_ip4 and user_port are writable in connect4 and sendmsg4.
    unsafe {
        (*addr).user_ip4 = backend_address;
        (*addr).user_port = u32::from(backend_port);
    }
    // SAFETY: the context is a `bpf_sock_addr`, which bpf_get_socket_cookie accepts.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let revnat_key = SockRevNatKey {
        cookie,
        address: backend_address,
        port: backend_port,
        pad: [0; 2],
    };
    let frontend = SockRevNatValue {
        address: key.address,
        port: key.port,
        pad: [0; 2],
    };
    // An LRU map makes room by itself; a failure here only loses the reverse view.
    let _ = SOCK_REVNAT.insert(revnat_key, frontend, 0);
    ALLOW
}

/// The backend for this connection: the client's previous one while its affinity lasts, else
/// a slot at random.
#[inline(always)]
fn choose_backend(ctx: &SockAddrContext, service: &ServiceValue) -> Option<(u32, Backend)> {
    if service.affinity_timeout == 0 {
        return random_backend(service);
    }
    // SAFETY: the context is a `bpf_sock_addr`, which bpf_get_netns_cookie accepts.
    let client = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let key = AffinityKey {
        client,
        service_id: service.id,
        pad: 0,
    };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let timeout = u64::from(service.affinity_timeout) * NANOS_PER_SECOND;
    // SAFETY: a map lookup returning a reference into the map value, read at once.
    let previous = unsafe { AFFINITY.get(key) }.copied();
    let chosen = match previous {
        Some(previous) if now.saturating_sub(previous.last_used) <= timeout => {
            // SAFETY: as above. A backend the agent removed is gone from BACKENDS.
            match unsafe { BACKENDS.get(previous.backend_id) } {
                Some(backend) => Some((previous.backend_id, *backend)),
                None => random_backend(service),
            }
        }
        _ => random_backend(service),
    };
    if let Some((backend_id, _)) = chosen {
        let value = AffinityValue {
            last_used: now,
            backend_id,
            pad: 0,
        };
        // An LRU map makes room by itself; a failure only forgets the affinity.
        let _ = AFFINITY.insert(key, value, 0);
    }
    chosen
}

/// `recvmsg4` and `getpeername4`: show the frontend where the backend would appear.
#[inline(always)]
pub fn to_frontend(ctx: &SockAddrContext) -> i32 {
    let addr = ctx.sock_addr;
    // SAFETY: the context is a `bpf_sock_addr`, which bpf_get_socket_cookie accepts.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: `addr` is the `bpf_sock_addr` the kernel passed; these fields are readable here.
    let (address, port) = unsafe { ((*addr).user_ip4, (*addr).user_port) };
    let key = SockRevNatKey {
        cookie,
        address,
        port: port as u16,
        pad: [0; 2],
    };
    // SAFETY: a map lookup returning a reference into the map value, read at once.
    if let Some(frontend) = unsafe { SOCK_REVNAT.get(key) } {
        let (frontend_address, frontend_port) = (frontend.address, frontend.port);
        // SAFETY: user_ip4 and user_port are writable in recvmsg4 and getpeername4.
        unsafe {
            (*addr).user_ip4 = frontend_address;
            (*addr).user_port = u32::from(frontend_port);
        }
    }
    ALLOW
}
