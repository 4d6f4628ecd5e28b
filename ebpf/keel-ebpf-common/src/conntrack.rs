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
