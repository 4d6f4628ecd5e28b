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
//! The eBPF dataplane is pinned under `--bpf-root`: programs stay attached and maps keep
//! their entries when the agent exits or is killed, and the next agent takes them over without
//! disturbing traffic (`--cleanup-bpf` removes them). It runs until SIGINT or SIGTERM; pods
//! keep running and the next agent adopts them. `keel-agent keeper <dir>` is the per-node keeper process the
//! agent starts itself (see `keel_agent::runtime::keeper`); `keel-agent reset` removes what a
//! stopped agent left (see `keel_agent::reset`); `keel-agent simulate` runs many simulated nodes
//! against an API server instead (see `keel_agent::simulate`).

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use clap::{ArgGroup, Parser, ValueEnum};
use keel_agent::dataplane::{
    CtTimeouts, DEFAULT_BPF_ROOT, Dataplane, Direction, LbAlgorithm, LoadBalancing, MapSizes,
    SnatConfig, TableSize, XdpAttachMode, remove_pins,
};
use keel_agent::dns::{DnsServer, Zone};
use keel_agent::metrics::{self, Metrics};
use keel_agent::sandbox::Ipv4Cidr;
use keel_agent::services::{Node, ServicesFile, desired_state};
use keel_ebpf_common::conntrack::CT4_MAX_ENTRIES;

#[derive(Debug, Parser)]
#[command(name = "keel-agent", version, about = "Keel's node agent")]
#[command(group(ArgGroup::new("work").required(true).multiple(true).args(["devices", "services_file", "pod_manifest_path", "kubeconfig", "cleanup_bpf"])))]
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
    /// load-balance, re-read when it changes (with --kubeconfig they come from the API).
    #[arg(long, conflicts_with = "kubeconfig")]
    services_file: Option<PathBuf>,
    /// The cgroup2 group whose processes get socket-level load-balancing (default: the
    /// cgroup2 root, i.e. every process on the node).
    #[arg(long)]
    socket_lb_cgroup: Option<PathBuf>,
    /// Where the dataplane pins its maps and links: a directory on a bpf filesystem (one is
    /// mounted on /sys/fs/bpf if the directory is under it and none is). They outlive the
    /// agent, so Service traffic keeps flowing while it restarts.
    #[arg(long, default_value = DEFAULT_BPF_ROOT)]
    bpf_root: PathBuf,
    /// Remove everything pinned under --bpf-root (detaching every program), then exit.
    #[arg(long)]
    cleanup_bpf: bool,
    /// A directory of static pod manifests (one Pod per file, YAML or JSON), watched.
    #[arg(long)]
    pod_manifest_path: Option<PathBuf>,
    /// The API server's kubeconfig: register this node, run the pods bound to it, report
    /// their status, load-balance the Services (socket level on --socket-lb-cgroup, TC on
    /// the --devices). Absent: static pods only.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Where the agent keeps its state: pods, network namespaces, images, runc's state.
    #[arg(long, default_value = "/var/lib/keel")]
    root_dir: PathBuf,
    /// Where container logs go (`<dir>/<namespace>_<pod>_<uid>/<container>/<n>.log`).
    #[arg(long, default_value = "/var/log/pods")]
    pod_logs_dir: PathBuf,
    /// This node's pod CIDR (IPv4), where pod addresses come from (default, with
    /// --kubeconfig: the Node's spec.podCIDR, once the control plane has assigned one).
    #[arg(long)]
    pod_cidr: Option<String>,
    /// With --kubeconfig: route every other node's pod CIDR (its Node's spec.podCIDR) via its
    /// InternalIP, so pods reach pods on other nodes directly, without NAT (the nodes must
    /// share a link). Keel's routes carry protocol 75; no other route is touched.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    auto_direct_node_routes: bool,
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
    /// The address the node API listens on (kubelet's `--address`). Default: every address
    /// (kubelet's 0.0.0.0) when clients are authenticated (a client CA, given or from the
    /// kubeconfig), else loopback only: the node API runs commands in containers.
    #[arg(long = "address")]
    node_api_address: Option<std::net::IpAddr>,
    /// The CA (PEM) whose client certificates the node API takes (kubelet's flag); default:
    /// the kubeconfig's CA.
    #[arg(long)]
    client_ca_file: Option<PathBuf>,
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
    /// Entries of the TC path's conntrack map, one per direction of a flow (an LRU map: when
    /// full, the least recently used go first); 32 bytes of key and value each, plus the
    /// kernel's per-element overhead. Changing it replaces the pinned map and the flows in it.
    #[arg(long, default_value_t = CT4_MAX_ENTRIES, value_parser = clap::value_parser!(u32).range(1024..=16_777_216))]
    conntrack_max: u32,
    /// Seconds an established TCP flow of the TC path may stay idle.
    #[arg(long, default_value_t = 6 * 3600, value_parser = clap::value_parser!(u64).range(1..))]
    conntrack_tcp_timeout: u64,
    /// Seconds a TCP flow whose SYN was never answered may stay idle.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    conntrack_tcp_syn_timeout: u64,
    /// Seconds a TCP flow may stay idle after a FIN or RST.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    conntrack_tcp_close_timeout: u64,
    /// Seconds a tracked UDP flow of the TC path may stay idle.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    conntrack_udp_timeout: u64,
    /// How a new flow to a frontend reached from outside the cluster (NodePort, externalIP,
    /// LoadBalancer IP) picks its backend on the TC path: `maglev` (the same backend on
    /// every node) or `random`. ClusterIPs always pick at random.
    #[arg(long, value_enum, default_value_t = LbAlgorithmArg::Maglev)]
    lb_algorithm: LbAlgorithmArg,
    /// Entries of each Maglev table (a prime Cilium accepts: 251, 509, 1021, 2039, 4093,
    /// 8191, 16381, 32749, 65521, 131071); 4 bytes each, one table per external frontend.
    #[arg(long, default_value = "16381")]
    maglev_table_size: TableSize,
    /// Service load-balancing at XDP on the --devices (Cilium's flag): `native` attaches
    /// `xdp_lb`, which sends flows from outside SNATed to a backend on another node beside
    /// the client straight back out of the interface (`XDP_TX`), before the kernel stack;
    /// everything else still goes to TC. `disabled`: TC serves every flow. XDP_TX out of a
    /// veth needs its peer to take XDP frames (an XDP program or GRO on the peer).
    #[arg(long, value_enum, default_value_t = LbAccelerationArg::Disabled)]
    bpf_lb_acceleration: LbAccelerationArg,
    /// Where the Prometheus metrics are served (`/metrics`): conntrack fill and collection,
    /// drops by reason, interface counters, Service syncs. kube-proxy's flag and default;
    /// empty: no metrics.
    #[arg(long, default_value = metrics::DEFAULT_BIND_ADDRESS)]
    metrics_bind_address: String,
    /// Serve cluster DNS on this address (port 53, UDP and TCP), put on the loopback interface
    /// (label `lo:keel-dns`); kubelet's flag, the address pods are told to ask. Node-local DNS uses
    /// 169.254.20.10. Absent: no DNS.
    #[arg(long)]
    cluster_dns: Option<std::net::Ipv4Addr>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = keel_agent::dns::DEFAULT_DOMAIN)]
    cluster_domain: String,
    /// Where names outside the cluster domain are forwarded (IP or IP:PORT, comma-separated;
    /// default: the nameservers of /etc/resolv.conf).
    #[arg(long, value_delimiter = ',')]
    dns_upstream: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LbAlgorithmArg {
    Random,
    Maglev,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LbAccelerationArg {
    Disabled,
    Native,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum XdpModeArg {
    Auto,
    Native,
    Generic,
}

/// `keel-agent reset`: removes what an agent with these settings made on this node (its
/// containers, keeper, mounts, network namespaces, cgroups and root dir). Run it once the
/// agent has stopped.
#[derive(Debug, Parser)]
#[command(name = "keel-agent reset")]
struct ResetArgs {
    /// The stopped agent's `--root-dir`.
    #[arg(long, default_value = "/var/lib/keel")]
    root_dir: PathBuf,
    /// The stopped agent's `--cgroup-root`.
    #[arg(long, default_value = "/")]
    cgroup_root: String,
    /// The runc binary.
    #[arg(long, default_value = "runc")]
    runc: PathBuf,
}

fn reset(args: ResetArgs) -> anyhow::Result<()> {
    let cgroups = keel_agent::cgroups::CgroupManager::detect(&args.cgroup_root)?;
    let report = keel_agent::reset::reset(&args.root_dir, &cgroups, &args.runc)
        .with_context(|| format!("resetting the agent of {}", args.root_dir.display()))?;
    log::info!(
        "reset {}: {} containers deleted, keeper {}, {} mounts unmounted, {} cgroups removed",
        args.root_dir.display(),
        report.containers,
        if report.keeper_killed {
            "killed"
        } else {
            "not running"
        },
        report.mounts,
        report.cgroups
    );
    Ok(())
}

/// How often the services file is checked for changes.
const FILE_POLL: Duration = Duration::from_secs(1);
/// How often the counters behind the metrics are read.
const METRICS_REFRESH: Duration = Duration::from_secs(1);
/// How often the main loop looks for work (Service updates from the API among it).
const TICK: Duration = Duration::from_millis(50);
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
    if std::env::args_os()
        .nth(1)
        .is_some_and(|first| first == "reset")
    {
        return reset(ResetArgs::parse_from(std::env::args_os().skip(1)));
    }
    if std::env::args_os()
        .nth(1)
        .is_some_and(|first| first == "simulate")
    {
        return simulate::run(std::env::args_os().skip(2));
    }
    let args = Args::parse();
    if args.cleanup_bpf {
        remove_pins(&args.bpf_root)
            .with_context(|| format!("cannot remove the pins under {}", args.bpf_root.display()))?;
        log::info!(
            "removed the dataplane pinned under {} (programs detached)",
            args.bpf_root.display()
        );
        return Ok(());
    }
    let stop = signals::block_termination()?;
    let dns = start_dns(&args)?;
    let mut pods = if args.pod_manifest_path.is_some() || args.kubeconfig.is_some() {
        match pods::start(&args, &stop, dns.clone())? {
            Some(pods) => Some(pods),
            // SIGINT / SIGTERM while waiting for the API server or a pod CIDR.
            None => return Ok(()),
        }
    } else {
        None
    };
    let api_services = pods.as_mut().and_then(|pods| pods.services.take());
    let pod_cidr = pods.as_ref().map(|pods| pods.pod_cidr);

    let devices = resolve_devices(&args.devices)?;
    let mut pod_interfaces =
        (pod_cidr.is_some() && serves_services(&args)).then(pod_interfaces::PodInterfaces::default);
    let mut dataplane = if devices.is_empty() && !serves_services(&args) {
        None
    } else {
        Some(start_dataplane(
            &args,
            &devices,
            pod_cidr,
            pod_interfaces.as_mut(),
        )?)
    };
    let metrics_address = metrics::parse_bind_address(&args.metrics_bind_address)
        .map_err(|problem| anyhow::anyhow!("--metrics-bind-address: {problem}"))?;
    let metrics = Metrics::default();
    if let (Some(address), Some(_)) = (metrics_address, &dataplane) {
        metrics.set_conntrack_capacity(args.conntrack_max);
        metrics::serve(address, metrics.clone()).context("cannot start the metrics server")?;
    }
    let mut next_metrics = Instant::now();
    let mut services = args.services_file.clone().map(|path| ServicesFromFile {
        path,
        node: node(&args),
        seen: None,
        metrics: metrics.clone(),
        dns: dns.clone(),
    });

    let stats_interval = Duration::from_secs(args.stats_interval);
    let mut next_report = Instant::now() + stats_interval;
    let timeouts = CtTimeouts {
        tcp: Duration::from_secs(args.conntrack_tcp_timeout),
        tcp_syn: Duration::from_secs(args.conntrack_tcp_syn_timeout),
        tcp_close: Duration::from_secs(args.conntrack_tcp_close_timeout),
        udp: Duration::from_secs(args.conntrack_udp_timeout),
    };
    let mut next_gc = Instant::now() + CONNTRACK_GC;
    let mut next_file_check = Instant::now();
    loop {
        if let (Some(updates), Some(dataplane)) = (&api_services, &mut dataplane) {
            // Only the newest state matters; the feed already spaces them out.
            if let Some(desired) = updates.try_iter().last() {
                let started = Instant::now();
                let applied = dataplane.apply(&desired);
                metrics.record_sync(applied.is_ok().then_some(desired.len()), started.elapsed());
                match applied {
                    Ok(changed) => {
                        log::info!("API: {} frontends ({changed} changed)", desired.len())
                    }
                    Err(error) => log::error!("cannot program the Services of the API: {error:#}"),
                }
            }
        }
        if let (Some(pod_interfaces), Some(dataplane)) = (&mut pod_interfaces, &mut dataplane) {
            pod_interfaces.sync(dataplane);
        }
        if let (Some(services), Some(dataplane)) = (&mut services, &mut dataplane)
            && Instant::now() >= next_file_check
        {
            next_file_check = Instant::now() + FILE_POLL;
            services.reload_if_changed(dataplane);
        }
        if let Some(dataplane) = &mut dataplane
            && serves_services(&args)
            && Instant::now() >= next_gc
        {
            next_gc = Instant::now() + CONNTRACK_GC;
            match dataplane.collect_conntrack(timeouts) {
                Ok(gc) => {
                    metrics.record_conntrack_gc(gc);
                    log::debug!(
                        "conntrack: {} entries, {} idle removed",
                        gc.entries,
                        gc.removed
                    )
                }
                Err(error) => log::warn!("conntrack collection failed: {error:#}"),
            }
        }
        if let (Some(dataplane), Some(_)) = (&dataplane, metrics_address)
            && Instant::now() >= next_metrics
        {
            next_metrics = Instant::now() + METRICS_REFRESH;
            refresh_metrics(dataplane, &devices, &metrics);
        }
        if let Some(dataplane) = &dataplane
            && !devices.is_empty()
            && Instant::now() >= next_report
        {
            next_report = Instant::now() + stats_interval;
            report(dataplane, &devices)?;
        }
        if stop.wait(TICK)? {
            break;
        }
    }
    if dataplane.is_some() {
        log::info!(
            "stopping: the dataplane stays pinned under {} (`keel-agent --cleanup-bpf` removes it)",
            args.bpf_root.display()
        );
    }
    if let Some(pods) = pods {
        pods.stop();
    }
    Ok(())
}

/// Opens the pinned dataplane and makes the attachments the flags ask for: counters on the
/// `--devices`, and with Services socket load-balancing on `--socket-lb-cgroup` and TC
/// load-balancing on the devices. Pinned attachments no longer asked for are detached.
/// `pod_cidr` is this node's pod CIDR as the pod side took it (`--pod-cidr` or the Node's
/// spec.podCIDR), when it runs pods.
fn start_dataplane(
    args: &Args,
    devices: &[(String, u32)],
    pod_cidr: Option<Ipv4Cidr>,
    pod_interfaces: Option<&mut pod_interfaces::PodInterfaces>,
) -> anyhow::Result<Dataplane> {
    let sizes = MapSizes {
        conntrack: args.conntrack_max,
    };
    let mut dataplane =
        Dataplane::open_sized(&args.bpf_root, sizes).context("cannot load the eBPF dataplane")?;
    let algorithm = match args.lb_algorithm {
        LbAlgorithmArg::Random => LbAlgorithm::Random,
        LbAlgorithmArg::Maglev => LbAlgorithm::Maglev,
    };
    dataplane
        .set_load_balancing(LoadBalancing {
            algorithm,
            table_size: args.maglev_table_size,
        })
        .context("cannot set the load-balancing algorithm")?;
    let xdp_mode = match args.xdp_mode {
        XdpModeArg::Auto => XdpAttachMode::Auto,
        XdpModeArg::Native => XdpAttachMode::Native,
        XdpModeArg::Generic => XdpAttachMode::Generic,
    };
    let accelerated =
        args.bpf_lb_acceleration == LbAccelerationArg::Native && serves_services(args);
    for (name, _) in devices {
        let attached = if accelerated {
            dataplane.attach_xdp_lb(name, xdp_mode)
        } else {
            dataplane.attach_counters_xdp(name, xdp_mode)
        };
        attached.with_context(|| format!("cannot attach XDP to --devices entry `{name}`"))?;
        for direction in [Direction::Ingress, Direction::Egress] {
            dataplane
                .attach_counters_tc(name, direction)
                .with_context(|| {
                    format!("cannot attach the TC counters to --devices entry `{name}`")
                })?;
        }
        if accelerated {
            log::info!("counting packets on {name}; external flows load-balanced at XDP");
        } else {
            log::info!("counting packets on {name}");
        }
    }
    if serves_services(args) {
        let cgroup = match &args.socket_lb_cgroup {
            Some(cgroup) => cgroup.clone(),
            None => {
                let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
                    .context("cannot read /proc/self/mountinfo")?;
                Dataplane::cgroup2_root(&mountinfo)
                    .context("no cgroup2 hierarchy is mounted: give --socket-lb-cgroup")?
            }
        };
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
        // SNAT of external flows to other nodes' backends needs to know which backends are
        // local: this node's pod CIDR (the pod side's, else --pod-cidr).
        // This agent's own pods sit behind veths: translated packets may go straight in.
        let runs_pods = pod_interfaces.is_some();
        let pod_cidr = match (pod_cidr, &args.pod_cidr) {
            (Some(cidr), _) => Some(cidr),
            (None, Some(text)) => Some(
                Ipv4Cidr::parse(text).map_err(|error| anyhow::anyhow!("--pod-cidr: {error}"))?,
            ),
            (None, None) => None,
        };
        let snat = match (args.node_ip.first(), pod_cidr, devices.is_empty()) {
            (Some(address), Some(cidr), false) => {
                log::info!(
                    "external flows to other nodes' backends leave SNATed to {address} \
                     (local pods: {}/{})",
                    cidr.base,
                    cidr.prefix
                );
                Some(SnatConfig {
                    address: *address,
                    local: Some((cidr.base, cidr.prefix)),
                    pod_peers: runs_pods,
                })
            }
            (None, _, false) => {
                log::info!("no SNAT of external flows: no --node-ip");
                None
            }
            (Some(_), None, false) => {
                log::info!("no SNAT of external flows: no pod CIDR (--pod-cidr)");
                None
            }
            (_, _, true) => None,
        };
        dataplane.set_snat(snat).context("cannot configure SNAT")?;
    }
    // The pods' interfaces that exist now keep their pinned links (swapped to this agent's
    // programs); the pins of pods gone meanwhile are pruned below.
    if let Some(pod_interfaces) = pod_interfaces {
        pod_interfaces.sync(&mut dataplane);
        log::info!("load-balancing Service traffic from the pods' interfaces");
    }
    dataplane
        .prune_stale_links()
        .context("cannot detach pinned programs no longer configured")?;
    Ok(dataplane)
}

/// Whether the agent load-balances Services: from a file, or from the API server.
fn serves_services(args: &Args) -> bool {
    args.services_file.is_some() || args.kubeconfig.is_some()
}

/// This node as the Service rules see it (`externalTrafficPolicy: Local`, NodePorts).
fn node(args: &Args) -> Node {
    Node {
        name: args.node_name.clone().or_else(host_name),
        addresses: args.node_ip.clone(),
    }
}

/// The Services of `--services-file`.
struct ServicesFromFile {
    path: PathBuf,
    node: Node,
    /// Modification time and length of the version last read, good or bad.
    seen: Option<(SystemTime, u64)>,
    metrics: Metrics,
    /// The cluster DNS, answering from the same file.
    dns: Option<(DnsServer, String)>,
}

impl ServicesFromFile {
    fn reload_if_changed(&mut self, dataplane: &mut Dataplane) {
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
        if let Some((dns, domain)) = &self.dns {
            dns.set_zone(Zone::build(domain, &file.services, &file.slices));
        }
        let desired = desired_state(&file.services, &file.slices, &self.node);
        let started = Instant::now();
        let applied = dataplane.apply(&desired);
        self.metrics
            .record_sync(applied.is_ok().then_some(desired.len()), started.elapsed());
        match applied {
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

/// With `--cluster-dns`: the address on the loopback (`lo:keel-dns`) and the DNS server on it
/// (its records come from the services file or the API); the server and the domain.
fn start_dns(args: &Args) -> anyhow::Result<Option<(DnsServer, String)>> {
    let Some(address) = args.cluster_dns else {
        return Ok(None);
    };
    let upstreams = if args.dns_upstream.is_empty() {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        keel_agent::dns::upstreams_from_resolv_conf(&text, address.into())
    } else {
        args.dns_upstream
            .iter()
            .map(|text| {
                text.parse::<std::net::SocketAddr>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
                    .map_err(|_| {
                        anyhow::anyhow!("--dns-upstream: `{text}` is not an IP or IP:PORT")
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    if upstreams.is_empty() {
        log::warn!(
            "DNS: no upstream resolvers (--dns-upstream, /etc/resolv.conf): names outside {} get SERVFAIL",
            args.cluster_domain
        );
    }
    keel_agent::dns::claim_address(&args.root_dir, address)
        .with_context(|| format!("cannot put {address} on {}", keel_agent::dns::INTERFACE))?;
    let server = DnsServer::new(Zone::build(&args.cluster_domain, &[], &[]), upstreams);
    server
        .clone()
        .serve((address, 53).into())
        .with_context(|| format!("cannot serve DNS on {address}:53"))?;
    Ok(Some((server, args.cluster_domain.clone())))
}

/// Reads the drop and interface counters into `metrics`; a failed read is logged and leaves
/// the last values.
fn refresh_metrics(dataplane: &Dataplane, devices: &[(String, u32)], metrics: &Metrics) {
    match dataplane.drop_stats() {
        Ok(drops) => metrics.set_drops(drops),
        Err(error) => log::warn!("metrics: cannot read the drop counters: {error:#}"),
    }
    if devices.is_empty() {
        return;
    }
    match dataplane.iface_stats() {
        Ok(stats) => metrics.set_interfaces(
            devices
                .iter()
                .map(|(name, ifindex)| {
                    (
                        name.clone(),
                        stats.get(ifindex).copied().unwrap_or_default(),
                    )
                })
                .collect(),
        ),
        Err(error) => log::warn!("metrics: cannot read the interface counters: {error:#}"),
    }
}

fn report(dataplane: &Dataplane, devices: &[(String, u32)]) -> anyhow::Result<()> {
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

#[path = "cli/pod_interfaces.rs"]
mod pod_interfaces;

#[path = "cli/pods.rs"]
mod pods;

#[path = "cli/simulate.rs"]
mod simulate;

#[path = "cli/signals.rs"]
mod signals;
