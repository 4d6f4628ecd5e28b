//! The pinned dataplane survives `kill -9` of the agent: the real `keel-agent` runs in a node
//! host with `--services-file`, socket load-balancing on a test cgroup, TC load-balancing on
//! the node's interfaces and its pins in a bpffs of the test's own. Two iperf3 streams to
//! ClusterIPs (one from a client in the cgroup, one routed through the node and translated
//! packet by packet) run through the kill and the restart without an error or a silent
//! second; new connections work while no agent runs and after; the restarted agent takes
//! over the maps and links as they were. Needs root.

mod support;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keel_testhost::{HostProcess, TestBpffs, TestCgroup, require_root, require_tool};
use support::servers::{BACKEND_PORT, RoutedHosts, answer, nc_to};
use support::{metrics, pinned};

const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// iperf3 to backend1 (one backend: iperf3's control and data connections must meet).
const STREAM_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
/// iperf3 to backend2, for the routed client.
const ROUTED_STREAM_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 21);
const OLD_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const NEW_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 31);
const IPERF_PORT: u16 = 5201;
/// iperf3's run, in seconds.
const STREAM_SECONDS: u32 = 10;

/// A Service `name` on `vip:port` and its EndpointSlice with `backends` on `target`.
fn service(name: &str, vip: Ipv4Addr, port: u16, target: u16, backends: &[Ipv4Addr]) -> String {
    let mut yaml = format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  clusterIP: {vip}\n  ports:\n  - {{name: p, port: {port}, targetPort: {target}}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  \
         namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\n\
         ports:\n- {{name: p, port: {target}, protocol: TCP}}\nendpoints:\n"
    );
    for backend in backends {
        yaml.push_str(&format!(
            "- addresses: [{backend}]\n  conditions: {{ready: true}}\n"
        ));
    }
    yaml
}

/// A client routed to the Service range through a node host, two backends behind the node
/// (name servers on `BACKEND_PORT`, iperf3 servers on `IPERF_PORT`), a test cgroup, a
/// bpffs, and the agent in the node.
struct Cluster {
    devices: String,
    backends: Vec<Ipv4Addr>,
    cgroup: TestCgroup,
    bpffs: TestBpffs,
    dir: tempfile::TempDir,
    agent: Option<HostProcess>,
    _iperf_servers: Vec<HostProcess>,
    // Last: the hosts go after every process in them.
    hosts: RoutedHosts,
}

impl Cluster {
    fn new(tag: &str) -> Cluster {
        require_root();
        require_tool("busybox", "busybox-static");
        require_tool("iperf3", "iperf3");
        require_tool("nsenter", "util-linux");
        // Everything through the node: ClusterIPs (TC path) and backends (socket path).
        let hosts = RoutedHosts::new(tag, 2, "default");
        let mut iperf_servers = Vec::new();
        for (host, backend) in hosts.backend_hosts.iter().zip(&hosts.backends) {
            let mut iperf_server = host.command("iperf3");
            iperf_server
                .args(["-s", "-p", &IPERF_PORT.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            iperf_servers.push(HostProcess::spawn(&mut iperf_server).unwrap());
            let address = SocketAddrV4::new(*backend.ip(), IPERF_PORT);
            host.wait_for_port(address.into(), Duration::from_secs(10))
                .unwrap();
        }
        let dir = tempfile::Builder::new()
            .prefix("kt-restart-")
            .tempdir()
            .unwrap();
        Cluster {
            devices: format!("{},{}", hosts.uplink.interface, hosts.node_port.interface),
            backends: hosts.backends.iter().map(|b| *b.ip()).collect(),
            cgroup: TestCgroup::new().unwrap(),
            bpffs: TestBpffs::new().unwrap(),
            dir,
            agent: None,
            _iperf_servers: iperf_servers,
            hosts,
        }
    }

    fn bpf_root(&self) -> PathBuf {
        self.bpffs.path().join("keel")
    }

    fn services_file(&self) -> PathBuf {
        self.dir.path().join("services.yaml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn write_services(&self, yaml: &str) {
        let staging = self.dir.path().join("services.new");
        std::fs::write(&staging, yaml).unwrap();
        std::fs::rename(staging, self.services_file()).unwrap();
    }

    /// Starts the agent in the node and waits until it programmed the file (its
    /// `run`-th start: the log is appended to).
    fn start_agent(&mut self, run: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.hosts.node.netns()))
            .arg(support::agent_binary())
            .arg("--services-file")
            .arg(self.services_file())
            .arg("--socket-lb-cgroup")
            .arg(self.cgroup.path())
            .arg("--bpf-root")
            .arg(self.bpf_root())
            .args(["--devices", &self.devices, "--xdp-mode", "generic"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        self.agent = Some(HostProcess::spawn(&mut command).unwrap());
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log().matches(" frontends (").count() < run {
            assert!(
                self.agent.as_mut().is_some_and(HostProcess::is_running),
                "the agent exited; log:\n{}",
                self.log()
            );
            assert!(Instant::now() < deadline, "agent log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill_agent(&mut self) {
        let mut agent = self.agent.take().expect("a running agent");
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(agent.pid() as libc::pid_t, libc::SIGKILL) };
        agent.child().wait().unwrap();
    }

    /// A connection to `vip:80` from the client, in the cgroup (socket path) or not (routed
    /// through the node's TC path): the name of the backend that answered.
    fn connect(&self, vip: Ipv4Addr, in_cgroup: bool) -> Option<String> {
        let output = nc_to(
            &self.hosts.client,
            vip,
            80,
            in_cgroup.then_some(&self.cgroup),
        );
        output.status.success().then(|| answer(&output))
    }

    /// Both paths to `vip:80` answer, from one of the backends.
    fn assert_answers(&self, vip: Ipv4Addr) {
        for in_cgroup in [true, false] {
            let name = self.connect(vip, in_cgroup);
            assert!(
                name.as_deref().is_some_and(|n| n.starts_with("backend")),
                "{vip}:80 (in cgroup: {in_cgroup}) answered {name:?}; agent log:\n{}",
                self.log()
            );
        }
    }

    /// Starts iperf3 from the client to `vip`, in the cgroup or routed; JSON on stdout.
    fn iperf(&self, vip: Ipv4Addr, in_cgroup: bool) -> std::process::Child {
        let mut command = self.hosts.client.command("iperf3");
        command
            .args(["-c", &vip.to_string(), "-p", &IPERF_PORT.to_string()])
            .args([
                "-t",
                &STREAM_SECONDS.to_string(),
                "-i",
                "1",
                "-b",
                "20M",
                "-J",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if in_cgroup {
            self.cgroup.place(&mut command).unwrap();
        }
        command.spawn().unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(agent) = self.agent.as_mut() {
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(agent.pid() as libc::pid_t, libc::SIGKILL) };
            let _ = agent.child().wait();
        }
        // The bpffs goes with `self.bpffs` (unmounting it detaches every link).
    }
}

/// Checks an iperf3 JSON report: no error, every one-second interval of the run moved data,
/// and the run lasted its whole time.
fn check_stream(what: &str, output: &std::process::Output, log: &str) {
    let text = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|error| {
        panic!(
            "{what}: iperf3 printed no JSON ({error}): {text}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert!(
        report.get("error").is_none() && output.status.success(),
        "{what}: iperf3 failed: {}\nagent log:\n{log}",
        report["error"]
    );
    let intervals = report["intervals"].as_array().expect("intervals");
    assert!(
        intervals.len() >= STREAM_SECONDS as usize,
        "{what}: {} intervals: {text}",
        intervals.len()
    );
    for (index, interval) in intervals.iter().enumerate() {
        let bytes = interval["sum"]["bytes"].as_u64().unwrap_or(0);
        assert!(bytes > 0, "{what}: interval {index} moved nothing: {text}");
    }
    let received = &report["end"]["sum_received"];
    assert!(
        received["seconds"].as_f64().unwrap_or(0.0) >= f64::from(STREAM_SECONDS) - 0.5
            && received["bytes"].as_u64().unwrap_or(0) > 0,
        "{what}: {received}"
    );
}

#[test]
fn streams_and_new_connections_survive_kill_9_and_restart_of_the_agent() {
    let mut cluster = Cluster::new("restart");
    let yaml = [
        service("web", WEB_VIP, 80, BACKEND_PORT, &cluster.backends),
        service(
            "stream",
            STREAM_VIP,
            IPERF_PORT,
            IPERF_PORT,
            &cluster.backends[..1],
        ),
        service(
            "routed",
            ROUTED_STREAM_VIP,
            IPERF_PORT,
            IPERF_PORT,
            &cluster.backends[1..],
        ),
    ]
    .concat();
    cluster.write_services(&yaml);
    cluster.start_agent(1);
    cluster.assert_answers(WEB_VIP);
    let maps_before = pinned::service_maps(&cluster.bpf_root());
    let links_before = pinned::links(&cluster.bpf_root());
    assert_eq!(links_before.len(), 4 + 2 * 5, "{links_before:?}");

    let socket_stream = cluster.iperf(STREAM_VIP, true);
    let routed_stream = cluster.iperf(ROUTED_STREAM_VIP, false);
    std::thread::sleep(Duration::from_secs(2));
    cluster.kill_agent();

    // No agent: the pinned programs and maps serve new connections on both paths.
    for _ in 0..3 {
        cluster.assert_answers(WEB_VIP);
    }
    std::thread::sleep(Duration::from_secs(1));
    cluster.start_agent(2);
    cluster.assert_answers(WEB_VIP);

    let socket_stream = socket_stream.wait_with_output().unwrap();
    let routed_stream = routed_stream.wait_with_output().unwrap();
    let log = cluster.log();
    check_stream("iperf3 in the cgroup", &socket_stream, &log);
    check_stream("iperf3 routed through the node", &routed_stream, &log);

    // The restarted agent took over the same maps, left their entries alone, and swapped its
    // programs into the same links.
    assert_eq!(pinned::service_maps(&cluster.bpf_root()), maps_before);
    let links_after = pinned::links(&cluster.bpf_root());
    let ids = |links: &[(String, u32, u32)]| -> Vec<(String, u32)> {
        links
            .iter()
            .map(|(name, id, _)| (name.clone(), *id))
            .collect()
    };
    assert_eq!(ids(&links_after), ids(&links_before));
    for ((name, _, old_program), (_, _, new_program)) in links_before.iter().zip(&links_after) {
        assert_ne!(
            old_program, new_program,
            "{name} still runs the old program"
        );
    }
    assert!(
        log.contains("3 Service frontends and 4 backends taken over"),
        "agent log:\n{log}"
    );
    assert!(log.contains("(0 changed)"), "agent log:\n{log}");
}

#[test]
fn a_restart_with_a_changed_services_file_converges() {
    let mut cluster = Cluster::new("restart2");
    let backends = cluster.backends.clone();
    cluster.write_services(
        &[
            service("web", WEB_VIP, 80, BACKEND_PORT, &backends),
            service("old", OLD_VIP, 80, BACKEND_PORT, &backends[..1]),
        ]
        .concat(),
    );
    cluster.start_agent(1);
    cluster.assert_answers(OLD_VIP);
    cluster.kill_agent();

    cluster.write_services(
        &[
            service("web", WEB_VIP, 80, BACKEND_PORT, &backends[1..]),
            service("new", NEW_VIP, 80, BACKEND_PORT, &backends[..1]),
        ]
        .concat(),
    );
    cluster.start_agent(2);
    assert_eq!(
        pinned::frontends(&cluster.bpf_root()),
        [
            SocketAddrV4::new(WEB_VIP, 80),
            SocketAddrV4::new(NEW_VIP, 80)
        ]
    );
    for in_cgroup in [true, false] {
        assert_eq!(
            cluster.connect(NEW_VIP, in_cgroup).as_deref(),
            Some("backend1")
        );
        assert_eq!(cluster.connect(OLD_VIP, in_cgroup), None);
        for _ in 0..5 {
            assert_eq!(
                cluster.connect(WEB_VIP, in_cgroup).as_deref(),
                Some("backend2")
            );
        }
    }
    // web's backends, old gone, new added: three frontends rewritten, nothing else.
    let log = cluster.log();
    let last_apply = log
        .lines()
        .rfind(|line| line.contains(" frontends ("))
        .unwrap();
    assert!(last_apply.ends_with("(3 changed)"), "{log}");

    // The agent's metrics: the frontends, the syncs, the routed connections above in
    // conntrack (at its next collection), the drop reasons and the devices' counters.
    let uplink = &cluster.hosts.uplink.interface;
    let text = metrics::wait_for(&cluster.hosts.node, Duration::from_secs(30), |text| {
        metrics::value(text, "keel_conntrack_entries").is_some_and(|n| n >= 2.0)
    })
    .unwrap_or_else(|last| panic!("no conntrack entries in the metrics:\n{last}\nlog:\n{log}"));
    assert_eq!(
        metrics::value(&text, "keel_service_frontends"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metrics::value(&text, "keel_service_syncs_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metrics::value(&text, "keel_service_sync_errors_total"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metrics::value(&text, "keel_conntrack_max_entries"),
        Some(f64::from(keel_ebpf_common::conntrack::CT4_MAX_ENTRIES)),
        "{text}"
    );
    assert!(
        metrics::value(&text, "keel_conntrack_fill_ratio").is_some_and(|r| r > 0.0),
        "{text}"
    );
    assert!(
        metrics::value(&text, "keel_conntrack_gc_runs_total").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    for reason in keel_ebpf_common::DropReason::ALL {
        let sample = format!("keel_drop_count_total{{reason=\"{}\"}}", reason.as_str());
        assert!(
            metrics::value(&text, &sample).is_some(),
            "{sample} in:\n{text}"
        );
    }
    let ingress =
        format!("keel_interface_packets_total{{device=\"{uplink}\",hook=\"tc_ingress\"}}");
    assert!(
        metrics::value(&text, &ingress).is_some_and(|n| n > 0.0),
        "{ingress} in:\n{text}"
    );
}

/// The pins left by an agent are gone after `--cleanup-bpf`.
#[test]
fn cleanup_removes_the_pins_and_detaches() {
    let mut cluster = Cluster::new("cleanup");
    let backends = cluster.backends.clone();
    cluster.write_services(&service("web", WEB_VIP, 80, BACKEND_PORT, &backends));
    cluster.start_agent(1);
    cluster.kill_agent();
    cluster.assert_answers(WEB_VIP);
    let cleanup = Command::new(support::agent_binary())
        .arg("--cleanup-bpf")
        .arg("--bpf-root")
        .arg(cluster.bpf_root())
        .output()
        .unwrap();
    assert!(
        cleanup.status.success(),
        "{}",
        String::from_utf8_lossy(&cleanup.stderr)
    );
    assert!(!Path::new(&cluster.bpf_root()).exists());
    // The kernel frees an unpinned link after an RCU grace period: poll.
    let deadline = Instant::now() + Duration::from_secs(10);
    for in_cgroup in [true, false] {
        while let Some(name) = cluster.connect(WEB_VIP, in_cgroup) {
            assert!(
                Instant::now() < deadline,
                "{name} still answers (in cgroup: {in_cgroup})"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
