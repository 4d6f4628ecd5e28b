//! NodePort traffic from another host to a node whose Service has a backend on that node and
//! one on another node: flows to the remote backend leave SNATed to the node's address and a
//! port in 61000-65535 and their replies come back through the node; under
//! `externalTrafficPolicy: Local` only the local backend serves and sees the client's own
//! address, and a node without a local backend drops the flow; with `xdp_lb` on node A's
//! LAN interface the SNATed flows are served at XDP. Real programs, real traffic, in test
//! namespaces. Needs root.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use keel_agent::dataplane::{Backends, Dataplane, Frontend, Protocol, SnatConfig, XdpAttachMode};
use keel_ebpf_common::DropReason;
use keel_ebpf_common::nat::{NAT_PORT_MAX, NAT_PORT_MIN};
use keel_testhost::{Host, LinkOptions, TestNet, require_root};

const NODE_PORT: u16 = 30_080;
const BACKEND_PORT: u16 = 8080;

/// A TCP and a UDP server on one address answering each connection / datagram with
/// `<name> <peer address>:<peer port>`.
struct PeerServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl PeerServer {
    fn start(host: &Host, address: SocketAddrV4, name: &'static str) -> PeerServer {
        let (listener, socket) = host
            .enter(|| {
                (
                    TcpListener::bind(address).unwrap(),
                    UdpSocket::bind(address).unwrap(),
                )
            })
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let tcp = std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, peer)) => {
                        let _ = stream.write_all(format!("{name} {peer}\n").as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        let halt = stop.clone();
        let udp = std::thread::spawn(move || {
            let mut buffer = [0u8; 64];
            while !halt.load(Ordering::Relaxed) {
                if let Ok((_, peer)) = socket.recv_from(&mut buffer) {
                    let _ = socket.send_to(format!("{name} {peer}").as_bytes(), peer);
                }
            }
        });
        PeerServer {
            stop,
            threads: vec![tcp, udp],
        }
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A client, node A and node B on one LAN; node A has a pod switch with a local backend,
/// node B one with a remote backend. Node A runs `tc_lb_*` on its LAN and pod interfaces
/// (with `Xdp::Lb`, also `xdp_lb` on its LAN interface) and SNATs to its LAN address; node B
/// is a plain router for its pods.
struct TwoNodes {
    client: Host,
    node_a: Ipv4Addr,
    /// Node A's LAN interface index (in node A).
    a_lan: u32,
    client_ip: Ipv4Addr,
    local: SocketAddrV4,
    remote: SocketAddrV4,
    dataplane: Dataplane,
    /// Node A's interface to its pods' switch, in node A, and its peer, the switch's port.
    pods_link: (Host, String, Host, String),
    _servers: Vec<PeerServer>,
    _net: TestNet,
}

impl TwoNodes {
    fn new(tag: &str, xdp: Xdp) -> TwoNodes {
        let mut net = TestNet::new(tag).unwrap();
        let mut lan = net.add_switch("lan").unwrap();
        let client = net.add_host("client").unwrap();
        let node_a = net.add_host("nodea").unwrap();
        let node_b = net.add_host("nodeb").unwrap();
        let client_port = net.plug(&client, &mut lan, LinkOptions::default()).unwrap();
        let a_lan = net.plug(&node_a, &mut lan, LinkOptions::default()).unwrap();
        let b_lan = net.plug(&node_b, &mut lan, LinkOptions::default()).unwrap();
        let mut pods_a = net.add_switch("podsa").unwrap();
        let mut pods_b = net.add_switch("podsb").unwrap();
        let a_pods = net
            .plug(&node_a, &mut pods_a, LinkOptions::default())
            .unwrap();
        let b_pods = net
            .plug(&node_b, &mut pods_b, LinkOptions::default())
            .unwrap();
        let local_host = net.add_host("locbe").unwrap();
        let remote_host = net.add_host("rembe").unwrap();
        let local_ip = net
            .plug(&local_host, &mut pods_a, LinkOptions::default())
            .unwrap();
        let remote_ip = net
            .plug(&remote_host, &mut pods_b, LinkOptions::default())
            .unwrap();
        node_a.enable_forwarding().unwrap();
        node_b.enable_forwarding().unwrap();
        local_host.add_route("default", a_pods.ip).unwrap();
        remote_host.add_route("default", b_pods.ip).unwrap();
        // Node A reaches node B's pods through node B, as Keel's pod routes do.
        let (b_net, b_prefix) = subnet(&b_pods);
        node_a
            .add_route(&format!("{b_net}/{b_prefix}"), b_lan.ip)
            .unwrap();
        let local = SocketAddrV4::new(local_ip.ip, BACKEND_PORT);
        let remote = SocketAddrV4::new(remote_ip.ip, BACKEND_PORT);
        let servers = vec![
            PeerServer::start(&local_host, local, "local"),
            PeerServer::start(&remote_host, remote, "remote"),
        ];
        let mut dataplane = Dataplane::load().unwrap();
        node_a
            .enter(|| {
                dataplane.attach_tc(&a_lan.interface).unwrap();
                dataplane.attach_tc(&a_pods.interface).unwrap();
                if xdp == Xdp::Lb {
                    dataplane
                        .attach_xdp_lb(&a_lan.interface, XdpAttachMode::Native)
                        .unwrap();
                }
            })
            .unwrap();
        if xdp == Xdp::Lb {
            // A veth hands its peer frames whose TCP / UDP checksum is still to be filled in
            // (checksum offload), which nothing at XDP can tell apart from a complete one: the
            // hosts whose packets XDP translates send complete checksums, as a NIC delivers.
            keel_testhost::require_tool("ethtool", "ethtool");
            for (host, endpoint) in [(&client, &client_port), (&remote_host, &remote_ip)] {
                host.run(&["ethtool", "-K", &endpoint.interface, "tx", "off"])
                    .unwrap();
            }
            // A frame a veth sends with XDP_TX is received by its peer's NAPI, which runs
            // only while the peer has an XDP program (or GRO) itself: the switch's port
            // gets the counters (XDP_PASS), as a real NIC needs nothing.
            let port = lan.port_interface(&a_lan).unwrap();
            lan.host()
                .enter(|| {
                    dataplane
                        .attach_counters_xdp(&port, XdpAttachMode::Native)
                        .unwrap()
                })
                .unwrap();
        }
        dataplane
            .set_snat(Some(SnatConfig {
                address: a_lan.ip,
                local: Some(subnet(&a_pods)),
                pod_peers: true,
            }))
            .unwrap();
        TwoNodes {
            client,
            node_a: a_lan.ip,
            a_lan: a_lan.ifindex,
            client_ip: client_port.ip,
            local,
            remote,
            dataplane,
            pods_link: (
                node_a.clone(),
                a_pods.interface.clone(),
                pods_a.host(),
                pods_a.port_interface(&a_pods).unwrap(),
            ),
            _servers: servers,
            _net: net,
        }
    }

    /// Programs the NodePort (TCP and UDP) on node A's address.
    fn node_port(&mut self, backends: &[SocketAddrV4], local_only: bool) {
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let frontend = Frontend {
                address: self.node_a,
                port: NODE_PORT,
                protocol,
            };
            let desired = Backends {
                addresses: backends.to_vec(),
                affinity: None,
                external: true,
                local_only,
                // Local with none here: the Service's endpoints are on the other node.
                drop_when_empty: local_only && backends.is_empty(),
            };
            self.dataplane.upsert_backends(frontend, &desired).unwrap();
        }
    }

    /// One TCP connection from the client to the NodePort: `(name, peer the backend saw)`.
    fn tcp(&self) -> std::io::Result<(String, SocketAddrV4)> {
        let to = SocketAddr::from((self.node_a, NODE_PORT));
        self.client
            .enter(|| {
                let mut stream = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
                stream.set_read_timeout(Some(Duration::from_secs(5)))?;
                let mut text = String::new();
                stream.read_to_string(&mut text)?;
                Ok(parse(&text))
            })
            .unwrap()
    }

    /// One UDP request / response from the client to the NodePort.
    fn udp(&self) -> (String, SocketAddrV4) {
        let socket = self
            .client
            .enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap())
            .unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket.send_to(b"who", (self.node_a, NODE_PORT)).unwrap();
        let mut buffer = [0u8; 128];
        let (length, from) = socket.recv_from(&mut buffer).unwrap();
        assert_eq!(
            from,
            SocketAddr::from((self.node_a, NODE_PORT)),
            "the reply comes from the NodePort"
        );
        parse(&String::from_utf8_lossy(&buffer[..length]))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Xdp {
    /// Node A's LAN interface has no XDP program: TC serves every flow.
    None,
    /// Node A's LAN interface runs `xdp_lb`.
    Lb,
}

/// The switch subnet of `endpoint`: (base, prefix length).
fn subnet(endpoint: &keel_testhost::Endpoint) -> (Ipv4Addr, u8) {
    let mask = u32::MAX << (32 - u32::from(endpoint.prefix_len));
    (
        Ipv4Addr::from(u32::from(endpoint.ip) & mask),
        endpoint.prefix_len,
    )
}

fn parse(text: &str) -> (String, SocketAddrV4) {
    let (name, peer) = text
        .trim()
        .split_once(' ')
        .unwrap_or_else(|| panic!("unexpected answer {text:?}"));
    (name.to_owned(), peer.parse().unwrap())
}

/// An interface's packet counter (`rx` or `tx`), as the kernel keeps it.
fn packets(host: &Host, interface: &str, direction: &str) -> u64 {
    let output = host
        .run(&["ip", "-s", "-j", "link", "show", interface])
        .unwrap();
    let links: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    links[0]["stats64"][direction]["packets"].as_u64().unwrap()
}

fn drops(dataplane: &Dataplane, reason: DropReason) -> u64 {
    dataplane
        .drop_stats()
        .unwrap()
        .into_iter()
        .find(|(r, _)| *r == reason)
        .map_or(0, |(_, count)| count)
}

#[test]
fn a_node_port_reaches_a_backend_on_another_node_snated_and_one_here_directly() {
    require_root();
    let nodes = node_port_to_both_backends("snat", Xdp::None);
    let stats = nodes.dataplane.iface_stats().unwrap();
    let a_lan = stats.get(&nodes.a_lan).copied().unwrap_or_default();
    assert_eq!(a_lan.xdp_tx.packets, 0, "no XDP here: {a_lan:?}");
    // The local backend's packets went straight into the pods' side of the veth
    // (`bpf_redirect_peer`): its peer received more than node A's side ever sent.
    let (node_host, node_if, switch_host, port) = &nodes.pods_link;
    let sent = packets(node_host, node_if, "tx");
    let received = packets(switch_host, port, "rx");
    assert!(
        received > sent,
        "the pods' side received {received} packets, node A's side sent {sent}"
    );
}

/// The same through `xdp_lb` on node A's LAN interface: the remote backend's flows, both
/// ways, leave from XDP (counted as `xdp_tx`), the local backend's pass on to TC.
#[test]
fn xdp_lb_serves_the_snated_node_port_flows_and_tc_the_local_ones() {
    require_root();
    let nodes = node_port_to_both_backends("xdpsnat", Xdp::Lb);
    let a_lan = nodes.dataplane.iface_stats().unwrap()[&nodes.a_lan];
    // Each remote TCP connection sends at least 3 frames through node A each way (SYN, ACK,
    // FIN / SYN-ACK, data, FIN), each UDP exchange 1; about half of the 80 go to the remote
    // backend. What the XDP program did not send back out went through TC.
    assert!(
        a_lan.xdp_tx.packets >= 40,
        "the SNATed flows were served at XDP: {a_lan:?}"
    );
    // XDP never translates for a backend on its own node: the local backend, which served
    // too, got its flows from TC, after XDP passed them on.
    assert!(
        a_lan.xdp.packets > a_lan.xdp_tx.packets,
        "frames were passed on to the stack: {a_lan:?}"
    );
}

/// 40 TCP connections and 40 UDP exchanges from the client to node A's NodePort, whose
/// backends are on node A and node B: both serve, the remote one sees node A's address and
/// a port in 61000-65535, the local one the client's address.
fn node_port_to_both_backends(tag: &str, xdp: Xdp) -> TwoNodes {
    let mut nodes = TwoNodes::new(tag, xdp);
    nodes.node_port(&[nodes.local, nodes.remote], false);
    let snat_ports = u32::from(NAT_PORT_MIN)..=u32::from(NAT_PORT_MAX);

    let mut seen = BTreeMap::<String, usize>::new();
    for _ in 0..40 {
        let (name, peer) = nodes.tcp().expect("every connection completes");
        match name.as_str() {
            "remote" => {
                assert_eq!(*peer.ip(), nodes.node_a, "the remote backend sees node A");
                assert!(snat_ports.contains(&u32::from(peer.port())), "{peer}");
            }
            "local" => assert_eq!(*peer.ip(), nodes.client_ip, "no SNAT to a local backend"),
            other => panic!("unexpected backend {other}"),
        }
        *seen.entry(name).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "both backends serve: {seen:?}");

    let mut seen = BTreeMap::<String, usize>::new();
    for _ in 0..40 {
        let (name, peer) = nodes.udp();
        if name == "remote" {
            assert_eq!(*peer.ip(), nodes.node_a);
            assert!(snat_ports.contains(&u32::from(peer.port())), "{peer}");
        } else {
            assert_eq!(*peer.ip(), nodes.client_ip);
        }
        *seen.entry(name).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "both backends serve UDP: {seen:?}");
    nodes
}

#[test]
fn external_traffic_policy_local_keeps_the_client_ip_and_drops_without_a_local_backend() {
    require_root();
    let mut nodes = TwoNodes::new("etplocal", Xdp::None);
    // What the agent programs under `externalTrafficPolicy: Local`: this node's backends.
    nodes.node_port(&[nodes.local], true);
    for _ in 0..10 {
        let (name, peer) = nodes.tcp().expect("every connection completes");
        assert_eq!(name, "local", "the remote backend is never chosen");
        assert_eq!(*peer.ip(), nodes.client_ip, "the backend sees the client");
        let (name, peer) = nodes.udp();
        assert_eq!(name, "local");
        assert_eq!(*peer.ip(), nodes.client_ip);
    }

    // No local backend: the flow is dropped (kube-proxy drops too), not refused.
    nodes.node_port(&[], true);
    let before = drops(&nodes.dataplane, DropReason::NoLocalBackend);
    let error = nodes.tcp().expect_err("no backend here");
    assert!(
        matches!(
            error.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        ),
        "dropped, not refused: {error}"
    );
    assert!(drops(&nodes.dataplane, DropReason::NoLocalBackend) > before);
}
