//! Per-interface packet and byte counters: the observability base of the dataplane.

/// Most `(interface, hook)` pairs `IFACE_STATS` holds: every hook on up to 4096 interfaces.
pub const IFACE_STATS_MAX_ENTRIES: u32 = Hook::ALL.len() as u32 * 4096;

/// The hook a counter was taken at.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// XDP: frames received by the interface, before the kernel stack.
    Xdp = 0,
    /// TC ingress: packets received by the interface, as the stack sees them.
    TcIngress = 1,
    /// TC egress: packets the interface transmits.
    TcEgress = 2,
    /// XDP load-balancing (`xdp_lb`): frames translated and sent straight back out of the
    /// interface they came in on (`XDP_TX`), which the stack and TC never see.
    XdpTx = 3,
}

impl Hook {
    /// Every hook, in numeric order.
    pub const ALL: [Hook; 4] = [Hook::Xdp, Hook::TcIngress, Hook::TcEgress, Hook::XdpTx];

    /// The hook with this number, as stored in `IfaceKey::hook`.
    pub const fn from_u32(value: u32) -> Option<Hook> {
        match value {
            0 => Some(Hook::Xdp),
            1 => Some(Hook::TcIngress),
            2 => Some(Hook::TcEgress),
            3 => Some(Hook::XdpTx),
            _ => None,
        }
    }

    /// A short lowercase name, used as a metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::TcIngress => "tc_ingress",
            Hook::TcEgress => "tc_egress",
            Hook::XdpTx => "xdp_tx",
        }
    }
}

/// Key of `IFACE_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfaceKey {
    /// Interface index in the network namespace the program is attached in.
    pub ifindex: u32,
    /// A `Hook` as `u32`.
    pub hook: u32,
}

/// Value of `IFACE_STATS`, one per CPU: the agent sums them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfaceCounters {
    /// Packets seen. At TC a GSO packet counts as the number of segments it will be sent as.
    pub packets: u64,
    /// Bytes seen: the frame length at XDP, `skb->len` (link-layer header included) at TC.
    pub bytes: u64,
}

impl IfaceCounters {
    /// Adds another CPU's (or another sample's) counters to these.
    pub const fn add(self, other: IfaceCounters) -> IfaceCounters {
        IfaceCounters {
            packets: self.packets.wrapping_add(other.packets),
            bytes: self.bytes.wrapping_add(other.bytes),
        }
    }
}

const _: () = assert!(core::mem::size_of::<IfaceKey>() == 8);
const _: () = assert!(core::mem::align_of::<IfaceKey>() == 4);
const _: () = assert!(core::mem::size_of::<IfaceCounters>() == 16);

#[cfg(feature = "user")]
// SAFETY: `IfaceKey` is `repr(C)`, two `u32`s with no padding: every bit pattern is valid.
unsafe impl aya::Pod for IfaceKey {}

#[cfg(feature = "user")]
// SAFETY: `IfaceCounters` is `repr(C)`, two `u64`s with no padding: every bit pattern is valid.
unsafe impl aya::Pod for IfaceCounters {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_numbers_round_trip() {
        for hook in Hook::ALL {
            assert_eq!(Hook::from_u32(hook as u32), Some(hook));
        }
        assert_eq!(Hook::from_u32(Hook::ALL.len() as u32), None);
    }

    #[test]
    fn counters_add_per_field() {
        let a = IfaceCounters {
            packets: 2,
            bytes: 100,
        };
        let b = IfaceCounters {
            packets: 3,
            bytes: 50,
        };
        assert_eq!(
            a.add(b),
            IfaceCounters {
                packets: 5,
                bytes: 150
            }
        );
    }
}
