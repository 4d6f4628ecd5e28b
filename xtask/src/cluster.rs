//! `cargo xtask up` / `cargo xtask down`: a single-node Keel cluster on this host.
//!
//! `up` installs what is missing (`setup`), builds the eBPF object and the binaries, then
//! starts, each as a background process in its own process group with its log under
//! `.keel/logs/`:
//! - etcd (Debian's binary) on 127.0.0.1:2379, data in `.keel/etcd`;
//! - an image registry (Debian's `docker-registry`) on `198.18.0.1:5000`, storage in
//!   `.keel/registry`, with a busybox image built from this host's static busybox pushed as
//!   `busybox:stable` (what `manifests/examples/` run; no internet needed);
//! - `keel-controlplane all` (API server, controller manager) on the node address
//!   `198.18.0.1:6443`, data (CA, certificates, `admin.kubeconfig`) in `.keel/controlplane`;
//! - `keel-agent` as the node (named after the host), state in `.keel/node/`, pods under the
//!   `keel` cgroup, its eBPF dataplane pinned under `/sys/fs/bpf/keel` with TC / XDP on the
//!   node bridge and socket-level load-balancing on the cgroup2 root (`--socket-lb-cgroup`
//!   names another group), its node API and metrics on the node address.
//!
//! The node address lives on a bridge `keel0` that `up` creates (198.18.0.0/15 is reserved for
//! benchmarks and never routed off the machine); nothing is attached to the machine's own
//! interfaces. `up` waits until the node is Ready and prints `export KUBECONFIG=...` on a line
//! of its own. Running `up` again while the cluster runs changes nothing.
//!
//! Every name, address, port and directory here is the default of a flag ([`Placement`], and
//! `--state-dir`), so a second cluster can run beside the first without touching it; `down
//! --state-dir DIR` finds what its `up` made from the placement recorded in DIR.
//!
//! `up --nodes N` runs N nodes instead, each agent in a network namespace of its own on the
//! bridge (see [`nodes`]).
//!
//! `down` stops the agent, removes what it made (`keel-agent reset`: containers, mounts, pod
//! namespaces, cgroups; `keel-agent --cleanup-bpf`: its pins and programs), stops the control plane and etcd and removes the bridge. The etcd
//! data stays, so the next `up` brings the same cluster back; `up --fresh` starts empty.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

use crate::command::{self, is_root};
use crate::paths::Paths;
use crate::{ebpf, setup, test};

mod nodes;
mod placement;

pub use placement::Placement;

/// The images `up` pushes into its registry, built from this host's static busybox (Debian's
/// `busybox-static`): no internet needed. `manifests/examples/` use them.
const REGISTRY_IMAGES: [&str; 1] = ["busybox:stable"];
/// The agents' metrics port (kube-proxy's), on the node address.
const METRICS_PORT: u16 = 10249;

/// Which cluster: where its state lives.
#[derive(Debug, clap::Args)]
pub struct StateDirArg {
    /// The cluster's state: etcd data, certificates and kubeconfig, logs, pids, and the
    /// placement `up` was given [default: `.keel` in the workspace].
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    state_dir: StateDirArg,
    #[command(flatten)]
    placement: Placement,
    /// Start from an empty cluster: remove the etcd data and the control plane's certificates
    /// first (the cluster must be down).
    #[arg(long)]
    fresh: bool,
    /// Build and run optimised binaries (slower to build).
    #[arg(long)]
    release: bool,
    /// The cgroup2 group whose processes get socket-level Service load-balancing (default:
    /// the cgroup2 root, every process on this host, as on a real node). On a host shared
    /// with other clusters, name a group of your own; the cluster's cgroup root in the
    /// cgroup2 hierarchy (`/sys/fs/cgroup/unified/keel` on a hybrid host) also holds the pods,
    /// so they are served too (pods outside the group are not: the TC path serves only the
    /// --devices).
    #[arg(long)]
    socket_lb_cgroup: Option<PathBuf>,
    /// Run this many nodes, each agent in a network namespace of its own on the bridge, with
    /// pods reaching each other across nodes (default: one node, the agent on this host).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=i64::from(placement::MAX_NODES)))]
    nodes: Option<u8>,
}

/// The processes `up` runs, in start order; `down` stops them in reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Component {
    Etcd,
    Registry,
    ControlPlane,
    Agent,
}

impl Component {
    const ALL: [Component; 4] = [
        Component::Etcd,
        Component::Registry,
        Component::ControlPlane,
        Component::Agent,
    ];

    fn name(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::Registry => "registry",
            Component::ControlPlane => "controlplane",
            Component::Agent => "agent",
        }
    }
}

/// A cluster: where its state lives (`<workspace>/.keel/` unless `--state-dir`), and where
/// on the host it runs.
#[derive(Debug, Clone)]
struct State {
    dir: PathBuf,
    placement: Placement,
}

impl State {
    /// The cluster of `dir` (default `<workspace>/.keel`) with the placement its `up`
    /// recorded, or the defaults.
    fn open(paths: &Paths, dir: &StateDirArg) -> anyhow::Result<State> {
        let dir = match &dir.state_dir {
            Some(dir) => std::path::absolute(dir)
                .with_context(|| format!("--state-dir {}", dir.display()))?,
            None => paths.root.join(".keel"),
        };
        let placement =
            Placement::recorded(&dir.join("run").join("placement"))?.unwrap_or_default();
        Ok(State { dir, placement })
    }

    fn placement_file(&self) -> PathBuf {
        self.dir.join("run").join("placement")
    }

    fn etcd_data(&self) -> PathBuf {
        self.dir.join("etcd")
    }

    fn controlplane(&self) -> PathBuf {
        self.dir.join("controlplane")
    }

    fn registry(&self) -> PathBuf {
        self.dir.join("registry")
    }

    fn kubeconfig(&self) -> PathBuf {
        self.controlplane().join("admin.kubeconfig")
    }

    fn node(&self) -> PathBuf {
        self.dir.join("node")
    }

    fn log(&self, component: Component) -> PathBuf {
        self.dir
            .join("logs")
            .join(format!("{}.log", component.name()))
    }

    fn pid_file(&self, component: Component) -> PathBuf {
        self.dir
            .join("run")
            .join(format!("{}.pid", component.name()))
    }

    /// The component's pid, if the process recorded for it still runs that program.
    fn running(&self, component: Component) -> Option<u32> {
        let wanted = match component {
            Component::Etcd => "etcd",
            Component::Registry => "docker-registry",
            Component::ControlPlane => "keel-controlplane",
            Component::Agent => "keel-agent",
        };
        running(&self.pid_file(component), wanted)
    }
}

/// The pid in `pid_file`, if that process still runs `program`.
fn running(pid_file: &Path, program: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let running = cmdline.split(|b| *b == 0).next()?;
    Path::new(String::from_utf8_lossy(running).as_ref())
        .file_name()
        .is_some_and(|name| name == program)
        .then_some(pid)
}

pub fn up(paths: &Paths, args: &UpArgs) -> anyhow::Result<()> {
    ensure!(
        is_root(),
        "a cluster needs root (network namespaces, cgroups, eBPF, runc): run `sudo -E cargo xtask up`"
    );
    let mut state = State::open(paths, &args.state_dir)?;
    nodes::check_mode(&state, args.nodes)?;
    let running: Vec<Component> = Component::ALL
        .into_iter()
        .filter(|c| state.running(*c).is_some())
        .collect();
    if args.fresh && !running.is_empty() {
        bail!("the cluster is running: `cargo xtask down` first, then `up --fresh`");
    }
    if !running.is_empty() && state.placement != args.placement {
        bail!(
            "the cluster of {} runs with `{}`: give the same placement, or `cargo xtask down` first",
            state.dir.display(),
            state.placement.to_args().join(" ")
        );
    }
    state.placement = args.placement.clone();
    let placement = &state.placement;
    let host_ip = placement.host_ip();
    setup::run(paths)?;
    ebpf::build(paths)?;
    let mut build = test::cargo(paths);
    build.args([
        "build",
        "--locked",
        "-p",
        "keel-controlplane",
        "-p",
        "keel-agent",
    ]);
    if args.release {
        build.arg("--release");
    }
    command::run(&mut build)?;
    let bin = paths
        .root
        .join("target")
        .join(if args.release { "release" } else { "debug" });

    if args.fresh {
        for dir in [state.etcd_data(), state.controlplane()] {
            remove_dir(&dir)?;
        }
    }
    for dir in ["logs", "run"] {
        std::fs::create_dir_all(state.dir.join(dir))
            .with_context(|| format!("cannot create {}", state.dir.join(dir).display()))?;
    }
    placement.record(&state.placement_file())?;
    ensure_bridge(placement)?;

    let (etcd_client, etcd_peer) = (placement.etcd_client_port, placement.etcd_peer_port);
    if state.running(Component::Etcd).is_none() {
        for port in [etcd_client, etcd_peer] {
            port_free(Ipv4Addr::LOCALHOST, port, "etcd")?;
        }
        let data = state.etcd_data();
        let _etcd = spawn(
            &state,
            Component::Etcd,
            Command::new("etcd").args([
                format!("--data-dir={}", data.display()),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_client}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-cluster=default=http://127.0.0.1:{etcd_peer}"),
                "--experimental-watch-progress-notify-interval=5s".to_owned(),
            ]),
        )?;
    }
    let registry = start_registry(&state)?;
    let mut controlplane = None;
    if state.running(Component::ControlPlane).is_none() {
        port_free(host_ip, placement.api_port, "the API server")?;
        controlplane = Some(spawn(
            &state,
            Component::ControlPlane,
            Command::new(bin.join("keel-controlplane")).args([
                "all".to_owned(),
                format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
                format!("--data-dir={}", state.controlplane().display()),
                format!("--bind-address={host_ip}"),
                format!("--secure-port={}", placement.api_port),
                format!("--cluster-cidr={}", placement.cluster_cidr),
            ]),
        )?);
    }
    wait(
        &state,
        Component::ControlPlane,
        controlplane,
        "the API server to be ready",
        || Ok(kubectl(&state, &["get", "--raw", "/readyz"])?.is_some_and(|out| out.trim() == "ok")),
    )?;

    if let Some(count) = args.nodes {
        let pull = [
            format!("--insecure-registry={registry}"),
            format!("--cluster-dns={}", placement.cluster_dns),
        ];
        return nodes::up(&state, &bin, count, args.socket_lb_cgroup.as_deref(), &pull);
    }
    let node = node_name()?;
    let mut agent = None;
    if state.running(Component::Agent).is_none() {
        if let Some(group) = &args.socket_lb_cgroup {
            socket_lb_group(placement, group)?;
        }
        remember_forwarding(&state)?;
        let node_dir = state.node();
        agent = Some(spawn(
            &state,
            Component::Agent,
            Command::new(bin.join("keel-agent"))
                .args([
                    format!("--kubeconfig={}", state.kubeconfig().display()),
                    format!("--node-name={node}"),
                    format!("--node-ip={host_ip}"),
                    format!("--address={host_ip}"),
                    format!("--metrics-bind-address={host_ip}:{METRICS_PORT}"),
                    format!("--root-dir={}", node_dir.join("agent").display()),
                    format!("--pod-logs-dir={}", node_dir.join("pods").display()),
                    format!("--cgroup-root={}", placement.cgroup_root),
                    format!("--bpf-root={}", placement.bpf_root.display()),
                    format!("--devices={}", placement.bridge),
                    format!("--insecure-registry={registry}"),
                    format!("--cluster-dns={}", placement.cluster_dns),
                ])
                .args(
                    args.socket_lb_cgroup
                        .iter()
                        .map(|group| format!("--socket-lb-cgroup={}", group.display())),
                ),
        )?);
    }
    let ready = "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}";
    wait(
        &state,
        Component::Agent,
        agent,
        &format!("node {node} to be Ready"),
        || {
            Ok(kubectl(&state, &["get", "node", &node, "-o", ready])?
                .is_some_and(|out| out.trim() == "True"))
        },
    )?;

    eprintln!("\nKeel is up: node {node} is Ready. Logs:");
    for component in Component::ALL {
        eprintln!(
            "  {:<13}{}",
            component.name(),
            state.log(component).display()
        );
    }
    eprintln!(
        "Images: {} (try `kubectl apply -f manifests/examples/web.yaml`).",
        REGISTRY_IMAGES
            .map(|image| format!("{registry}/{image}"))
            .join(", ")
    );
    eprintln!(
        "Metrics: http://{host_ip}:{METRICS_PORT}/metrics. Stop it with `cargo xtask down{}`. To use kubectl:",
        state.down_flags(paths)
    );
    println!("export KUBECONFIG={}", state.kubeconfig().display());
    Ok(())
}

pub fn down(paths: &Paths, args: &StateDirArg) -> anyhow::Result<()> {
    ensure!(is_root(), "run `sudo -E cargo xtask down`");
    let state = State::open(paths, args)?;
    let placement = &state.placement;
    let mut errors = nodes::down(paths, &state);
    if let Some(pid) = state.running(Component::Agent) {
        stop(pid, Component::Agent.name(), Duration::from_secs(30));
    }
    let _ = std::fs::remove_file(state.pid_file(Component::Agent));
    let agent = ["debug", "release"]
        .iter()
        .map(|profile| paths.root.join("target").join(profile).join("keel-agent"))
        .find(|path| path.exists());
    let node_dir = state.node().join("agent");
    match agent {
        Some(agent) => {
            let reset = command::run(Command::new(&agent).args([
                "reset".to_owned(),
                format!("--root-dir={}", node_dir.display()),
                format!("--cgroup-root={}", placement.cgroup_root),
            ]));
            let unpin = command::run(Command::new(&agent).args([
                "--cleanup-bpf".to_owned(),
                format!("--bpf-root={}", placement.bpf_root.display()),
            ]));
            // The pods' log files (the agent's --pod-logs-dir) go with the node.
            let logs = remove_dir(&state.node());
            // The node's cgroup root (its `kubepods` went with the reset), in every hierarchy.
            let cgroups = nodes::cgroup_hierarchies()
                .iter()
                .try_for_each(|hierarchy| {
                    nodes::remove_cgroup_tree(&hierarchy.join(&placement.cgroup_root))
                });
            for result in [reset, unpin, logs, cgroups] {
                if let Err(error) = result {
                    errors.push(format!("{error:#}"));
                }
            }
        }
        None if node_dir.exists() => errors.push(format!(
            "keel-agent is not built, so {} could not be reset: `cargo build -p keel-agent`, then `cargo xtask down` again",
            node_dir.display()
        )),
        None => {}
    }
    for component in [
        Component::ControlPlane,
        Component::Registry,
        Component::Etcd,
    ] {
        if let Some(pid) = state.running(component) {
            stop(pid, component.name(), Duration::from_secs(15));
        }
        let _ = std::fs::remove_file(state.pid_file(component));
    }
    if let Err(error) = restore_forwarding(&state) {
        errors.push(format!("{error:#}"));
    }
    if let Err(error) = remove_bridge(&placement.bridge) {
        errors.push(format!("{error:#}"));
    }
    if !errors.is_empty() {
        bail!("down left something behind:\n{}", errors.join("\n"));
    }
    // The placement goes with the cluster's processes: the next `up` may choose another.
    let _ = std::fs::remove_file(state.placement_file());
    eprintln!(
        "Keel is down; the cluster's data stays in {} (`cargo xtask up --fresh` starts empty).",
        state.dir.display()
    );
    Ok(())
}

impl State {
    /// What `down` needs beyond its defaults to find this cluster.
    fn down_flags(&self, paths: &Paths) -> String {
        if paths.root.join(".keel") == self.dir {
            String::new()
        } else {
            format!(" --state-dir {}", self.dir.display())
        }
    }
}

/// Starts the image registry (Debian's `docker-registry`, storage under `.keel/registry`) on
/// the node address unless it runs, and pushes [`REGISTRY_IMAGES`] into it; its `host:port`.
fn start_registry(state: &State) -> anyhow::Result<String> {
    let (ip, port) = (state.placement.host_ip(), state.placement.registry_port);
    let address = format!("{ip}:{port}");
    if state.running(Component::Registry).is_none() {
        port_free(ip, port, "the image registry")?;
        let dir = state.registry();
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
                 delete:\n    enabled: true\nhttp:\n  addr: {address}\n",
                dir.join("storage").display()
            ),
        )
        .with_context(|| format!("cannot write {}", config.display()))?;
        let child = spawn(
            state,
            Component::Registry,
            Command::new("docker-registry").arg("serve").arg(&config),
        )?;
        wait(
            state,
            Component::Registry,
            Some(child),
            "the image registry",
            || Ok(registry_answers(&address)),
        )?;
    }
    let spec = keel_testhost::registry::ImageSpec {
        cmd: vec!["sh".to_owned()],
        ..Default::default()
    };
    let image = keel_testhost::registry::TestImage::busybox(&spec)
        .context("cannot build the busybox image from /usr/bin/busybox")?;
    for name_tag in REGISTRY_IMAGES {
        keel_testhost::registry::push_image(
            Command::new("skopeo"),
            &address,
            &image,
            name_tag,
            None,
        )
        .with_context(|| format!("cannot push {name_tag} to the registry at {address}"))?;
    }
    Ok(address)
}

/// Checks the single node's `--socket-lb-cgroup`: a group that exists, or one inside the
/// cluster's own cgroup root (`<cgroup2>/<cgroup-root>`, where the node's pods go, so they are
/// load-balanced too), which `up` creates and `down` removes with the rest.
fn socket_lb_group(placement: &Placement, group: &Path) -> anyhow::Result<()> {
    if group.is_dir() {
        return Ok(());
    }
    let own = nodes::cgroup2_mount()?.join(&placement.cgroup_root);
    ensure!(
        group.starts_with(&own),
        "--socket-lb-cgroup {}: no such cgroup (make it, or name one under {}, which `up` makes)",
        group.display(),
        own.display()
    );
    std::fs::create_dir_all(group)
        .with_context(|| format!("cannot create the cgroup {}", group.display()))
}

/// Whether a registry answers the v2 API at `address`.
fn registry_answers(address: &str) -> bool {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /v2/ HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    let mut response = String::new();
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_to_string(&mut response).is_ok()
        && response.starts_with("HTTP/1.1 200")
}

/// Starts `command` in the background, in its own process group so it outlives xtask, with
/// stdout and stderr appended to the component's log, and records its pid.
fn spawn(state: &State, component: Component, command: &mut Command) -> anyhow::Result<Child> {
    spawn_logged(
        &state.log(component),
        &state.pid_file(component),
        component.name(),
        command,
    )
}

/// Starts `command` (`name` in messages) in the background as [`spawn`] does, its output
/// appended to `log_path` and its pid written to `pid_file`.
fn spawn_logged(
    log_path: &Path,
    pid_file: &Path,
    name: &str,
    command: &mut Command,
) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt as _;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    command
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    eprintln!(
        "+ {} (log: {})",
        command::describe(command),
        log_path.display()
    );
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    std::fs::write(pid_file, format!("{}\n", child.id()))
        .with_context(|| format!("cannot write {}", pid_file.display()))?;
    Ok(child)
}

/// Polls `ready` for up to two minutes; fails early, with the log's tail, if `component` dies
/// (`child`: the process this run started, else the one its pid file names).
fn wait(
    state: &State,
    component: Component,
    mut child: Option<Child>,
    what: &str,
    mut ready: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    eprintln!("waiting for {what}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if ready()? {
            return Ok(());
        }
        let ended = match child.as_mut() {
            Some(child) => child.try_wait()?.is_some(),
            None => state.running(component).is_none(),
        };
        if ended {
            bail!(
                "{} stopped while waiting for {what}; the end of {}:\n{}",
                component.name(),
                state.log(component).display(),
                tail(&state.log(component), 30)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "gave up waiting for {what} after 2 minutes; the end of {}:\n{}",
                state.log(component).display(),
                tail(&state.log(component), 30)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// kubectl with the cluster's admin kubeconfig; its stdout when it succeeds.
fn kubectl(state: &State, args: &[&str]) -> anyhow::Result<Option<String>> {
    if !state.kubeconfig().exists() {
        return Ok(None);
    }
    command::stdout_if_ok(
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(state.kubeconfig())
            .args(["--request-timeout=5s"])
            .args(args),
    )
}

/// SIGTERM, then SIGKILL if `pid` still runs after `grace`.
fn stop(pid: u32, name: &str, grace: Duration) {
    eprintln!("stopping {name} (pid {pid})");
    let alive = || Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + grace;
    while alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if alive() {
        eprintln!("{name} did not stop within {grace:?}: SIGKILL");
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = stat.rsplit_once(')')?.1;
            after.split_whitespace().next().map(|s| s == "Z")
        })
        .unwrap_or(false)
}

fn port_free(address: Ipv4Addr, port: u16, who: &str) -> anyhow::Result<()> {
    TcpListener::bind((address, port))
        .map(drop)
        .with_context(|| {
            format!("{address}:{port}, which {who} needs, is in use by another program")
        })
}

/// The node's name: the host name, lower-case, as kubelet names its Node.
fn node_name() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .context("cannot read the host name")?;
    Ok(name.trim().to_lowercase())
}

/// Creates the bridge holding the host's node-network address, unless it is there.
fn ensure_bridge(placement: &Placement) -> anyhow::Result<()> {
    let bridge = placement.bridge.as_str();
    let exists = command::output(Command::new("ip").args(["link", "show", bridge]))?
        .status
        .success();
    if !exists {
        command::run(Command::new("ip").args(["link", "add", bridge, "type", "bridge"]))?;
    }
    let address = format!("{}/{}", placement.host_ip(), placement.node_subnet.prefix);
    let shown = command::stdout_if_ok(Command::new("ip").args(["-o", "addr", "show", bridge]))?
        .unwrap_or_default();
    if !shown.contains(&format!(" {address} ")) {
        command::run(Command::new("ip").args(["addr", "add", &address, "dev", bridge]))?;
    }
    command::run(Command::new("ip").args(["link", "set", bridge, "up"]))
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// The agent turns on IPv4 forwarding, as a node needs; `up` notes the host's setting first
/// (once) so that `down` puts it back.
fn remember_forwarding(state: &State) -> anyhow::Result<()> {
    let saved = state.dir.join("run").join("ip_forward");
    if !saved.exists() {
        let value = std::fs::read_to_string(IP_FORWARD).context("cannot read ip_forward")?;
        std::fs::write(&saved, value)
            .with_context(|| format!("cannot write {}", saved.display()))?;
    }
    Ok(())
}

fn restore_forwarding(state: &State) -> anyhow::Result<()> {
    let saved = state.dir.join("run").join("ip_forward");
    let Ok(value) = std::fs::read_to_string(&saved) else {
        return Ok(());
    };
    std::fs::write(IP_FORWARD, value.trim()).context("cannot restore ip_forward")?;
    std::fs::remove_file(&saved).with_context(|| format!("cannot remove {}", saved.display()))
}

fn remove_bridge(bridge: &str) -> anyhow::Result<()> {
    let exists = command::output(Command::new("ip").args(["link", "show", bridge]))?
        .status
        .success();
    if exists {
        command::run(Command::new("ip").args(["link", "del", bridge]))?;
    }
    Ok(())
}

fn remove_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(error).with_context(|| format!("cannot remove {}", dir.display()))
        }
        _ => Ok(()),
    }
}
