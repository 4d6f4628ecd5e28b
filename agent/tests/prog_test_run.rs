//! The stats programs on hand-built packets through `BPF_PROG_TEST_RUN`: verdicts, packets
//! returned unchanged, and the exact counts they leave in their maps. Needs root.

mod support;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use aya::programs::Program;
use keel_agent::dataplane::maglev::{TableBackend, lookup_table};
use keel_agent::dataplane::test_run::{run_tc, run_xdp};
use keel_agent::dataplane::{
    Backends, CtCollection, CtTimeouts, Dataplane, Frontend, LbAlgorithm, LoadBalancing, Protocol,
    SnatConfig, TableSize, load_object,
};
use keel_ebpf_common::conntrack::CtKey;
use keel_ebpf_common::maglev::flow_hash;
use keel_ebpf_common::nat::{NAT_PORT_MAX, NAT_PORT_MIN};
use keel_ebpf_common::{DropReason, IfaceCounters, map, program};
use support::packet::{self, Endpoints};

const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
/// `TC_ACT_UNSPEC` (-1) as `BPF_PROG_TEST_RUN` reports it: "no verdict, next program".
const TC_ACT_UNSPEC: u32 = u32::MAX;
const TC_ACT_REDIRECT: u32 = 7;
const TC_ACT_SHOT: u32 = 2;
const ICMP_PORT_UNREACHABLE: u8 = 3;
/// `BPF_PROG_TEST_RUN` without a context runs the program as if on the loopback device.
const LOOPBACK_IFINDEX: u32 = 1;

fn endpoints() -> Endpoints {
    Endpoints {
        src_mac: [0x02, 0, 0, 0, 0, 0x01],
        dst_mac: [0x02, 0, 0, 0, 0, 0x02],
        src_ip: Ipv4Addr::new(198, 18, 0, 1),
        dst_ip: Ipv4Addr::new(198, 18, 0, 2),
    }
}

#[test]
fn object_holds_every_program_and_map_of_the_contract() {
    keel_testhost::require_root();
    let ebpf = load_object().expect("load the embedded object");
    for name in program::ALL {
        assert!(
            ebpf.program(name).is_some(),
            "program `{name}` missing from the object"
        );
    }
    for name in map::ALL {
        assert!(
            ebpf.map(name).is_some(),
            "map `{name}` missing from the object"
        );
    }
    let names: Vec<_> = ebpf.programs().map(|(name, _)| name.to_owned()).collect();
    assert_eq!(
        names.len(),
        program::ALL.len(),
        "programs not in the contract: {names:?}"
    );
}

#[test]
fn every_program_in_the_object_passes_the_verifier() {
    keel_testhost::require_root();
    let mut ebpf = load_object().expect("load the embedded object");
    for (name, program) in ebpf.programs_mut() {
        let loaded = match program {
            Program::Xdp(program) => program.load(),
            Program::SchedClassifier(program) => program.load(),
            Program::CgroupSockAddr(program) => program.load(),
            other => panic!(
                "program `{name}` has a type this test does not know: {:?}",
                other.prog_type()
            ),
        };
        if let Err(error) = loaded {
            panic!("the verifier refused `{name}`: {error:?}");
        }
    }
}

#[test]
fn xdp_stats_passes_the_frame_unchanged_and_counts_it() {
    keel_testhost::require_root();
    let mut dataplane = Dataplane::load().expect("load the stats programs");
    let frame = packet::udp(&endpoints(), 40000, 5353, b"keel test payload");

    let run = run_xdp(dataplane.object(), program::XDP_STATS, &frame, 5).expect("test run");

    assert_eq!(run.verdict, XDP_PASS);
    assert_eq!(run.packet, frame, "xdp_stats must not change the frame");
    let stats = dataplane.iface_stats().expect("read IFACE_STATS");
    let lo = stats.get(&LOOPBACK_IFINDEX).copied().unwrap_or_default();
    let want = IfaceCounters {
        packets: 5,
        bytes: 5 * frame.len() as u64,
    };
    assert_eq!(lo.xdp, want);
    assert_eq!(lo.tc_ingress, IfaceCounters::default());
    assert_eq!(lo.tc_egress, IfaceCounters::default());
    assert_eq!(
        stats.len(),
        1,
        "counters for interfaces nothing ran on: {stats:?}"
    );
    assert!(dataplane.drop_stats().unwrap().iter().all(|(_, n)| *n == 0));
}

#[test]
fn tc_stats_pass_the_frame_unchanged_and_count_by_direction() {
    keel_testhost::require_root();
    let mut dataplane = Dataplane::load().expect("load the stats programs");
    let ping = packet::icmp_echo_request(&endpoints(), 0x4b45, 1, &[0x5a; 56]);
    let datagram = packet::udp(&endpoints(), 40000, 53, b"q");

    let ingress = run_tc(dataplane.object(), program::TC_STATS_INGRESS, &ping, 3).unwrap();
    let egress = run_tc(dataplane.object(), program::TC_STATS_EGRESS, &datagram, 2).unwrap();

    assert_eq!(
        (ingress.verdict, egress.verdict),
        (TC_ACT_UNSPEC, TC_ACT_UNSPEC)
    );
    assert_eq!(ingress.packet, ping);
    assert_eq!(egress.packet, datagram);
    let lo = dataplane.iface_stats().unwrap()[&LOOPBACK_IFINDEX];
    assert_eq!(
        lo.tc_ingress,
        IfaceCounters {
            packets: 3,
            bytes: 3 * ping.len() as u64
        }
    );
    assert_eq!(
        lo.tc_egress,
        IfaceCounters {
            packets: 2,
            bytes: 2 * datagram.len() as u64
        }
    );
    assert_eq!(lo.xdp, IfaceCounters::default());
}

/// The ends of a frame from `src_ip` to `dst_ip` between two fixed MACs.
fn ends(src_ip: Ipv4Addr, dst_ip: Ipv4Addr) -> Endpoints {
    Endpoints {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src_ip,
        dst_ip,
    }
}

/// The Service programs loaded, with `vip:80` over TCP and UDP going to `backend`.
fn service_on_port_80(vip: Ipv4Addr, backend: SocketAddrV4) -> Dataplane {
    let mut dataplane = Dataplane::load().expect("load the Service programs");
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        dataplane
            .upsert(
                Frontend {
                    address: vip,
                    port: 80,
                    protocol,
                },
                &[backend],
            )
            .unwrap();
    }
    dataplane
}

/// The TC load balancer on hand-built packets: DNAT of a new flow, the same backend for the
/// flow's next packet, reverse NAT of the reply, and checksums, byte for byte against packets
/// built from scratch with the translated addresses.
#[test]
fn tc_lb_translates_a_flow_and_its_replies_byte_for_byte() {
    keel_testhost::require_root();
    let client = Ipv4Addr::new(198, 18, 0, 1);
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    let backend = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 2), 8080);
    let mut dataplane = service_on_port_80(vip, backend);
    // Requests go through the ingress program, replies through the egress one.
    let through = |program: &'static str, dataplane: &mut Dataplane, packet: &[u8]| {
        let run = run_tc(dataplane.object(), program, packet, 1).unwrap();
        assert_eq!(run.verdict, TC_ACT_OK);
        run.packet
    };
    let run = |dataplane: &mut Dataplane, packet: &[u8]| {
        through(program::TC_LB_INGRESS, dataplane, packet)
    };
    let reply = |dataplane: &mut Dataplane, packet: &[u8]| {
        through(program::TC_LB_EGRESS, dataplane, packet)
    };

    // TCP: SYN to the VIP goes to the backend; so does the flow's next segment.
    let syn = packet::tcp(&ends(client, vip), 40000, 80, 1000, packet::TCP_SYN, b"");
    assert_eq!(
        run(&mut dataplane, &syn),
        packet::tcp(
            &ends(client, *backend.ip()),
            40000,
            8080,
            1000,
            packet::TCP_SYN,
            b""
        )
    );
    let data = packet::tcp(
        &ends(client, vip),
        40000,
        80,
        1001,
        packet::TCP_ACK,
        b"GET / HTTP/1.0\r\n\r\n",
    );
    let expected = packet::tcp(
        &ends(client, *backend.ip()),
        40000,
        8080,
        1001,
        packet::TCP_ACK,
        b"GET / HTTP/1.0\r\n\r\n",
    );
    assert_eq!(run(&mut dataplane, &data), expected);
    // The backend's reply: arriving at the node it is left alone (routing must see the
    // backend's address); leaving the node it carries the VIP.
    let syn_ack = packet::tcp(
        &ends(*backend.ip(), client),
        8080,
        40000,
        5000,
        packet::TCP_SYN | packet::TCP_ACK,
        b"",
    );
    assert_eq!(run(&mut dataplane, &syn_ack), syn_ack);
    assert_eq!(
        reply(&mut dataplane, &syn_ack),
        packet::tcp(
            &ends(vip, client),
            80,
            40000,
            5000,
            packet::TCP_SYN | packet::TCP_ACK,
            b""
        )
    );

    // UDP with a checksum, and without one (0 must stay 0).
    let query = packet::udp(&ends(client, vip), 5353, 80, b"query");
    assert_eq!(
        run(&mut dataplane, &query),
        packet::udp(&ends(client, *backend.ip()), 5353, 8080, b"query")
    );
    let answer = packet::udp(&ends(*backend.ip(), client), 8080, 5353, b"answer");
    assert_eq!(
        reply(&mut dataplane, &answer),
        packet::udp(&ends(vip, client), 80, 5353, b"answer")
    );
    let bare = packet::udp_without_checksum(&ends(client, vip), 6000, 80, b"bare");
    assert_eq!(
        run(&mut dataplane, &bare),
        packet::udp_without_checksum(&ends(client, *backend.ip()), 6000, 8080, b"bare")
    );

    // Not a frontend: untouched.
    let other = packet::tcp(
        &ends(client, Ipv4Addr::new(198, 19, 0, 9)),
        40001,
        80,
        1,
        packet::TCP_SYN,
        b"",
    );
    assert_eq!(run(&mut dataplane, &other), other);
}

/// SNAT of an external flow to a backend on another node, on hand-built packets: the
/// client's packets leave with the backend as destination and the node's address and a port
/// in 61000-65535 as source; the backend's reply to that port leaves with the NodePort as
/// source and the client as destination; both redirected, checksums byte for byte.
#[test]
fn tc_lb_snats_a_flow_to_another_nodes_backend_and_reverses_its_replies_byte_for_byte() {
    keel_testhost::require_root();
    // SNAT applies only to a backend routed out of the interface the flow came in on; a test
    // run's packets come in on the loopback interface of the caller's network namespace, so
    // the run happens in a test host whose route to the backends goes out of its loopback.
    let mut net = keel_testhost::TestNet::new("snatrun").unwrap();
    let host = net.add_host("node").unwrap();
    host.run(&["ip", "link", "set", "lo", "up"]).unwrap();
    // A node forwards (the agent turns it on); the route lookup requires it.
    host.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    host.run(&["ip", "route", "add", "198.19.7.0/24", "dev", "lo"])
        .unwrap();
    host.enter(snat_test_run).unwrap();
}

fn snat_test_run() {
    let client = Ipv4Addr::new(198, 18, 0, 1);
    let node = Ipv4Addr::new(198, 18, 0, 2);
    let backend = SocketAddrV4::new(Ipv4Addr::new(198, 19, 7, 2), 8080);
    let mut dataplane = snat_dataplane(
        node,
        backend,
        &[(30080, Protocol::Tcp, true), (30080, Protocol::Udp, true)],
    );
    let ends = |src_ip, dst_ip| Endpoints {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src_ip,
        dst_ip,
    };
    let redirected = |dataplane: &mut Dataplane, packet: &[u8]| {
        let run = run_tc(dataplane.object(), program::TC_LB_INGRESS, packet, 1).unwrap();
        assert_eq!(run.verdict, TC_ACT_REDIRECT);
        run.packet
    };
    let snat_ports = NAT_PORT_MIN..=NAT_PORT_MAX;

    // TCP: the SYN leaves SNATed; the allocated port is read off the packet.
    let syn = packet::tcp(
        &ends(client, node),
        40000,
        30080,
        1000,
        packet::TCP_SYN,
        b"",
    );
    let out = redirected(&mut dataplane, &syn);
    let port = source(&out).port();
    assert!(snat_ports.contains(&port), "port {port}");
    assert_eq!(
        out,
        packet::forwarded(packet::tcp(
            &ends(node, *backend.ip()),
            port,
            8080,
            1000,
            packet::TCP_SYN,
            b""
        ))
    );
    // The flow's next segment takes the same translation.
    let data = packet::tcp(
        &ends(client, node),
        40000,
        30080,
        1001,
        packet::TCP_ACK,
        b"hi",
    );
    assert_eq!(
        redirected(&mut dataplane, &data),
        packet::forwarded(packet::tcp(
            &ends(node, *backend.ip()),
            port,
            8080,
            1001,
            packet::TCP_ACK,
            b"hi"
        ))
    );
    // The reply to the node's port goes back to the client from the NodePort.
    let syn_ack = packet::tcp(
        &ends(*backend.ip(), node),
        8080,
        port,
        5000,
        packet::TCP_SYN | packet::TCP_ACK,
        b"",
    );
    assert_eq!(
        redirected(&mut dataplane, &syn_ack),
        packet::forwarded(packet::tcp(
            &ends(node, client),
            30080,
            40000,
            5000,
            packet::TCP_SYN | packet::TCP_ACK,
            b""
        ))
    );

    // UDP, and a second client flow gets a port of its own.
    let query = packet::udp(&ends(client, node), 5353, 30080, b"query");
    let out = redirected(&mut dataplane, &query);
    let udp_port = source(&out).port();
    assert!(snat_ports.contains(&udp_port), "port {udp_port}");
    assert_eq!(
        out,
        packet::forwarded(packet::udp(
            &ends(node, *backend.ip()),
            udp_port,
            8080,
            b"query"
        ))
    );
    let answer = packet::udp(&ends(*backend.ip(), node), 8080, udp_port, b"answer");
    assert_eq!(
        redirected(&mut dataplane, &answer),
        packet::forwarded(packet::udp(&ends(node, client), 30080, 5353, b"answer"))
    );
    let other = packet::udp(&ends(client, node), 5354, 30080, b"query");
    let other_port = source(&redirected(&mut dataplane, &other)).port();
    assert_ne!(
        other_port, udp_port,
        "two flows to one backend share no port"
    );

    // A client on this node's pod network is not SNATed.
    let pod = Ipv4Addr::new(198, 19, 1, 5);
    let from_pod = packet::tcp(&ends(pod, node), 40000, 30080, 1, packet::TCP_SYN, b"");
    let run = run_tc(dataplane.object(), program::TC_LB_INGRESS, &from_pod, 1).unwrap();
    assert_eq!(run.verdict, TC_ACT_OK);
    assert_eq!(
        run.packet,
        packet::tcp(
            &ends(pod, *backend.ip()),
            40000,
            8080,
            1,
            packet::TCP_SYN,
            b""
        )
    );

    // The UDP backend goes: its two SNATed flows go with it, both directions.
    let tracked = |dataplane: &mut Dataplane| {
        dataplane
            .collect_conntrack(CtTimeouts::default())
            .unwrap()
            .entries
    };
    let with_udp = tracked(&mut dataplane);
    let udp = Frontend {
        address: node,
        port: 30080,
        protocol: Protocol::Udp,
    };
    let replacement = Backends {
        addresses: vec![SocketAddrV4::new(Ipv4Addr::new(198, 19, 7, 3), 8080)],
        affinity: None,
        external: true,
        local_only: false,
        drop_when_empty: false,
    };
    dataplane.upsert_backends(udp, &replacement).unwrap();
    assert_eq!(with_udp - tracked(&mut dataplane), 4);

    // Collection: idle SNATed flows go, both directions.
    let before = dataplane.collect_conntrack(CtTimeouts::default()).unwrap();
    let gone = dataplane
        .collect_conntrack(CtTimeouts::all(Duration::ZERO))
        .unwrap();
    assert_eq!(before.removed, 0);
    assert_eq!(gone.removed, gone.entries, "{gone:?}");
    assert_eq!(gone.entries, before.entries);
    // The TCP flows, the SNATed one and the pod's: two entries each.
    assert_eq!(gone.entries, 4, "{gone:?}");

    // SNATed TCP flows age by their state: an unanswered SYN as such, a FIN as closing.
    let lone = packet::tcp(&ends(client, node), 40100, 30080, 1, packet::TCP_SYN, b"");
    redirected(&mut dataplane, &lone);
    let syn = packet::tcp(&ends(client, node), 40101, 30080, 1, packet::TCP_SYN, b"");
    let port = source(&redirected(&mut dataplane, &syn)).port();
    let syn_ack = packet::tcp(
        &ends(*backend.ip(), node),
        8080,
        port,
        1,
        packet::TCP_SYN | packet::TCP_ACK,
        b"",
    );
    redirected(&mut dataplane, &syn_ack);
    let hour = Duration::from_secs(3600);
    let by_state = |tcp_syn, tcp_close| CtTimeouts {
        tcp: hour,
        tcp_syn,
        tcp_close,
        udp: hour,
    };
    let gone = dataplane
        .collect_conntrack(by_state(Duration::ZERO, hour))
        .unwrap();
    assert_eq!((gone.entries, gone.removed), (4, 2), "the lone SYN's pair");
    let fin = packet::tcp(
        &ends(client, node),
        40101,
        30080,
        2,
        packet::TCP_FIN | packet::TCP_ACK,
        b"",
    );
    redirected(&mut dataplane, &fin);
    let gone = dataplane
        .collect_conntrack(by_state(hour, Duration::ZERO))
        .unwrap();
    assert_eq!((gone.entries, gone.removed), (2, 2), "the closing flow");
}

/// `xdp_lb` serves at XDP what `tc_lb` SNATs when the backend's neighbour is known: the
/// client's packets leave with `XDP_TX`, SNATed, TTL one less, MACs from the route, checksums
/// byte for byte; the reply goes back the same way. Flows it cannot finish on its own (no
/// neighbour yet, a ClusterIP, a client of this node, an expiring TTL) pass to the stack
/// unchanged, and TC's `NAT4` entries serve XDP afterwards. (On a loopback device every
/// address shares one neighbour entry: the run starts without it, then adds it.)
#[test]
fn xdp_lb_snats_a_flow_beside_the_client_and_passes_what_tc_must_serve() {
    keel_testhost::require_root();
    let mut net = keel_testhost::TestNet::new("xdprun").unwrap();
    let host = net.add_host("node").unwrap();
    host.run(&["ip", "link", "set", "lo", "up"]).unwrap();
    host.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        .unwrap();
    host.run(&["ip", "route", "add", "198.19.7.0/24", "dev", "lo"])
        .unwrap();
    // The client, beside the backends.
    host.run(&["ip", "route", "add", "198.18.0.1/32", "dev", "lo"])
        .unwrap();
    host.enter(xdp_test_run).unwrap();
}

fn xdp_test_run() {
    const XDP_TX: u32 = 3;
    const NEIGHBOUR: [u8; 6] = [2, 0, 0, 0, 0, 0xaa];
    let client = Ipv4Addr::new(198, 18, 0, 1);
    let node = Ipv4Addr::new(198, 18, 0, 2);
    let backend = SocketAddrV4::new(Ipv4Addr::new(198, 19, 7, 2), 8080);
    let mut dataplane = snat_dataplane(
        node,
        backend,
        &[
            (30080, Protocol::Tcp, true),
            (30080, Protocol::Udp, true),
            (80, Protocol::Tcp, false),
        ],
    );
    let ends = |src_ip, dst_ip| Endpoints {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src_ip,
        dst_ip,
    };
    // What the route gives: the loopback's (all-zero) address as source MAC, the
    // neighbour's as destination.
    let sent = |src_ip, dst_ip| Endpoints {
        src_mac: [0; 6],
        dst_mac: NEIGHBOUR,
        src_ip,
        dst_ip,
    };
    let xdp = |dataplane: &mut Dataplane, packet: &[u8]| {
        run_xdp(dataplane.object(), program::XDP_LB, packet, 1).unwrap()
    };
    let snat_ports = NAT_PORT_MIN..=NAT_PORT_MAX;

    // No neighbour yet: XDP passes the flow; TC SNATs it (`bpf_redirect_neigh` resolves).
    let early = packet::tcp(&ends(client, node), 40001, 30080, 1, packet::TCP_SYN, b"");
    let run = xdp(&mut dataplane, &early);
    assert_eq!(run.verdict, XDP_PASS, "{run:?}");
    assert_eq!(run.packet, early, "a passed frame is unchanged");
    let run = run_tc(dataplane.object(), program::TC_LB_INGRESS, &early, 1).unwrap();
    assert_eq!(run.verdict, TC_ACT_REDIRECT);
    let tc_port = source(&run.packet).port();

    let status = std::process::Command::new("ip")
        .args([
            "neigh",
            "replace",
            "198.19.7.2",
            "lladdr",
            "02:00:00:00:00:aa",
            "dev",
            "lo",
            "nud",
            "permanent",
        ])
        .status()
        .unwrap();
    assert!(status.success());
    // Now XDP serves that flow, from TC's `NAT4` entry.
    let next = packet::tcp(&ends(client, node), 40001, 30080, 2, packet::TCP_ACK, b"hi");
    let run = xdp(&mut dataplane, &next);
    assert_eq!(run.verdict, XDP_TX, "{run:?}");
    assert_eq!(
        run.packet,
        packet::forwarded(packet::tcp(
            &sent(node, *backend.ip()),
            tc_port,
            8080,
            2,
            packet::TCP_ACK,
            b"hi"
        ))
    );

    // A new flow, both ways.
    let syn = packet::tcp(
        &ends(client, node),
        40000,
        30080,
        1000,
        packet::TCP_SYN,
        b"",
    );
    let run = xdp(&mut dataplane, &syn);
    assert_eq!(run.verdict, XDP_TX, "{run:?}");
    let port = source(&run.packet).port();
    assert!(snat_ports.contains(&port), "port {port}");
    assert_ne!(port, tc_port);
    assert_eq!(
        run.packet,
        packet::forwarded(packet::tcp(
            &sent(node, *backend.ip()),
            port,
            8080,
            1000,
            packet::TCP_SYN,
            b""
        ))
    );
    let syn_ack = packet::tcp(
        &ends(*backend.ip(), node),
        8080,
        port,
        5000,
        packet::TCP_SYN | packet::TCP_ACK,
        b"",
    );
    let run = xdp(&mut dataplane, &syn_ack);
    assert_eq!(run.verdict, XDP_TX, "{run:?}");
    assert_eq!(
        run.packet,
        packet::forwarded(packet::tcp(
            &sent(node, client),
            30080,
            40000,
            5000,
            packet::TCP_SYN | packet::TCP_ACK,
            b""
        ))
    );

    // UDP, with a checksum and without one (0 stays 0).
    let query = packet::udp(&ends(client, node), 5353, 30080, b"query");
    let run = xdp(&mut dataplane, &query);
    assert_eq!(run.verdict, XDP_TX, "{run:?}");
    let udp_port = source(&run.packet).port();
    assert_eq!(
        run.packet,
        packet::forwarded(packet::udp(
            &sent(node, *backend.ip()),
            udp_port,
            8080,
            b"query"
        ))
    );
    let bare = packet::udp_without_checksum(&ends(client, node), 5353, 30080, b"query");
    let run = xdp(&mut dataplane, &bare);
    assert_eq!(run.verdict, XDP_TX, "{run:?}");
    assert_eq!(
        run.packet,
        packet::forwarded(packet::udp_without_checksum(
            &sent(node, *backend.ip()),
            udp_port,
            8080,
            b"query"
        ))
    );

    // Passed unchanged: a ClusterIP-like (not external) frontend, a client in this node's
    // pod network, a TTL about to expire.
    let internal = packet::tcp(&ends(client, node), 40002, 80, 1, packet::TCP_SYN, b"");
    let from_pod = packet::tcp(
        &ends(Ipv4Addr::new(198, 19, 1, 5), node),
        40003,
        30080,
        1,
        packet::TCP_SYN,
        b"",
    );
    let mut expiring = packet::tcp(&ends(client, node), 40004, 30080, 1, packet::TCP_SYN, b"");
    expiring[14 + 8] = 1;
    for frame in [&internal, &from_pod, &expiring] {
        let run = xdp(&mut dataplane, frame);
        assert_eq!(run.verdict, XDP_PASS, "{run:?}");
        assert_eq!(&run.packet, frame, "a passed frame is unchanged");
    }

    let lo = dataplane.iface_stats().unwrap()[&LOOPBACK_IFINDEX];
    assert_eq!(lo.xdp.packets, 9, "every frame counted: {lo:?}");
    assert_eq!(lo.xdp_tx.packets, 5, "the frames sent back out: {lo:?}");
    assert!(dataplane.drop_stats().unwrap().iter().all(|(_, n)| *n == 0));
}

/// A dataplane SNATing to `node` (pod network 198.19.1.0/24) with `frontends` (port,
/// protocol, external) on `node`, each with the one `backend`.
fn snat_dataplane(
    node: Ipv4Addr,
    backend: SocketAddrV4,
    frontends: &[(u16, Protocol, bool)],
) -> Dataplane {
    let mut dataplane = Dataplane::load().expect("load the Service programs");
    for &(port, protocol, external) in frontends {
        let frontend = Frontend {
            address: node,
            port,
            protocol,
        };
        let desired = Backends {
            addresses: vec![backend],
            affinity: None,
            external,
            local_only: false,
            drop_when_empty: false,
        };
        dataplane.upsert_backends(frontend, &desired).unwrap();
    }
    dataplane
        .set_snat(Some(SnatConfig {
            address: node,
            local: Some((Ipv4Addr::new(198, 19, 1, 0), 24)),
            pod_peers: false,
        }))
        .unwrap();
    dataplane
}

/// The source address and port of an IPv4 TCP / UDP frame.
fn source(frame: &[u8]) -> SocketAddrV4 {
    let ip: [u8; 4] = frame[26..30].try_into().unwrap();
    let port = u16::from_be_bytes([frame[34], frame[35]]);
    SocketAddrV4::new(Ipv4Addr::from(ip), port)
}

#[test]
fn tc_lb_answers_a_flow_to_a_service_without_backends_with_port_unreachable() {
    keel_testhost::require_root();
    let vip = Ipv4Addr::new(10, 96, 0, 11);
    let client = Ipv4Addr::new(198, 18, 0, 1);
    let mut dataplane = Dataplane::load().expect("load the Service programs");
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        dataplane
            .upsert(
                Frontend {
                    address: vip,
                    port: 80,
                    protocol,
                },
                &[],
            )
            .unwrap();
    }
    let client_mac = [2, 0, 0, 0, 0, 1];
    let node_mac = [2, 0, 0, 0, 0, 2];
    let to_vip = Endpoints {
        src_mac: client_mac,
        dst_mac: node_mac,
        src_ip: client,
        dst_ip: vip,
    };
    let back = Endpoints {
        src_mac: node_mac,
        dst_mac: client_mac,
        src_ip: vip,
        dst_ip: client,
    };
    let syn = packet::tcp(&to_vip, 40000, 80, 7, packet::TCP_SYN, b"");
    let datagram = packet::udp(&to_vip, 5353, 80, b"anyone there?");

    for offending in [syn, datagram] {
        let run = run_tc(dataplane.object(), program::TC_LB_INGRESS, &offending, 1).unwrap();
        assert_eq!(
            run.verdict, TC_ACT_REDIRECT,
            "sent back out of the interface it came in on"
        );
        // The quote: the offending IPv4 header and the first 8 bytes after it.
        let expected =
            packet::icmp_dest_unreachable(&back, ICMP_PORT_UNREACHABLE, &offending[14..14 + 28]);
        assert_eq!(run.packet, expected);
    }
}

#[test]
fn idle_flows_are_collected_by_protocol_timeout() {
    keel_testhost::require_root();
    let vip = Ipv4Addr::new(10, 96, 0, 12);
    let backend = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 2), 8080);
    let mut dataplane = service_on_port_80(vip, backend);
    let ends = Endpoints {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src_ip: Ipv4Addr::new(198, 18, 0, 1),
        dst_ip: vip,
    };
    for port in [40000, 40001] {
        let syn = packet::tcp(&ends, port, 80, 1, packet::TCP_SYN, b"");
        run_tc(dataplane.object(), program::TC_LB_INGRESS, &syn, 1).unwrap();
        let datagram = packet::udp(&ends, port, 80, b"q");
        run_tc(dataplane.object(), program::TC_LB_INGRESS, &datagram, 1).unwrap();
    }
    let long = Duration::from_secs(3600);

    // Nothing idle yet: 4 flows, 2 entries each.
    let kept = dataplane
        .collect_conntrack(CtTimeouts {
            tcp: long,
            tcp_syn: long,
            tcp_close: long,
            udp: long,
        })
        .unwrap();
    assert_eq!(
        kept,
        CtCollection {
            entries: 8,
            removed: 0
        }
    );
    std::thread::sleep(Duration::from_millis(30));
    // One UDP flow keeps talking (client to backend only): it must survive, both directions,
    // though its reply side has been quiet all along.
    let talking = packet::udp(&ends, 40000, 80, b"again");
    run_tc(dataplane.object(), program::TC_LB_INGRESS, &talking, 1).unwrap();
    // The other UDP flow, idle past a short timeout, goes as a pair; TCP ones stay.
    let short = Duration::from_millis(20);
    let udp_gone = dataplane
        .collect_conntrack(CtTimeouts {
            tcp: long,
            tcp_syn: long,
            tcp_close: long,
            udp: short,
        })
        .unwrap();
    assert_eq!(
        udp_gone,
        CtCollection {
            entries: 8,
            removed: 2
        }
    );
    let tcp_gone = dataplane
        // The TCP flows sent only a SYN: the unanswered timeout is theirs.
        .collect_conntrack(CtTimeouts {
            tcp: long,
            tcp_syn: short,
            tcp_close: long,
            udp: long,
        })
        .unwrap();
    assert_eq!(
        tcp_gone,
        CtCollection {
            entries: 6,
            removed: 4
        }
    );
    // The talking flow still has its way back.
    let answer = packet::udp(
        &Endpoints {
            src_ip: *backend.ip(),
            dst_ip: ends.src_ip,
            ..ends
        },
        8080,
        40000,
        b"late",
    );
    let translated = run_tc(dataplane.object(), program::TC_LB_EGRESS, &answer, 1)
        .unwrap()
        .packet;
    assert_eq!(
        translated,
        packet::udp(
            &Endpoints {
                src_ip: vip,
                dst_ip: ends.src_ip,
                ..ends
            },
            80,
            40000,
            b"late"
        )
    );
    assert_eq!(
        dataplane.collect_conntrack(CtTimeouts::default()).unwrap(),
        CtCollection {
            entries: 2,
            removed: 0
        }
    );
}

/// A frontend whose `Local` traffic policy leaves no endpoint on this node drops new flows,
/// counted as `no_local_backend`, instead of refusing them as a Service without endpoints.
#[test]
fn tc_lb_drops_a_flow_to_a_local_policy_frontend_without_local_endpoints() {
    keel_testhost::require_root();
    let node_ip = Ipv4Addr::new(198, 18, 0, 2);
    let mut dataplane = Dataplane::load().expect("load the Service programs");
    let frontend = Frontend {
        address: node_ip,
        port: 30080,
        protocol: Protocol::Tcp,
    };
    let desired = Backends {
        addresses: Vec::new(),
        affinity: None,
        external: true,
        local_only: true,
        drop_when_empty: true,
    };
    dataplane.upsert_backends(frontend, &desired).unwrap();
    let syn = packet::tcp(
        &ends(Ipv4Addr::new(198, 18, 0, 1), node_ip),
        40000,
        30080,
        7,
        packet::TCP_SYN,
        b"",
    );
    let run = run_tc(dataplane.object(), program::TC_LB_INGRESS, &syn, 1).unwrap();
    assert_eq!(run.verdict, TC_ACT_SHOT);
    let drops: std::collections::BTreeMap<DropReason, u64> =
        dataplane.drop_stats().unwrap().into_iter().collect();
    assert_eq!(drops[&DropReason::NoLocalBackend], 1, "{drops:?}");
    assert_eq!(drops[&DropReason::NoBackend], 0, "{drops:?}");
}

/// TCP state in the TC path's conntrack: a flow whose SYN is unanswered, an established one,
/// one closed by the client's FIN, one reset by the backend, and one closed and then reopened
/// by a new SYN on the same tuple each age under their own timeout.
#[test]
fn tcp_flows_age_by_the_state_their_packets_showed() {
    keel_testhost::require_root();
    let client = Ipv4Addr::new(198, 18, 0, 1);
    let vip = Ipv4Addr::new(10, 96, 0, 13);
    let backend = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 2), 8080);
    let mut dataplane = service_on_port_80(vip, backend);
    let request = |dataplane: &mut Dataplane, port: u16, flags: u8| {
        let packet = packet::tcp(&ends(client, vip), port, 80, 1, flags, b"");
        let run = run_tc(dataplane.object(), program::TC_LB_INGRESS, &packet, 1).unwrap();
        assert_eq!(run.verdict, TC_ACT_OK);
    };
    let reply = |dataplane: &mut Dataplane, port: u16, flags: u8| {
        let packet = packet::tcp(&ends(*backend.ip(), client), 8080, port, 1, flags, b"");
        let run = run_tc(dataplane.object(), program::TC_LB_EGRESS, &packet, 1).unwrap();
        assert_eq!(run.verdict, TC_ACT_OK);
        // The reply leaves as the VIP's: its flow is tracked.
        assert_eq!(&run.packet[26..30], &vip.octets());
    };
    let (unanswered, established, closed, reset, reopened) = (41000, 41001, 41002, 41003, 41004);
    request(&mut dataplane, unanswered, packet::TCP_SYN);
    for port in [established, closed, reset, reopened] {
        request(&mut dataplane, port, packet::TCP_SYN);
        reply(&mut dataplane, port, packet::TCP_SYN | packet::TCP_ACK);
        request(&mut dataplane, port, packet::TCP_ACK);
    }
    request(&mut dataplane, closed, packet::TCP_FIN | packet::TCP_ACK);
    reply(&mut dataplane, reset, packet::TCP_RST);
    request(&mut dataplane, reopened, packet::TCP_FIN | packet::TCP_ACK);
    reply(&mut dataplane, reopened, packet::TCP_FIN | packet::TCP_ACK);
    request(&mut dataplane, reopened, packet::TCP_SYN);
    reply(&mut dataplane, reopened, packet::TCP_SYN | packet::TCP_ACK);
    std::thread::sleep(Duration::from_millis(30));

    let (long, short) = (Duration::from_secs(3600), Duration::from_millis(20));
    let collect = |dataplane: &mut Dataplane, timeouts: CtTimeouts| {
        dataplane.collect_conntrack(timeouts).unwrap()
    };
    // Closing (FIN from the client, RST from the backend): two pairs.
    let closing = CtTimeouts {
        tcp_close: short,
        ..CtTimeouts::all(long)
    };
    assert_eq!(
        collect(&mut dataplane, closing),
        CtCollection {
            entries: 10,
            removed: 4
        }
    );
    // The unanswered SYN.
    let syn = CtTimeouts {
        tcp_syn: short,
        ..CtTimeouts::all(long)
    };
    assert_eq!(
        collect(&mut dataplane, syn),
        CtCollection {
            entries: 6,
            removed: 2
        }
    );
    // The established flow and the reopened one live by the established timeout only.
    assert_eq!(
        collect(
            &mut dataplane,
            CtTimeouts {
                tcp: long,
                ..CtTimeouts::all(short)
            }
        ),
        CtCollection {
            entries: 4,
            removed: 0
        }
    );
    assert_eq!(
        collect(&mut dataplane, CtTimeouts::all(short)),
        CtCollection {
            entries: 4,
            removed: 4
        }
    );
}

/// The destination address and port of a translated IPv4 TCP / UDP frame (no IP options).
fn destination(frame: &[u8]) -> SocketAddrV4 {
    let address = Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]);
    SocketAddrV4::new(address, u16::from_be_bytes([frame[36], frame[37]]))
}

/// A new flow to an external frontend goes to the entry of the Maglev table that the flow
/// hash selects: the table in the kernel is userspace's table, and the program's choice for
/// each of 300 flows is the one userspace computes for that flow; the same 5-tuple gets the
/// same backend again once its tracked flow is gone.
#[test]
fn tc_lb_sends_a_new_flow_to_its_maglev_entry() {
    keel_testhost::require_root();
    let client = Ipv4Addr::new(198, 18, 0, 1);
    let external_ip = Ipv4Addr::new(198, 18, 100, 1);
    let backends: Vec<SocketAddrV4> = (2..=4)
        .map(|host| SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, host), 8080))
        .collect();
    let size = TableSize::new(251).unwrap();
    let mut dataplane = Dataplane::load().expect("load the Service programs");
    dataplane
        .set_load_balancing(LoadBalancing {
            algorithm: LbAlgorithm::Maglev,
            table_size: size,
        })
        .unwrap();
    let frontend = Frontend {
        address: external_ip,
        port: 80,
        protocol: Protocol::Tcp,
    };
    let external = Backends {
        addresses: backends.clone(),
        affinity: None,
        external: true,
        drop_when_empty: false,
        local_only: false,
    };
    dataplane.upsert_backends(frontend, &external).unwrap();

    // Userspace's table, computed here from the backends' names alone.
    let named: Vec<TableBackend> = backends
        .iter()
        .map(|backend| TableBackend {
            name: backend.to_string(),
            weight: 1,
        })
        .collect();
    let expected: Vec<SocketAddrV4> = lookup_table(&named, size)
        .iter()
        .map(|&index| backends[index as usize])
        .collect();
    let table = dataplane.maglev_table(frontend).unwrap().expect("a table");
    assert_eq!(table, expected);

    let ends = Endpoints {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        src_ip: client,
        dst_ip: external_ip,
    };
    let mut chosen = Vec::new();
    for source_port in 40_000..40_300u16 {
        let syn = packet::tcp(&ends, source_port, 80, 1, packet::TCP_SYN, b"");
        let run = run_tc(dataplane.object(), program::TC_LB_INGRESS, &syn, 1).unwrap();
        assert_eq!(run.verdict, TC_ACT_OK);
        let key = CtKey {
            saddr: u32::from_ne_bytes(client.octets()),
            daddr: u32::from_ne_bytes(external_ip.octets()),
            sport: source_port.to_be(),
            dport: 80u16.to_be(),
            protocol: packet::IPPROTO_TCP,
            pad: [0; 3],
        };
        let entry = flow_hash(&key) % size.get();
        assert_eq!(
            destination(&run.packet),
            expected[entry as usize],
            "flow from port {source_port}, entry {entry}"
        );
        chosen.push(destination(&run.packet));
    }
    for backend in &backends {
        let share = chosen.iter().filter(|b| *b == backend).count();
        assert!(share > 60, "{backend} got {share} of 300 flows");
    }

    // No tracked flow left: the same 5-tuples choose again, and choose the same.
    dataplane
        .collect_conntrack(CtTimeouts::all(Duration::ZERO))
        .unwrap();
    for (source_port, before) in (40_000..40_300u16).zip(&chosen).step_by(7) {
        let syn = packet::tcp(&ends, source_port, 80, 1, packet::TCP_SYN, b"");
        let run = run_tc(dataplane.object(), program::TC_LB_INGRESS, &syn, 1).unwrap();
        assert_eq!(destination(&run.packet), *before);
    }
}

/// Which frontends get a table: external ones under Maglev; never ClusterIPs, never under
/// `random`; a table goes when its frontend goes, empties, or stops being external.
#[test]
fn only_external_frontends_get_a_maglev_table() {
    keel_testhost::require_root();
    let backends = [SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 2), 8080)];
    let mut dataplane = Dataplane::load().expect("load the Service programs");
    dataplane
        .set_load_balancing(LoadBalancing {
            algorithm: LbAlgorithm::Maglev,
            table_size: TableSize::new(509).unwrap(),
        })
        .unwrap();
    let frontend = |last: u8| Frontend {
        address: Ipv4Addr::new(198, 18, 100, last),
        port: 80,
        protocol: Protocol::Udp,
    };
    let desired = |external: bool, addresses: &[SocketAddrV4]| Backends {
        addresses: addresses.to_vec(),
        affinity: None,
        external,
        drop_when_empty: false,
        local_only: false,
    };
    dataplane
        .upsert_backends(frontend(1), &desired(true, &backends))
        .unwrap();
    dataplane
        .upsert_backends(frontend(2), &desired(false, &backends))
        .unwrap();
    let table = dataplane.maglev_table(frontend(1)).unwrap().unwrap();
    assert_eq!(table.len(), 509);
    assert!(table.iter().all(|backend| *backend == backends[0]));
    assert_eq!(dataplane.maglev_table(frontend(2)).unwrap(), None);

    // No backends: no table (and the frontend refuses); back to one backend: a table again.
    dataplane
        .upsert_backends(frontend(1), &desired(true, &[]))
        .unwrap();
    assert_eq!(dataplane.maglev_table(frontend(1)).unwrap(), None);
    dataplane
        .upsert_backends(frontend(1), &desired(true, &backends))
        .unwrap();
    assert!(dataplane.maglev_table(frontend(1)).unwrap().is_some());

    // `random` removes every table; `maglev` brings them back.
    dataplane
        .set_load_balancing(LoadBalancing {
            algorithm: LbAlgorithm::Random,
            table_size: TableSize::new(509).unwrap(),
        })
        .unwrap();
    assert_eq!(dataplane.maglev_table(frontend(1)).unwrap(), None);
    dataplane
        .set_load_balancing(LoadBalancing {
            algorithm: LbAlgorithm::Maglev,
            table_size: TableSize::new(251).unwrap(),
        })
        .unwrap();
    assert_eq!(
        dataplane.maglev_table(frontend(1)).unwrap().unwrap().len(),
        251
    );
    let outer_entries = |dataplane: &mut Dataplane| {
        let maps =
            aya::maps::HashOfMaps::<_, u32>::try_from(dataplane.object().map(map::MAGLEV).unwrap())
                .unwrap();
        maps.keys().count()
    };
    assert_eq!(outer_entries(&mut dataplane), 1);
    dataplane.remove(frontend(1)).unwrap();
    assert_eq!(outer_entries(&mut dataplane), 0);
}
