//! The agent's pod side, wired from the command line: the node context, registration with the
//! API server (`--kubeconfig`), the pod manager on a Tokio runtime of its own fed by the static
//! pod directory and the API, the node API, and image GC.

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
use keel_agent::nodeapi::tls::{ClientCa, TlsFiles};
use keel_agent::pods::source::ManifestDir;
use keel_agent::pods::worker::Statuses;
use keel_agent::pods::{NodeContext, PodManager, node};
use keel_agent::runtime::keeper::Keeper;
use keel_agent::runtime::logs::Rotation;
use keel_agent::runtime::runc::Runc;
use keel_agent::sandbox::{Ipam, Ipv4Cidr, network};
use keel_agent::sys::inotify::DirWatch;
use tokio::sync::{Notify, oneshot};

use crate::signals::Termination;
use crate::{Args, host_name};

/// kubelet's image GC period.
const IMAGE_GC_PERIOD: Duration = Duration::from_secs(300);
/// How often the manifest directory is read.
const MANIFEST_POLL: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Pods {
    runtime: tokio::runtime::Runtime,
    stop: oneshot::Sender<()>,
    done: std::sync::mpsc::Receiver<()>,
    /// With an API server: the Services' desired state, each time it changes.
    pub services: Option<std::sync::mpsc::Receiver<keel_agent::services::DesiredState>>,
    /// This node's pod CIDR (`--pod-cidr`, or the Node's spec.podCIDR).
    pub pod_cidr: Ipv4Cidr,
}

/// Starts the pod side; `None` when SIGINT or SIGTERM (`stop`) came while it was still
/// waiting for the API server or for the node's pod CIDR.
pub fn start(
    args: &Args,
    stop: &Termination,
    dns: Option<(keel_agent::dns::DnsServer, String)>,
) -> anyhow::Result<Option<Pods>> {
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
        Some(path) => Some(until_stopped(&runtime, stop, async {
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
    let api = match api {
        Some(None) => return Ok(None),
        Some(Some(connected)) => Some(connected?),
        None => None,
    };
    // `--pod-cidr` wins; else the Node's spec.podCIDR, as kubelet and CNI plugins take it.
    let (cidr_text, cidr_source) = match (&args.pod_cidr, &api) {
        (Some(cidr), _) => {
            let assigned = api
                .as_ref()
                .and_then(|(_, node, _)| node.spec.as_ref()?.pod_cidr.clone())
                .filter(|assigned| assigned != cidr);
            if let Some(assigned) = assigned {
                log::warn!(
                    "--pod-cidr {cidr} differs from node {node_name}'s spec.podCIDR {assigned}: \
                     the other nodes route {assigned} here, so pods on them cannot reach these pods"
                );
            }
            (cidr.clone(), "--pod-cidr".to_owned())
        }
        (None, Some((client, node, _))) => (
            match node.spec.as_ref().and_then(|spec| spec.pod_cidr.clone()) {
                Some(cidr) => cidr,
                None => {
                    match until_stopped(&runtime, stop, api_node::wait_for_pod_cidr(client, node))?
                    {
                        Some(cidr) => cidr,
                        None => return Ok(None),
                    }
                }
            },
            format!("spec.podCIDR of node {node_name}"),
        ),
        (None, None) => anyhow::bail!(
            "no pod CIDR: give --pod-cidr (without --kubeconfig no control plane assigns one)"
        ),
    };
    let cidr = Ipv4Cidr::parse(&cidr_text).map_err(|e| anyhow::anyhow!("{cidr_source}: {e}"))?;
    let cgroups = CgroupManager::detect(&args.cgroup_root)?;
    let ipam = Ipam::open(cidr, &root.join("ipam"))?;
    let images = ImageStore::open(&root.join("images"), args.insecure_registries.clone())?;
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let keeper = Keeper::ensure(&root.join("keeper"), &exe)?;
    let meminfo = std::fs::read_to_string("/proc/meminfo").context("cannot read /proc/meminfo")?;
    let events = api.as_ref().map(|(client, _, _)| {
        let (sink, receiver) = tokio::sync::mpsc::unbounded_channel();
        runtime.spawn(keel_agent::api::events::record(
            client.clone(),
            node_name.clone(),
            receiver,
        ));
        sink
    });
    let services = api.as_ref().map(|(client, _, _)| {
        let (sink, receiver) = std::sync::mpsc::channel();
        runtime.spawn(keel_agent::api::services::feed(
            client.clone(),
            crate::node(args),
            sink,
        ));
        receiver
    });
    if let (Some((client, _, _)), Some((server, domain))) = (&api, dns) {
        runtime.spawn(keel_agent::api::services::dns_feed(
            client.clone(),
            domain,
            server,
        ));
    }
    network::enable_forwarding().context("cannot enable IPv4 forwarding for pods")?;
    if let Some((client, _, _)) = &api {
        if args.auto_direct_node_routes {
            runtime.spawn(keel_agent::api::routes::run(
                client.clone(),
                node_name.clone(),
                cidr,
            ));
            log::info!(
                "routing the other nodes' pod CIDRs via their InternalIPs (proto {})",
                keel_agent::sandbox::routes::ROUTE_PROTOCOL
            );
        } else {
            log::info!("no routes to the other nodes' pods (--auto-direct-node-routes=false)");
        }
    }
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
        cluster_dns: args
            .cluster_dns
            .map(|address| keel_agent::pods::dns::ClusterDns {
                address,
                domain: args.cluster_domain.clone(),
            }),
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
        let client_ca = match (&args.client_ca_file, &args.kubeconfig) {
            (Some(path), _) => Some(ClientCa::from_pem_file(path).context("--client-ca-file")?),
            (None, Some(kubeconfig)) => runtime.block_on(kubeconfig_ca(kubeconfig))?,
            (None, None) => None,
        };
        let tls = keel_agent::nodeapi::tls::server_config(
            &files,
            &node_name,
            &addresses,
            client_ca.as_ref(),
        )
        .context("node API certificate")?;
        let address = args.node_api_address.unwrap_or(if client_ca.is_some() {
            std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
        } else {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind((address, args.node_api_port)))
            .with_context(|| format!("--node-api-port {}", args.node_api_port))?;
        let api = NodeApi {
            statuses: Arc::clone(&statuses),
            pod_logs_dir: args.pod_logs_dir.clone(),
            node_name: node_name.clone(),
            cgroups: ctx.cgroups.clone(),
            runc: ctx.runc.clone(),
            netns_dir: root.join("netns"),
            require_client_certificate: client_ca.is_some(),
        };
        runtime.spawn(api.serve(listener, tls));
        log::info!(
            "node API on https://{address}:{}{}",
            args.node_api_port,
            client_ca
                .as_ref()
                .map_or(String::from(", clients not authenticated"), |ca| format!(
                    ", client certificates from the CA in {}",
                    ca.source.display()
                ))
        );
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
        let api = api.map(|(client, node, mut facts)| {
            // The pod CIDR is known by now: the heartbeat's first status (at once) says Ready.
            facts.network_ready = true;
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
                    // Someone else changed what the API says (the node lifecycle controller
                    // marks pods not Ready when the node went Unknown): write ours again, as
                    // kubelet's status manager reconciles.
                    if let Some(api_pod) = from_api.get(uid)
                        && written.contains_key(uid)
                        && pods::status_differs(api_pod.status.as_ref(), status)
                    {
                        written.remove(uid);
                    }
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
    Ok(Some(Pods {
        runtime,
        stop,
        done,
        services,
        pod_cidr: cidr,
    }))
}

/// Runs `work` on `runtime` until it is done (`Some`) or SIGINT / SIGTERM arrives (`None`).
fn until_stopped<T>(
    runtime: &tokio::runtime::Runtime,
    stop: &Termination,
    work: impl std::future::Future<Output = T>,
) -> anyhow::Result<Option<T>> {
    runtime.block_on(async {
        tokio::pin!(work);
        loop {
            tokio::select! {
                value = &mut work => return Ok(Some(value)),
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if stop.wait(Duration::ZERO)? {
                        log::info!("stopping before the node is up");
                        return Ok(None);
                    }
                }
            }
        }
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
        for reference in keel_agent::image::gc::plan(&stored, &in_use, used, capacity, high, low) {
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

/// The client configuration of a kubeconfig.
async fn load_kubeconfig(kubeconfig: &Path) -> anyhow::Result<kube::Config> {
    kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig)
            .with_context(|| format!("--kubeconfig {}", kubeconfig.display()))?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .with_context(|| format!("--kubeconfig {}", kubeconfig.display()))
}

/// The CA of the kubeconfig's cluster, which signs the API server's client certificates.
async fn kubeconfig_ca(kubeconfig: &Path) -> anyhow::Result<Option<ClientCa>> {
    Ok(load_kubeconfig(kubeconfig)
        .await?
        .root_cert
        .filter(|certificates| !certificates.is_empty())
        .map(|certificates| ClientCa {
            certificates,
            source: kubeconfig.to_owned(),
        }))
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
    let config = load_kubeconfig(kubeconfig).await?;
    let client = kube::Client::try_from(config).context("cannot build the API client")?;
    let mut facts = api_node::NodeFacts::read(
        node_name,
        args.node_ip.first().copied(),
        args.pod_cidr.clone(),
        &args.root_dir,
    );
    facts.kubelet_port = (args.node_api_port != 0).then_some(args.node_api_port);
    let node = api_node::register(&client, &mut facts)
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
        match api_node::update_status(&client, &facts, &api_node::transition_times(&node)).await {
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
