//! Service load-balancing at TC, for packets no local socket sent (they arrive routed through
//! the node): at ingress, DNAT to a backend with a conntrack entry per direction; at egress,
//! reverse NAT of the replies; incremental checksum updates.
//!
//! Reverse NAT happens at egress, after routing, because a reply may take the node's own
//! address as its source (NodePort): rewritten before routing, the kernel would drop it as a
//! martian (a forwarded packet from a local address).
//!
//! SNAT (kube-proxy replacement's SNAT mode): a new flow from outside the node to an external
//! frontend (NodePort, LoadBalancer IP, externalIP) whose chosen backend is not on this node
//! also takes the node's address and a port from `NAT_PORT_MIN..=NAT_PORT_MAX` as its source
//! and is redirected out of the interface it came in on, towards the backend's node; that
//! node's replies, addressed to the node's port, get both translations reversed and are
//! redirected back out towards the client. Both directions live in `NAT4`. Both redirects go
//! through `bpf_redirect_neigh`, which resolves the next hop the kernel's routes give.
//!
//! Hairpin: on a pod's interface, a pod's flow whose chosen backend is the pod itself is
//! SNATed the same way to `HAIRPIN_ADDRESS` and sent back to the pod.

use aya_ebpf::bindings::{
    BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
    TC_ACT_OK, bpf_fib_lookup,
};
use aya_ebpf::helpers::{bpf_ktime_get_ns, bpf_redirect_neigh, bpf_redirect_peer};
use aya_ebpf::programs::TcContext;
use keel_ebpf_common::DropReason;
use keel_ebpf_common::conntrack::{
    CT_FORWARD, CT_REVERSE, CT_UNREPLIED, CtKey, CtValue, next_flags,
};
use keel_ebpf_common::nat::{HAIRPIN_ADDRESS, NAT_FORWARD, NatValue};
use keel_ebpf_common::service::{
    Backend, PROTO_TCP, PROTO_UDP, SERVICE_F_DROP_WHEN_EMPTY, SERVICE_F_EXTERNAL,
    SERVICE_F_LOCAL_ONLY, ServiceKey,
};

use crate::ct_map::CT4;
use crate::maglev::backend_for_flow;
use crate::service_maps::SERVICES;
use crate::{drop_stats, nat_map, reject, route};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const IPV4_MIN_HLEN: usize = 20;
const IPV4_TTL: usize = ETH_HLEN + 8;
const IPV4_CHECKSUM: usize = ETH_HLEN + 10;
const IPV4_SADDR: usize = ETH_HLEN + 12;
const IPV4_DADDR: usize = ETH_HLEN + 16;
/// Offset of the flags byte in a TCP header.
pub const TCP_FLAGS: usize = 13;

/// The parts of an IPv4 TCP / UDP packet the load balancer reads.
struct Flow {
    /// Offset of the transport header.
    l4: usize,
    protocol: u8,
    key: CtKey,
    /// The TCP flags (0 for UDP).
    tcp_flags: u8,
}

/// The reply of a translated flow leaving the node: its source becomes the frontend again.
#[inline(always)]
pub fn egress(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some(flow) = parse(ctx)? else {
        return Ok(TC_ACT_OK);
    };
    if let Some(entry) = tracked(&flow)
        && entry.kind == CT_REVERSE
    {
        rewrite(ctx, &flow, Side::Source, entry.address, entry.port)?;
    }
    Ok(TC_ACT_OK)
}

/// A packet to a Service frontend arriving at the node goes to a backend: the flow's tracked
/// one, or a new choice; other packets pass untouched (replies are translated at egress).
#[inline(always)]
pub fn ingress(ctx: &TcContext) -> Result<i32, DropReason> {
    let Some(flow) = parse(ctx)? else {
        return Ok(TC_ACT_OK);
    };
    if let Some(entry) = nat_map::tracked(&flow.key, flow.tcp_flags) {
        return translate_nat(ctx, &flow, &entry);
    }
    if let Some(entry) = tracked(&flow) {
        if entry.kind == CT_FORWARD {
            rewrite(ctx, &flow, Side::Destination, entry.address, entry.port)?;
            return to_backend(ctx, &flow, entry.address);
        }
        return Ok(TC_ACT_OK);
    }
    let frontend = ServiceKey {
        address: flow.key.daddr,
        port: flow.key.dport,
        protocol: flow.protocol,
        pad: 0,
    };
    // SAFETY: as above.
    let Some(service) = (unsafe { SERVICES.get(frontend) }).copied() else {
        return Ok(TC_ACT_OK);
    };
    let chosen = backend_for_flow(&service, &flow.key);
    let Some((_, backend)) = chosen else {
        // A `Local` policy whose endpoints are all on other nodes: dropped, as kube-proxy does.
        if service.flags & SERVICE_F_DROP_WHEN_EMPTY != 0 {
            return Err(DropReason::NoLocalBackend);
        }
        // Refused, not delivered: counted as a drop, answered as kube-proxy's REJECT does.
        drop_stats::record(DropReason::NoBackend);
        return reject::port_unreachable(ctx, flow.l4);
    };
    // A pod's flow whose chosen backend is the pod itself (hairpin, seen on its own
    // interface): it takes `HAIRPIN_ADDRESS` as its source, so the pod does not get its own
    // packet back from its own address; sent back out of the interface, both ways in `NAT4`.
    if backend.address == flow.key.saddr {
        // SAFETY: `ctx.skb.skb` is the program's own context pointer, valid for this run.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        let hairpin = u32::from_ne_bytes(HAIRPIN_ADDRESS);
        let forward = nat_map::new_flow(&flow.key, &backend, hairpin, ifindex)?;
        return translate_nat(ctx, &flow, &forward);
    }
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if service.flags & (SERVICE_F_EXTERNAL | SERVICE_F_LOCAL_ONLY) == SERVICE_F_EXTERNAL
        && let Some(node) = snat_source(ctx, &flow, &backend)
    {
        // SAFETY: `ctx.skb.skb` is the program's own context pointer, valid for this run.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        let forward = nat_map::new_flow(&flow.key, &backend, node, ifindex)?;
        return translate_nat(ctx, &flow, &forward);
    }
    let forward = CtValue {
        last_seen: now,
        address: backend.address,
        port: backend.port,
        kind: CT_FORWARD,
        flags: 0,
    };
    let reply = CtKey {
        saddr: backend.address,
        daddr: flow.key.saddr,
        sport: backend.port,
        dport: flow.key.sport,
        protocol: flow.protocol,
        pad: [0; 3],
    };
    let reverse = CtValue {
        last_seen: now,
        address: frontend.address,
        port: frontend.port,
        kind: CT_REVERSE,
        flags: if flow.protocol == PROTO_TCP {
            CT_UNREPLIED
        } else {
            0
        },
    };
    // Reverse first: a reply must never find a forward entry without its way back.
    CT4.insert(reply, reverse, 0)
        .map_err(|_| DropReason::ConntrackFull)?;
    CT4.insert(flow.key, forward, 0)
        .map_err(|_| DropReason::ConntrackFull)?;
    rewrite(ctx, &flow, Side::Destination, backend.address, backend.port)?;
    to_backend(ctx, &flow, backend.address)
}

/// Where a packet translated to `backend` goes: a backend in this node's pod network gets it
/// straight into its network namespace (`bpf_redirect_peer` to the pod side of the veth the
/// kernel's route to it names), without the node's routing, forwarding and backlog queue, the
/// TTL counted down here and the MACs the route's neighbour entry gives written; anything else
/// goes on through the stack.
#[inline(always)]
fn to_backend(ctx: &TcContext, flow: &Flow, backend: u32) -> Result<i32, DropReason> {
    if !nat_map::local_pod_peer(backend) {
        return Ok(TC_ACT_OK);
    }
    let (ifindex, found, route) = route_from(ctx, flow, flow.key.saddr, backend);
    // Without a neighbour entry yet (the stack resolves it), from the pod's own interface, or
    // with a TTL to expire: left to the stack.
    let ttl: u8 = ctx.load(IPV4_TTL).map_err(|_| DropReason::Malformed)?;
    if found != i64::from(BPF_FIB_LKUP_RET_SUCCESS) || route.ifindex == ifindex || ttl <= 1 {
        return Ok(TC_ACT_OK);
    }
    decrement_ttl(ctx)?;
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&route.dmac);
    macs[6..].copy_from_slice(&route.smac);
    ctx.store(0, &macs, 0).map_err(|_| DropReason::Malformed)?;
    // SAFETY: no pointers: the helper records the target device for the redirect.
    let action = unsafe { bpf_redirect_peer(route.ifindex, 0) };
    Ok(action as i32)
}

/// The interface the packet came in on, and the kernel's route for its flow from `source` to
/// `destination` (`route::lookup`'s result code and filled request).
#[inline(always)]
fn route_from(
    ctx: &TcContext,
    flow: &Flow,
    source: u32,
    destination: u32,
) -> (u32, i64, bpf_fib_lookup) {
    // SAFETY: `ctx.skb.skb` is the program's own context pointer, valid for this run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the program's own context pointer.
    let (found, route) = unsafe {
        route::lookup(
            ctx.skb.skb.cast(),
            ifindex,
            flow.protocol,
            source,
            destination,
        )
    };
    (ifindex, found, route)
}

/// The node address a new external flow to `backend` must take as its source: `None` when
/// SNAT is off, the client is on this node, or the backend is, or the backend is reached
/// through another interface than the flow came in on (then its replies come back through
/// this node anyway; only a backend out of the same interface, another node beside the
/// client, would answer the client directly).
#[inline(always)]
fn snat_source(ctx: &TcContext, flow: &Flow, backend: &Backend) -> Option<u32> {
    let node = nat_map::snat_address(flow.key.saddr, backend)?;
    let (ifindex, found, route) = route_from(ctx, flow, node, backend.address);
    // Found, or found without a neighbour entry yet (`bpf_redirect_neigh` resolves it).
    let routed = found == i64::from(BPF_FIB_LKUP_RET_SUCCESS)
        || found == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH);
    (routed && route.ifindex == ifindex).then_some(node)
}

/// Applies a `NAT4` entry to a packet of its flow and redirects it: forward, towards the
/// backend's node out of the interface it came in on; reverse, towards the client out of the
/// interface the flow came in on.
#[inline(always)]
fn translate_nat(ctx: &TcContext, flow: &Flow, entry: &NatValue) -> Result<i32, DropReason> {
    let ifindex = if entry.kind == NAT_FORWARD {
        rewrite(ctx, flow, Side::Destination, entry.address, entry.port)?;
        rewrite(ctx, flow, Side::Source, entry.nat_address, entry.nat_port)?;
        // SAFETY: `ctx.skb.skb` is the program's own context pointer, valid for this run.
        unsafe { (*ctx.skb.skb).ifindex }
    } else {
        rewrite(ctx, flow, Side::Source, entry.nat_address, entry.nat_port)?;
        rewrite(ctx, flow, Side::Destination, entry.address, entry.port)?;
        entry.ifindex
    };
    decrement_ttl(ctx)?;
    // SAFETY: no parameters: the helper looks the next hop up in the kernel's routes.
    let action = unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) };
    Ok(action as i32)
}

/// A redirected packet skips the stack's forwarding, so its TTL is counted down here, as a
/// router does (with the IPv4 checksum); one that reached 0 is not forwarded.
#[inline(always)]
fn decrement_ttl(ctx: &TcContext) -> Result<(), DropReason> {
    let failed = |_| DropReason::Malformed;
    // TTL and protocol: the 16-bit word the IPv4 checksum covers.
    let word: [u8; 2] = ctx.load(IPV4_TTL).map_err(failed)?;
    if word[0] <= 1 {
        return Err(DropReason::TtlExceeded);
    }
    let new = [word[0] - 1, word[1]];
    ctx.l3_csum_replace(
        IPV4_CHECKSUM,
        u64::from(u16::from_ne_bytes(word)),
        u64::from(u16::from_ne_bytes(new)),
        2,
    )
    .map_err(failed)?;
    ctx.store(IPV4_TTL, &new, 0).map_err(failed)
}

/// The tracked entry of `flow`, refreshed in place (per-packet writes of its fields, not a map
/// update): `last_seen`, and the TCP state the packet shows: a reply (a reverse entry's
/// packet) answers the flow, a FIN or RST starts its closing, a SYN reopens the tuple.
#[inline(always)]
fn tracked(flow: &Flow) -> Option<CtValue> {
    let entry = CT4.get_ptr_mut(flow.key)?;
    // SAFETY: bpf_ktime_get_ns has no preconditions; `entry` points at the map value found
    // just above, which stays valid for this program run (an LRU eviction only unlinks it).
    unsafe {
        (*entry).last_seen = bpf_ktime_get_ns();
        let flags = next_flags((*entry).flags, (*entry).kind == CT_REVERSE, flow.tcp_flags);
        if flags != (*entry).flags {
            (*entry).flags = flags;
        }
        Some(*entry)
    }
}

/// `None` for what the load balancer does not handle (not IPv4, not TCP / UDP, a later
/// fragment).
#[inline(always)]
fn parse(ctx: &TcContext) -> Result<Option<Flow>, DropReason> {
    let malformed = |_| DropReason::Malformed;
    let ether_type: u16 = ctx.load(12).map_err(malformed)?;
    if u16::from_be(ether_type) != ETH_P_IPV4 {
        return Ok(None);
    }
    let version_ihl: u8 = ctx.load(ETH_HLEN).map_err(malformed)?;
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < IPV4_MIN_HLEN {
        return Err(DropReason::Malformed);
    }
    let fragment: u16 = ctx.load(ETH_HLEN + 6).map_err(malformed)?;
    if u16::from_be(fragment) & 0x1fff != 0 {
        return Ok(None);
    }
    let protocol: u8 = ctx.load(ETH_HLEN + 9).map_err(malformed)?;
    if protocol != PROTO_TCP && protocol != PROTO_UDP {
        return Ok(None);
    }
    let l4 = ETH_HLEN + header_len;
    let key = CtKey {
        saddr: ctx.load(IPV4_SADDR).map_err(malformed)?,
        daddr: ctx.load(IPV4_DADDR).map_err(malformed)?,
        sport: ctx.load(l4).map_err(malformed)?,
        dport: ctx.load(l4 + 2).map_err(malformed)?,
        protocol,
        pad: [0; 3],
    };
    let tcp_flags = if protocol == PROTO_TCP {
        ctx.load(l4 + TCP_FLAGS).map_err(malformed)?
    } else {
        0
    };
    Ok(Some(Flow {
        l4,
        protocol,
        key,
        tcp_flags,
    }))
}

#[derive(Clone, Copy)]
enum Side {
    Source,
    Destination,
}

/// Replaces one side's address and port, fixing the IPv4 and transport checksums.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    flow: &Flow,
    side: Side,
    address: u32,
    port: u16,
) -> Result<(), DropReason> {
    let (address_at, port_at, old_address, old_port) = match side {
        Side::Source => (IPV4_SADDR, flow.l4, flow.key.saddr, flow.key.sport),
        Side::Destination => (IPV4_DADDR, flow.l4 + 2, flow.key.daddr, flow.key.dport),
    };
    let (checksum_at, mangled_zero) = if flow.protocol == PROTO_TCP {
        (flow.l4 + 16, 0)
    } else {
        // A UDP checksum of 0 means "none" and must stay 0.
        (flow.l4 + 6, u64::from(BPF_F_MARK_MANGLED_0))
    };
    let failed = |_| DropReason::Malformed;
    ctx.l3_csum_replace(IPV4_CHECKSUM, u64::from(old_address), u64::from(address), 4)
        .map_err(failed)?;
    // The address is part of the transport checksum's pseudo-header; the port is in the header.
    let pseudo = u64::from(BPF_F_PSEUDO_HDR) | mangled_zero;
    ctx.l4_csum_replace(
        checksum_at,
        u64::from(old_address),
        u64::from(address),
        pseudo | 4,
    )
    .map_err(failed)?;
    ctx.l4_csum_replace(
        checksum_at,
        u64::from(old_port),
        u64::from(port),
        mangled_zero | 2,
    )
    .map_err(failed)?;
    ctx.store(address_at, &address, 0).map_err(failed)?;
    ctx.store(port_at, &port, 0).map_err(failed)?;
    Ok(())
}
