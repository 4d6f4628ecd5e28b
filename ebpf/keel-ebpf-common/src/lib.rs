//! The contract between Keel's eBPF programs (`keel-ebpf`) and the agent that loads them.
//!
//! Everything both sides must agree on lives here and only here: the key and value layout of
//! every map, the names under which the agent finds maps and programs in the object, and the
//! drop reasons. Types are `#[repr(C)]` with explicit padding and a compile-time size check, so
//! the layout the kernel sees is the one userspace reads. No `bool`: its layout is not part of
//! the C ABI contract the verifier and BTF describe.
//!
//! The `user` feature implements `aya::Pod` for the map types; the eBPF side uses the crate
//! without features, `no_std`.
#![no_std]

pub mod checksum;
pub mod conntrack;
pub mod drop_reason;
pub mod maglev;
pub mod nat;
pub mod service;
pub mod stats;

pub use drop_reason::DropReason;
pub use stats::{Hook, IfaceCounters, IfaceKey};

/// Names of the programs in the `keel` eBPF object, one per attach point.
pub mod program {
    /// XDP on a node interface: per-interface receive counters.
    pub const XDP_STATS: &str = "xdp_stats";
    /// XDP on a node interface, instead of `xdp_stats` (`--bpf-lb-acceleration native`): the
    /// same counters, and external flows SNATed to a backend beside the client sent straight
    /// back out (`XDP_TX`); everything else passes to the stack and `tc_lb_ingress`.
    pub const XDP_LB: &str = "xdp_lb";
    /// TC ingress (clsact / tcx) on an interface: per-interface receive counters.
    pub const TC_STATS_INGRESS: &str = "tc_stats_ingress";
    /// TC egress (clsact / tcx) on an interface: per-interface transmit counters.
    pub const TC_STATS_EGRESS: &str = "tc_stats_egress";

    /// TC ingress on node interfaces: packets to a Service frontend that no local socket sent
    /// (routed through the node) go to a backend; replies come back from the frontend.
    pub const TC_LB_INGRESS: &str = "tc_lb_ingress";
    /// TC egress on node interfaces: replies of flows `tc_lb_ingress` translated leave with
    /// the frontend as their source.
    pub const TC_LB_EGRESS: &str = "tc_lb_egress";
    /// cgroup `connect4`: a socket connecting to a Service frontend connects to a backend.
    pub const SOCK_CONNECT4: &str = "sock_connect4";
    /// cgroup `sendmsg4`: a UDP datagram sent to a frontend goes to a backend.
    pub const SOCK_SENDMSG4: &str = "sock_sendmsg4";
    /// cgroup `recvmsg4`: a datagram from that backend appears to come from the frontend.
    pub const SOCK_RECVMSG4: &str = "sock_recvmsg4";
    /// cgroup `getpeername4`: a connected socket's peer reads as the frontend.
    pub const SOCK_GETPEERNAME4: &str = "sock_getpeername4";

    /// Every program in the object, for loaders and the object check in the agent's tests.
    pub const ALL: [&str; 10] = [
        XDP_STATS,
        XDP_LB,
        TC_STATS_INGRESS,
        TC_STATS_EGRESS,
        TC_LB_INGRESS,
        TC_LB_EGRESS,
        SOCK_CONNECT4,
        SOCK_SENDMSG4,
        SOCK_RECVMSG4,
        SOCK_GETPEERNAME4,
    ];
}

/// Names of the maps in the `keel` eBPF object (the `static` names on the eBPF side).
pub mod map {
    /// `PerCpuHashMap<IfaceKey, IfaceCounters>`: packets and bytes per interface and hook.
    pub const IFACE_STATS: &str = "IFACE_STATS";
    /// `PerCpuArray<u64>` indexed by `DropReason`: packets dropped, per reason.
    pub const DROP_STATS: &str = "DROP_STATS";

    /// `HashMap<ServiceKey, ServiceValue>`: Service frontends.
    pub const SERVICES: &str = "SERVICES";
    /// `HashMap<BackendSlotKey, u32>`: a service's slots, each naming a backend id.
    pub const BACKEND_SLOTS: &str = "BACKEND_SLOTS";
    /// `HashMap<u32, Backend>`: backends by id.
    pub const BACKENDS: &str = "BACKENDS";
    /// `LruHashMap<SockRevNatKey, SockRevNatValue>`: the frontend behind a translated socket.
    pub const SOCK_REVNAT: &str = "SOCK_REVNAT";

    /// `LruHashMap<AffinityKey, AffinityValue>`: `sessionAffinity: ClientIP` choices.
    pub const AFFINITY: &str = "AFFINITY";

    /// `LruHashMap<CtKey, CtValue>`: flows translated by the TC path, both directions.
    pub const CT4: &str = "CT4";

    /// `HashOfMaps<u32, Array<u32>>`: a service id's Maglev lookup table of backend ids.
    pub const MAGLEV: &str = "MAGLEV";

    /// `LruHashMap<CtKey, NatValue>`: SNATed flows (remote backends of external frontends).
    pub const NAT4: &str = "NAT4";
    /// `Array<NodeNat>` of one entry: the node's SNAT address and pod network (agent-written).
    pub const NODE_NAT: &str = "NODE_NAT";

    /// Every map in the object.
    pub const ALL: [&str; 11] = [
        CT4,
        NAT4,
        NODE_NAT,
        IFACE_STATS,
        DROP_STATS,
        SERVICES,
        BACKEND_SLOTS,
        BACKENDS,
        SOCK_REVNAT,
        AFFINITY,
        MAGLEV,
    ];
}
