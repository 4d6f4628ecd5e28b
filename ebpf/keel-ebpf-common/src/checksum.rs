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

#[cfg(test)]
mod tests {
    use super::internet_checksum;

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
