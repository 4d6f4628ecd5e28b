//! The Internet checksum (RFC 1071) over fixed-size headers: pure arithmetic, shared by the
//! eBPF programs that build headers and by host tests.

/// The one's-complement checksum of `bytes`, ready to store (network byte order when written
/// with `to_be_bytes`). `N` is even for every header this is used on; an odd last byte is
/// padded with zero as RFC 1071 says.
#[inline(always)]
pub fn internet_checksum<const N: usize>(bytes: &[u8; N]) -> u16 {
    let mut sum: u32 = 0;
    let mut index = 0;
    while index + 1 < N {
        sum += u32::from(u16::from_be_bytes([bytes[index], bytes[index + 1]]));
        index += 2;
    }
    if N % 2 == 1 {
        sum += u32::from(bytes[N - 1]) << 8;
    }
    // Two folds reach 16 bits from any sum of up to 65,536 words.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Folds a 32-bit one's-complement sum to 16 bits.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// A stored checksum after one 16-bit word it covers changed from `old` to `new`, without
/// summing the rest again (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`). All three in the
/// same byte order (the sum is byte-order independent).
#[inline(always)]
pub fn replace16(checksum: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!checksum) + u32::from(!old) + u32::from(new))
}

/// [`replace16`] for a 4-byte field (an IPv4 address), given as it lies in the packet.
#[inline(always)]
pub fn replace32(checksum: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let high = replace16(
        checksum,
        u16::from_be_bytes([old[0], old[1]]),
        u16::from_be_bytes([new[0], new[1]]),
    );
    replace16(
        high,
        u16::from_be_bytes([old[2], old[3]]),
        u16::from_be_bytes([new[2], new[3]]),
    )
}

#[cfg(test)]
mod tests {
    use super::{internet_checksum, replace16, replace32};

    /// A UDP pseudo-header and header with a payload: (source, destination) addresses at
    /// 0..4 and 4..8, ports at 12..14 and 14..16.
    fn segment(source: [u8; 4], destination: [u8; 4], sport: u16, dport: u16) -> [u8; 24] {
        let mut bytes = [0u8; 24];
        bytes[0..4].copy_from_slice(&source);
        bytes[4..8].copy_from_slice(&destination);
        bytes[9] = 17;
        bytes[10..12].copy_from_slice(&12u16.to_be_bytes());
        bytes[12..14].copy_from_slice(&sport.to_be_bytes());
        bytes[14..16].copy_from_slice(&dport.to_be_bytes());
        bytes[16..18].copy_from_slice(&12u16.to_be_bytes());
        bytes[20..24].copy_from_slice(b"ping");
        bytes
    }

    #[test]
    fn incremental_updates_match_a_full_sum() {
        let cases = [
            ([198, 18, 0, 1], [198, 18, 0, 2], 40000, 30080),
            ([10, 0, 0, 255], [255, 255, 255, 255], 0, 65535),
            ([0, 0, 0, 0], [1, 2, 3, 4], 65535, 1),
        ];
        for (source, destination, sport, dport) in cases {
            let before = segment(source, destination, sport, dport);
            let mut checksum = internet_checksum(&before);
            let (new_source, new_destination, new_sport, new_dport) =
                ([198, 19, 7, 10], [203, 0, 113, 9], 61234, 8080);
            checksum = replace32(checksum, source, new_source);
            checksum = replace32(checksum, destination, new_destination);
            checksum = replace16(checksum, sport, new_sport);
            checksum = replace16(checksum, dport, new_dport);
            let after = segment(new_source, new_destination, new_sport, new_dport);
            assert_eq!(checksum, internet_checksum(&after), "from {source:?}");
        }
    }

    #[test]
    fn an_incremental_update_is_byte_order_independent() {
        let (checksum, old, new) = (0x1c46u16, 0x1234u16, 0xabcdu16);
        assert_eq!(
            replace16(checksum.swap_bytes(), old.swap_bytes(), new.swap_bytes()),
            replace16(checksum, old, new).swap_bytes()
        );
    }

    #[test]
    fn a_known_ipv4_header_checks_out() {
        let mut header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&header), 0xb861);
        header[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(
            internet_checksum(&header),
            0,
            "a header with its checksum sums to zero"
        );
    }

    #[test]
    fn an_odd_length_pads_with_zero() {
        assert_eq!(
            internet_checksum(&[0x01, 0x02, 0x03]),
            internet_checksum(&[0x01, 0x02, 0x03, 0x00])
        );
    }
}
