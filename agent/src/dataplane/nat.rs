//! SNAT of external flows to backends on other nodes, from the agent's side: telling the
//! programs this node's address and pod network (`NODE_NAT`). The programs keep `NAT4`; its
//! idle and stale entries are collected with the conntrack (see [`conntrack`](super::conntrack)).

use std::net::Ipv4Addr;

use aya::maps::Array;
use keel_ebpf_common::map;
use keel_ebpf_common::nat::{NODE_F_POD_PEERS, NodeNat};

use super::object::DataplaneError;
use super::services::{Dataplane, map_error};

/// Where SNAT applies on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnatConfig {
    /// The source address SNATed flows take (the node IP on the link to the other nodes).
    pub address: Ipv4Addr,
    /// This node's pod network (base, prefix length): backends in it are local, clients in it
    /// are not from outside. `None`: only `address` itself is local.
    pub local: Option<(Ipv4Addr, u8)>,
    /// Every route into `local` names the node side of a pod's veth (this agent runs the
    /// pods): translated packets for local pods go straight into them (`bpf_redirect_peer`).
    pub pod_peers: bool,
}

impl Dataplane {
    /// Turns SNAT on with `config`, or off with `None`.
    pub fn set_snat(&mut self, config: Option<SnatConfig>) -> Result<(), DataplaneError> {
        let value = config.map_or(NodeNat::default(), |config| {
            let (local_net, local_mask) = config.local.map_or((0, 0), |(base, prefix)| {
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                (u32::from(base) & mask, mask)
            });
            NodeNat {
                address: u32::from_ne_bytes(config.address.octets()),
                local_net: local_net.to_be(),
                local_mask: local_mask.to_be(),
                flags: if config.pod_peers {
                    NODE_F_POD_PEERS
                } else {
                    0
                },
            }
        });
        let raw = self
            .ebpf
            .map_mut(map::NODE_NAT)
            .ok_or(DataplaneError::MissingMap { map: map::NODE_NAT })?;
        let mut array: Array<_, NodeNat> =
            Array::try_from(raw).map_err(|source| map_error(map::NODE_NAT, source))?;
        array
            .set(0, value, 0)
            .map_err(|source| map_error(map::NODE_NAT, source))
    }
}
