//! A cluster of several test nodes: etcd, `keel-controlplane all` and a registry with a busybox
//! image in a test host `cp`, and N nodes, each a test host with `keel-agent` in it (its own
//! state and log directories, socket-LB cgroup2 group which is also its cgroup root, so its
//! pods get socket load-balancing, and bpffs), all plugged into one
//! switch (`198.19.0.0/24`: `cp` is `.1`, node k is `.(k+1)`). The control plane's node IPAM
//! gives each node a pod CIDR from [`CLUSTER_CIDR`]; the agents take it from their Node.
//! Dropping the cluster stops the agents and removes their pods, mounts and cgroups, then the
//! control plane, the registry and the hosts.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::cluster::TestControlPlane;
use crate::node::{kt_dir, remove_agent, require_node_tools};
use crate::registry::{ImageSpec, TestImage, TestRegistry};
use crate::{Host, HostProcess, LinkOptions, TestBpffs, TestCgroup, TestNet};

/// Where the nodes' pod CIDRs come from (`--cluster-cidr`; a /24 each): inside the range
/// reserved for benchmarks, so nothing here could route off the machine.
pub const CLUSTER_CIDR: &str = "198.18.128.0/17";
/// The switch-side interface of every node (the agents' `--devices`).
pub const NODE_INTERFACE: &str = "eth0";

/// One node of a [`TestCluster`].
#[derive(Debug)]
pub struct ClusterNode {
    agent: Option<HostProcess>,
    agent_binary: PathBuf,
    /// `node1`, `node2`, ...
    pub name: String,
    /// The node's address on the switch (its InternalIP).
    pub ip: Ipv4Addr,
    pub host: Host,
    /// The agent's `--root-dir` is `<root>/state`; its log is `<root>/agent.log`.
    pub root: tempfile::TempDir,
    pub logs: tempfile::TempDir,
    pub cgroup_root: String,
    pub socket_lb_cgroup: TestCgroup,
    pub bpffs: TestBpffs,
    /// Every flag the agent runs with, kept for restarts.
    pub args: Vec<String>,
}

impl ClusterNode {
    pub fn log_path(&self) -> PathBuf {
        self.root.path().join("agent.log")
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts (or restarts) the agent, inside the node's network namespace only.
    pub fn start_agent(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("agent log");
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.host.netns()))
            .arg(&self.agent_binary)
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("agent log"))
            .stderr(log);
        self.agent = Some(HostProcess::spawn(&mut command).expect("agent"));
    }

    /// Stops the agent with `signal` (`SIGTERM`, `SIGKILL`) and waits for it; the keeper and
    /// the pods stay.
    pub fn stop_agent(&mut self, signal: libc::c_int) {
        if let Some(mut agent) = self.agent.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(agent.pid() as libc::pid_t, signal) };
            let _ = agent.child().wait();
        }
    }

    /// Runs `args` in the node's network namespace; stdout, or `None` if it failed.
    pub fn run(&self, args: &[&str]) -> Option<String> {
        let (program, rest) = args.split_first()?;
        let output = self.host.command(program).args(rest).output().ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The node's routes of protocol `protocol` (`ip route show proto <protocol>`), one per
    /// line.
    pub fn routes(&self, protocol: u8) -> Vec<String> {
        self.run(&["ip", "-4", "route", "show", "proto", &protocol.to_string()])
            .unwrap_or_default()
            .lines()
            .map(|line| line.trim().to_owned())
            .filter(|line| !line.is_empty())
            .collect()
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        remove_agent(self.agent.take(), self.root.path(), &self.cgroup_root);
    }
}

/// The control plane, the registry and the nodes; see the module doc.
#[derive(Debug)]
pub struct TestCluster {
    // Field order: the nodes go first (agents, pods), then the control plane and the
    // registry, then the hosts.
    pub nodes: Vec<ClusterNode>,
    pub control_plane: TestControlPlane,
    pub registry: TestRegistry,
    /// A busybox image in the registry (`sh` as its command).
    pub image: String,
    /// The control plane's host.
    pub cp: Host,
    net: TestNet,
}

impl TestCluster {
    /// A control plane (with `controlplane_args` added to `keel-controlplane all`) and `nodes`
    /// agents (`agent_binary`, with `agent_args` added), each registered; returns once every
    /// node is Ready.
    pub fn start(
        tag: &str,
        agent_binary: &Path,
        nodes: usize,
        controlplane_args: &[String],
        agent_args: &[String],
    ) -> TestCluster {
        require_node_tools();
        let mut net = TestNet::new(tag).expect("test net");
        let mut switch = net.add_switch("sw").expect("switch");
        let cp = net.add_host("cp").expect("control plane host");
        let cp_ip = net
            .plug(&cp, &mut switch, LinkOptions::default())
            .expect("control plane port")
            .ip;
        let registry = TestRegistry::start_at(&cp, cp_ip).expect("registry");
        let built = TestImage::busybox(&ImageSpec {
            cmd: vec!["sh".into()],
            ..ImageSpec::default()
        })
        .expect("busybox image");
        let image = registry.push(&built, "busybox", "1").expect("push");
        let mut cp_args = vec![format!("--cluster-cidr={CLUSTER_CIDR}")];
        cp_args.extend_from_slice(controlplane_args);
        let control_plane = TestControlPlane::start_in(&cp, cp_ip, &cp_args);
        let mut cluster = TestCluster {
            nodes: Vec::new(),
            control_plane,
            registry,
            image,
            cp,
            net,
        };
        for k in 1..=nodes {
            let name = format!("node{k}");
            let host = cluster.net.add_host(&name).expect("node host");
            let endpoint = cluster
                .net
                .plug(&host, &mut switch, LinkOptions::default())
                .expect("node port");
            assert_eq!(endpoint.interface, NODE_INTERFACE);
            let root = kt_dir(tag);
            let logs = kt_dir(tag);
            // The pods' cgroups go under the socket-LB group (runc puts them in the cgroup2
            // hierarchy too), so the node's socket load-balancing serves its pods.
            let socket_lb_cgroup = TestCgroup::new().expect("socket LB cgroup");
            let cgroup_root = socket_lb_cgroup
                .path()
                .file_name()
                .expect("a cgroup name")
                .to_string_lossy()
                .into_owned();
            let bpffs = TestBpffs::new().expect("bpffs");
            let mut args: Vec<String> = vec![
                format!(
                    "--kubeconfig={}",
                    cluster.control_plane.kubeconfig().display()
                ),
                format!("--node-name={name}"),
                format!("--node-ip={}", endpoint.ip),
                format!("--root-dir={}", root.path().join("state").display()),
                format!("--pod-logs-dir={}", logs.path().display()),
                format!("--cgroup-root={cgroup_root}"),
                format!("--socket-lb-cgroup={}", socket_lb_cgroup.path().display()),
                format!("--bpf-root={}", bpffs.path().join("keel").display()),
                format!("--insecure-registry={}", cluster.registry.host()),
                format!("--devices={NODE_INTERFACE}"),
            ];
            args.extend_from_slice(agent_args);
            let mut node = ClusterNode {
                agent: None,
                agent_binary: agent_binary.to_owned(),
                name,
                ip: endpoint.ip,
                host,
                root,
                logs,
                cgroup_root,
                socket_lb_cgroup,
                bpffs,
                args,
            };
            node.start_agent();
            cluster.nodes.push(node);
        }
        for k in 0..cluster.nodes.len() {
            let name = cluster.nodes[k].name.clone();
            cluster.wait_for(&format!("{name} Ready"), Duration::from_secs(90), || {
                (cluster.node_condition(&name, "Ready") == "True").then_some(())
            });
        }
        cluster
    }

    /// The status of condition `condition` of node `name` (empty if unknown).
    pub fn node_condition(&self, name: &str, condition: &str) -> String {
        let output = self.control_plane.kubectl(&[
            "get",
            "node",
            name,
            "-o",
            &format!("jsonpath={{.status.conditions[?(@.type==\"{condition}\")].status}}"),
        ]);
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// `kubectl get <args> -o jsonpath=<path>`: the text, or `None` if kubectl failed.
    pub fn jsonpath(&self, args: &[&str], path: &str) -> Option<String> {
        let mut all: Vec<&str> = args.to_vec();
        let output_format = format!("jsonpath={path}");
        all.extend(["-o", &output_format]);
        let output = self.control_plane.kubectl(&all);
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> &ClusterNode {
        self.nodes
            .iter()
            .find(|node| node.name == name)
            .unwrap_or_else(|| panic!("no node {name} in the cluster"))
    }

    pub fn node_mut(&mut self, name: &str) -> &mut ClusterNode {
        self.nodes
            .iter_mut()
            .find(|node| node.name == name)
            .unwrap_or_else(|| panic!("no node {name} in the cluster"))
    }

    /// Polls `check` until it gives `Some` or `timeout` passes; the panic message carries
    /// `what` and [`TestCluster::diagnostics`].
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl FnMut() -> Option<T>,
    ) -> T {
        crate::wait_until(what, timeout, check, || self.diagnostics())
    }

    /// The nodes' routes and the end of every log: what a failing test prints.
    pub fn diagnostics(&self) -> String {
        let tail = |text: &str| {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        let mut text = String::new();
        for node in &self.nodes {
            text += &format!(
                "--- {} ({}): routes\n{}--- agent log:\n{}\n",
                node.name,
                node.ip,
                node.run(&["ip", "route"]).unwrap_or_default(),
                tail(&node.agent_log())
            );
        }
        text += &format!(
            "--- pods:\n{}--- control plane log:\n{}\n",
            String::from_utf8_lossy(
                &self
                    .control_plane
                    .kubectl(&["get", "pods", "-A", "-o", "wide"])
                    .stdout
            ),
            tail(&self.control_plane.log())
        );
        text
    }
}
