//! Source NAT of the TC load-balancing path (kube-proxy replacement in SNAT mode): a flow from
//! outside the node to a NodePort / LoadBalancer / externalIP frontend whose backend lives on
//! another node leaves with this node's address and a port from `NAT_PORT_MIN..=NAT_PORT_MAX`
//! as its source, so the backend's replies come back through this node to be translated back.

/// Lowest source port a SNATed flow gets (kube-proxy's and Cilium's range).
pub const NAT_PORT_MIN: u16 = 61_000;
/// Highest source port a SNATed flow gets.
pub const NAT_PORT_MAX: u16 = 65_535;
/// Ports tried for a new flow before it is dropped (`DropReason::NatPortsExhausted`).
pub const NAT_PORT_ATTEMPTS: u32 = 16;

/// The source a hairpin flow takes: a pod's flow to a Service whose chosen backend is that
/// pod itself (its own packet would come back from its own address, a martian its kernel
/// drops). Cilium's choice of address (link-local, never on a host).
pub const HAIRPIN_ADDRESS: [u8; 4] = [169, 254, 42, 1];

/// Most SNATed flow directions `NAT4` holds (LRU).
pub const NAT4_MAX_ENTRIES: u32 = 262_144;

/// `NatValue::kind` of an entry keyed by the client-to-frontend tuple.
pub const NAT_FORWARD: u8 = 1;
/// `NatValue::kind` of an entry keyed by the backend-to-node-port tuple.
pub const NAT_REVERSE: u8 = 2;

/// Value of `NAT4` (keyed by `conntrack::CtKey`, the tuple as the packet arrives).
///
/// Forward: `address:port` is the backend (new destination), `nat_address:nat_port` the
/// node's address and allocated port (new source). Reverse: `address:port` is the client
/// (new destination), `nat_address:nat_port` the frontend (new source), `ifindex` the
/// interface the client's packets arrived on, where replies leave.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatValue {
    /// `bpf_ktime_get_ns` of the last packet.
    pub last_seen: u64,
    pub address: u32,
    pub nat_address: u32,
    pub port: u16,
    pub nat_port: u16,
    pub ifindex: u32,
    /// `NAT_FORWARD` or `NAT_REVERSE`.
    pub kind: u8,
    /// TCP state, as `CtValue::flags` (`CT_UNREPLIED`, `CT_CLOSING`). Entries of programs
    /// before TCP state had none: they count as established.
    pub flags: u8,
    pub pad: [u8; 6],
}

/// The single entry of `NODE_NAT`, written by the agent: where SNAT applies.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NodeNat {
    /// The node address SNATed flows take as their source (network byte order); 0: SNAT off.
    pub address: u32,
    /// This node's pod network (network byte order, with `local_mask` applied): backends in
    /// it, or at `address`, are local and need no SNAT; clients in it are not from outside.
    pub local_net: u32,
    pub local_mask: u32,
    /// `NODE_F_POD_PEERS`.
    pub flags: u32,
}

/// `NodeNat::flags`: every route into the pod network names the node side of a pod's veth
/// (the agent runs the pods itself), so a translated packet for a local pod may go straight
/// into the pod with `bpf_redirect_peer` (a device without a peer would drop it).
pub const NODE_F_POD_PEERS: u32 = 1;

const _: () = assert!(core::mem::size_of::<NatValue>() == 32);
const _: () = assert!(core::mem::size_of::<NodeNat>() == 16);

#[cfg(feature = "user")]
// SAFETY: `repr(C)`, integers and explicit padding, size checked above: every bit pattern valid.
unsafe impl aya::Pod for NatValue {}

#[cfg(feature = "user")]
// SAFETY: as for `NatValue`.
unsafe impl aya::Pod for NodeNat {}
