//! Servers and clients for the Service load-balancing tests.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use keel_testhost::{Host, LinkOptions, TestCgroup, TestNet};

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const BACKEND_PORT: u16 = 8080;

/// A TCP server in a test host that answers every connection with its name and closes it.
pub struct NameServer {
    pub accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NameServer {
    pub fn start(host: &Host, address: SocketAddrV4, name: String) -> NameServer {
        let listener = host.enter(|| TcpListener::bind(address).unwrap()).unwrap();
        listener.set_nonblocking(true).unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt) = (accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        count.fetch_add(1, Ordering::Relaxed);
                        let _ = stream.write_all(format!("{name}\n").as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        NameServer {
            accepted,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for NameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A UDP server in a test host answering every datagram with its name, until dropped.
pub struct UdpNameServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpNameServer {
    pub fn start(host: &Host, address: SocketAddrV4, name: &'static str) -> UdpNameServer {
        UdpNameServer::answering(host, address, move |_| name.to_owned())
    }

    /// A server answering every datagram with the address it came from, as it saw it.
    pub fn peer_echo(host: &Host, address: SocketAddrV4) -> UdpNameServer {
        UdpNameServer::answering(host, address, |from| from.ip().to_string())
    }

    fn answering(
        host: &Host,
        address: SocketAddrV4,
        answer: impl Fn(std::net::SocketAddr) -> String + Send + 'static,
    ) -> UdpNameServer {
        let socket = host.enter(|| UdpSocket::bind(address).unwrap()).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buffer = [0u8; 64];
            while !halt.load(Ordering::Relaxed) {
                if let Ok((_, from)) = socket.recv_from(&mut buffer) {
                    let _ = socket.send_to(answer(from).as_bytes(), from);
                }
            }
        });
        UdpNameServer {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpNameServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `busybox nc` to the VIP, port 80, from the client host, inside `cgroup` if given.
pub fn nc_to_vip(client: &Host, cgroup: Option<&TestCgroup>) -> Output {
    nc_to(client, VIP, 80, cgroup)
}

/// `busybox nc` to `address:port` from the client host, inside `cgroup` if given.
pub fn nc_to(client: &Host, address: Ipv4Addr, port: u16, cgroup: Option<&TestCgroup>) -> Output {
    let mut command: Command = client.command("busybox");
    command
        .args(["nc", "-w", "3", &address.to_string(), &port.to_string()])
        .stdin(Stdio::null());
    if let Some(cgroup) = cgroup {
        cgroup.place(&mut command).unwrap();
    }
    command.output().unwrap()
}

pub fn answer(output: &Output) -> String {
    assert!(
        output.status.success(),
        "nc failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A client host and `count` backend hosts on one switch, each backend running a
/// [`NameServer`] named `backend<n>` on `BACKEND_PORT`.
pub struct ServiceHosts {
    pub client: Host,
    pub backend_hosts: Vec<Host>,
    pub backends: Vec<SocketAddrV4>,
    pub servers: Vec<NameServer>,
    // Last: dropped after the servers stop.
    pub net: TestNet,
}

impl ServiceHosts {
    pub fn new(tag: &str, count: usize) -> ServiceHosts {
        let mut net = TestNet::new(tag).unwrap();
        let mut switch = net.add_switch("sw").unwrap();
        let client = net.add_host("client").unwrap();
        net.plug(&client, &mut switch, LinkOptions::default())
            .unwrap();
        let (mut backend_hosts, mut backends, mut servers) = (Vec::new(), Vec::new(), Vec::new());
        for index in 1..=count {
            let host = net.add_host(&format!("backend{index}")).unwrap();
            let port = net
                .plug(&host, &mut switch, LinkOptions::default())
                .unwrap();
            let address = SocketAddrV4::new(port.ip, BACKEND_PORT);
            servers.push(NameServer::start(&host, address, format!("backend{index}")));
            backends.push(address);
            backend_hosts.push(host);
        }
        ServiceHosts {
            client,
            backend_hosts,
            backends,
            servers,
            net,
        }
    }
}

/// A client host routed through a node host (forwarding on) to `count` backend hosts on a
/// switch behind the node, each running a [`NameServer`] named `backend<n>` on
/// `BACKEND_PORT` and routing back through the node. The client routes `client_route` (a
/// prefix, or `default`) via the node.
pub struct RoutedHosts {
    pub client: Host,
    pub node: Host,
    /// The node's interface and address on the client's link.
    pub uplink: keel_testhost::Endpoint,
    /// The node's interface on the backends' switch.
    pub node_port: keel_testhost::Endpoint,
    pub backend_hosts: Vec<Host>,
    pub backends: Vec<SocketAddrV4>,
    pub servers: Vec<NameServer>,
    // Last: dropped after the servers stop.
    pub net: TestNet,
}

impl RoutedHosts {
    pub fn new(tag: &str, count: usize, client_route: &str) -> RoutedHosts {
        let mut net = TestNet::new(tag).unwrap();
        let client = net.add_host("client").unwrap();
        let node = net.add_host("node").unwrap();
        let uplink = net.connect(&client, &node, LinkOptions::default()).unwrap();
        let mut switch = net.add_switch("sw").unwrap();
        let node_port = net
            .plug(&node, &mut switch, LinkOptions::default())
            .unwrap();
        node.enable_forwarding().unwrap();
        let via = uplink.b.ip.to_string();
        client
            .run(&["ip", "route", "add", client_route, "via", &via])
            .unwrap();
        let (mut servers, mut backends, mut backend_hosts) = (Vec::new(), Vec::new(), Vec::new());
        for index in 1..=count {
            let host = net.add_host(&format!("backend{index}")).unwrap();
            let port = net
                .plug(&host, &mut switch, LinkOptions::default())
                .unwrap();
            let gateway = node_port.ip.to_string();
            host.run(&["ip", "route", "add", "default", "via", &gateway])
                .unwrap();
            let address = SocketAddrV4::new(port.ip, BACKEND_PORT);
            servers.push(NameServer::start(&host, address, format!("backend{index}")));
            backends.push(address);
            backend_hosts.push(host);
        }
        RoutedHosts {
            client,
            node,
            uplink: uplink.b,
            node_port,
            backend_hosts,
            backends,
            servers,
            net,
        }
    }
}
