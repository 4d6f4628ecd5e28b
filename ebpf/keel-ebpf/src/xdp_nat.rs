//! NodePort / LoadBalancer / externalIP load-balancing at XDP, before the kernel allocates
//! anything for the packet: the flows that leave through the interface they came in on, SNATed
//! to a backend on another node beside the client (the `NAT4` flows of `tc_lb`), are
//! translated and sent straight back out with `XDP_TX`.
//!
//! Everything else passes to the stack untouched, where `tc_lb_ingress` serves it: a backend
//! on this node (delivered to its pod from TC), a backend behind another interface, a route
//! without a resolved neighbour (XDP cannot resolve one), IPv4 options and fragments, TTL
//! expiry, Services without a backend (refused from TC). XDP and TC share `NAT4`, so a flow
//! may move between them packet by packet (when a neighbour entry expires, say) and stays
//! one flow.

use aya_ebpf::bindings::{BPF_FIB_LKUP_RET_SUCCESS, xdp_action};
use aya_ebpf::programs::XdpContext;
use keel_ebpf_common::DropReason;
use keel_ebpf_common::checksum::{internet_checksum, replace16, replace32};
use keel_ebpf_common::conntrack::CtKey;
use keel_ebpf_common::nat::{NAT_REVERSE, NatValue};
use keel_ebpf_common::service::{
    PROTO_TCP, PROTO_UDP, SERVICE_F_EXTERNAL, SERVICE_F_LOCAL_ONLY, ServiceKey,
};

use crate::maglev::backend_for_flow;
use crate::service_maps::SERVICES;
use crate::tc_lb::{ETH_HLEN, ETH_P_IPV4, IPV4_MIN_HLEN, TCP_FLAGS};
use crate::{nat_map, route};

/// MAC addresses a frame leaves with: (destination, source).
type Macs = ([u8; 6], [u8; 6]);

/// The transport header's offset: only option-less IPv4 headers are translated here.
const L4: usize = ETH_HLEN + IPV4_MIN_HLEN;

/// A pointer to the `N` bytes at `offset` of the frame, if the frame holds them (the bounds
/// check the verifier wants before any access).
#[inline(always)]
fn bytes_at<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<*mut [u8; N]> {
    let start = ctx.data();
    if start + offset + N > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut [u8; N])
}

/// `XDP_TX` for a frame translated and sent back out, `XDP_PASS` for everything the stack
/// (and TC) must see.
#[inline(always)]
pub fn forward(ctx: &XdpContext, ifindex: u32) -> Result<u32, DropReason> {
    const PASS: Result<u32, DropReason> = Ok(xdp_action::XDP_PASS);
    let Some(ethernet) = bytes_at::<ETH_HLEN>(ctx, 0) else {
        return PASS;
    };
    let Some(ip) = bytes_at::<IPV4_MIN_HLEN>(ctx, ETH_HLEN) else {
        return PASS;
    };
    // SAFETY: `bytes_at` checked the frame holds these bytes; byte arrays need no alignment.
    let (mut frame_head, mut header) = unsafe { (*ethernet, *ip) };
    // Version 4 without options, not a fragment (neither MF nor an offset), TTL left to spend.
    if u16::from_be_bytes([frame_head[12], frame_head[13]]) != ETH_P_IPV4
        || header[0] != 0x45
        || u16::from_be_bytes([header[6], header[7]]) & 0x3fff != 0
        || header[8] <= 1
    {
        return PASS;
    }
    let protocol = header[9];
    let checksum_at = match protocol {
        PROTO_TCP => L4 + 16,
        PROTO_UDP => L4 + 6,
        _ => return PASS,
    };
    let (Some(ports), Some(checksum)) = (bytes_at::<4>(ctx, L4), bytes_at::<2>(ctx, checksum_at))
    else {
        return PASS;
    };
    // SAFETY: as above.
    let (old_ports, old_checksum) = unsafe { (*ports, *checksum) };
    let key = CtKey {
        saddr: u32::from_ne_bytes([header[12], header[13], header[14], header[15]]),
        daddr: u32::from_ne_bytes([header[16], header[17], header[18], header[19]]),
        sport: u16::from_ne_bytes([old_ports[0], old_ports[1]]),
        dport: u16::from_ne_bytes([old_ports[2], old_ports[3]]),
        protocol,
        pad: [0; 3],
    };
    let tcp_flags = match protocol {
        PROTO_TCP => match bytes_at::<1>(ctx, L4 + TCP_FLAGS) {
            // SAFETY: as above.
            Some(flags) => unsafe { (*flags)[0] },
            None => return PASS,
        },
        _ => 0,
    };
    let ctx_ptr = ctx.ctx.cast();
    let (entry, macs) = match nat_map::tracked(&key, tcp_flags) {
        Some(entry) => {
            // A reply leaves where its client's packets came in: here, or TC's redirect.
            if entry.kind == NAT_REVERSE && entry.ifindex != ifindex {
                return PASS;
            }
            // SAFETY: the program's own context pointer.
            let (found, route) = unsafe {
                route::lookup(ctx_ptr, ifindex, protocol, entry.nat_address, entry.address)
            };
            if found != i64::from(BPF_FIB_LKUP_RET_SUCCESS) || route.ifindex != ifindex {
                return PASS;
            }
            (entry, (route.dmac, route.smac))
        }
        None => match new_flow(ctx_ptr, &key, ifindex)? {
            Some(found) => found,
            None => return PASS,
        },
    };

    // Both kinds: the source becomes `nat_address:nat_port` (the node's, or the frontend for
    // a reply), the destination `address:port` (the backend, or the client).
    let (new_source, new_destination) =
        (entry.nat_address.to_ne_bytes(), entry.address.to_ne_bytes());
    let (new_sport, new_dport) = (entry.nat_port.to_ne_bytes(), entry.port.to_ne_bytes());
    let old_source = [header[12], header[13], header[14], header[15]];
    let old_destination = [header[16], header[17], header[18], header[19]];
    header[8] -= 1;
    header[10] = 0;
    header[11] = 0;
    header[12..16].copy_from_slice(&new_source);
    header[16..20].copy_from_slice(&new_destination);
    let header_checksum = internet_checksum(&header);
    header[10..12].copy_from_slice(&header_checksum.to_be_bytes());

    let mut transport = u16::from_be_bytes(old_checksum);
    // A UDP checksum of 0 means "none" and stays 0.
    if protocol == PROTO_TCP || transport != 0 {
        transport = replace32(transport, old_source, new_source);
        transport = replace32(transport, old_destination, new_destination);
        transport = replace16(
            transport,
            u16::from_be_bytes([old_ports[0], old_ports[1]]),
            u16::from_be_bytes(new_sport),
        );
        transport = replace16(
            transport,
            u16::from_be_bytes([old_ports[2], old_ports[3]]),
            u16::from_be_bytes(new_dport),
        );
        if protocol == PROTO_UDP && transport == 0 {
            transport = 0xffff;
        }
    }
    let (dmac, smac) = macs;
    frame_head[0..6].copy_from_slice(&dmac);
    frame_head[6..12].copy_from_slice(&smac);
    // SAFETY: the pointers `bytes_at` checked above; the frame has not changed size.
    unsafe {
        *ethernet = frame_head;
        *ip = header;
        *ports = [new_sport[0], new_sport[1], new_dport[0], new_dport[1]];
        *checksum = transport.to_be_bytes();
    }
    Ok(xdp_action::XDP_TX)
}

/// A new flow XDP can serve on its own: to an external frontend (not `Local`), its backend
/// on another node routed out of this same interface with a resolved neighbour. Records it
/// in `NAT4` and returns its forward entry and the MACs (destination, source) to send it
/// with; `None` for anything TC must see.
#[inline(always)]
fn new_flow(
    ctx: *mut core::ffi::c_void,
    key: &CtKey,
    ifindex: u32,
) -> Result<Option<(NatValue, Macs)>, DropReason> {
    let frontend = ServiceKey {
        address: key.daddr,
        port: key.dport,
        protocol: key.protocol,
        pad: 0,
    };
    // SAFETY: a map lookup returning a reference into the map value, copied at once.
    let Some(service) = (unsafe { SERVICES.get(frontend) }).copied() else {
        return Ok(None);
    };
    if service.flags & (SERVICE_F_EXTERNAL | SERVICE_F_LOCAL_ONLY) != SERVICE_F_EXTERNAL {
        return Ok(None);
    }
    let Some((_, backend)) = backend_for_flow(&service, key) else {
        return Ok(None);
    };
    let Some(node) = nat_map::snat_address(key.saddr, &backend) else {
        return Ok(None);
    };
    // SAFETY: the program's own context pointer.
    let (found, route) =
        unsafe { route::lookup(ctx, ifindex, key.protocol, node, backend.address) };
    if found != i64::from(BPF_FIB_LKUP_RET_SUCCESS) || route.ifindex != ifindex {
        return Ok(None);
    }
    let entry = nat_map::new_flow(key, &backend, node, ifindex)?;
    Ok(Some((entry, (route.dmac, route.smac))))
}
