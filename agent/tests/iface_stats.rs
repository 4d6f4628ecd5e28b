//! The stats programs attached for real: XDP and TC on one end of a veth pair between two
//! test hosts count exactly the ICMP and UDP packets that cross it, direction by direction.
//! Needs root.

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use keel_agent::dataplane::{Dataplane, IfaceStats, XdpAttachMode};
use keel_ebpf_common::IfaceCounters;
use keel_testhost::{LinkOptions, TestNet, require_root, require_tool};

/// Ethernet + IPv4 + ICMP header + ping's default 56 bytes of data.
const PING_FRAME: u64 = 14 + 20 + 8 + 56;
const UDP_PAYLOAD: usize = 100;
const UDP_FRAME: u64 = 14 + 20 + 8 + UDP_PAYLOAD as u64;

fn counters(packets: u64, frame: u64) -> IfaceCounters {
    IfaceCounters {
        packets,
        bytes: packets * frame,
    }
}

fn counted_exactly(mode: XdpAttachMode, echo_requests: u64, datagrams: u64) {
    require_root();
    require_tool("ping", "iputils-ping");
    let mut net = TestNet::new("stats").unwrap();
    let node = net.add_host("node").unwrap();
    let peer = net.add_host("peer").unwrap();
    // No IPv6 and no ARP: the test's packets are the only ones on the link.
    let options = LinkOptions {
        static_neighbours: true,
        ..LinkOptions::default()
    };
    let link = net.connect(&node, &peer, options).unwrap();
    let interface = link.a.interface.clone();

    let dataplane = node
        .enter(|| {
            let mut dataplane = Dataplane::load().unwrap();
            dataplane.attach_counters(&interface, mode).unwrap();
            dataplane
        })
        .unwrap();

    // Into the node: echo requests from the peer (each answered: out of the node).
    let count = echo_requests.to_string();
    let deadline = (5 + echo_requests / 50).to_string();
    peer.run(&[
        "ping",
        "-q",
        "-c",
        &count,
        "-i",
        "0.01",
        "-w",
        &deadline,
        &link.a.ip.to_string(),
    ])
    .expect("every echo request is answered");

    // Out of the node: UDP datagrams to a socket on the peer, which receives all of them.
    let receiver = peer
        .enter(|| UdpSocket::bind((link.b.ip, 7777)).unwrap())
        .unwrap();
    let sender = node
        .enter(|| UdpSocket::bind((link.a.ip, 0)).unwrap())
        .unwrap();
    let destination = SocketAddr::from((link.b.ip, 7777));
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buffer = [0u8; UDP_PAYLOAD + 1];
    for sequence in 0..datagrams {
        let mut payload = [0x6bu8; UDP_PAYLOAD];
        payload[..8].copy_from_slice(&sequence.to_be_bytes());
        sender.send_to(&payload, destination).unwrap();
        let (len, _) = receiver
            .recv_from(&mut buffer)
            .expect("the peer receives every datagram");
        assert_eq!(len, UDP_PAYLOAD);
    }

    let stats = dataplane.iface_stats().unwrap();
    let seen = stats.get(&link.a.ifindex).copied().unwrap_or_default();
    let want = IfaceStats {
        xdp: counters(echo_requests, PING_FRAME),
        tc_ingress: counters(echo_requests, PING_FRAME),
        tc_egress: counters(echo_requests, PING_FRAME).add(counters(datagrams, UDP_FRAME)),
        xdp_tx: IfaceCounters::default(),
    };
    assert_eq!(
        seen, want,
        "counters of {interface} (ifindex {})",
        link.a.ifindex
    );
    assert_eq!(
        stats.len(),
        1,
        "counters for interfaces nothing was attached to: {stats:?}"
    );
    let drops: u64 = dataplane
        .drop_stats()
        .unwrap()
        .iter()
        .map(|(_, count)| count)
        .sum();
    assert_eq!(drops, 0);
}

#[test]
fn native_xdp_and_tc_count_icmp_and_udp_exactly() {
    counted_exactly(XdpAttachMode::Native, 40, 25);
}

#[test]
fn generic_xdp_and_tc_count_icmp_and_udp_exactly() {
    counted_exactly(XdpAttachMode::Generic, 17, 60);
}
