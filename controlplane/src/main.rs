//! `keel-controlplane`: Keel's API server, controller manager and scheduler.
//! `keel-controlplane all` runs every component in one process; `keel-controlplane apiserver`,
//! `keel-controlplane controller-manager` and `keel-controlplane scheduler` one each.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use keel_controlplane::leader::{self, LeaseConfig};
use keel_controlplane::pki::Pki;
use keel_controlplane::server::allocator::{Allocator, Cidr};
use keel_controlplane::server::auth::Tokens;
use keel_controlplane::server::{ApiServer, tls};
use keel_controlplane::storage::Store;
use keel_controlplane::{controllers, scheduler};

#[derive(Debug, Parser)]
#[command(name = "keel-controlplane", version, about = "Keel's control plane")]
struct Cli {
    #[command(subcommand)]
    component: Component,
}

#[derive(Debug, Subcommand)]
enum Component {
    /// Every control-plane component in one process: the API server, the controller manager
    /// and the scheduler, which reach the API server over loopback as
    /// `system:kube-controller-manager` and `system:kube-scheduler`.
    All(AllArgs),
    /// The API server alone.
    Apiserver(ApiServerArgs),
    /// The controller manager alone, a client of the API server named by `--kubeconfig`.
    ControllerManager(ControllerManagerArgs),
    /// The scheduler alone, a client of the API server named by `--kubeconfig`.
    Scheduler(ControllerManagerArgs),
}

#[derive(Debug, Args)]
struct AllArgs {
    #[command(flatten)]
    apiserver: ApiServerArgs,
    #[command(flatten)]
    election: ElectionArgs,
}

#[derive(Debug, Args)]
struct ElectionArgs {
    /// Run the component's work only while holding its Lease in kube-system (upstream's
    /// default), so that several copies can run and one acts.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    leader_elect: bool,
}

#[derive(Debug, Args)]
struct ControllerManagerArgs {
    /// The kubeconfig to reach the API server with (for example the
    /// `controller-manager.kubeconfig` or `scheduler.kubeconfig` that `keel-controlplane all`
    /// writes to its data dir).
    #[arg(long)]
    kubeconfig: PathBuf,
    #[command(flatten)]
    controllers: ControllerArgs,
    #[command(flatten)]
    election: ElectionArgs,
}

/// A control-plane component that runs as a client of the API server.
#[derive(Debug, Clone, Copy)]
enum Client {
    ControllerManager,
    Scheduler,
}

impl Client {
    fn lease(self) -> &'static str {
        match self {
            Client::ControllerManager => "kube-controller-manager",
            Client::Scheduler => "kube-scheduler",
        }
    }

    fn user(self) -> &'static str {
        match self {
            Client::ControllerManager => "system:kube-controller-manager",
            Client::Scheduler => "system:kube-scheduler",
        }
    }

    fn kubeconfig_file(self) -> &'static str {
        match self {
            Client::ControllerManager => "controller-manager.kubeconfig",
            Client::Scheduler => "scheduler.kubeconfig",
        }
    }

    /// Runs the component on `client` (while leading, when `leader_elect`) until `shutdown`.
    async fn run(
        self,
        client: kube::Client,
        leader_elect: bool,
        config: controllers::Config,
        shutdown: impl Future<Output = ()>,
    ) {
        let work = {
            let client = client.clone();
            move || {
                let client = client.clone();
                let config = config.clone();
                async move {
                    match self {
                        Client::ControllerManager => controllers::run(client, config).await,
                        Client::Scheduler => scheduler::run(client).await,
                    }
                }
            }
        };
        if leader_elect {
            leader::run_while_leading(client, LeaseConfig::new(self.lease()), work, shutdown).await;
        } else {
            tokio::select! {
                () = work() => {}
                () = shutdown => {}
            }
        }
    }
}

/// kube-controller-manager's flags.
#[derive(Debug, Args)]
struct ControllerArgs {
    /// CIDR pod networks are carved from (node IPAM gives each node a subnet of it).
    #[arg(long, default_value = "10.244.0.0/16", value_parser = parse_cidr)]
    cluster_cidr: Cidr,
    /// The prefix length of each node's pod CIDR.
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// How long a node may go without renewing its Lease or status before it is marked
    /// Unknown and tainted unreachable (a duration: 40s, 2m).
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    node_monitor_grace_period: Duration,
    /// The same for a node that has not reported a Ready condition yet.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    node_startup_grace_period: Duration,
    /// How often the node lifecycle controller looks at the nodes.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    node_monitor_period: Duration,
    /// Most endpoints in one EndpointSlice.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    max_endpoints_per_slice: u16,
}

impl ControllerArgs {
    fn config(&self) -> anyhow::Result<controllers::Config> {
        let cidrs =
            controllers::node_ipam::CidrSet::new(self.cluster_cidr, self.node_cidr_mask_size)?;
        log::info!(
            "cluster CIDR {} (node IPAM, /{} per node)",
            self.cluster_cidr,
            self.node_cidr_mask_size
        );
        Ok(controllers::Config {
            node_cidrs: Some(cidrs),
            node_monitor: controllers::node_lifecycle::Timing {
                monitor_period: self.node_monitor_period,
                grace_period: self.node_monitor_grace_period,
                startup_grace_period: self.node_startup_grace_period,
            },
            endpointslice: controllers::endpointslice::Settings {
                max_endpoints_per_slice: usize::from(self.max_endpoints_per_slice),
            },
        })
    }
}

/// A Go-style duration as kube-controller-manager's flags take: `500ms`, `40s`, `5m`, `1h`, or
/// a combination (`1m30s`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration (such as 40s, 500ms, 2m)");
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        total += unit * u32::try_from(number).map_err(|_| bad())?;
        rest = &rest[unit_len..];
    }
    if total.is_zero() {
        return Err(format!("{text:?}: must be more than zero"));
    }
    Ok(total)
}

#[derive(Debug, Args)]
struct ApiServerArgs {
    /// etcd client URLs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    etcd_servers: Vec<String>,
    /// Where the CA, certificates and admin.kubeconfig live.
    #[arg(long, default_value = "/var/lib/keel/controlplane")]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: IpAddr,
    /// HTTPS port.
    #[arg(long, default_value_t = 6443)]
    secure_port: u16,
    /// The address other members of the cluster reach this server at (default: the bind
    /// address, or 127.0.0.1 when that is unspecified).
    #[arg(long)]
    advertise_address: Option<IpAddr>,
    /// CIDR Service ClusterIPs are allocated from.
    #[arg(long, default_value = "10.96.0.0/12", value_parser = parse_cidr)]
    service_cluster_ip_range: Cidr,
    /// Port range NodePorts are allocated from.
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    service_node_port_range: RangeInclusive<u16>,
    /// The controllers' flags (used by `all`).
    #[command(flatten)]
    controllers: ControllerArgs,
    /// Static bearer tokens: CSV lines `token,user,uid,"group1,group2"`.
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// Extra names or addresses for the serving certificate, comma-separated.
    #[arg(long, value_delimiter = ',')]
    tls_san: Vec<String>,
}

fn parse_cidr(text: &str) -> Result<Cidr, String> {
    text.parse()
}

fn parse_port_range(text: &str) -> Result<RangeInclusive<u16>, String> {
    let (first, last) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?} is not a port range (first-last)"))?;
    let first: u16 = first
        .trim()
        .parse()
        .map_err(|_| format!("{first:?} is not a port"))?;
    let last: u16 = last
        .trim()
        .parse()
        .map_err(|_| format!("{last:?} is not a port"))?;
    if first == 0 || first > last {
        return Err(format!(
            "{text:?} must be first-last with 0 < first <= last"
        ));
    }
    Ok(first..=last)
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    // kube's client TLS uses the process-wide rustls provider; Keel uses ring throughout.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("keel-controlplane: cannot start the async runtime: {error}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.component {
            Component::All(args) => run_apiserver(args.apiserver, Some(args.election)).await,
            Component::Apiserver(args) => run_apiserver(args, None).await,
            Component::ControllerManager(args) => run_client(Client::ControllerManager, args).await,
            Component::Scheduler(args) => run_client(Client::Scheduler, args).await,
        }
    });
    if let Err(error) = result {
        eprintln!("keel-controlplane: {error:#}");
        std::process::exit(1);
    }
}

async fn run_client(component: Client, args: ControllerManagerArgs) -> anyhow::Result<()> {
    let config = args.controllers.config()?;
    let path = &args.kubeconfig;
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
    let client = client_from(kubeconfig)
        .await
        .with_context(|| format!("kubeconfig {}", path.display()))?;
    log::info!("{component:?}: reaching the API through {}", path.display());
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => log::info!("interrupted, stopping"),
            _ = terminate.recv() => log::info!("terminated, stopping"),
        }
    };
    component
        .run(client, args.election.leader_elect, config, shutdown)
        .await;
    Ok(())
}

async fn client_from(kubeconfig: kube::config::Kubeconfig) -> anyhow::Result<kube::Client> {
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .context("not a usable kubeconfig")?;
    kube::Client::try_from(config).context("cannot make an API client")
}

/// Writes the component's kubeconfig into `data_dir` (`controller-manager.kubeconfig` for
/// `system:kube-controller-manager`, `scheduler.kubeconfig` for `system:kube-scheduler`)
/// for `server_url` and returns a client made from it.
async fn component_client(
    component: Client,
    pki: &Pki,
    data_dir: &std::path::Path,
    server_url: &str,
) -> anyhow::Result<kube::Client> {
    let path = data_dir.join(component.kubeconfig_file());
    let text = pki.write_client_kubeconfig(&path, server_url, component.user(), None)?;
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&text)
        .with_context(|| format!("kubeconfig {}", path.display()))?;
    client_from(kubeconfig).await
}

/// Runs the API server; with `clients` (`keel-controlplane all`) also the controller manager
/// and the scheduler over loopback.
async fn run_apiserver(args: ApiServerArgs, clients: Option<ElectionArgs>) -> anyhow::Result<()> {
    let advertise = args
        .advertise_address
        .unwrap_or(if args.bind_address.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            args.bind_address
        });
    let tokens = match &args.token_auth_file {
        Some(path) => Tokens::load(path)?,
        None => Tokens::default(),
    };
    let service_ip = args.service_cluster_ip_range.first().to_string();
    let mut hosts = vec![
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
        advertise.to_string(),
        service_ip,
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        "kubernetes.default.svc".to_owned(),
        "kubernetes.default.svc.cluster.local".to_owned(),
    ];
    if !args.bind_address.is_unspecified() {
        hosts.push(args.bind_address.to_string());
    }
    hosts.extend(args.tls_san.iter().cloned());
    let server_url = format!("https://{}", SocketAddr::new(advertise, args.secure_port));
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let pki = Pki::ensure(&args.data_dir, &hosts, &server_url)?;
    let tls = tls::server_config(&pki)?;

    let endpoints = args.etcd_servers.join(",");
    let store = tokio::time::timeout(Duration::from_secs(10), Store::connect(&args.etcd_servers))
        .await
        .map_err(|_| anyhow::anyhow!("cannot reach etcd at {endpoints}: no answer within 10s"))?
        .with_context(|| format!("cannot reach etcd at {endpoints}"))?;
    // etcd may still be starting (electing itself leader): retry for 10 s, as kube-apiserver
    // waits for its storage, then give up with the last error.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, store.current_revision()).await {
            Ok(Ok(_)) => break,
            Ok(Err(error)) if tokio::time::Instant::now() >= deadline => {
                bail!(
                    "cannot reach etcd at {endpoints}: {:#}",
                    anyhow::Error::from(error)
                )
            }
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(_) => bail!("cannot reach etcd at {endpoints}: no answer within 10s"),
        }
    }
    let listener = tokio::net::TcpListener::bind((args.bind_address, args.secure_port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}:{}",
                args.bind_address, args.secure_port
            )
        })?;
    let allocator = Allocator {
        service_cidr: args.service_cluster_ip_range,
        node_ports: args.service_node_port_range,
    };
    log::info!("service CIDR {}", allocator.service_cidr);
    let controller_config = if clients.is_some() {
        Some(args.controllers.config()?)
    } else {
        None
    };
    let kubelet_client = keel_controlplane::server::proxy::node::client_config(&pki.kubelet_client)
        .map_err(|error| anyhow::anyhow!("cannot set up TLS towards node agents: {error}"))?;
    let server = Arc::new(
        ApiServer::new(store, tokens, allocator, advertise, args.secure_port)
            .with_kubelet_client(kubelet_client),
    );
    server
        .bootstrap()
        .await
        .context("cannot create the system namespaces and the kubernetes Service")?;
    log::info!(
        "serving the Kubernetes API on https://{}:{} (admin kubeconfig: {})",
        args.bind_address,
        args.secure_port,
        args.data_dir.join("admin.kubeconfig").display()
    );
    tokio::spawn(server.clone().run_system_loop());
    let serve = tokio::spawn(server.serve(listener, tls));
    // Each client component stops (releasing its Lease) when `stopping` is notified.
    let stopping = Arc::new(tokio::sync::Notify::new());
    let mut components = tokio::task::JoinSet::new();
    if let (Some(election), Some(config)) = (clients, controller_config) {
        let loopback = if args.bind_address.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            args.bind_address
        };
        let url = format!("https://{}", SocketAddr::new(loopback, args.secure_port));
        for component in [Client::ControllerManager, Client::Scheduler] {
            let client = component_client(component, &pki, &args.data_dir, &url).await?;
            let stopping = stopping.clone();
            let leader_elect = election.leader_elect;
            let config = config.clone();
            components.spawn(async move {
                let shutdown = async move { stopping.notified().await };
                component.run(client, leader_elect, config, shutdown).await;
                component
            });
        }
    }
    let component_ended = async {
        match components.join_next().await {
            Some(ended) => ended,
            None => std::future::pending().await,
        }
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => log::info!("interrupted, stopping"),
        _ = terminate.recv() => log::info!("terminated, stopping"),
        result = serve => result.context("the server task failed")?,
        ended = component_ended => {
            let component = ended.context("a control-plane component failed")?;
            bail!("the {component:?} stopped");
        }
    }
    // Leaders give up their Leases so that another control plane takes over at once.
    stopping.notify_waiters();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while components.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_go_writes_them() {
        assert_eq!(parse_duration("40s"), Ok(Duration::from_secs(40)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "40", "s", "4x", "0s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
