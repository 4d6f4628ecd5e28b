//! A test node for pod tests and benchmarks: a network namespace that plays the node, a
//! registry on its loopback holding a busybox image, and `keel-agent` running there (joined to
//! the node's network namespace only, so its mounts are visible to the test) with static pods
//! from a manifest directory. Everything is under temp directories and a `kt-` cgroup of its
//! own, and dropping the node removes it all: pods, keeper, runc state, mounts, cgroups. The
//! agent's Service load-balancing (on with `--kubeconfig`) attaches to a test cgroup and pins
//! in a test bpffs, never the host's.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::registry::{ImageSpec, TestImage, TestRegistry};
use crate::{Host, HostProcess, TestBpffs, TestCgroup, TestNet, require_root, require_tool};

pub const POD_CIDR: &str = "198.18.64.0/24";
/// The node's own address (on its loopback: the test node has no uplink).
pub const NODE_IP: &str = "198.18.63.1";

#[derive(Debug)]
pub struct TestNode {
    // Field order: the agent goes before the registry and the namespace.
    agent: Option<HostProcess>,
    agent_binary: PathBuf,
    pub registry: TestRegistry,
    pub image: String,
    pub root: tempfile::TempDir,
    pub manifests: tempfile::TempDir,
    pub logs: tempfile::TempDir,
    pub cgroup_root: String,
    pub log_path: PathBuf,
    /// More agent flags (e.g. `--kubeconfig`), kept for restarts.
    pub extra_args: Vec<String>,
    /// The agent's `--socket-lb-cgroup` (with `--kubeconfig` it load-balances Services; never
    /// on the host's cgroup2 root) and the bpffs of its `--bpf-root`.
    pub socket_lb_cgroup: TestCgroup,
    pub bpffs: TestBpffs,
    pub host: Host,
    net: TestNet,
}

/// Fails the test unless it runs as root and has what a test node needs: runc, a registry,
/// skopeo, busybox, nsenter, curl.
pub(crate) fn require_node_tools() {
    require_root();
    for (tool, package) in [
        ("runc", "runc"),
        ("docker-registry", "docker-registry"),
        ("skopeo", "skopeo"),
        ("busybox", "busybox-static"),
        ("nsenter", "util-linux"),
        ("curl", "curl"),
    ] {
        require_tool(tool, package);
    }
}

/// A temp dir named `kt-<run>-<tag>-...`, so the sweeper can tell a dead run's.
pub(crate) fn kt_dir(tag: &str) -> tempfile::TempDir {
    let run = crate::run::run_id().expect("run id");
    tempfile::Builder::new()
        .prefix(&format!("kt-{run}-{tag}-"))
        .tempdir()
        .expect("temp dir")
}

impl TestNode {
    /// A node with its agent (`agent_binary`) running static pods.
    pub fn start(tag: &str, agent_binary: &Path) -> TestNode {
        let mut node = TestNode::new(tag, agent_binary);
        node.start_agent();
        node
    }

    /// A node, its registry and directories; no agent yet.
    pub fn new(tag: &str, agent_binary: &Path) -> TestNode {
        require_node_tools();
        let mut net = TestNet::new(tag).expect("test net");
        let host = net.add_host("node").expect("node host");
        host.run(&["ip", "link", "set", "lo", "up"]).expect("lo up");
        host.run(&["ip", "addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"])
            .expect("node address");
        let registry = TestRegistry::start_on(&host).expect("registry");
        let built = TestImage::busybox(&ImageSpec {
            cmd: vec!["sh".into()],
            ..ImageSpec::default()
        })
        .expect("busybox image");
        let image = registry.push(&built, "busybox", "1").expect("push");
        let run = crate::run::run_id().expect("run id");
        let root = kt_dir(tag);
        let log_path = root.path().join("agent.log");
        TestNode {
            agent: None,
            agent_binary: agent_binary.to_owned(),
            registry,
            image,
            manifests: kt_dir(tag),
            logs: kt_dir(tag),
            root,
            cgroup_root: format!("kt-{run}-{tag}"),
            log_path,
            extra_args: Vec::new(),
            socket_lb_cgroup: TestCgroup::new().expect("socket LB cgroup"),
            bpffs: TestBpffs::new().expect("bpffs"),
            host,
            net,
        }
    }

    /// Starts (or restarts) the agent.
    pub fn start_agent(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.host.netns()))
            .arg(&self.agent_binary)
            .arg("--pod-manifest-path")
            .arg(self.manifests.path())
            .arg("--root-dir")
            .arg(self.root.path().join("state"))
            .arg("--pod-logs-dir")
            .arg(self.logs.path())
            .args([
                "--pod-cidr",
                POD_CIDR,
                "--node-name",
                "node1",
                "--node-ip",
                NODE_IP,
            ])
            .args(["--cgroup-root", &self.cgroup_root])
            .arg("--socket-lb-cgroup")
            .arg(self.socket_lb_cgroup.path())
            .arg("--bpf-root")
            .arg(self.bpf_root())
            .args(["--insecure-registry", &self.registry.host()])
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.agent = Some(HostProcess::spawn(&mut command).expect("agent"));
    }

    /// Another host, linked to the node by a veth pair of its own (end `a` on the node).
    pub fn add_host(&mut self, name: &str) -> (Host, crate::Link) {
        let host = self.net.add_host(name).expect("host");
        let link = self
            .net
            .connect(&self.host, &host, crate::LinkOptions::default())
            .expect("link to the node");
        (host, link)
    }

    /// The agent's `--bpf-root`.
    pub fn bpf_root(&self) -> PathBuf {
        self.bpffs.path().join("keel")
    }

    /// The running agent's pid.
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(HostProcess::pid)
    }

    /// `kill -9` of the agent (the keeper and the containers stay).
    pub fn kill_agent(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(agent.pid() as libc::pid_t, libc::SIGKILL) };
            let _ = agent.child().wait();
        }
    }

    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.path().join("state")
    }

    pub fn write_manifest(&self, file: &str, text: &str) {
        let temporary = self.manifests.path().join(format!(".{file}.tmp"));
        std::fs::write(&temporary, text).unwrap();
        std::fs::rename(&temporary, self.manifests.path().join(file)).unwrap();
    }

    pub fn remove_manifest(&self, file: &str) {
        let _ = std::fs::remove_file(self.manifests.path().join(file));
    }

    /// UIDs of the pods the agent keeps state for.
    pub fn pod_uids(&self) -> Vec<String> {
        std::fs::read_dir(self.state_dir().join("pods"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The cgroup directory `path` (relative to the node's cgroup root) in hierarchy `controller`.
    pub fn cgroup_dir(&self, controller: &str, path: &str) -> PathBuf {
        Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(&self.cgroup_root)
            .join(path)
    }

    /// Polls `check` until it gives `Some` or `timeout` passes; the panic message carries
    /// `what` and the agent's log.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        check: impl FnMut() -> Option<T>,
    ) -> T {
        crate::wait_until(what, timeout, check, || {
            format!("agent log:\n{}\n{}", self.agent_log(), self.diagnostics())
        })
    }

    /// The node's and each pod's addresses and routes, runc's containers and the container
    /// logs: what a failing test prints.
    pub fn diagnostics(&self) -> String {
        let run = |command: &mut Command| {
            command
                .output()
                .map(|o| {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                })
                .unwrap_or_else(|e| e.to_string())
        };
        let mut text = String::from("--- node:\n");
        text += &run(self.host.command("ip").args(["-o", "addr"]));
        text += &run(self.host.command("ip").args(["route"]));
        for uid in self.pod_uids() {
            let netns = self.state_dir().join("netns").join(&uid);
            text += &format!("--- pod {uid}:\n");
            text += &run(Command::new("nsenter")
                .arg(format!("--net={}", netns.display()))
                .args(["ip", "-o", "addr"]));
            text += &run(Command::new("nsenter")
                .arg(format!("--net={}", netns.display()))
                .args(["ip", "route"]));
            text += &run(Command::new("nsenter")
                .arg(format!("--net={}", netns.display()))
                .args(["ip", "neigh"]));
        }
        text += "--- runc:\n";
        text += &run(Command::new("runc")
            .arg("--root")
            .arg(self.state_dir().join("runc"))
            .arg("list"));
        text += &run(Command::new("find")
            .arg(self.logs.path())
            .args(["-name", "*.log", "-exec", "tail", "-n", "20", "{}", ";"]));
        text
    }

    /// `curl` from the node to `url`; the body on success.
    pub fn curl(&self, url: &str) -> Option<String> {
        let output = self
            .host
            .command("curl")
            .args(["-sS", "-k", "--fail", "--max-time", "2", url])
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Removes every pod through the agent (manifests gone), then what may be left.
    fn clean_up(&mut self) {
        if let Ok(entries) = std::fs::read_dir(self.manifests.path()) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        if self.agent.is_some() {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !self.pod_uids().is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        remove_agent(self.agent.take(), self.root.path(), &self.cgroup_root);
    }
}

/// Stops `agent` (SIGTERM) and removes whatever an agent whose `--root-dir` is `<root>/state`
/// left: containers, the keeper, mounts under `root`, its cgroups under `cgroup_root`.
pub(crate) fn remove_agent(agent: Option<HostProcess>, root: &Path, cgroup_root: &str) {
    if let Some(mut agent) = agent {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(agent.pid() as libc::pid_t, libc::SIGTERM) };
        let _ = agent.child().wait();
    }
    let state = root.join("state");
    // Whatever the agent left: containers, the keeper, mounts, cgroups.
    let runc_root = state.join("runc");
    if let Ok(entries) = std::fs::read_dir(&runc_root) {
        for entry in entries.flatten() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["delete", "--force"])
                .arg(entry.file_name())
                .output();
        }
    }
    kill_keeper(&state.join("keeper"));
    unmount_under(root);
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        remove_cgroup_tree(&hierarchy.path().join(cgroup_root));
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.clean_up();
    }
}

/// The pid of the keeper serving `keeper_dir`.
pub fn keeper_pid(keeper_dir: &Path) -> Option<u32> {
    let wanted = keeper_dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            (args.len() >= 3 && args[1] == b"keeper" && args[2] == wanted.as_bytes())
                .then(|| entry.file_name().to_string_lossy().parse().ok())
                .flatten()
        })
}

fn kill_keeper(keeper_dir: &Path) {
    if let Some(pid) = keeper_pid(keeper_dir) {
        // SAFETY: kill takes plain integers.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// Unmounts every mount under `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = Command::new("umount").args(["-l", point]).output();
    }
}

/// Mounts under `dir` (for leak checks).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .map(str::to_owned)
        .collect()
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
