//! `cargo xtask up --nodes N`: N nodes on this host, each agent in a network namespace of its
//! own (`keel-node<k>`, as `ip netns` names it) plugged into the bridge `keel0` by a veth pair
//! (`keel-n<k>` on the bridge, `eth0` in the node), with the node address `198.18.0.<10+k>/24`
//! and a default route via the host's `198.18.0.1`, where the API server listens. (These are
//! the defaults; the [`Placement`] flags name others.)
//!
//! Each agent has its own state (`.keel/nodes/<node>/`), log (`.keel/logs/<node>.log`),
//! cgroup root (`keel/<node>`), socket-LB cgroup (the cgroup2 group `keel/<node>`, which holds
//! its pods), bpffs pins (`/sys/fs/bpf/<node>`, beside the single node's `--bpf-root`) and
//! `--devices eth0`: only interfaces `up` made. Pod CIDRs come from the control plane's node IPAM; the agents route each other's, and
//! `up` routes each node's pod CIDR via the node's address on the host (route protocol 75, as
//! the agents' routes), so the host reaches every pod. `down` stops the agents, resets each
//! node, unpins its dataplane, removes its cgroups, namespace, veth and state, and the host
//! routes.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use super::placement::MAX_NODES;
use super::{Component, Placement, State, kubectl, remove_dir, stop, tail};
use crate::command;
use crate::paths::Paths;

/// The route protocol of the host's routes to the pod CIDRs (the agents' own number).
const ROUTE_PROTOCOL: &str = "75";

/// Node `k` (from 1).
#[derive(Debug, Clone)]
struct Node {
    name: String,
    ip: Ipv4Addr,
    /// The host end of its veth pair, on the bridge.
    port: String,
    /// Its cgroup root: its own group under the cluster's.
    cgroup_root: String,
    /// Where it pins its dataplane.
    bpf_root: PathBuf,
}

impl Node {
    fn new(placement: &Placement, k: u8) -> Node {
        let name = format!("{}node{k}", placement.node_prefix);
        Node {
            ip: placement.node_ip(k),
            port: format!("{}n{k}", placement.node_prefix),
            cgroup_root: format!("{}/{name}", placement.cgroup_root),
            bpf_root: placement
                .bpf_root
                .parent()
                .unwrap_or(Path::new("/sys/fs/bpf"))
                .join(&name),
            name,
        }
    }

    fn dir(&self, state: &State) -> PathBuf {
        state.dir.join("nodes").join(&self.name)
    }

    fn log(&self, state: &State) -> PathBuf {
        state.dir.join("logs").join(format!("{}.log", self.name))
    }

    fn pid_file(&self, state: &State) -> PathBuf {
        state.dir.join("run").join(format!("{}.pid", self.name))
    }

    /// `program` in the node's network namespace (only: its mounts stay the host's, so `down`
    /// and `keel-agent reset` see them).
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.name))
            .arg(program);
        command
    }

    /// The agent's pid, if the process recorded for it still runs `keel-agent`.
    fn running(&self, state: &State) -> Option<u32> {
        super::running(&self.pid_file(state), "keel-agent")
    }
}

/// The file that records how many nodes `up --nodes` made.
fn count_file(state: &State) -> PathBuf {
    state.dir.join("run").join("nodes")
}

/// The node count of the cluster that `up --nodes` made and `down` has not removed.
fn recorded(state: &State) -> Option<u8> {
    std::fs::read_to_string(count_file(state))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Refuses to mix a single-node cluster with one of `--nodes`, or to change the node count
/// of a running cluster.
pub fn check_mode(state: &State, wanted: Option<u8>) -> anyhow::Result<()> {
    let single = state.running(Component::Agent).is_some();
    match (wanted, recorded(state)) {
        (Some(_), _) if single => {
            bail!("a single-node cluster is running: `cargo xtask down` first, then `up --nodes`")
        }
        (None, Some(count)) => bail!(
            "a cluster of {count} nodes is up: `cargo xtask up --nodes {count}`, or `down` first"
        ),
        (Some(wanted), Some(count)) if wanted != count => bail!(
            "a cluster of {count} nodes is up: `cargo xtask down` first to change it to {wanted}"
        ),
        _ => Ok(()),
    }
}

/// Starts the nodes that are not running (the control plane is up), each agent with
/// `extra_args` beyond its own, waits until all are Ready, routes their pod CIDRs on the host
/// and prints where everything is.
pub fn up(
    state: &State,
    bin: &Path,
    count: u8,
    socket_lb_cgroup: Option<&Path>,
    extra_args: &[String],
) -> anyhow::Result<()> {
    ensure!(
        (1..=MAX_NODES).contains(&count),
        "--nodes {count}: give 1 to {MAX_NODES}"
    );
    ensure!(
        socket_lb_cgroup.is_none(),
        "--socket-lb-cgroup goes with a single node: with --nodes each node's agent load-balances for the cgroup2 group of its own pods"
    );
    let cgroup2 = cgroup2_mount()?;
    std::fs::write(count_file(state), format!("{count}\n"))
        .with_context(|| format!("cannot write {}", count_file(state).display()))?;
    let placement = &state.placement;
    let nodes: Vec<Node> = (1..=count).map(|k| Node::new(placement, k)).collect();
    let mut started: Vec<(Node, Child)> = Vec::new();
    for node in &nodes {
        if node.running(state).is_some() {
            continue;
        }
        plug(placement, node)?;
        let socket_lb = cgroup2.join(&node.cgroup_root);
        std::fs::create_dir_all(&socket_lb)
            .with_context(|| format!("cannot create the cgroup {}", socket_lb.display()))?;
        let dir = node.dir(state);
        let mut agent = node.command(&bin.join("keel-agent"));
        agent.args([
            format!("--kubeconfig={}", state.kubeconfig().display()),
            format!("--node-name={}", node.name),
            format!("--node-ip={}", node.ip),
            format!("--root-dir={}", dir.join("agent").display()),
            format!("--pod-logs-dir={}", dir.join("pods").display()),
            format!("--cgroup-root={}", node.cgroup_root),
            format!("--bpf-root={}", node.bpf_root.display()),
            format!("--socket-lb-cgroup={}", socket_lb.display()),
            "--devices=eth0".to_owned(),
        ]);
        agent.args(extra_args);
        let child = super::spawn_logged(
            &node.log(state),
            &node.pid_file(state),
            &node.name,
            &mut agent,
        )?;
        started.push((node.clone(), child));
    }
    for node in &nodes {
        wait_ready(state, node, &mut started)?;
    }
    for node in &nodes {
        let cidr = pod_cidr(state, node)?;
        command::run(Command::new("ip").args([
            "route",
            "replace",
            &cidr,
            "via",
            &node.ip.to_string(),
            "proto",
            ROUTE_PROTOCOL,
        ]))?;
    }
    eprintln!("\nKeel is up: {count} nodes Ready.");
    for node in &nodes {
        eprintln!(
            "  {:<12} {:<13} pods {:<15} log {}",
            node.name,
            node.ip,
            pod_cidr(state, node)?,
            node.log(state).display()
        );
    }
    eprintln!(
        "Run commands on a node with `ip netns exec <node> ...`; stop it all with `cargo xtask down`. To use kubectl:"
    );
    println!("export KUBECONFIG={}", state.kubeconfig().display());
    Ok(())
}

/// The node's `spec.podCIDR`.
fn pod_cidr(state: &State, node: &Node) -> anyhow::Result<String> {
    kubectl(
        state,
        &["get", "node", &node.name, "-o", "jsonpath={.spec.podCIDR}"],
    )?
    .map(|text| text.trim().to_owned())
    .filter(|text| !text.is_empty())
    .with_context(|| format!("node {} has no pod CIDR", node.name))
}

/// Waits until `node` is Ready; fails early, with its log's tail, if its agent stops.
fn wait_ready(state: &State, node: &Node, started: &mut [(Node, Child)]) -> anyhow::Result<()> {
    eprintln!("waiting for node {} to be Ready", node.name);
    let ready = "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}";
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if kubectl(state, &["get", "node", &node.name, "-o", ready])?
            .is_some_and(|out| out.trim() == "True")
        {
            return Ok(());
        }
        let ended = match started.iter_mut().find(|(n, _)| n.name == node.name) {
            Some((_, child)) => child.try_wait()?.is_some(),
            None => node.running(state).is_none(),
        };
        let log = node.log(state);
        if ended {
            bail!(
                "the agent of {} stopped; the end of {}:\n{}",
                node.name,
                log.display(),
                tail(&log, 30)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "gave up waiting for {} to be Ready after 2 minutes; the end of {}:\n{}",
                node.name,
                log.display(),
                tail(&log, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Makes the node's network namespace and plugs it into the bridge, unless done already.
fn plug(placement: &Placement, node: &Node) -> anyhow::Result<()> {
    if !Path::new("/run/netns").join(&node.name).exists() {
        command::run(Command::new("ip").args(["netns", "add", &node.name]))?;
    }
    let exists = command::output(Command::new("ip").args(["link", "show", &node.port]))?
        .status
        .success();
    if !exists {
        command::run(Command::new("ip").args([
            "link", "add", &node.port, "type", "veth", "peer", "name", "eth0", "netns", &node.name,
        ]))?;
    }
    command::run(Command::new("ip").args([
        "link",
        "set",
        &node.port,
        "master",
        &placement.bridge,
        "up",
    ]))?;
    let address = format!("{}/{}", node.ip, placement.node_subnet.prefix);
    let gateway = placement.host_ip().to_string();
    let in_node = |args: &[&str]| -> anyhow::Result<()> {
        command::run(Command::new("ip").args(["-n", &node.name]).args(args))
    };
    in_node(&["link", "set", "lo", "up"])?;
    in_node(&["addr", "replace", &address, "dev", "eth0"])?;
    in_node(&["link", "set", "eth0", "up"])?;
    in_node(&["route", "replace", "default", "via", &gateway])
}

/// The cgroup2 hierarchy's mount point (socket load-balancing attaches there).
pub(super) fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("cannot read mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (mount, source) = line.split_once(" - ")?;
            let point = mount.split_whitespace().nth(4)?;
            (source.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(point))
        })
        .context("no cgroup2 hierarchy is mounted: the nodes' socket load-balancing needs one")
}

/// Removes every node `up --nodes` made: agents stopped, nodes reset (containers, mounts,
/// cgroups, state), dataplanes unpinned, namespaces, veths and host routes removed. Returns
/// what could not be done.
pub fn down(paths: &Paths, state: &State) -> Vec<String> {
    let Some(count) = recorded(state) else {
        return Vec::new();
    };
    let nodes: Vec<Node> = (1..=count)
        .map(|k| Node::new(&state.placement, k))
        .collect();
    for node in &nodes {
        if let Some(pid) = node.running(state) {
            stop(pid, &node.name, Duration::from_secs(30));
        }
        let _ = std::fs::remove_file(node.pid_file(state));
    }
    let agent = ["debug", "release"]
        .iter()
        .map(|profile| paths.root.join("target").join(profile).join("keel-agent"))
        .find(|path| path.exists());
    let mut errors = Vec::new();
    for node in &nodes {
        if let Err(error) = remove_node(state, node, agent.as_deref()) {
            errors.push(format!("{}: {error:#}", node.name));
        }
    }
    if errors.is_empty() {
        let _ = std::fs::remove_file(count_file(state));
        let _ = std::fs::remove_dir(state.dir.join("nodes"));
        // The nodes' common parent cgroup, once empty.
        for hierarchy in cgroup_hierarchies() {
            let _ = std::fs::remove_dir(hierarchy.join(&state.placement.cgroup_root));
        }
    }
    errors
}

fn remove_node(state: &State, node: &Node, agent: Option<&Path>) -> anyhow::Result<()> {
    let dir = node.dir(state);
    let netns = Path::new("/run/netns").join(&node.name);
    if let Some(agent) = agent {
        if dir.exists() {
            let mut reset = if netns.exists() {
                node.command(agent)
            } else {
                Command::new(agent)
            };
            command::run(reset.args([
                "reset".to_owned(),
                format!("--root-dir={}", dir.join("agent").display()),
                format!("--cgroup-root={}", node.cgroup_root),
            ]))?;
        }
        if node.bpf_root.exists() {
            command::run(Command::new(agent).args([
                "--cleanup-bpf".to_owned(),
                format!("--bpf-root={}", node.bpf_root.display()),
            ]))?;
        }
    } else if dir.exists() {
        bail!(
            "keel-agent is not built, so {} could not be reset: `cargo build -p keel-agent`, then `cargo xtask down` again",
            dir.display()
        );
    }
    for hierarchy in cgroup_hierarchies() {
        remove_cgroup_tree(&hierarchy.join(&node.cgroup_root))?;
    }
    let cidrs = command::stdout_if_ok(Command::new("ip").args([
        "route",
        "show",
        "proto",
        ROUTE_PROTOCOL,
        "via",
        &node.ip.to_string(),
    ]))?
    .unwrap_or_default();
    for cidr in cidrs
        .lines()
        .filter_map(|line| line.split_whitespace().next())
    {
        command::run(Command::new("ip").args([
            "route",
            "del",
            cidr,
            "via",
            &node.ip.to_string(),
            "proto",
            ROUTE_PROTOCOL,
        ]))?;
    }
    if netns.exists() {
        // The veth pair goes with the namespace.
        command::run(Command::new("ip").args(["netns", "del", &node.name]))?;
    }
    remove_dir(&dir)
}

/// Where a node's cgroups may be: every hierarchy under `/sys/fs/cgroup` (v1 controllers and
/// a hybrid host's `unified`), and `/sys/fs/cgroup` itself on a unified host.
pub(super) fn cgroup_hierarchies() -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .chain([PathBuf::from("/sys/fs/cgroup")])
        .collect()
}

/// Removes the cgroup `dir` and the groups under it, deepest first (each must be empty of
/// processes: a cgroup holding one cannot be removed, and says so).
pub(super) fn remove_cgroup_tree(dir: &Path) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir).with_context(|| format!("cannot remove the cgroup {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_get_their_own_names_addresses_and_places() {
        let placement = Placement::default();
        let node = Node::new(&placement, 3);
        assert_eq!(node.name, "keel-node3");
        assert_eq!(node.ip, Ipv4Addr::new(198, 18, 0, 13));
        assert_eq!(node.port, "keel-n3");
        assert_eq!(node.cgroup_root, "keel/keel-node3");
        assert_eq!(node.bpf_root, Path::new("/sys/fs/bpf/keel-node3"));
        let other = Placement::from_args(&[
            "--node-prefix=kt-e2e-".to_owned(),
            "--node-subnet=198.19.254.0/24".to_owned(),
            "--cgroup-root=kt-e2e".to_owned(),
            "--bpf-root=/sys/fs/bpf/kt-e2e".to_owned(),
        ])
        .unwrap();
        let node = Node::new(&other, 1);
        assert_eq!(node.name, "kt-e2e-node1");
        assert_eq!(node.ip, Ipv4Addr::new(198, 19, 254, 11));
        assert_eq!(node.port, "kt-e2e-n1");
        assert_eq!(node.cgroup_root, "kt-e2e/kt-e2e-node1");
        assert_eq!(node.bpf_root, Path::new("/sys/fs/bpf/kt-e2e-node1"));
        let last = Node::new(&other, MAX_NODES);
        assert_eq!(last.ip, Ipv4Addr::new(198, 19, 254, 110));
        assert!(
            last.port.len() <= 15,
            "interface names have at most 15 bytes"
        );
    }

    #[test]
    fn clusters_of_different_shapes_do_not_mix() {
        let dir = tempfile::tempdir().unwrap();
        let state = State {
            dir: dir.path().to_owned(),
            placement: Placement::default(),
        };
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        assert!(check_mode(&state, None).is_ok());
        assert!(check_mode(&state, Some(2)).is_ok());
        std::fs::write(count_file(&state), "3\n").unwrap();
        assert!(check_mode(&state, Some(3)).is_ok());
        let changed = check_mode(&state, Some(2)).unwrap_err().to_string();
        assert!(changed.contains("`cargo xtask down` first"), "{changed}");
        let single = check_mode(&state, None).unwrap_err().to_string();
        assert!(single.contains("--nodes 3"), "{single}");
        // A pid file whose process is gone is no running agent.
        std::fs::write(
            Node::new(&state.placement, 1).pid_file(&state),
            "999999999\n",
        )
        .unwrap();
        assert_eq!(Node::new(&state.placement, 1).running(&state), None);
    }
}
