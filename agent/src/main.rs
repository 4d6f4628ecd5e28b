//! `keel-agent`: Keel's node agent.
//!
//! This version runs the dataplane without an API server:
//! - `--devices`: per-interface counters (XDP, TC ingress, TC egress) on the named interfaces,
//!   logged every `--stats-interval` seconds;
//! - `--services-file`: Service load-balancing from a YAML stream of upstream `Service` and
//!   `EndpointSlice` objects, re-read when it changes (a bad version is reported and the last
//!   good state kept): at the socket level for every process under `--cgroup-root`, and at TC
//!   ingress of the `--devices` for traffic routed through the node.
//!
//! - `--pod-manifest-path`: static pods, run with runc in their own network namespaces and
//!   cgroups, images pulled from OCI registries (see `keel_agent::pods`).
//!
//! It runs until SIGINT or SIGTERM and detaches everything it attached; pods keep running and
//! the next agent adopts them. `keel-agent keeper <dir>` is the per-node keeper process the
//! agent starts itself (see `keel_agent::runtime::keeper`).

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use clap::{ArgGroup, Parser, ValueEnum};
use keel_agent::dataplane::{CtTimeouts, ServiceDataplane, StatsDataplane, XdpAttachMode};
use keel_agent::services::{Node, ServicesFile, desired_state};

#[derive(Debug, Parser)]
#[command(name = "keel-agent", version, about = "Keel's node agent")]
#[command(group(ArgGroup::new("work").required(true).multiple(true).args(["devices", "services_file", "pod_manifest_path", "kubeconfig"])))]
struct Args {
    /// Interfaces that get the XDP and TC programs (counters; with --services-file also
    /// Service load-balancing of traffic routed through the node), comma-separated.
    #[arg(long, value_delimiter = ',')]
    devices: Vec<String>,
    /// XDP attach mode on those interfaces.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    xdp_mode: XdpModeArg,
    /// Seconds between two counter reports in the log.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    stats_interval: u64,
    /// A YAML stream of v1 Service and discovery.k8s.io/v1 EndpointSlice objects to
    /// load-balance, re-read when it changes.
    #[arg(long)]
    services_file: Option<PathBuf>,
    /// The cgroup2 group whose processes get socket-level load-balancing (default: the
    /// cgroup2 root, i.e. every process on the node).
    #[arg(long)]
    socket_lb_cgroup: Option<PathBuf>,
    /// A directory of static pod manifests (one Pod per file, YAML or JSON), watched.
    #[arg(long)]
    pod_manifest_path: Option<PathBuf>,
    /// The API server's kubeconfig: register this node, run the pods bound to it, report
    /// their status. Absent: static pods only.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Where the agent keeps its state: pods, network namespaces, images, runc's state.
    #[arg(long, default_value = "/var/lib/keel")]
    root_dir: PathBuf,
    /// Where container logs go (`<dir>/<namespace>_<pod>_<uid>/<container>/<n>.log`).
    #[arg(long, default_value = "/var/log/pods")]
    pod_logs_dir: PathBuf,
    /// This node's pod CIDR (IPv4), where pod addresses come from.
    #[arg(long)]
    pod_cidr: Option<String>,
    /// The cgroup the `kubepods` tree goes under.
    #[arg(long, default_value = "/")]
    cgroup_root: String,
    /// The pids limit of each pod's cgroup (-1: none).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pod_max_pids: i64,
    /// A registry (HOST:PORT) spoken to over plain HTTP; repeatable.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// The node API's port (kubelet's, HTTPS); 0: no node API.
    #[arg(long, default_value_t = 10250)]
    node_api_port: u16,
    /// The node API's certificate (PEM); without it a self-signed one is made under
    /// `--root-dir`/pki.
    #[arg(long, requires = "tls_private_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// The node API certificate's private key (PEM).
    #[arg(long, requires = "tls_cert_file")]
    tls_private_key_file: Option<PathBuf>,
    /// Image garbage collection starts when the images' disk is this full (percent).
    #[arg(long, default_value_t = 85, value_parser = clap::value_parser!(u8).range(1..=100))]
    image_gc_high_threshold: u8,
    /// ... and removes unused images until it is below this (percent).
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u8).range(0..=100))]
    image_gc_low_threshold: u8,
    /// A container log file is rotated when it reaches this size (a quantity: 10Mi, 500Ki).
    #[arg(long, default_value = "10Mi")]
    container_log_max_size: String,
    /// Log files kept per container (the live one included); at least 2.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(2..))]
    container_log_max_files: u16,
    /// The OCI runtime binary.
    #[arg(long, default_value = "runc")]
    runc: PathBuf,
    /// This node's name, for `internalTrafficPolicy` / `externalTrafficPolicy: Local`
    /// (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// This node's IPv4 addresses, where NodePorts are served, comma-separated (none given:
    /// no NodePorts).
    #[arg(long, value_delimiter = ',')]
    node_ip: Vec<std::net::Ipv4Addr>,
    /// Seconds a tracked TCP flow of the TC path may stay idle.
    #[arg(long, default_value_t = 6 * 3600, value_parser = clap::value_parser!(u64).range(1..))]
    conntrack_tcp_timeout: u64,
    /// Seconds a tracked UDP flow of the TC path may stay idle.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    conntrack_udp_timeout: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum XdpModeArg {
    Auto,
    Native,
    Generic,
}

/// How often the services file is checked for changes.
const FILE_POLL: Duration = Duration::from_secs(1);
/// How often idle tracked flows are collected.
const CONNTRACK_GC: Duration = Duration::from_secs(10);

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut argv = std::env::args_os().skip(1);
    if argv.next().is_some_and(|first| first == "keeper") {
        let Some(dir) = argv.next() else {
            bail!("usage: keel-agent keeper <state dir>");
        };
        keel_agent::runtime::keeper::run(std::path::Path::new(&dir))
            .with_context(|| format!("keeper in {}", dir.display()))?;
        return Ok(());
    }
    let args = Args::parse();
    let stop = signals::block_termination()?;
    let pods = if args.pod_manifest_path.is_some() || args.kubeconfig.is_some() {
        Some(pods::start(&args)?)
    } else {
        None
    };

    let devices = resolve_devices(&args.devices)?;
    let mut stats = None;
    if !devices.is_empty() {
        let xdp_mode = match args.xdp_mode {
            XdpModeArg::Auto => XdpAttachMode::Auto,
            XdpModeArg::Native => XdpAttachMode::Native,
            XdpModeArg::Generic => XdpAttachMode::Generic,
        };
        let mut dataplane = StatsDataplane::load().context("cannot load the eBPF dataplane")?;
        for (name, _) in &devices {
            dataplane.attach(name, xdp_mode).with_context(|| {
                format!("cannot attach the counters to --devices entry `{name}`")
            })?;
            log::info!("counting packets on {name}");
        }
        stats = Some(dataplane);
    }

    let mut services = match &args.services_file {
        Some(path) => Some(ServicesFromFile::start(path.clone(), &args, &devices)?),
        None => None,
    };

    let stats_interval = Duration::from_secs(args.stats_interval);
    let mut next_report = Instant::now() + stats_interval;
    let timeouts = CtTimeouts {
        tcp: Duration::from_secs(args.conntrack_tcp_timeout),
        udp: Duration::from_secs(args.conntrack_udp_timeout),
    };
    let mut next_gc = Instant::now() + CONNTRACK_GC;
    while !stop.wait(FILE_POLL)? {
        if let Some(services) = &mut services {
            services.reload_if_changed();
            if Instant::now() >= next_gc {
                next_gc = Instant::now() + CONNTRACK_GC;
                match services.dataplane.collect_conntrack(timeouts) {
                    Ok(gc) => log::debug!(
                        "conntrack: {} entries, {} idle removed",
                        gc.entries,
                        gc.removed
                    ),
                    Err(error) => log::warn!("conntrack collection failed: {error:#}"),
                }
            }
        }
        if let Some(stats) = &stats
            && Instant::now() >= next_report
        {
            next_report = Instant::now() + stats_interval;
            report(stats, &devices)?;
        }
    }
    log::info!("stopping: detaching everything");
    if let Some(pods) = pods {
        pods.stop();
    }
    Ok(())
}

/// The Service dataplane fed from `--services-file`.
struct ServicesFromFile {
    path: PathBuf,
    node: Node,
    dataplane: ServiceDataplane,
    /// Modification time and length of the version last read, good or bad.
    seen: Option<(SystemTime, u64)>,
}

impl ServicesFromFile {
    fn start(
        path: PathBuf,
        args: &Args,
        devices: &[(String, u32)],
    ) -> anyhow::Result<ServicesFromFile> {
        let cgroup = match &args.socket_lb_cgroup {
            Some(cgroup) => cgroup.clone(),
            None => {
                let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
                    .context("cannot read /proc/self/mountinfo")?;
                ServiceDataplane::cgroup2_root(&mountinfo)
                    .context("no cgroup2 hierarchy is mounted: give --socket-lb-cgroup")?
            }
        };
        let mut dataplane = ServiceDataplane::load().context("cannot load the eBPF dataplane")?;
        dataplane.attach_cgroup(&cgroup).with_context(|| {
            format!(
                "cannot attach socket load-balancing to --socket-lb-cgroup {}",
                cgroup.display()
            )
        })?;
        log::info!(
            "socket load-balancing for the processes under {}",
            cgroup.display()
        );
        for (name, _) in devices {
            dataplane.attach_tc(name).with_context(|| {
                format!("cannot attach Service load-balancing to --devices entry `{name}`")
            })?;
            log::info!("load-balancing Service traffic routed through {name}");
        }
        let node = Node {
            name: args.node_name.clone().or_else(host_name),
            addresses: args.node_ip.clone(),
        };
        let mut services = ServicesFromFile {
            path,
            node,
            dataplane,
            seen: None,
        };
        services.reload_if_changed();
        Ok(services)
    }

    fn reload_if_changed(&mut self) {
        let version = std::fs::metadata(&self.path)
            .ok()
            .and_then(|meta| Some((meta.modified().ok()?, meta.len())));
        if version == self.seen {
            return;
        }
        self.seen = version;
        let file = match ServicesFile::load(&self.path) {
            Ok(file) => file,
            Err(error) => {
                log::error!("{error}; keeping the Services programmed before");
                return;
            }
        };
        let desired = desired_state(&file.services, &file.slices, &self.node);
        match self.dataplane.apply(&desired) {
            Ok(changed) => log::info!(
                "{}: {} Services, {} frontends ({changed} changed)",
                self.path.display(),
                file.services.len(),
                desired.len()
            ),
            Err(error) => log::error!(
                "cannot program the Services of {}: {error:#}",
                self.path.display()
            ),
        }
    }
}

fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
}

fn report(dataplane: &StatsDataplane, devices: &[(String, u32)]) -> anyhow::Result<()> {
    let stats = dataplane.iface_stats()?;
    for (name, ifindex) in devices {
        let s = stats.get(ifindex).copied().unwrap_or_default();
        log::info!(
            "{name}: xdp {}p/{}B tc_ingress {}p/{}B tc_egress {}p/{}B",
            s.xdp.packets,
            s.xdp.bytes,
            s.tc_ingress.packets,
            s.tc_ingress.bytes,
            s.tc_egress.packets,
            s.tc_egress.bytes
        );
    }
    for (reason, count) in dataplane.drop_stats()? {
        if count > 0 {
            log::info!("dropped {count} packets: {}", reason.as_str());
        }
    }
    Ok(())
}

/// Checks every `--devices` entry names an interface here, and returns its ifindex.
fn resolve_devices(names: &[String]) -> anyhow::Result<Vec<(String, u32)>> {
    let mut devices = Vec::with_capacity(names.len());
    for name in names {
        let Ok(c_name) = std::ffi::CString::new(name.as_str()) else {
            bail!("--devices: `{name}` is not an interface name");
        };
        // SAFETY: `c_name` is a valid NUL-terminated string that outlives the call.
        let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
        if ifindex == 0 {
            bail!("--devices: there is no interface `{name}` on this host");
        }
        devices.push((name.clone(), ifindex));
    }
    Ok(devices)
}

mod pods {
    //! Static pods: the node context, the pod manager on a Tokio runtime of its own, and the
    //! manifest directory it follows.

    use std::collections::{BTreeMap, HashMap};
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use anyhow::Context as _;
    use k8s_openapi::api::core::v1::PodStatus;
    use keel_agent::api::node as api_node;
    use keel_agent::api::pods;
    use keel_agent::cgroups::CgroupManager;
    use keel_agent::image::ImageStore;
    use keel_agent::nodeapi::NodeApi;
    use keel_agent::nodeapi::tls::TlsFiles;
    use keel_agent::pods::source::ManifestDir;
    use keel_agent::pods::worker::Statuses;
    use keel_agent::pods::{NodeContext, PodManager, node};
    use keel_agent::runtime::keeper::Keeper;
    use keel_agent::runtime::logs::Rotation;
    use keel_agent::runtime::runc::Runc;
    use keel_agent::sandbox::{Ipam, Ipv4Cidr, network};
    use keel_agent::sys::inotify::DirWatch;
    use tokio::sync::{Notify, oneshot};

    use super::{Args, host_name};

    /// kubelet's image GC period.
    const IMAGE_GC_PERIOD: Duration = Duration::from_secs(300);
    /// How often the manifest directory is read.
    const MANIFEST_POLL: Duration = Duration::from_secs(1);

    #[derive(Debug)]
    pub struct Pods {
        runtime: tokio::runtime::Runtime,
        stop: oneshot::Sender<()>,
        done: std::sync::mpsc::Receiver<()>,
    }

    pub fn start(args: &Args) -> anyhow::Result<Pods> {
        rustls::crypto::ring::default_provider()
            .install_default()
            .map_err(|_| anyhow::anyhow!("cannot install rustls' crypto provider"))?;
        let node_name = args
            .node_name
            .clone()
            .or_else(host_name)
            .context("cannot tell this node's name: give --node-name")?;
        if args.image_gc_low_threshold >= args.image_gc_high_threshold {
            anyhow::bail!(
                "--image-gc-low-threshold ({}) must be below --image-gc-high-threshold ({})",
                args.image_gc_low_threshold,
                args.image_gc_high_threshold
            );
        }
        let max_size = keel_agent::quantity::value(&args.container_log_max_size)
            .map_err(|e| anyhow::anyhow!("--container-log-max-size: {e}"))?;
        let log_rotation = Rotation {
            max_size: u64::try_from(max_size)
                .ok()
                .filter(|size| *size >= 1024)
                .context("--container-log-max-size: must be at least 1Ki")?,
            max_files: usize::from(args.container_log_max_files),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("cannot start the Tokio runtime")?;
        let root = &args.root_dir;
        std::fs::create_dir_all(root)
            .with_context(|| format!("--root-dir: cannot create {}", root.display()))?;
        // With an API server: register first, it may hold the pod CIDR.
        let api = match &args.kubeconfig {
            Some(path) => Some(runtime.block_on(async {
                // As kubelet: keep trying until the API server takes the node.
                loop {
                    match connect(path, args, &node_name).await {
                        Ok(connected) => break Ok::<_, anyhow::Error>(connected),
                        Err(error) if error.chain().any(|e| e.is::<kube::Error>()) => {
                            log::warn!("{error:#}; retrying in 2 s");
                            tokio::time::sleep(Duration::from_secs(2)).await;
                        }
                        Err(error) => break Err(error),
                    }
                }
            })?),
            None => None,
        };
        let cidr_text = args
            .pod_cidr
            .clone()
            .or_else(|| {
                api.as_ref()
                    .and_then(|(_, node, _)| node.spec.as_ref()?.pod_cidr.clone())
            })
            .context(
                "no pod CIDR: give --pod-cidr (or let the control plane assign the node one)",
            )?;
        let cidr = Ipv4Cidr::parse(&cidr_text).map_err(|e| anyhow::anyhow!("--pod-cidr: {e}"))?;
        let cgroups = CgroupManager::detect(&args.cgroup_root)?;
        let ipam = Ipam::open(cidr, &root.join("ipam"))?;
        let images = ImageStore::open(&root.join("images"), args.insecure_registries.clone())?;
        let exe = std::env::current_exe().context("cannot find this program's path")?;
        let keeper = Keeper::ensure(&root.join("keeper"), &exe)?;
        let meminfo =
            std::fs::read_to_string("/proc/meminfo").context("cannot read /proc/meminfo")?;
        let events = api.as_ref().map(|(client, _, _)| {
            let (sink, receiver) = tokio::sync::mpsc::unbounded_channel();
            runtime.spawn(keel_agent::api::events::record(
                client.clone(),
                node_name.clone(),
                receiver,
            ));
            sink
        });
        network::enable_forwarding().context("cannot enable IPv4 forwarding for pods")?;
        let ctx = Arc::new(NodeContext {
            root_dir: root.clone(),
            node_name: node_name.clone(),
            host_ip: args.node_ip.first().copied(),
            pod_logs_dir: args.pod_logs_dir.clone(),
            cgroups,
            ipam,
            images,
            keeper,
            runc: Runc::new(&args.runc, &root.join("runc")),
            memory_capacity: node::memory_capacity(&meminfo).unwrap_or(i64::MAX),
            pod_max_pids: (args.pod_max_pids >= 0).then_some(args.pod_max_pids),
            log_rotation,
            events,
            client: api.as_ref().map(|(client, _, _)| client.clone()),
            status_changed: Arc::new(Notify::new()),
        });
        log::info!(
            "running pods as node {node_name} (pod CIDR {cidr}, cgroups {:?}){}{}",
            ctx.cgroups.mode(),
            args.pod_manifest_path
                .as_ref()
                .map_or(String::new(), |dir| format!(
                    ", static pods from {}",
                    dir.display()
                )),
            if api.is_some() {
                ", pods from the API server"
            } else {
                ""
            }
        );
        let statuses = Statuses::default();
        if args.node_api_port != 0 {
            let files = match (&args.tls_cert_file, &args.tls_private_key_file) {
                (Some(cert), Some(key)) => TlsFiles::Given {
                    cert: cert.clone(),
                    key: key.clone(),
                },
                _ => TlsFiles::SelfSigned {
                    dir: root.join("pki"),
                },
            };
            let addresses: Vec<std::net::IpAddr> = args
                .node_ip
                .iter()
                .map(|ip| std::net::IpAddr::V4(*ip))
                .collect();
            let tls = keel_agent::nodeapi::tls::server_config(&files, &node_name, &addresses)
                .context("node API certificate")?;
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind((
                    "0.0.0.0",
                    args.node_api_port,
                )))
                .with_context(|| format!("--node-api-port {}", args.node_api_port))?;
            let api = NodeApi {
                statuses: Arc::clone(&statuses),
                pod_logs_dir: args.pod_logs_dir.clone(),
                node_name: node_name.clone(),
                cgroups: ctx.cgroups.clone(),
                runc: ctx.runc.clone(),
            };
            runtime.spawn(api.serve(listener, tls));
            log::info!("node API on https://0.0.0.0:{}", args.node_api_port);
        }
        runtime.spawn(image_gc(
            ctx.images.clone(),
            root.join("images"),
            Arc::clone(&statuses),
            (args.image_gc_high_threshold, args.image_gc_low_threshold),
        ));
        let (stop, mut stopped) = oneshot::channel();
        let (done_tx, done) = std::sync::mpsc::channel();
        let manifests = args.pod_manifest_path.clone();
        runtime.spawn(async move {
            let status_changed = Arc::clone(&ctx.status_changed);
            let mut manager = PodManager::new(ctx, statuses);
            let watch = manifests.as_ref().and_then(|dir| match DirWatch::new(dir) {
                Ok(watch) => Some(watch),
                Err(error) => {
                    log::warn!(
                        "cannot watch {} ({error}); reading it every second",
                        dir.display()
                    );
                    None
                }
            });
            let mut source = manifests.map(|dir| ManifestDir::new(&dir, &node_name));
            let changed = Arc::new(Notify::new());
            let api = api.map(|(client, node, facts)| {
                tokio::spawn(heartbeat(client.clone(), node, facts));
                let (store, _watch) = pods::watch_pods(&client, &node_name, Arc::clone(&changed));
                (client, store)
            });
            let mut written: HashMap<String, PodStatus> = HashMap::new();
            loop {
                let mut desired = BTreeMap::new();
                let mut static_pods = BTreeMap::new();
                if let Some(source) = &mut source {
                    let (pods, errors) = source.scan();
                    for error in errors {
                        log::error!("static pod manifest {error}");
                    }
                    static_pods = pods;
                    desired.extend(static_pods.clone());
                }
                if let Some((client, store)) = &api {
                    let from_api = pods::desired(store);
                    let running = manager.statuses().lock().expect("statuses lock").clone();
                    for pod in pods::finished_deletions(store, &running) {
                        if let Err(error) = pods::delete_finished(client, &pod).await {
                            log::warn!("cannot delete finished pod: {error}");
                        }
                    }
                    for (uid, pod) in &running {
                        let Some(status) = &pod.status else { continue };
                        let reported = from_api.contains_key(uid) || static_pods.contains_key(uid);
                        if reported && written.get(uid) != Some(status) {
                            match pods::write_status(client, pod, status).await {
                                Ok(true) => {
                                    written.insert(uid.clone(), status.clone());
                                }
                                Ok(false) => {}
                                Err(error) => log::warn!("cannot write pod status: {error}"),
                            }
                        }
                    }
                    written.retain(|uid, _| running.contains_key(uid));
                    pods::sync_mirrors(client, store, &static_pods).await;
                    desired.extend(from_api);
                }
                manager.sync(&desired).await;
                tokio::select! {
                    _ = &mut stopped => break,
                    () = changed.notified() => {}
                    () = status_changed.notified() => {}
                    _ = async { watch.as_ref()?.changed().await.ok() }, if watch.is_some() => {}
                    () = tokio::time::sleep(MANIFEST_POLL) => {}
                }
            }
            manager.detach();
            let _ = done_tx.send(());
        });
        Ok(Pods {
            runtime,
            stop,
            done,
        })
    }

    /// kubelet's image GC: every five minutes, when the images' disk is above the high
    /// threshold, unused images go, least recently used first, until it is below the low one.
    async fn image_gc(
        images: ImageStore,
        dir: std::path::PathBuf,
        statuses: Statuses,
        (high, low): (u8, u8),
    ) {
        let mut ticker = tokio::time::interval(IMAGE_GC_PERIOD);
        loop {
            ticker.tick().await;
            let (used, capacity) = disk_usage(&dir);
            let in_use: std::collections::HashSet<String> = statuses
                .lock()
                .expect("statuses lock")
                .values()
                .filter_map(|pod| pod.status.as_ref()?.container_statuses.clone())
                .flatten()
                .filter_map(|s| s.image_id.rsplit_once('@').map(|(_, d)| d.to_owned()))
                .collect();
            let stored = match images.images() {
                Ok(stored) => stored,
                Err(error) => {
                    log::warn!("image GC: {error}");
                    continue;
                }
            };
            for reference in
                keel_agent::image::gc::plan(&stored, &in_use, used, capacity, high, low)
            {
                match images.remove(&reference) {
                    Ok(freed) => log::info!("image GC: removed {reference} ({freed} bytes)"),
                    Err(error) => log::warn!("image GC: cannot remove {reference}: {error}"),
                }
            }
        }
    }

    /// Bytes used and total of the filesystem holding `dir`.
    fn disk_usage(dir: &Path) -> (u64, u64) {
        keel_agent::sys::filesystem_bytes(dir).map_or((0, 0), |(total, free)| (total - free, total))
    }

    /// Connects to the API server and registers this node.
    async fn connect(
        kubeconfig: &Path,
        args: &Args,
        node_name: &str,
    ) -> anyhow::Result<(
        kube::Client,
        k8s_openapi::api::core::v1::Node,
        api_node::NodeFacts,
    )> {
        let config = kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(kubeconfig)
                .with_context(|| format!("--kubeconfig {}", kubeconfig.display()))?,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .with_context(|| format!("--kubeconfig {}", kubeconfig.display()))?;
        let client = kube::Client::try_from(config).context("cannot build the API client")?;
        let facts = api_node::NodeFacts::read(
            node_name,
            args.node_ip.first().copied(),
            args.pod_cidr.clone(),
            &args.root_dir,
        );
        let node = api_node::register(&client, &facts)
            .await
            .with_context(|| format!("cannot register node {node_name}"))?;
        api_node::renew_lease(&client, &node)
            .await
            .with_context(|| format!("cannot take the lease of node {node_name}"))?;
        log::info!("registered node {node_name}");
        Ok((client, node, facts))
    }

    /// Node status and lease, renewed until the agent stops.
    async fn heartbeat(
        client: kube::Client,
        mut node: k8s_openapi::api::core::v1::Node,
        facts: api_node::NodeFacts,
    ) {
        let mut ticker = tokio::time::interval(api_node::LEASE_RENEW);
        loop {
            ticker.tick().await;
            if let Err(error) = api_node::renew_lease(&client, &node).await {
                log::warn!("cannot renew the node lease: {error}");
            }
            match api_node::update_status(&client, &facts, &api_node::transition_times(&node)).await
            {
                Ok(updated) => node = updated,
                Err(error) => log::warn!("cannot update the node status: {error}"),
            }
        }
    }

    impl Pods {
        /// Stops the pod workers; pods keep running for the next agent to adopt.
        pub fn stop(self) {
            let _ = self.stop.send(());
            let _ = self.done.recv_timeout(Duration::from_secs(5));
            self.runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

mod signals {
    //! SIGINT / SIGTERM as a condition to wait on, without a signal handler.

    use std::io;
    use std::mem::MaybeUninit;
    use std::time::Duration;

    #[derive(Debug)]
    pub struct Termination {
        set: libc::sigset_t,
    }

    /// Blocks SIGINT and SIGTERM in this thread (and the threads it starts later), so they
    /// stay pending until [`Termination::wait`] takes them.
    pub fn block_termination() -> io::Result<Termination> {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initialises the set; sigaddset and pthread_sigmask get valid
        // pointers to it.
        let set = unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
            libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
            let set = set.assume_init();
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            set
        };
        Ok(Termination { set })
    }

    impl Termination {
        /// Waits up to `timeout`; true if SIGINT or SIGTERM arrived.
        pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
            let timeout = libc::timespec {
                tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
                tv_nsec: timeout.subsec_nanos().into(),
            };
            // SAFETY: `self.set` is an initialised signal set and `timeout` a valid timespec.
            let signal = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &timeout) };
            if signal > 0 {
                return Ok(true);
            }
            let error = io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => Ok(false),
                _ => Err(error),
            }
        }
    }
}
