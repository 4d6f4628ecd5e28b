//! Maglev on the TC path with real traffic: a client reaches an external IP through either of
//! two node hosts, each with its own dataplane (its own maps, its own conntrack), in front of
//! three backends on a switch. The same flow gets the same backend through either node, and
//! removing a backend moves only the flows that were on it. Needs root.

mod support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use keel_agent::dataplane::{
    Backends, CtTimeouts, Dataplane, Frontend, LbAlgorithm, LoadBalancing, Protocol, TableSize,
};
use keel_testhost::{Host, LinkOptions, TestNet, require_root};
use support::servers::UdpNameServer;

/// The Service's external IP (a LoadBalancer ingress IP, say), announced by both nodes.
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 1);
/// The client's own address, the same whichever node it goes through: the flows' source.
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 251, 1);
const DNS_PORT: u16 = 53;
const NAMES: [&str; 3] = ["backend1", "backend2", "backend3"];
/// Flows, one per client source port.
const FLOWS: std::ops::Range<u16> = 30_000..30_060;

/// One of the two nodes: its dataplane, and the addresses the others route through.
struct Node {
    dataplane: Dataplane,
    /// The node's end of the client's link.
    uplink_ip: Ipv4Addr,
    /// The node's port on the backends' switch.
    switch_ip: Ipv4Addr,
}

/// The client, two nodes and three backends, each backend answering UDP with its name.
struct TwoNodes {
    client: Host,
    nodes: [Node; 2],
    backend_hosts: Vec<Host>,
    backends: Vec<SocketAddrV4>,
    _servers: Vec<UdpNameServer>,
    _net: TestNet,
}

impl TwoNodes {
    fn new(tag: &str) -> TwoNodes {
        let mut net = TestNet::new(tag).unwrap();
        let client = net.add_host("client").unwrap();
        client
            .run(&["ip", "addr", "add", &format!("{CLIENT_IP}/32"), "dev", "lo"])
            .unwrap();
        let mut switch = net.add_switch("sw").unwrap();
        let mut nodes = Vec::new();
        for name in ["nodea", "nodeb"] {
            let host = net.add_host(name).unwrap();
            let uplink = net.connect(&client, &host, LinkOptions::default()).unwrap();
            let port = net
                .plug(&host, &mut switch, LinkOptions::default())
                .unwrap();
            host.enable_forwarding().unwrap();
            host.add_route(&format!("{CLIENT_IP}/32"), uplink.a.ip)
                .unwrap();
            let mut dataplane = Dataplane::load().unwrap();
            dataplane
                .set_load_balancing(LoadBalancing {
                    algorithm: LbAlgorithm::Maglev,
                    table_size: TableSize::default(),
                })
                .unwrap();
            host.enter(|| {
                dataplane.attach_tc(&uplink.b.interface).unwrap();
                dataplane.attach_tc(&port.interface).unwrap();
            })
            .unwrap();
            nodes.push(Node {
                dataplane,
                uplink_ip: uplink.b.ip,
                switch_ip: port.ip,
            });
        }
        let (mut backend_hosts, mut backends, mut servers) = (Vec::new(), Vec::new(), Vec::new());
        for name in NAMES {
            let host = net.add_host(name).unwrap();
            let port = net
                .plug(&host, &mut switch, LinkOptions::default())
                .unwrap();
            let address = SocketAddrV4::new(port.ip, 5353);
            servers.push(UdpNameServer::start(&host, address, name));
            backends.push(address);
            backend_hosts.push(host);
        }
        let [a, b]: [Node; 2] = nodes.try_into().ok().unwrap();
        TwoNodes {
            client,
            nodes: [a, b],
            backend_hosts,
            backends,
            _servers: servers,
            _net: net,
        }
    }

    /// Sends the client's traffic to the external IP, and the backends' replies, through
    /// node `index` (as an ECMP router or a failover would).
    fn route_through(&self, index: usize) {
        let node = &self.nodes[index];
        let gateway = node.uplink_ip.to_string();
        let external = format!("{EXTERNAL_IP}/32");
        self.client
            .run(&["ip", "route", "replace", &external, "via", &gateway])
            .unwrap();
        for host in &self.backend_hosts {
            host.run(&[
                "ip",
                "route",
                "replace",
                "default",
                "via",
                &node.switch_ip.to_string(),
            ])
            .unwrap();
        }
    }

    /// Programs the external frontend on both nodes with `backends`.
    fn program(&mut self, backends: &[SocketAddrV4]) {
        let desired = Backends {
            addresses: backends.to_vec(),
            affinity: None,
            external: true,
            drop_when_empty: false,
            local_only: false,
        };
        for node in &mut self.nodes {
            node.dataplane
                .upsert_backends(frontend(), &desired)
                .unwrap();
        }
    }

    /// Forgets every tracked flow on both nodes: the next packet of a flow chooses afresh.
    fn forget_flows(&mut self) {
        let now = CtTimeouts::all(Duration::ZERO);
        for node in &mut self.nodes {
            node.dataplane.collect_conntrack(now).unwrap();
        }
    }

    /// Which backend answers each flow (one datagram from each source port of `FLOWS`).
    fn ask(&self) -> BTreeMap<u16, String> {
        let sockets: Vec<(u16, UdpSocket)> = self
            .client
            .enter(|| {
                FLOWS
                    .map(|port| (port, UdpSocket::bind((CLIENT_IP, port)).unwrap()))
                    .collect()
            })
            .unwrap();
        sockets
            .into_iter()
            .map(|(port, socket)| (port, who_answers(&socket)))
            .collect()
    }
}

fn frontend() -> Frontend {
    Frontend {
        address: EXTERNAL_IP,
        port: DNS_PORT,
        protocol: Protocol::Udp,
    }
}

/// The name in the answer to a datagram to the external IP, which must come from there.
/// A few tries: the first datagram of a flow can wait on neighbour resolution.
fn who_answers(socket: &UdpSocket) -> String {
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buffer = [0u8; 64];
    for _ in 0..10 {
        socket.send_to(b"who", (EXTERNAL_IP, DNS_PORT)).unwrap();
        if let Ok((len, from)) = socket.recv_from(&mut buffer) {
            assert_eq!(from, SocketAddr::from((EXTERNAL_IP, DNS_PORT)));
            return String::from_utf8_lossy(&buffer[..len]).into_owned();
        }
    }
    panic!("no answer through the node");
}

fn spread(answers: &BTreeMap<u16, String>) -> BTreeMap<&str, usize> {
    let mut spread = BTreeMap::new();
    for name in answers.values() {
        *spread.entry(name.as_str()).or_default() += 1;
    }
    spread
}

#[test]
fn every_node_sends_a_flow_to_the_same_backend_and_a_removal_moves_only_its_flows() {
    require_root();
    let mut hosts = TwoNodes::new("maglev");
    let all = hosts.backends.clone();
    hosts.program(&all);

    // Through node A: the flows spread over the three backends.
    hosts.route_through(0);
    let through_a = hosts.ask();
    let shares = spread(&through_a);
    assert_eq!(shares.len(), 3, "{shares:?}");
    assert!(shares.values().all(|n| *n >= 8), "{shares:?}");

    // Through node B, which has never seen these flows: each gets the same backend.
    hosts.route_through(1);
    assert_eq!(hosts.ask(), through_a);

    // backend3 leaves. With no tracked flow left anywhere, every flow chooses again from
    // the new tables: the flows of backend1 and backend2 stay where they were, backend3's
    // move to the other two. The same on both nodes.
    hosts.program(&all[..2]);
    hosts.forget_flows();
    for node in [1, 0] {
        hosts.route_through(node);
        let after = hosts.ask();
        for (port, before) in &through_a {
            if before == "backend3" {
                assert_ne!(after[port], "backend3", "flow {port} through node {node}");
            } else {
                assert_eq!(&after[port], before, "flow {port} through node {node}");
            }
        }
    }
}
