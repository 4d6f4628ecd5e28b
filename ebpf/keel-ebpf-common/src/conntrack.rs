//! Connection tracking for the TC load-balancing path: which backend a flow to a frontend was
//! sent to (forward entry), and which frontend a backend's replies must appear to come from
//! (reverse entry).

/// Most flows `CT4` holds (LRU: the least recently used are forgotten first).
pub const CT4_MAX_ENTRIES: u32 = 262_144;

/// `CtValue::kind` of an entry keyed by a client-to-frontend tuple.
pub const CT_FORWARD: u8 = 1;
/// `CtValue::kind` of an entry keyed by a backend-to-client tuple.
pub const CT_REVERSE: u8 = 2;

/// `CtValue::flags`: a TCP flow's reverse entry until the first reply passes (the SYN is
/// unanswered). Entries of programs before TCP state had no flags: they count as answered.
pub const CT_UNREPLIED: u8 = 1;
/// `CtValue::flags`: a FIN or RST of the flow passed this entry's direction (a SYN clears it:
/// the tuple is reused for a new connection).
pub const CT_CLOSING: u8 = 2;

/// TCP header flags the trackers read (byte 13 of the header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;

/// The state flags of a tracked direction after one of its packets passed: a reply (a
/// packet of a reverse entry) answers the flow, a FIN or RST starts its closing, a SYN
/// reopens the tuple. `tcp_flags` is 0 for UDP.
#[inline(always)]
pub fn next_flags(flags: u8, reply: bool, tcp_flags: u8) -> u8 {
    let mut next = flags;
    if reply {
        next &= !CT_UNREPLIED;
    }
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        next |= CT_CLOSING;
    } else if tcp_flags & TCP_SYN != 0 {
        next &= !CT_CLOSING;
    }
    next
}

/// Key of `CT4`: a packet's tuple as it arrives, addresses and ports in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
    pub pad: [u8; 3],
}

/// Value of `CT4`: forward entries hold the backend to send to, reverse entries the
/// frontend to restore as the source.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtValue {
    /// `bpf_ktime_get_ns` of the last packet.
    pub last_seen: u64,
    pub address: u32,
    pub port: u16,
    /// `CT_FORWARD` or `CT_REVERSE`.
    pub kind: u8,
    /// TCP state: `CT_UNREPLIED`, `CT_CLOSING`.
    pub flags: u8,
}

const _: () = assert!(core::mem::size_of::<CtKey>() == 16);
const _: () = assert!(core::mem::size_of::<CtValue>() == 16);

#[cfg(feature = "user")]
// SAFETY: `repr(C)`, integers and explicit padding, size checked above: every bit pattern valid.
unsafe impl aya::Pod for CtKey {}

#[cfg(feature = "user")]
// SAFETY: as for `CtKey`.
unsafe impl aya::Pod for CtValue {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_state_follows_the_packets() {
        let reverse = CT_UNREPLIED;
        assert_eq!(next_flags(reverse, false, TCP_SYN), CT_UNREPLIED);
        assert_eq!(
            next_flags(reverse, true, TCP_SYN | 0x10),
            0,
            "the SYN-ACK answers"
        );
        assert_eq!(next_flags(0, false, TCP_FIN | 0x10), CT_CLOSING);
        assert_eq!(next_flags(0, true, TCP_RST), CT_CLOSING);
        assert_eq!(next_flags(CT_CLOSING, false, TCP_SYN), 0, "a SYN reopens");
        assert_eq!(
            next_flags(CT_UNREPLIED, false, 0),
            CT_UNREPLIED,
            "UDP keeps its flags"
        );
    }
}
