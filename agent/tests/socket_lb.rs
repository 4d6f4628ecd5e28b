//! Socket-level Service load-balancing for real: `connect()` to a ClusterIP from a process in
//! the cgroup2 group the programs are attached to reaches the Service's backends, which run in
//! other test hosts. Needs root.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use keel_agent::dataplane::{Dataplane, Frontend, Protocol};
use keel_testhost::{Host, LinkOptions, TestCgroup, TestNet, require_root, require_tool};
use support::servers::{BACKEND_PORT, NameServer, ServiceHosts, VIP, answer, nc_to_vip};

/// A cgroup2 group of the test's own with the socket-level programs attached to it.
fn socket_lb() -> (TestCgroup, Dataplane) {
    let cgroup = TestCgroup::new().unwrap();
    let mut dataplane = Dataplane::load().unwrap();
    dataplane.attach_cgroup(cgroup.path()).unwrap();
    (cgroup, dataplane)
}

#[test]
fn connections_to_a_cluster_ip_reach_its_backends_and_follow_changes() {
    require_root();
    require_tool("busybox", "busybox-static");
    let hosts = ServiceHosts::new("socklb", 3);
    let (client, backends, servers) = (&hosts.client, &hosts.backends, &hosts.servers);
    let (cgroup, mut dataplane) = socket_lb();
    let frontend = Frontend {
        address: VIP,
        port: 80,
        protocol: Protocol::Tcp,
    };

    dataplane.upsert(frontend, backends).unwrap();
    let mut answers = BTreeMap::<String, usize>::new();
    for _ in 0..60 {
        *answers
            .entry(answer(&nc_to_vip(client, Some(&cgroup))))
            .or_default() += 1;
    }
    assert_eq!(
        answers.keys().map(String::as_str).collect::<Vec<_>>(),
        ["backend1", "backend2", "backend3"],
        "{answers:?}"
    );
    assert_eq!(answers.values().sum::<usize>(), 60);

    // Outside the group nothing is translated: the client host has no route to the VIP.
    assert!(!nc_to_vip(client, None).status.success());

    // The backend set shrinks to one: every new connection goes there.
    dataplane.upsert(frontend, &backends[1..2]).unwrap();
    for _ in 0..10 {
        assert_eq!(answer(&nc_to_vip(client, Some(&cgroup))), "backend2");
    }

    // No backend: refused at once, and no backend sees a connection.
    let accepted_before: usize = servers
        .iter()
        .map(|server| server.accepted.load(Ordering::Relaxed))
        .sum();
    dataplane.upsert(frontend, &[]).unwrap();
    assert!(!nc_to_vip(client, Some(&cgroup)).status.success());
    let accepted_after: usize = servers
        .iter()
        .map(|server| server.accepted.load(Ordering::Relaxed))
        .sum();
    assert_eq!(accepted_before, accepted_after);
    assert_eq!(accepted_after, 70);

    // Removed: the frontend is an ordinary, unreachable address again.
    dataplane.upsert(frontend, backends).unwrap();
    dataplane.remove(frontend).unwrap();
    assert!(!nc_to_vip(client, Some(&cgroup)).status.success());
    drop(dataplane);
}

/// A UDP server in a test host that answers every datagram with its name.
fn udp_name_server(
    host: &Host,
    address: SocketAddrV4,
    name: &'static str,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    let socket = host
        .enter(|| std::net::UdpSocket::bind(address).unwrap())
        .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((_, from)) = socket.recv_from(&mut buffer) {
                let _ = socket.send_to(name.as_bytes(), from);
            }
        }
    })
}

/// Asks, from a process in `cgroup` inside `client`: a UDP datagram to VIP:53 (unconnected:
/// `sendto`/`recvfrom`), and a TCP connection to VIP:80; prints who answered and the peer
/// addresses the application saw.
const CLIENT: &str = r#"
import socket, sys
vip = sys.argv[1]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(3)
u.sendto(b"who", (vip, 53))
data, source = u.recvfrom(64)
print("udp", data.decode(), source[0], source[1])
t = socket.create_connection((vip, 80), timeout=3)
peer = t.getpeername()
print("tcp", t.recv(64).decode().strip(), peer[0], peer[1])
"#;

#[test]
fn applications_see_the_cluster_ip_as_their_peer() {
    require_root();
    require_tool("python3", "python3");
    let mut net = TestNet::new("peername").unwrap();
    let mut switch = net.add_switch("sw").unwrap();
    let client = net.add_host("client").unwrap();
    net.plug(&client, &mut switch, LinkOptions::default())
        .unwrap();
    let backend = net.add_host("backend").unwrap();
    let port = net
        .plug(&backend, &mut switch, LinkOptions::default())
        .unwrap();
    let tcp_backend = SocketAddrV4::new(port.ip, BACKEND_PORT);
    let udp_backend = SocketAddrV4::new(port.ip, 5353);
    let _tcp_server = NameServer::start(&backend, tcp_backend, "tcp-backend".to_owned());
    let stop = Arc::new(AtomicBool::new(false));
    let udp_server = udp_name_server(&backend, udp_backend, "udp-backend", stop.clone());

    let (cgroup, mut dataplane) = socket_lb();
    dataplane
        .upsert(
            Frontend {
                address: VIP,
                port: 80,
                protocol: Protocol::Tcp,
            },
            &[tcp_backend],
        )
        .unwrap();
    dataplane
        .upsert(
            Frontend {
                address: VIP,
                port: 53,
                protocol: Protocol::Udp,
            },
            &[udp_backend],
        )
        .unwrap();

    let mut command = client.command("python3");
    command
        .args(["-c", CLIENT, &VIP.to_string()])
        .stdin(Stdio::null());
    cgroup.place(&mut command).unwrap();
    let output = command.output().unwrap();
    stop.store(true, Ordering::Relaxed);
    udp_server.join().unwrap();

    let printed = answer(&output);
    let lines: Vec<&str> = printed.lines().collect();
    // The backends answered, yet the application saw only the ClusterIP and its ports.
    assert_eq!(
        lines,
        [
            format!("udp udp-backend {VIP} 53"),
            format!("tcp tcp-backend {VIP} 80")
        ],
        "{printed}"
    );
}

#[test]
fn the_last_of_ten_thousand_services_answers() {
    require_root();
    require_tool("busybox", "busybox-static");
    let hosts = ServiceHosts::new("manysvc", 3);
    let (cgroup, mut dataplane) = socket_lb();

    // 9,999 Services of 10 backends each that nothing connects to (backend addresses inside
    // the test range, never dialled), then the one under test: 10 slots cycling over the 3
    // real backends.
    for index in 0..9_999u32 {
        let frontend = Frontend {
            address: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + index),
            port: 80,
            protocol: Protocol::Tcp,
        };
        let backends: Vec<SocketAddrV4> = (1..=10u8)
            .map(|host| {
                SocketAddrV4::new(
                    Ipv4Addr::new(198, 18, 200, host),
                    10_000 + (index % 50_000) as u16,
                )
            })
            .collect();
        dataplane.upsert(frontend, &backends).unwrap();
    }
    let last = Frontend {
        address: VIP,
        port: 80,
        protocol: Protocol::Tcp,
    };
    let backends: Vec<SocketAddrV4> = hosts.backends.iter().cycle().take(10).copied().collect();
    dataplane.upsert(last, &backends).unwrap();

    let mut answers = BTreeMap::<String, usize>::new();
    for _ in 0..30 {
        *answers
            .entry(answer(&nc_to_vip(&hosts.client, Some(&cgroup))))
            .or_default() += 1;
    }
    assert_eq!(
        answers.keys().map(String::as_str).collect::<Vec<_>>(),
        ["backend1", "backend2", "backend3"],
        "{answers:?}"
    );
}

#[test]
fn an_open_connection_outlives_its_backends_removal() {
    require_root();
    require_tool("python3", "python3");
    require_tool("busybox", "busybox-static");
    let hosts = ServiceHosts::new("drain", 1);
    // A second listener on the backend that keeps its connections open and echoes.
    let echo_address = SocketAddrV4::new(*hosts.backends[0].ip(), 9090);
    let listener = hosts.backend_hosts[0]
        .enter(|| std::net::TcpListener::bind(echo_address).unwrap())
        .unwrap();
    let echo = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buffer = [0u8; 64];
        loop {
            let read = std::io::Read::read(&mut stream, &mut buffer).unwrap();
            if read == 0 {
                break;
            }
            std::io::Write::write_all(&mut stream, &buffer[..read]).unwrap();
        }
    });
    let (cgroup, mut dataplane) = socket_lb();
    let frontend = Frontend {
        address: VIP,
        port: 90,
        protocol: Protocol::Tcp,
    };
    dataplane.upsert(frontend, &[echo_address]).unwrap();

    // A client that sends a line, waits for a second line on stdin, sends it, then closes.
    let mut command = hosts.client.command("python3");
    command.args([
        "-c",
        "import socket,sys\nc=socket.create_connection((sys.argv[1],90),timeout=5)\n\
         for line in sys.stdin:\n    c.sendall(line.encode()); print(c.recv(64).decode().strip(), flush=True)\n",
        &VIP.to_string(),
    ]);
    command.stdin(Stdio::piped()).stdout(Stdio::piped());
    cgroup.place(&mut command).unwrap();
    let mut client = command.spawn().unwrap();
    let mut stdin = client.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    std::io::Write::write_all(&mut stdin, b"before\n").unwrap();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "before");

    // The endpoint goes away (terminating): new connections are refused...
    dataplane.upsert(frontend, &[]).unwrap();
    assert!(!nc_to_vip(&hosts.client, Some(&cgroup)).status.success());
    // ...while the connection already open keeps talking to it.
    line.clear();
    std::io::Write::write_all(&mut stdin, b"after\n").unwrap();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "after");
    drop(stdin);
    assert!(client.wait().unwrap().success());
    echo.join().unwrap();
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_backend() {
    require_root();
    require_tool("busybox", "busybox-static");
    let hosts = ServiceHosts::new("affinity", 3);
    let (cgroup, mut dataplane) = socket_lb();
    let frontend = Frontend {
        address: VIP,
        port: 80,
        protocol: Protocol::Tcp,
    };
    let three_hours = Some(Duration::from_secs(10_800));
    dataplane
        .upsert_with_affinity(frontend, &hosts.backends, three_hours)
        .unwrap();

    let answers: BTreeSet<String> = (0..100)
        .map(|_| answer(&nc_to_vip(&hosts.client, Some(&cgroup))))
        .collect();
    assert_eq!(
        answers.len(),
        1,
        "100 connections from one client reached {answers:?}"
    );
    let chosen = answers.into_iter().next().unwrap();

    // Its backend leaves the Service: the client moves to another one and stays there.
    let index: usize = chosen
        .trim_start_matches("backend")
        .parse::<usize>()
        .unwrap()
        - 1;
    let remaining: Vec<SocketAddrV4> = hosts
        .backends
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, b)| *b)
        .collect();
    dataplane
        .upsert_with_affinity(frontend, &remaining, three_hours)
        .unwrap();
    let answers: BTreeSet<String> = (0..20)
        .map(|_| answer(&nc_to_vip(&hosts.client, Some(&cgroup))))
        .collect();
    assert_eq!(answers.len(), 1, "after the move: {answers:?}");
    assert!(
        !answers.contains(&chosen),
        "still sent to the removed {chosen}"
    );
}
