//! Service load-balancing against its floor and against the incumbent, in one run on test
//! hosts (a client and a server host on a switch):
//! - TCP connections per second through a ClusterIP (socket-level load-balancing), with 1 and
//!   with 10,000 Services (10 backends each) programmed, beside connections straight to the
//!   backend (the floor: what the path costs without any Service);
//! - the same two figures through kube-proxy's iptables mode: its `KUBE-SERVICES` /
//!   `KUBE-SVC-*` / `KUBE-SEP-*` chain layout with `statistic` random backends and the
//!   masquerade marks, loaded with `iptables-restore` into the client host's nat table (the
//!   measured Service last in `KUBE-SERVICES`, the worst case of its linear walk);
//! - iperf3 throughput client -> ClusterIP beside client -> server directly.
//!
//! Run as root: `cargo run --release -p keel-bench --bin service-lb [-- CONNECTIONS]`.
//! The client is this binary again (`client` mode), started inside the client host and inside
//! the cgroup2 group the socket programs are attached to; the backend is a server in the other
//! test host. The iptables rules catch only their own VIPs (10.98.0.0/16), which the eBPF
//! dataplane does not know, so the two never serve the same connection.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use keel_agent::dataplane::{Dataplane, Frontend, Protocol};
use keel_bench::{kube_proxy, per_second};
use keel_testhost::{LinkOptions, TestCgroup, TestNet};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The Service the iptables rules serve (the eBPF dataplane has no frontend for it).
const IPTABLES_VIP: Ipv4Addr = Ipv4Addr::new(10, 98, 255, 254);
const BACKEND_PORT: u16 = 8080;
const IPERF_PORT: u16 = 5201;
/// How many Services the "many" figures have programmed, each with [`BACKENDS_EACH`].
const SERVICES: u32 = 10_000;
const BACKENDS_EACH: u8 = 10;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("client") {
        return client(&args[2..]);
    }
    let connections: usize = match args.get(1) {
        Some(text) => text
            .parse()
            .with_context(|| format!("connections: `{text}` is not a number"))?,
        None => 2_000,
    };
    keel_testhost::require_root();
    bench(connections)
}

/// `client ADDRESS PORT COUNT`: opens COUNT connections one after another, reads each
/// answer, and prints the elapsed seconds.
fn client(args: &[String]) -> anyhow::Result<()> {
    let [address, port, count] = args else {
        bail!("usage: service-lb client ADDRESS PORT COUNT")
    };
    let target = SocketAddrV4::new(address.parse()?, port.parse()?);
    let count: usize = count.parse()?;
    let started = Instant::now();
    for _ in 0..count {
        let mut stream = TcpStream::connect(target).with_context(|| format!("connect {target}"))?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte)?;
    }
    println!("{}", started.elapsed().as_secs_f64());
    Ok(())
}

fn bench(connections: usize) -> anyhow::Result<()> {
    let mut net = TestNet::new("benchlb")?;
    let mut switch = net.add_switch("sw")?;
    let client_host = net.add_host("client")?;
    let client_port = net.plug(&client_host, &mut switch, LinkOptions::default())?;
    // As on a node, the VIPs are routable (the nat OUTPUT hook comes after the route lookup);
    // socket LB needs no route, it rewrites at connect.
    let route = client_host.run(&[
        "ip",
        "route",
        "add",
        "10.98.0.0/16",
        "dev",
        &client_port.interface,
    ])?;
    ensure!(
        route.status.success(),
        "cannot route 10.98.0.0/16 in the client host"
    );
    let server_host = net.add_host("server")?;
    let server_port = net.plug(&server_host, &mut switch, LinkOptions::default())?;
    let backend = SocketAddrV4::new(server_port.ip, BACKEND_PORT);

    let listener = server_host.enter(|| TcpListener::bind(backend))??;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let halt = stop.clone();
    let server = std::thread::spawn(move || {
        while !halt.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.write_all(b"k");
                }
                Err(_) => std::thread::sleep(Duration::from_micros(50)),
            }
        }
    });

    let cgroup = TestCgroup::new()?;
    let mut dataplane = Dataplane::load()?;
    dataplane.attach_cgroup(cgroup.path())?;
    dataplane.upsert(
        Frontend {
            address: VIP,
            port: 80,
            protocol: Protocol::Tcp,
        },
        &[backend],
    )?;
    dataplane.upsert(
        Frontend {
            address: VIP,
            port: IPERF_PORT,
            protocol: Protocol::Tcp,
        },
        &[SocketAddrV4::new(server_port.ip, IPERF_PORT)],
    )?;

    let run = |address: Ipv4Addr, port: u16| -> anyhow::Result<f64> {
        let mut command = client_host.command(&std::env::current_exe()?.to_string_lossy());
        command
            .args([
                "client",
                &address.to_string(),
                &port.to_string(),
                &connections.to_string(),
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::inherit());
        cgroup.place(&mut command)?;
        let output = command.output()?;
        ensure!(
            output.status.success(),
            "the client failed against {address}:{port}"
        );
        let seconds: f64 = String::from_utf8_lossy(&output.stdout).trim().parse()?;
        Ok(per_second(connections, Duration::from_secs_f64(seconds)))
    };

    println!(
        "service-lb: {connections} sequential TCP connections per figure (connect, read 1 byte, close)"
    );
    let direct_before = run(*backend.ip(), BACKEND_PORT)?;
    let one = run(VIP, 80)?;
    let others = other_services();
    for (frontend, backends) in &others {
        dataplane.upsert(
            Frontend {
                address: *frontend.ip(),
                port: frontend.port(),
                protocol: Protocol::Tcp,
            },
            backends,
        )?;
    }
    let many = run(VIP, 80)?;
    let direct_after = run(*backend.ip(), BACKEND_PORT)?;
    let direct = (direct_before + direct_after) / 2.0;
    let iperf_direct = iperf3(&client_host, &server_host, server_port.ip, &cgroup)?;
    let iperf_vip = iperf3(&client_host, &server_host, VIP, &cgroup)?;

    // kube-proxy's iptables mode in the client host, first with only the measured Service,
    // then with the others before it. (From here the client host's nat table, and with it
    // conntrack, sees every new connection.)
    let target = (SocketAddrV4::new(IPTABLES_VIP, 80), vec![backend]);
    let started = Instant::now();
    kube_proxy::restore(
        &client_host,
        &kube_proxy::rules(std::slice::from_ref(&target)),
    )?;
    let restore_one = started.elapsed();
    let iptables_one = run(IPTABLES_VIP, 80)?;
    let mut all = iptables_services(&others);
    all.push(target);
    let started = Instant::now();
    kube_proxy::restore(&client_host, &kube_proxy::rules(&all))?;
    let restore_many = started.elapsed();
    let iptables_many = run(IPTABLES_VIP, 80)?;
    let direct_iptables = run(*backend.ip(), BACKEND_PORT)?;

    println!("{:<44} {:>12} {:>10}", "path", "conn/s", "vs direct");
    println!(
        "{:<44} {:>12.0} {:>10}",
        "direct to the backend (floor, mean of 2)", direct, "1.00"
    );
    println!(
        "{:<44} {:>12.0} {:>10.2}",
        "ClusterIP, socket LB, 1 Service",
        one,
        one / direct
    );
    println!(
        "{:<44} {:>12.0} {:>10.2}",
        "ClusterIP, socket LB, 10,000 Services",
        many,
        many / direct
    );
    println!(
        "{:<44} {:>12.0} {:>10.2}",
        "ClusterIP, kube-proxy iptables, 1 Service",
        iptables_one,
        iptables_one / direct
    );
    println!(
        "{:<44} {:>12.0} {:>10.2}",
        "ClusterIP, kube-proxy iptables, 10,000",
        iptables_many,
        iptables_many / direct
    );
    println!(
        "{:<44} {:>12.0} {:>10.2}",
        "direct, beside kube-proxy's 10,000 Services",
        direct_iptables,
        direct_iptables / direct
    );
    println!(
        "socket LB / iptables: {:.2}x with 1 Service, {:.2}x with 10,000",
        one / iptables_one,
        many / iptables_many
    );
    println!(
        "(direct before / after the 10,000 Services: {direct_before:.0} / {direct_after:.0} conn/s: the spread is the noise)"
    );
    println!(
        "(iptables-restore of the rules: 1 Service {restore_one:.2?}, {SERVICES} Services x {BACKENDS_EACH} backends {restore_many:.2?})"
    );
    println!();
    println!("iperf3, one TCP stream for {IPERF_SECONDS} s:");
    println!(
        "  client -> server directly (floor) {:>8.2} Gbit/s",
        iperf_direct / 1e9
    );
    println!(
        "  client -> ClusterIP (socket LB)   {:>8.2} Gbit/s  {:.2}x the floor",
        iperf_vip / 1e9,
        iperf_vip / iperf_direct
    );

    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    Ok(())
}

/// The 9,999 other Services (10 backends each, none reachable: they only take room).
fn other_services() -> Vec<(SocketAddrV4, Vec<SocketAddrV4>)> {
    (0..SERVICES - 1)
        .map(|index| {
            let frontend = SocketAddrV4::new(
                Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + index),
                80,
            );
            let backends = (1..=BACKENDS_EACH)
                .map(|host| {
                    SocketAddrV4::new(
                        Ipv4Addr::new(198, 18, 200, host),
                        10_000 + (index % 50_000) as u16,
                    )
                })
                .collect();
            (frontend, backends)
        })
        .collect()
}

/// The same Services with VIPs of the iptables range (10.98.0.0/16).
fn iptables_services(
    services: &[(SocketAddrV4, Vec<SocketAddrV4>)],
) -> Vec<(SocketAddrV4, Vec<SocketAddrV4>)> {
    services
        .iter()
        .map(|(frontend, backends)| {
            let [_, _, c, d] = frontend.ip().octets();
            (
                SocketAddrV4::new(Ipv4Addr::new(10, 98, c, d), frontend.port()),
                backends.clone(),
            )
        })
        .collect()
}

const IPERF_SECONDS: u32 = 5;

/// iperf3's received bits per second, one stream from `client` (in `cgroup`) to
/// `address:IPERF_PORT`, served by `iperf3 -s` in `server`.
fn iperf3(
    client: &keel_testhost::Host,
    server: &keel_testhost::Host,
    address: Ipv4Addr,
    cgroup: &TestCgroup,
) -> anyhow::Result<f64> {
    let _server = keel_testhost::HostProcess::spawn(
        server
            .command("iperf3")
            .args(["-s", "-1", "-p", &IPERF_PORT.to_string()])
            .stdout(Stdio::null()),
    )
    .context("cannot start iperf3 -s (Debian package iperf3)")?;
    let mut output = None;
    // The server needs a moment to listen.
    for _ in 0..50 {
        let mut command = client.command("iperf3");
        command.args([
            "-c",
            &address.to_string(),
            "-p",
            &IPERF_PORT.to_string(),
            "-t",
            &IPERF_SECONDS.to_string(),
            "-J",
        ]);
        cgroup.place(&mut command)?;
        let result = command.output()?;
        if result.status.success() {
            output = Some(result);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let output = output.with_context(|| format!("iperf3 -c {address} never connected"))?;
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("iperf3 -J printed no end.sum_received: {report}"))
}
