//! TCP connections per second through a ClusterIP (socket-level load-balancing), with 1 and
//! with 10,000 Services programmed, beside connections straight to the backend in the same run
//! (the floor: what the path costs without any Service).
//!
//! Run as root: `cargo run --release -p keel-bench --bin service-lb [-- CONNECTIONS]`.
//! The client is this binary again (`client` mode), started inside a test host and inside the
//! cgroup2 group the socket programs are attached to; the backend is a server in another test
//! host.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use keel_agent::dataplane::{Dataplane, Frontend, Protocol};
use keel_bench::per_second;
use keel_testhost::{LinkOptions, TestCgroup, TestNet};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const BACKEND_PORT: u16 = 8080;

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
    net.plug(&client_host, &mut switch, LinkOptions::default())?;
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
        dataplane.upsert(frontend, &backends)?;
    }
    let many = run(VIP, 80)?;
    let direct_after = run(*backend.ip(), BACKEND_PORT)?;
    let direct = (direct_before + direct_after) / 2.0;

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
        "(direct before / after the 10,000 Services: {direct_before:.0} / {direct_after:.0} conn/s: the spread is the noise)"
    );

    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    Ok(())
}
