//! Service load-balancing maps: frontends (VIP, port, protocol), their backend slots, the
//! backends, and the socket-level reverse translation.
//!
//! Addresses and ports are stored in network byte order, as the kernel hands them to the
//! programs, so the datapath never converts. A service's backends are slots `1..=count` of
//! `BACKEND_SLOTS`; the agent writes new slots before raising `count` and lowers `count`
//! before deleting slots, so a lookup never lands on a slot that is not written.

/// Most frontends `SERVICES` holds.
pub const SERVICES_MAX_ENTRIES: u32 = 65_536;
/// Most `(service, slot)` pairs `BACKEND_SLOTS` holds.
pub const BACKEND_SLOTS_MAX_ENTRIES: u32 = 262_144;
/// Most backends `BACKENDS` holds.
pub const BACKENDS_MAX_ENTRIES: u32 = 262_144;
/// Most sockets whose peer `SOCK_REVNAT` remembers (LRU: the oldest are forgotten).
pub const SOCK_REVNAT_MAX_ENTRIES: u32 = 262_144;

/// IP protocol numbers as they appear in `ServiceKey::protocol`.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Key of `SERVICES`: one frontend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    /// The frontend IPv4 address (ClusterIP, node IP, LoadBalancer IP), network byte order.
    pub address: u32,
    /// The frontend port, network byte order.
    pub port: u16,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub protocol: u8,
    pub pad: u8,
}

/// Value of `SERVICES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceValue {
    /// Identifies the service's slots in `BACKEND_SLOTS`; never 0.
    pub id: u32,
    /// Number of backend slots (`1..=count`); 0: the service has no ready backend.
    pub count: u32,
    /// `sessionAffinity: ClientIP` timeout in seconds; 0: no affinity.
    pub affinity_timeout: u32,
    /// Entries of the service's Maglev table in `MAGLEV` (the TC path picks a new flow's
    /// backend there); 0: no table, a slot at random.
    pub maglev_size: u32,
    /// `SERVICE_F_*` bits.
    pub flags: u32,
    pub pad: u32,
}

/// `ServiceValue::flags`: with no backend, drop (`no_local_backend`) instead of refusing:
/// a `Local` traffic policy whose endpoints are all on other nodes, as kube-proxy drops it
/// (a client or load balancer retries elsewhere; a refusal would say the Service is gone).
pub const SERVICE_F_DROP_WHEN_EMPTY: u32 = 1;
/// `ServiceValue::flags`: an external frontend under `externalTrafficPolicy: Local`: its
/// backends are this node's only, reached without SNAT, so they see the client's address.
pub const SERVICE_F_LOCAL_ONLY: u32 = 2;
/// `ServiceValue::flags`: a frontend reached from outside the cluster (NodePort, LoadBalancer
/// IP, externalIP): new flows to a backend on another node are SNATed (`nat`).
pub const SERVICE_F_EXTERNAL: u32 = 4;

/// Most clients `AFFINITY` remembers (LRU).
pub const AFFINITY_MAX_ENTRIES: u32 = 65_536;

/// Key of `AFFINITY`: a client of a service. At the socket level the client is its network
/// namespace (a pod, or the node itself), identified by `bpf_get_netns_cookie`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub client: u64,
    pub service_id: u32,
    pub pad: u32,
}

/// Value of `AFFINITY`: the backend the client was last sent to, and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityValue {
    /// `bpf_ktime_get_ns` of the last connection.
    pub last_used: u64,
    pub backend_id: u32,
    pub pad: u32,
}

/// Key of `BACKEND_SLOTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendSlotKey {
    pub service_id: u32,
    /// `1..=ServiceValue::count`.
    pub slot: u32,
}

/// Value of `BACKENDS`, keyed by a `u32` backend id that `BACKEND_SLOTS` points at.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Network byte order.
    pub address: u32,
    /// Network byte order.
    pub port: u16,
    pub pad: [u8; 2],
}

/// Key of `SOCK_REVNAT`: a socket and the backend it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockRevNatKey {
    /// `bpf_get_socket_cookie`.
    pub cookie: u64,
    /// The backend's address and port (network byte order), as the socket now sees its peer.
    pub address: u32,
    pub port: u16,
    pub pad: [u8; 2],
}

/// Value of `SOCK_REVNAT`: the frontend the application asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockRevNatValue {
    pub address: u32,
    pub port: u16,
    pub pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<ServiceKey>() == 8);
const _: () = assert!(core::mem::size_of::<ServiceValue>() == 24);
const _: () = assert!(core::mem::size_of::<AffinityKey>() == 16);
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);
const _: () = assert!(core::mem::size_of::<BackendSlotKey>() == 8);
const _: () = assert!(core::mem::size_of::<Backend>() == 8);
const _: () = assert!(core::mem::size_of::<SockRevNatKey>() == 16);
const _: () = assert!(core::mem::size_of::<SockRevNatValue>() == 8);

#[cfg(feature = "user")]
mod pod {
    use super::*;

    // SAFETY (all below): `repr(C)` structs of integers with explicit padding fields and sizes
    // checked at compile time: no hidden padding, every bit pattern valid.
    // SAFETY: see above.
    unsafe impl aya::Pod for ServiceKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for ServiceValue {}
    // SAFETY: see above.
    unsafe impl aya::Pod for BackendSlotKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for Backend {}
    // SAFETY: see above.
    unsafe impl aya::Pod for SockRevNatKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for SockRevNatValue {}
    // SAFETY: see above.
    unsafe impl aya::Pod for AffinityKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for AffinityValue {}
}
