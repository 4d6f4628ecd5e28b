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

pub mod drop_reason;
pub mod stats;

pub use drop_reason::DropReason;
pub use stats::{Hook, IfaceCounters, IfaceKey};

/// Names of the programs in the `keel` eBPF object, one per attach point.
pub mod program {
    /// XDP on a node interface: per-interface receive counters.
    pub const XDP_STATS: &str = "xdp_stats";
    /// TC ingress (clsact / tcx) on an interface: per-interface receive counters.
    pub const TC_STATS_INGRESS: &str = "tc_stats_ingress";
    /// TC egress (clsact / tcx) on an interface: per-interface transmit counters.
    pub const TC_STATS_EGRESS: &str = "tc_stats_egress";

    /// Every program in the object, for loaders and the object check in the agent's tests.
    pub const ALL: [&str; 3] = [XDP_STATS, TC_STATS_INGRESS, TC_STATS_EGRESS];
}

/// Names of the maps in the `keel` eBPF object (the `static` names on the eBPF side).
pub mod map {
    /// `PerCpuHashMap<IfaceKey, IfaceCounters>`: packets and bytes per interface and hook.
    pub const IFACE_STATS: &str = "IFACE_STATS";
    /// `PerCpuArray<u64>` indexed by `DropReason`: packets dropped, per reason.
    pub const DROP_STATS: &str = "DROP_STATS";

    /// Every map in the object.
    pub const ALL: [&str; 2] = [IFACE_STATS, DROP_STATS];
}
