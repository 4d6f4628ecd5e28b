//! How fast Service changes reach the datapath at scale, through the API as in a cluster:
//! 10,000 Services with 4 backends each (40,000 endpoints) made with kube-rs, then
//! - **endpoint change -> datapath** (upstream's network programming latency): one
//!   EndpointSlice's port is patched, and a client on the node connecting to that Service's
//!   ClusterIP again and again notes when the new backend answers; p50 / p99 over the changes;
//! - **full resync**: the agent's pinned dataplane removed and the agent started again, until
//!   every frontend is programmed (its `keel_service_frontends` metric), and the programming
//!   alone (`keel_service_last_sync_duration_seconds`);
//! - the **incumbent**, in the same run: `iptables-restore` of kube-proxy's iptables-mode rules
//!   for the same Services into a test host, which kube-proxy runs for a full sync.
//!
//! Run as root: `cargo build --release -p keel-agent -p keel-controlplane -p keel-bench &&
//! ./target/release/service-sync [SERVICES] [CHANGES]` (default 10000 and 30). The agent and
//! the control plane (etcd, `keel-controlplane all`) run in a test node; the client is this
//! binary again (`probe` mode), in the node and in the agent's socket-LB cgroup.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use keel_bench::{kube_proxy, percentile, rss_kib};
use keel_testhost::cluster::TestControlPlane;
use keel_testhost::node::{NODE_IP, TestNode};
use keel_testhost::{LinkOptions, TestNet};
use kube::api::{Api, Patch, PatchParams, PostParams};

const BACKENDS_EACH: u8 = 4;
/// The measured Service's two backends: ports on the node answering `A` and `B`.
const PROBE_PORTS: [(u16, u8); 2] = [(9001, b'A'), (9002, b'B')];
const NAMESPACE: &str = "default";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("probe") {
        return probe(&args[2..]);
    }
    let number = |index: usize, default: usize| -> anyhow::Result<usize> {
        args.get(index).map_or(Ok(default), |text| {
            text.parse()
                .with_context(|| format!("`{text}` is not a number"))
        })
    };
    let services = number(1, 10_000)?;
    let changes = number(2, 30)?;
    keel_testhost::require_root();
    bench(services, changes)
}

/// `probe ADDRESS PORT EXPECTED`: connects again and again until the answer is the byte
/// EXPECTED; prints `probing` after the first try, then the wall-clock time (ns since the
/// epoch) it was seen.
fn probe(args: &[String]) -> anyhow::Result<()> {
    let [address, port, expected] = args else {
        bail!("usage: service-sync probe ADDRESS PORT EXPECTED")
    };
    let target = SocketAddrV4::new(address.parse()?, port.parse()?);
    let expected = expected.as_bytes().first().copied().context("EXPECTED")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut first = true;
    loop {
        let mut answer = [0u8; 1];
        let seen = TcpStream::connect_timeout(&target.into(), Duration::from_secs(1))
            .and_then(|mut stream| stream.read_exact(&mut answer))
            .is_ok()
            && answer[0] == expected;
        if seen {
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
            println!("{}", now.as_nanos());
            return Ok(());
        }
        if first {
            println!("probing");
            std::io::stdout().flush()?;
            first = false;
        }
        ensure!(
            Instant::now() < deadline,
            "{target} never answered {expected}"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// [`keel_bench::with_client_in`] the node.
fn in_node<T: Send>(
    node: &TestNode,
    kubeconfig: &std::path::Path,
    work: impl AsyncFnOnce(kube::Client) -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    keel_bench::with_client_in(&node.host, kubeconfig, work)
}

/// A number from the agent's metrics (served on the node's loopback), if it is there.
fn metric(node: &TestNode, name: &str) -> Option<f64> {
    node.host
        .enter(|| {
            let mut stream = TcpStream::connect("127.0.0.1:10249").ok()?;
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .ok()?;
            let mut text = String::new();
            stream.read_to_string(&mut text).ok()?;
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        })
        .ok()
        .flatten()
}

fn service(name: &str) -> anyhow::Result<Service> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    }))?)
}

fn slice(service: &str, addresses: &[Ipv4Addr], port: u16) -> anyhow::Result<EndpointSlice> {
    let endpoints: Vec<serde_json::Value> = addresses
        .iter()
        .map(|address| {
            serde_json::json!({"addresses": [address.to_string()], "conditions": {"ready": true}})
        })
        .collect();
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": format!("{service}-bench"),
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "service-sync.bench.keel",
            },
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }))?)
}

/// The backends of Service `index` (none answers: they only take room).
fn backends(index: usize) -> (Vec<Ipv4Addr>, u16) {
    let addresses = (1..=BACKENDS_EACH)
        .map(|host| Ipv4Addr::new(198, 18, 200 + (index % 50) as u8, host))
        .collect();
    (addresses, 10_000 + (index % 50_000) as u16)
}

fn bench(services: usize, changes: usize) -> anyhow::Result<()> {
    let agent = keel_bench::sibling_binary("keel-agent", "keel-agent")?;
    let mut node = TestNode::new("svcsync", &agent);
    let control_plane = TestControlPlane::start(&node);
    let kubeconfig = control_plane.kubeconfig();
    node.extra_args = vec!["--kubeconfig".into(), kubeconfig.display().to_string()];
    node.start_agent();

    // The measured Service's backends, on the node's address.
    let stop = Arc::new(AtomicBool::new(false));
    let mut servers = Vec::new();
    for (port, answer) in PROBE_PORTS {
        let listener = node
            .host
            .enter(|| TcpListener::bind((NODE_IP.parse::<Ipv4Addr>().expect("an address"), port)))
            .map_err(|error| anyhow::anyhow!("{error}"))??;
        listener.set_nonblocking(true)?;
        let halt = stop.clone();
        servers.push(std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.write_all(&[answer]);
                    }
                    Err(_) => std::thread::sleep(Duration::from_micros(50)),
                }
            }
        }));
    }

    println!(
        "service-sync: {services} Services x {BACKENDS_EACH} backends made through the API, the agent in a test node"
    );
    let started = Instant::now();
    let probe_ip = in_node(&node, &kubeconfig, async |client| {
        let service_api: Api<Service> = Api::namespaced(client.clone(), NAMESPACE);
        let slice_api: Api<EndpointSlice> = Api::namespaced(client, NAMESPACE);
        let node_ip: Ipv4Addr = NODE_IP.parse()?;
        let made = service_api
            .create(&PostParams::default(), &service("probe")?)
            .await?;
        slice_api
            .create(
                &PostParams::default(),
                &slice("probe", &[node_ip], PROBE_PORTS[0].0)?,
            )
            .await?;
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..services)
            .map(|index| {
                let (service_api, slice_api) = (service_api.clone(), slice_api.clone());
                async move {
                    let name = format!("svc{index}");
                    service_api
                        .create(&PostParams::default(), &service(&name)?)
                        .await?;
                    let (addresses, port) = backends(index);
                    slice_api
                        .create(&PostParams::default(), &slice(&name, &addresses, port)?)
                        .await?;
                    Ok(())
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        made.spec
            .and_then(|spec| spec.cluster_ip)
            .context("the probe Service has no ClusterIP")
    })?;
    let made_in = started.elapsed();
    // Every Service has one frontend (its ClusterIP), `default/kubernetes` included.
    let frontends = (services + 2) as f64;
    wait_for(
        "the agent to program every Service",
        Duration::from_secs(600),
        || metric(&node, "keel_service_frontends").is_some_and(|n| n >= frontends),
    )?;
    let programmed_in = started.elapsed();
    println!(
        "  {} objects made in {made_in:.1?} ({:.0}/s); all programmed {programmed_in:.1?} after the first",
        2 * services + 2,
        (2 * services + 2) as f64 / made_in.as_secs_f64()
    );

    // Endpoint change -> datapath.
    let exe = std::env::current_exe()?;
    let mut latencies = Vec::with_capacity(changes);
    for change in 0..changes {
        let (port, answer) = PROBE_PORTS[(change + 1) % 2];
        let mut command = node.host.command(&exe.to_string_lossy());
        command
            .args(["probe", &probe_ip, "80", &(answer as char).to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        node.socket_lb_cgroup.place(&mut command)?;
        let mut child = command.spawn().context("cannot start the probe")?;
        let mut lines = BufReader::new(child.stdout.take().context("piped")?).lines();
        let first = lines.next().context("the probe printed nothing")??;
        ensure!(
            first == "probing",
            "the probe saw {answer} before the change: {first}"
        );
        let changed_at = SystemTime::now().duration_since(UNIX_EPOCH)?;
        in_node(&node, &kubeconfig, async |client| {
            let slice_api: Api<EndpointSlice> = Api::namespaced(client, NAMESPACE);
            let patch =
                serde_json::json!({"ports": [{"name": "http", "port": port, "protocol": "TCP"}]});
            slice_api
                .patch(
                    "probe-bench",
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await?;
            Ok(())
        })?;
        let seen: u128 = lines
            .next()
            .context("the probe ended without an answer")??
            .parse()?;
        ensure!(child.wait()?.success(), "the probe failed");
        let latency = Duration::from_nanos(
            u64::try_from(seen.saturating_sub(changed_at.as_nanos())).unwrap_or(u64::MAX),
        );
        latencies.push(latency);
    }
    let agent_rss = node.agent_pid().map(rss_kib).transpose()?.unwrap_or(0);

    // Full resync: an empty dataplane, the agent started again.
    node.kill_agent();
    let cleanup = Command::new(&agent)
        .arg("--cleanup-bpf")
        .arg("--bpf-root")
        .arg(node.bpf_root())
        .output()?;
    ensure!(cleanup.status.success(), "keel-agent --cleanup-bpf failed");
    let restarted = Instant::now();
    node.start_agent();
    wait_for(
        "the agent to program every Service again",
        Duration::from_secs(600),
        || metric(&node, "keel_service_frontends").is_some_and(|n| n >= frontends),
    )?;
    let resync = restarted.elapsed();
    let programming = metric(&node, "keel_service_last_sync_duration_seconds")
        .map(Duration::from_secs_f64)
        .unwrap_or_default();

    // The incumbent: kube-proxy's full sync of the same Services.
    let mut net = TestNet::new("svcsyncipt")?;
    let host = net.add_host("proxy")?;
    let mut switch = net.add_switch("sw")?;
    net.plug(&host, &mut switch, LinkOptions::default())?;
    let rules: Vec<(SocketAddrV4, Vec<SocketAddrV4>)> = (0..services)
        .map(|index| {
            let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + index as u32);
            let (addresses, port) = backends(index);
            (
                SocketAddrV4::new(vip, 80),
                addresses
                    .into_iter()
                    .map(|address| SocketAddrV4::new(address, port))
                    .collect(),
            )
        })
        .collect();
    let text = kube_proxy::rules(&rules);
    let restore_started = Instant::now();
    kube_proxy::restore(&host, &text)?;
    let restore = restore_started.elapsed();

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (p50, p99) = (
        percentile(&mut latencies, 0.5),
        percentile(&mut latencies, 0.99),
    );
    println!(
        "endpoint change -> datapath ({changes} changes; a client on the node sees the new backend):"
    );
    println!("  p50 {:>8.1} ms   p99 {:>8.1} ms", ms(p50), ms(p99));
    println!(
        "full resync (empty dataplane, agent started): {resync:.2?} to every frontend, of which programming the maps {programming:.2?}"
    );
    println!(
        "kube-proxy (iptables mode) full sync of the same rules: iptables-restore {restore:.2?}"
    );
    println!(
        "  change p50 / iptables-restore: {:.3}x   full resync / iptables-restore: {:.2}x",
        p50.as_secs_f64() / restore.as_secs_f64(),
        resync.as_secs_f64() / restore.as_secs_f64()
    );
    println!("keel-agent RSS with {services} Services: {agent_rss} KiB");

    stop.store(true, Ordering::Relaxed);
    for server in servers {
        let _ = server.join();
    }
    Ok(())
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
