//! Service load-balancing on the TC path with real traffic: a client host whose traffic to a
//! ClusterIP is routed through a node host reaches the Service's backends behind the node; the
//! replies come back through the node, reverse-translated. No socket-level program is involved
//! (the client runs in no cgroup of ours). Needs root.

mod support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};

use std::time::{Duration, Instant};

use keel_agent::dataplane::{Dataplane, Frontend, Protocol};
use keel_testhost::{Host, TestNet, require_root, require_tool};
use support::servers::{NameServer, RoutedHosts, UdpNameServer, VIP, answer, nc_to, nc_to_vip};

/// A client host routed to the service range through a node host, and backend hosts on a
/// switch behind the node, each with a TCP name server; the node has `tc_lb_ingress` on both
/// of its interfaces.
struct Routed {
    client: Host,
    /// The node's address on the client's link.
    node_ip: Ipv4Addr,
    backend_hosts: Vec<Host>,
    backends: Vec<SocketAddrV4>,
    dataplane: Dataplane,
    _servers: Vec<NameServer>,
    _net: TestNet,
}

impl Routed {
    fn new(tag: &str, count: usize) -> Routed {
        let hosts = RoutedHosts::new(tag, count, "10.96.0.0/12");
        let mut dataplane = Dataplane::load().unwrap();
        hosts
            .node
            .enter(|| {
                dataplane.attach_tc(&hosts.uplink.interface).unwrap();
                dataplane.attach_tc(&hosts.node_port.interface).unwrap();
            })
            .unwrap();
        Routed {
            client: hosts.client,
            node_ip: hosts.uplink.ip,
            backend_hosts: hosts.backend_hosts,
            backends: hosts.backends,
            dataplane,
            _servers: hosts.servers,
            _net: hosts.net,
        }
    }
}

#[test]
fn routed_traffic_to_a_cluster_ip_reaches_every_backend_through_the_node() {
    require_root();
    require_tool("busybox", "busybox-static");
    let mut routed = Routed::new("tclb", 3);
    let frontend = Frontend {
        address: VIP,
        port: 80,
        protocol: Protocol::Tcp,
    };
    routed.dataplane.upsert(frontend, &routed.backends).unwrap();

    let mut answers = BTreeMap::<String, usize>::new();
    for _ in 0..30 {
        *answers
            .entry(answer(&nc_to_vip(&routed.client, None)))
            .or_default() += 1;
    }
    assert_eq!(
        answers.keys().map(String::as_str).collect::<Vec<_>>(),
        ["backend1", "backend2", "backend3"],
        "{answers:?}"
    );

    // Without backends the node refuses the flow (ICMP port unreachable): the client's
    // connection is refused, it does not time out.
    routed.dataplane.upsert(frontend, &[]).unwrap();
    let refused = nc_to_vip(&routed.client, None);
    let error = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && error.contains("refused"),
        "nc: {error}"
    );
}

#[test]
fn a_udp_flow_moves_to_the_new_backend_when_its_backend_is_replaced() {
    require_root();
    let mut routed = Routed::new("udpflow", 2);
    let udp_backends: Vec<SocketAddrV4> = routed
        .backends
        .iter()
        .map(|b| SocketAddrV4::new(*b.ip(), 5353))
        .collect();
    let _first = UdpNameServer::start(&routed.backend_hosts[0], udp_backends[0], "udp1");
    let _second = UdpNameServer::start(&routed.backend_hosts[1], udp_backends[1], "udp2");
    let frontend = Frontend {
        address: VIP,
        port: 53,
        protocol: Protocol::Udp,
    };
    routed
        .dataplane
        .upsert(frontend, &udp_backends[..1])
        .unwrap();

    // One socket, one flow: the same source port for every datagram, as a DNS client keeps.
    let client = routed
        .client
        .enter(|| UdpSocket::bind("0.0.0.0:0").unwrap())
        .unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let ask = |client: &UdpSocket| -> Option<String> {
        client.send_to(b"who", (VIP, 53)).unwrap();
        let mut buffer = [0u8; 64];
        let (len, from) = client.recv_from(&mut buffer).ok()?;
        assert_eq!(
            from,
            std::net::SocketAddr::from((VIP, 53)),
            "the answer must come from the VIP"
        );
        Some(String::from_utf8_lossy(&buffer[..len]).into_owned())
    };
    for _ in 0..5 {
        assert_eq!(ask(&client).as_deref(), Some("udp1"));
    }

    // The backend is replaced while udp1 still runs: the flow must not stay stuck on it.
    routed
        .dataplane
        .upsert(frontend, &udp_backends[1..])
        .unwrap();
    let replaced = Instant::now();
    let mut answers = Vec::new();
    while replaced.elapsed() < Duration::from_secs(1) {
        answers.push(ask(&client));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        answers
            .iter()
            .all(|answer| answer.as_deref() == Some("udp2")),
        "answers after the replacement: {answers:?}"
    );
}

#[test]
fn a_node_port_reaches_the_backends_behind_the_node() {
    require_root();
    require_tool("busybox", "busybox-static");
    let mut routed = Routed::new("nodeport", 2);
    let node_port = Frontend {
        address: routed.node_ip,
        port: 30080,
        protocol: Protocol::Tcp,
    };
    routed
        .dataplane
        .upsert(node_port, &routed.backends)
        .unwrap();

    let answers: std::collections::BTreeSet<String> = (0..20)
        .map(|_| answer(&nc_to(&routed.client, routed.node_ip, 30080, None)))
        .collect();
    assert_eq!(
        answers.iter().map(String::as_str).collect::<Vec<_>>(),
        ["backend1", "backend2"]
    );
}

/// Traffic to a NodePort keeps the client's own address on the way to the backend (no SNAT:
/// what `externalTrafficPolicy: Local` promises), and the reply comes back from the NodePort.
#[test]
fn a_node_port_backend_sees_the_clients_own_address() {
    require_root();
    let mut routed = Routed::new("nodeportip", 1);
    let backend = SocketAddrV4::new(*routed.backends[0].ip(), 5300);
    let _server = UdpNameServer::peer_echo(&routed.backend_hosts[0], backend);
    let node_port = Frontend {
        address: routed.node_ip,
        port: 30053,
        protocol: Protocol::Udp,
    };
    routed
        .dataplane
        .upsert_backends(
            node_port,
            &keel_agent::dataplane::Backends {
                addresses: vec![backend],
                affinity: None,
                external: true,
                local_only: true,
                drop_when_empty: true,
            },
        )
        .unwrap();
    let client_ip = routed
        .client
        .enter(|| {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            socket.connect((routed.node_ip, 30053)).unwrap();
            let own = socket.local_addr().unwrap().ip();
            socket.send(b"who am I?").unwrap();
            let mut buffer = [0u8; 64];
            // `recv` on a connected socket: the answer came from the NodePort itself.
            let n = socket
                .recv(&mut buffer)
                .expect("an answer from the NodePort");
            (own, String::from_utf8_lossy(&buffer[..n]).into_owned())
        })
        .unwrap();
    assert_eq!(client_ip.1, client_ip.0.to_string());
}
