//! Hand-built Ethernet / IPv4 / UDP / ICMP frames with correct checksums, for feeding programs
//! through `BPF_PROG_TEST_RUN`.

use std::net::Ipv4Addr;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
/// TCP SYN flag.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
/// TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;
const ETH_HLEN: usize = 14;
const IPV4_HLEN: usize = 20;

/// Addresses of one frame.
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
}

/// An Ethernet frame carrying a UDP datagram.
pub fn udp(ends: &Endpoints, src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut udp = Vec::with_capacity(8 + payload.len());
    udp.extend_from_slice(&src_port.to_be_bytes());
    udp.extend_from_slice(&dst_port.to_be_bytes());
    udp.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let checksum = transport_checksum(ends, IPPROTO_UDP, &udp);
    // An all-zero UDP checksum means "none"; RFC 768 sends 0xffff instead.
    let checksum = if checksum == 0 { 0xffff } else { checksum };
    udp[6..8].copy_from_slice(&checksum.to_be_bytes());
    frame(ends, IPPROTO_UDP, &udp)
}

/// An Ethernet frame carrying a TCP segment (20-byte header, no options).
pub fn tcp(
    ends: &Endpoints,
    src_port: u16,
    dst_port: u16,
    seq: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20 + payload.len());
    tcp.extend_from_slice(&src_port.to_be_bytes());
    tcp.extend_from_slice(&dst_port.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&0u32.to_be_bytes()); // ack number
    tcp.push(5 << 4); // data offset: 5 words
    tcp.push(flags);
    tcp.extend_from_slice(&64240u16.to_be_bytes()); // window
    tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
    tcp.extend_from_slice(payload);
    let checksum = transport_checksum(ends, IPPROTO_TCP, &tcp);
    tcp[16..18].copy_from_slice(&checksum.to_be_bytes());
    frame(ends, IPPROTO_TCP, &tcp)
}

/// An Ethernet frame carrying a UDP datagram without a checksum (0: none).
pub fn udp_without_checksum(
    ends: &Endpoints,
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut frame = udp(ends, src_port, dst_port, payload);
    frame[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    frame
}

/// An Ethernet frame carrying an ICMP echo request.
pub fn icmp_echo_request(ends: &Endpoints, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let checksum = internet_checksum(&[&icmp]);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    frame(ends, IPPROTO_ICMP, &icmp)
}

/// An Ethernet frame carrying an ICMP destination-unreachable error with `code`, quoting
/// `quote` (the offending packet's IPv4 header and 8 bytes beyond); sent without DF, as
/// error messages are.
pub fn icmp_dest_unreachable(ends: &Endpoints, code: u8, quote: &[u8]) -> Vec<u8> {
    let mut icmp = vec![3, code, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(quote);
    let checksum = internet_checksum(&[&icmp]);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    let mut frame = frame(ends, IPPROTO_ICMP, &icmp);
    frame[14 + 6] = 0; // no DF
    frame[14 + 10..14 + 12].copy_from_slice(&[0, 0]);
    let checksum = internet_checksum(&[&frame[14..34]]);
    frame[14 + 10..14 + 12].copy_from_slice(&checksum.to_be_bytes());
    frame
}

/// `frame` as a router forwards it: TTL one less, IPv4 checksum updated.
pub fn forwarded(mut frame: Vec<u8>) -> Vec<u8> {
    frame[ETH_HLEN + 8] -= 1;
    frame[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&[0, 0]);
    let checksum = internet_checksum(&[&frame[ETH_HLEN..ETH_HLEN + IPV4_HLEN]]);
    frame[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&checksum.to_be_bytes());
    frame
}

fn frame(ends: &Endpoints, protocol: u8, l4: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(ETH_HLEN + IPV4_HLEN + l4.len());
    frame.extend_from_slice(&ends.dst_mac);
    frame.extend_from_slice(&ends.src_mac);
    frame.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
    let total_len = (IPV4_HLEN + l4.len()) as u16;
    let mut ip = [0u8; IPV4_HLEN];
    ip[0] = 0x45; // version 4, 5 words of header
    ip[2..4].copy_from_slice(&total_len.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64; // ttl
    ip[9] = protocol;
    ip[12..16].copy_from_slice(&ends.src_ip.octets());
    ip[16..20].copy_from_slice(&ends.dst_ip.octets());
    let checksum = internet_checksum(&[&ip]);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(l4);
    frame
}

fn transport_checksum(ends: &Endpoints, protocol: u8, segment: &[u8]) -> u16 {
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&ends.src_ip.octets());
    pseudo[4..8].copy_from_slice(&ends.dst_ip.octets());
    pseudo[9] = protocol;
    pseudo[10..12].copy_from_slice(&(segment.len() as u16).to_be_bytes());
    internet_checksum(&[&pseudo, segment])
}

/// RFC 1071 one's-complement sum over the concatenation of `parts` (each of even length
/// except possibly the last).
pub fn internet_checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut words = part.chunks_exact(2);
        for word in &mut words {
            sum += u32::from(u16::from_be_bytes([word[0], word[1]]));
        }
        if let [last] = words.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[test]
fn ipv4_header_checksum_matches_a_known_header() {
    // A captured IPv4 header whose checksum field (0xb861) is known to be right.
    let mut header = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];
    assert_eq!(internet_checksum(&[&header]), 0xb861);
    header[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
    assert_eq!(
        internet_checksum(&[&header]),
        0,
        "a correct header sums to zero"
    );
}

#[test]
fn built_frames_verify() {
    let ends = Endpoints {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src_ip: Ipv4Addr::new(198, 18, 0, 1),
        dst_ip: Ipv4Addr::new(198, 18, 0, 2),
    };
    let frame = udp(&ends, 40000, 53, b"hello");
    assert_eq!(frame.len(), 14 + 20 + 8 + 5);
    assert_eq!(internet_checksum(&[&frame[14..34]]), 0);
    assert_eq!(transport_checksum(&ends, IPPROTO_UDP, &frame[34..]), 0);
    let ping = icmp_echo_request(&ends, 7, 1, &[0xab; 56]);
    assert_eq!(ping.len(), 98);
    assert_eq!(internet_checksum(&[&ping[34..]]), 0);
}
