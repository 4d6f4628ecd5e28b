//! NodePort forwarding, packets per second, through XDP (`xdp_lb`), through TC (`tc_lb_*`)
//! and through iptables DNAT, in one run on test hosts.
//!
//! A client, a node and a backend host on one switch. The client floods small UDP datagrams
//! (64-byte frames, 64 flows) at the node's NodePort; the backend sits on another "node"
//! beside the client, so every path DNATs to it, SNATs to the node's address and sends the
//! packet back out of the interface it came in on (the NodePort-to-a-remote-backend hairpin):
//! - **XDP**: `xdp_lb` on the node's interface, `XDP_TX` (TC attached behind it, as the agent
//!   does with `--bpf-lb-acceleration native`);
//! - **TC**: `tc_lb_*` on the node's interface, `bpf_redirect_neigh`;
//! - **iptables**: DNAT in PREROUTING and SNAT in POSTROUTING of the node's nat table, the
//!   kernel forwarding (kube-proxy's NodePort path, conntrack included).
//!
//! And a backend that is a pod of the node (behind a veth, no SNAT), through TC: the translated
//! packet routed by the node's stack, or put straight into the pod with `bpf_redirect_peer`
//! (what the agent does for its own pods).
//!
//! Before each measurement a datagram goes through and back, and the backend must see the
//! node's address: no figures for a broken path. The backend's socket then stops reading, so
//! the datagrams end in its full receive buffer, the cheapest way to sink them.
//!
//! Figures per path: datagrams sent and delivered (received by the backend's interface), CPU
//! busy across the machine (`/proc/stat`) and in softirq, CPU time per delivered packet, and the
//! node's packets per second per core: one over the node's share of the CPU time per packet,
//! i.e. a path's time per packet minus the baseline's, the client flooding the backend
//! directly (the sending and receiving cost the same on every path). On veths the sender's
//! CPU does all of it (the receive path runs in its softirq), so one core is busy. The switch ports of all three hosts
//! get an XDP program (which only counts and passes) on every path: a veth sends `XDP_TX`
//! frames only to a peer whose NAPI runs, and the paths must see the same switch. The senders
//! do not offload checksums (`ethtool -K tx off`), as `xdp_lb` needs on veths.
//!
//! Run as root: `cargo run --release -p keel-bench --bin nodeport-pps [-- SECONDS]`.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use keel_agent::dataplane::{Backends, Dataplane, Frontend, Protocol, SnatConfig, XdpAttachMode};
use keel_testhost::{Endpoint, Host, LinkOptions, Switch, TestNet};

const NODE_PORT: u16 = 30_080;
const BACKEND_PORT: u16 = 9;
/// Source ports the flood cycles through.
const FLOWS: usize = 64;
/// 18 bytes of UDP payload: a 64-byte Ethernet frame with its FCS.
const PAYLOAD: usize = 18;
/// Datagrams per `sendmmsg`.
const BATCH: usize = 32;
const WARM_UP: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// The baseline: the client floods the backend itself, no node in between.
    Direct,
    Xdp,
    Tc,
    Iptables,
    /// TC to a backend that is a pod of the node (behind a veth), through the stack.
    LocalStack,
    /// The same, the packet put into the pod with `bpf_redirect_peer`.
    LocalPeer,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct to the backend (no node)",
            Path::Xdp => "XDP (xdp_lb, XDP_TX)",
            Path::Tc => "TC (tc_lb, bpf_redirect_neigh)",
            Path::Iptables => "iptables DNAT + SNAT (conntrack)",
            Path::LocalStack => "TC, local pod, via the stack",
            Path::LocalPeer => "TC, local pod, bpf_redirect_peer",
        }
    }
}

/// What one path did over the measured window.
#[derive(Debug, Clone, Copy)]
struct Figures {
    sent_pps: f64,
    forwarded_pps: f64,
    busy_cores: f64,
    softirq_cores: f64,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("flood") {
        return flood(&args[2..]);
    }
    let seconds: u64 = match args.get(1) {
        Some(text) => text
            .parse()
            .with_context(|| format!("SECONDS: `{text}` is not a number"))?,
        None => 5,
    };
    keel_testhost::require_root();
    for tool in ["ethtool", "iptables-restore"] {
        keel_testhost::require_tool(
            tool,
            if tool == "ethtool" {
                "ethtool"
            } else {
                "iptables"
            },
        );
    }
    let window = Duration::from_secs(seconds.max(1));
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "nodeport-pps: {FLOWS} UDP flows of 64-byte frames from a client to a NodePort whose \
         backend is beside the client (DNAT + SNAT, back out of the same interface); \
         {}s measured after {}s warm-up; {cores} cores",
        window.as_secs(),
        WARM_UP.as_secs()
    );
    let mut results = Vec::new();
    for path in [
        Path::Direct,
        Path::Iptables,
        Path::Tc,
        Path::Xdp,
        Path::LocalStack,
        Path::LocalPeer,
    ] {
        let figures = measure(path, window)?;
        println!(
            "  {:<34} sent {:>9.0}/s  forwarded {:>9.0}/s  busy {:.2} cores (softirq {:.2})",
            path.name(),
            figures.sent_pps,
            figures.forwarded_pps,
            figures.busy_cores,
            figures.softirq_cores
        );
        results.push((path, figures));
    }
    let of = |wanted: Path| {
        results
            .iter()
            .find(|(path, _)| *path == wanted)
            .map(|(_, figures)| *figures)
            .expect("every path measured")
    };
    // CPU time per packet delivered, and the node's share of it: beyond what the same
    // packets cost sent straight to the backend.
    let cost = |f: Figures| f.busy_cores / f.forwarded_pps.max(1.0);
    let direct = cost(of(Path::Direct));
    let node_pps_per_core = |f: Figures| 1.0 / (cost(f) - direct).max(1e-9);
    println!();
    println!(
        "{:<34} {:>12} {:>15} {:>18}",
        "path", "delivered/s", "CPU ns/packet", "node pps per core"
    );
    for (path, figures) in &results {
        let per_core = if *path == Path::Direct {
            "-".to_owned()
        } else {
            format!("{:.0}", node_pps_per_core(*figures))
        };
        println!(
            "{:<34} {:>12.0} {:>15.0} {:>18}",
            path.name(),
            figures.forwarded_pps,
            cost(*figures) * 1e9,
            per_core
        );
    }
    let (xdp, tc, iptables) = (of(Path::Xdp), of(Path::Tc), of(Path::Iptables));
    println!();
    for (label, a, b) in [
        ("XDP / iptables", xdp, iptables),
        ("TC / iptables", tc, iptables),
        ("XDP / TC", xdp, tc),
    ] {
        println!(
            "{label:<16} node pps per core {:.2}x, delivered {:.2}x",
            node_pps_per_core(a) / node_pps_per_core(b),
            a.forwarded_pps / b.forwarded_pps.max(1.0)
        );
    }
    let (stack, peer) = (of(Path::LocalStack), of(Path::LocalPeer));
    println!(
        "{:<16} node pps per core {:.2}x, delivered {:.2}x",
        "local: peer / stack",
        node_pps_per_core(peer) / node_pps_per_core(stack),
        peer.forwarded_pps / stack.forwarded_pps.max(1.0)
    );
    println!(
        "(CPU ns/packet: the machine's busy time (/proc/stat) over the packets delivered, the \
         client's sending and the backend's receiving included; node pps per core: one over \
         the node's share, a path's ns/packet minus the direct path's. Run on an idle machine.)"
    );
    Ok(())
}

/// The three hosts on a switch, the node's path set up, checked, then flooded.
fn measure(path: Path, window: Duration) -> anyhow::Result<Figures> {
    let mut net = TestNet::new("ppsbench")?;
    let mut switch = net.add_switch("sw")?;
    let client = net.add_host("client")?;
    let node = net.add_host("node")?;
    let backend = net.add_host("backend")?;
    let client_port = net.plug(&client, &mut switch, LinkOptions::default())?;
    let node_port = net.plug(&node, &mut switch, LinkOptions::default())?;
    let local = matches!(path, Path::LocalStack | Path::LocalPeer);
    // The backend: beside the client on the switch, or a "pod" of the node behind a veth.
    let (backend_port, pod_link) = if local {
        let link = net.connect(&node, &backend, LinkOptions::default())?;
        backend.add_route("default", link.a.ip)?;
        (link.b.clone(), Some(link.a))
    } else {
        (
            net.plug(&backend, &mut switch, LinkOptions::default())?,
            None,
        )
    };
    for (host, port) in [(&client, &client_port), (&backend, &backend_port)] {
        host.run(&["ethtool", "-K", &port.interface, "tx", "off"])?;
    }
    node.enable_forwarding()?;
    for key in ["all", "default", node_port.interface.as_str()] {
        node.sysctl(&format!("net/ipv4/conf/{key}/send_redirects"), "0")?;
    }
    let mut dataplane = Dataplane::load()?;
    let mut plugged = vec![&client_port, &node_port];
    if !local {
        plugged.push(&backend_port);
    }
    let ports: Vec<String> = plugged
        .into_iter()
        .map(|endpoint| switch_port(&switch, endpoint))
        .collect::<anyhow::Result<_>>()?;
    switch.host().enter(|| -> anyhow::Result<()> {
        for port in &ports {
            dataplane.attach_counters_xdp(port, XdpAttachMode::Native)?;
        }
        Ok(())
    })??;

    let target = SocketAddrV4::new(backend_port.ip, BACKEND_PORT);
    match path {
        Path::Direct => {}
        Path::Iptables => {
            let rules = format!(
                "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
                 :POSTROUTING ACCEPT [0:0]\n\
                 -A PREROUTING -d {node}/32 -p udp --dport {NODE_PORT} -j DNAT --to-destination {target}\n\
                 -A POSTROUTING -d {backend}/32 -p udp --dport {BACKEND_PORT} -j SNAT --to-source {node}\n\
                 COMMIT\n",
                node = node_port.ip,
                backend = backend_port.ip,
            );
            keel_bench::kube_proxy::restore(&node, &rules)?;
        }
        Path::Tc | Path::Xdp | Path::LocalStack | Path::LocalPeer => {
            dataplane.upsert_backends(
                Frontend {
                    address: node_port.ip,
                    port: NODE_PORT,
                    protocol: Protocol::Udp,
                },
                &Backends {
                    addresses: vec![target],
                    affinity: None,
                    external: true,
                    local_only: false,
                    drop_when_empty: false,
                },
            )?;
            // The node's pods: the local backend's link, or (none here) a network apart.
            let pods = pod_link
                .as_ref()
                .map_or((Ipv4Addr::new(198, 18, 250, 0), 24), |link| {
                    let mask = u32::MAX << (32 - u32::from(link.prefix_len));
                    (Ipv4Addr::from(u32::from(link.ip) & mask), link.prefix_len)
                });
            dataplane.set_snat(Some(SnatConfig {
                address: node_port.ip,
                local: Some(pods),
                pod_peers: path == Path::LocalPeer,
            }))?;
            node.enter(|| -> anyhow::Result<()> {
                dataplane.attach_tc(&node_port.interface)?;
                if let Some(link) = &pod_link {
                    dataplane.attach_tc(&link.interface)?;
                }
                if path == Path::Xdp {
                    dataplane.attach_xdp_lb(&node_port.interface, XdpAttachMode::Native)?;
                }
                Ok(())
            })??;
        }
    }

    let sink = backend.enter(|| UdpSocket::bind(target))??;
    let flooded = match path {
        Path::Direct => target,
        _ => SocketAddrV4::new(node_port.ip, NODE_PORT),
    };
    // The backend sees the node's address (SNAT), or the client's (direct, a local pod).
    let source = match path {
        Path::Direct | Path::LocalStack | Path::LocalPeer => client_port.ip,
        Path::Xdp | Path::Tc | Path::Iptables => node_port.ip,
    };
    check(&client, &sink, flooded, source)?;

    // The flood: this binary again, in the client host.
    let mut flood = client.command(&std::env::current_exe()?.to_string_lossy());
    flood
        .args([
            "flood",
            &flooded.ip().to_string(),
            &flooded.port().to_string(),
            &(WARM_UP + window).as_secs_f64().to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let child = flood.spawn().context("cannot start the flood")?;
    std::thread::sleep(WARM_UP);
    let (received_before, cpu_before) = (rx_packets(&backend, &backend_port)?, cpu_times()?);
    let started = Instant::now();
    std::thread::sleep(window);
    let (received_after, cpu_after) = (rx_packets(&backend, &backend_port)?, cpu_times()?);
    let elapsed = started.elapsed().as_secs_f64();
    let output = child.wait_with_output()?;
    ensure!(output.status.success(), "the flood failed");
    let text = String::from_utf8_lossy(&output.stdout);
    let sent_in_window: f64 = text
        .trim()
        .parse()
        .with_context(|| format!("the flood printed `{}`", text.trim()))?;
    drop(sink);

    let ticks = cpu_after.ticks_per_second;
    Ok(Figures {
        sent_pps: sent_in_window / window.as_secs_f64(),
        forwarded_pps: (received_after - received_before) as f64 / elapsed,
        busy_cores: (cpu_after.busy - cpu_before.busy) as f64 / ticks / elapsed,
        softirq_cores: (cpu_after.softirq - cpu_before.softirq) as f64 / ticks / elapsed,
    })
}

/// The switch-side interface of `endpoint`'s port.
fn switch_port(switch: &Switch, endpoint: &Endpoint) -> anyhow::Result<String> {
    switch
        .port_interface(endpoint)
        .with_context(|| format!("{} is not on the switch", endpoint.interface))
}

/// One datagram from the client to `node_port` reaches the backend from `source`, and the
/// backend's answer comes back to the client from `node_port`.
fn check(
    client: &Host,
    backend: &UdpSocket,
    node_port: SocketAddrV4,
    source: Ipv4Addr,
) -> anyhow::Result<()> {
    let socket = client.enter(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)))??;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    backend.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buffer = [0u8; 64];
    for _ in 0..5 {
        socket.send_to(b"ping", node_port)?;
        let Ok((_, from)) = backend.recv_from(&mut buffer) else {
            continue;
        };
        ensure!(
            from.ip() == std::net::IpAddr::V4(source),
            "the backend saw {from}, not {source}"
        );
        backend.send_to(b"pong", from)?;
        let (length, answer_from) = socket
            .recv_from(&mut buffer)
            .context("the backend's answer did not come back")?;
        ensure!(
            answer_from == std::net::SocketAddr::V4(node_port) && &buffer[..length] == b"pong",
            "the answer came from {answer_from}"
        );
        return Ok(());
    }
    bail!("no datagram to {node_port} reached the backend")
}

/// The backend interface's received packets, as the kernel counts them.
fn rx_packets(host: &Host, endpoint: &Endpoint) -> anyhow::Result<u64> {
    let output = host.run(&["ip", "-s", "-j", "link", "show", &endpoint.interface])?;
    let links: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    links[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .context("no rx packets in `ip -s -j link`")
}

/// Machine-wide CPU time from `/proc/stat`, in clock ticks.
struct CpuTimes {
    busy: u64,
    softirq: u64,
    ticks_per_second: f64,
}

fn cpu_times() -> anyhow::Result<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|line| line.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    ensure!(fields.len() >= 8, "a short cpu line in /proc/stat: {line}");
    // user nice system idle iowait irq softirq steal
    let busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7];
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(CpuTimes {
        busy,
        softirq: fields[6],
        ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 },
    })
}

/// `flood ADDRESS PORT SECONDS`: sends datagrams from [`FLOWS`] sockets in `sendmmsg` batches
/// for SECONDS, then prints how many it sent after the warm-up.
fn flood(args: &[String]) -> anyhow::Result<()> {
    let [address, port, seconds] = args else {
        bail!("usage: nodeport-pps flood ADDRESS PORT SECONDS")
    };
    let target = SocketAddrV4::new(address.parse()?, port.parse()?);
    let duration = Duration::from_secs_f64(seconds.parse()?);
    let sockets: Vec<UdpSocket> = (0..FLOWS)
        .map(|_| {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            socket.connect(target)?;
            Ok(socket)
        })
        .collect::<std::io::Result<_>>()?;
    let mut payload = [0x6bu8; PAYLOAD];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: PAYLOAD,
    };
    // SAFETY: an all-zero mmsghdr is valid; each points at the one iovec above, which lives
    // until the end of this function.
    let mut messages: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for message in &mut messages {
        message.msg_hdr.msg_iov = &mut iov;
        message.msg_hdr.msg_iovlen = 1;
    }
    let started = Instant::now();
    let mut counted = 0u64;
    let mut flow = 0;
    while started.elapsed() < duration {
        let fd = sockets[flow].as_raw_fd();
        flow = (flow + 1) % FLOWS;
        // SAFETY: `messages` holds BATCH initialised headers for a connected socket.
        let sent = unsafe { libc::sendmmsg(fd, messages.as_mut_ptr(), BATCH as u32, 0) };
        if sent > 0 && started.elapsed() >= WARM_UP {
            counted += sent as u64;
        }
    }
    println!("{counted}");
    Ok(())
}
