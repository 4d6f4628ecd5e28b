//! The SNAT maps of the TC load-balancing path (contract: `keel_ebpf_common::nat`). The
//! programs write `NAT4`; only the agent writes `NODE_NAT` (and deletes `NAT4` entries of
//! idle flows and removed backends).

use aya_ebpf::bindings::BPF_NOEXIST;
use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use aya_ebpf::macros::map;
use aya_ebpf::maps::{Array, LruHashMap};
use keel_ebpf_common::DropReason;
use keel_ebpf_common::conntrack::{CT_UNREPLIED, CtKey, next_flags};
use keel_ebpf_common::nat::{
    NAT_FORWARD, NAT_PORT_ATTEMPTS, NAT_PORT_MAX, NAT_PORT_MIN, NAT_REVERSE, NAT4_MAX_ENTRIES,
    NODE_F_POD_PEERS, NatValue, NodeNat,
};
use keel_ebpf_common::service::{Backend, PROTO_TCP};

/// Contract: `map::NAT4`.
#[map]
pub static NAT4: LruHashMap<CtKey, NatValue> = LruHashMap::with_max_entries(NAT4_MAX_ENTRIES, 0);

/// Contract: `map::NODE_NAT`.
#[map]
pub static NODE_NAT: Array<NodeNat> = Array::with_max_entries(1, 0);

/// The node address a new flow from `client` to `backend` would take as its source: `None`
/// when SNAT is off, or the client or the backend is on this node (its pod network or its
/// address). Whether the backend's route makes SNAT needed is the caller's to tell.
#[inline(always)]
pub fn snat_address(client: u32, backend: &Backend) -> Option<u32> {
    let node = *NODE_NAT.get(0)?;
    if node.address == 0 || backend.address == node.address {
        return None;
    }
    // A mask of 0: no pod network known, only the node's own address is local.
    let local = |address: u32| node.local_mask != 0 && address & node.local_mask == node.local_net;
    if local(client) || local(backend.address) {
        return None;
    }
    Some(node.address)
}

/// Whether `address` is a pod of this node reached through its veth (`NODE_NAT`: in the pod
/// network, and `NODE_F_POD_PEERS`).
#[inline(always)]
pub fn local_pod_peer(address: u32) -> bool {
    NODE_NAT.get(0).is_some_and(|node| {
        node.flags & NODE_F_POD_PEERS != 0
            && node.local_mask != 0
            && address & node.local_mask == node.local_net
    })
}

/// The `NAT4` entry of `key`, refreshed in place: `last_seen`, and the TCP state a packet
/// with `tcp_flags` shows (`conntrack::next_flags`).
#[inline(always)]
pub fn tracked(key: &CtKey, tcp_flags: u8) -> Option<NatValue> {
    let entry = NAT4.get_ptr_mut(key)?;
    // SAFETY: bpf_ktime_get_ns has no preconditions; `entry` points at the map value found
    // just above, which stays valid for this program run (an LRU eviction only unlinks it).
    unsafe {
        (*entry).last_seen = bpf_ktime_get_ns();
        let flags = next_flags((*entry).flags, (*entry).kind == NAT_REVERSE, tcp_flags);
        if flags != (*entry).flags {
            (*entry).flags = flags;
        }
        Some(*entry)
    }
}

/// Records a new SNATed flow `key` (client to frontend) to `backend`, leaving as `node` with
/// a free port, its client's packets having arrived on `ifindex`: both directions in `NAT4`.
/// Returns the forward entry, to apply to the flow's first packet.
#[inline(always)]
pub fn new_flow(
    key: &CtKey,
    backend: &Backend,
    node: u32,
    ifindex: u32,
) -> Result<NatValue, DropReason> {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let reverse = NatValue {
        last_seen: now,
        address: key.saddr,
        nat_address: key.daddr,
        port: key.sport,
        nat_port: key.dport,
        ifindex,
        kind: NAT_REVERSE,
        flags: if key.protocol == PROTO_TCP {
            CT_UNREPLIED
        } else {
            0
        },
        pad: [0; 6],
    };
    // SAFETY: bpf_get_prandom_u32 has no preconditions.
    let start = unsafe { bpf_get_prandom_u32() };
    let range = u32::from(NAT_PORT_MAX - NAT_PORT_MIN) + 1;
    let mut chosen = None;
    for attempt in 0..NAT_PORT_ATTEMPTS {
        let port = (NAT_PORT_MIN + (start.wrapping_add(attempt) % range) as u16).to_be();
        let reply = CtKey {
            saddr: backend.address,
            daddr: node,
            sport: backend.port,
            dport: port,
            protocol: key.protocol,
            pad: [0; 3],
        };
        // Reverse first, and only where no flow holds the port: a reply must never find a
        // forward entry without its way back, nor another flow's way back.
        if NAT4.insert(reply, reverse, u64::from(BPF_NOEXIST)).is_ok() {
            chosen = Some(port);
            break;
        }
    }
    let port = chosen.ok_or(DropReason::NatPortsExhausted)?;
    let forward = NatValue {
        last_seen: now,
        address: backend.address,
        nat_address: node,
        port: backend.port,
        nat_port: port,
        ifindex,
        kind: NAT_FORWARD,
        flags: 0,
        pad: [0; 6],
    };
    NAT4.insert(key, forward, 0)
        .map_err(|_| DropReason::ConntrackFull)?;
    Ok(forward)
}
