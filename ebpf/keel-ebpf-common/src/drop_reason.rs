//! Why a dataplane program dropped a packet.
//!
//! Every drop in every program goes through one of these reasons and bumps its slot in
//! `DROP_STATS`, so an operator can always tell why traffic vanished. Numbers are part of the
//! contract with pinned maps that outlive an agent version: append, never renumber.

/// Why a packet was dropped; the value is the index into `DROP_STATS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// A header is shorter than its protocol requires, or its lengths disagree.
    Malformed = 0,
    /// The destination is a Service frontend that has no ready backend.
    NoBackend = 1,
    /// A NetworkPolicy denies the flow.
    PolicyDenied = 2,
    /// A new flow found the connection-tracking map full.
    ConntrackFull = 3,
    /// The kernel has no route or neighbour to forward the packet to.
    NoRoute = 4,
    /// `externalTrafficPolicy: Local` and this node has no ready backend of the Service.
    NoLocalBackend = 5,
    /// A flow to be SNATed found no free source port in `NAT_PORT_MIN..=NAT_PORT_MAX`.
    NatPortsExhausted = 6,
    /// A packet the load balancer forwards itself (a redirect, `XDP_TX`) arrived with a TTL
    /// of 1 or 0.
    TtlExceeded = 7,
}

impl DropReason {
    /// Every reason, in numeric order; `ALL[r as usize] == r`.
    pub const ALL: [DropReason; 8] = [
        DropReason::Malformed,
        DropReason::NoBackend,
        DropReason::PolicyDenied,
        DropReason::ConntrackFull,
        DropReason::NoRoute,
        DropReason::NoLocalBackend,
        DropReason::NatPortsExhausted,
        DropReason::TtlExceeded,
    ];

    /// Number of reasons: the size of `DROP_STATS`.
    pub const COUNT: u32 = DropReason::ALL.len() as u32;

    /// The reason with this number, as used to index `DROP_STATS`.
    pub const fn from_u32(value: u32) -> Option<DropReason> {
        if value < DropReason::COUNT {
            Some(DropReason::ALL[value as usize])
        } else {
            None
        }
    }

    /// A short lowercase name, used as a metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::NoBackend => "no_backend",
            DropReason::PolicyDenied => "policy_denied",
            DropReason::ConntrackFull => "conntrack_full",
            DropReason::NoRoute => "no_route",
            DropReason::NoLocalBackend => "no_local_backend",
            DropReason::NatPortsExhausted => "nat_ports_exhausted",
            DropReason::TtlExceeded => "ttl_exceeded",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DropReason;

    #[test]
    fn all_is_in_numeric_order() {
        for (index, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index, "{reason:?} is out of place in ALL");
            assert_eq!(DropReason::from_u32(index as u32), Some(*reason));
        }
        assert_eq!(DropReason::from_u32(DropReason::COUNT), None);
    }

    #[test]
    fn names_are_distinct() {
        for a in DropReason::ALL {
            for b in DropReason::ALL {
                assert!(
                    a == b || a.as_str() != b.as_str(),
                    "{a:?} and {b:?} share a name"
                );
            }
        }
    }
}
