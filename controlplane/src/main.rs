//! `keel-controlplane`: Keel's API server and controller manager (the scheduler joins them in
//! the same binary). `keel-controlplane all` runs every component in one process;
//! `keel-controlplane apiserver` and `keel-controlplane controller-manager` one each.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use keel_controlplane::controllers;
use keel_controlplane::pki::Pki;
use keel_controlplane::server::allocator::{Allocator, Cidr};
use keel_controlplane::server::auth::Tokens;
use keel_controlplane::server::{ApiServer, tls};
use keel_controlplane::storage::Store;

#[derive(Debug, Parser)]
#[command(name = "keel-controlplane", version, about = "Keel's control plane")]
struct Cli {
    #[command(subcommand)]
    component: Component,
}

#[derive(Debug, Subcommand)]
enum Component {
    /// Every control-plane component in one process: the API server and the controller
    /// manager, which reaches the API server over loopback as `system:kube-controller-manager`.
    All(ApiServerArgs),
    /// The API server alone.
    Apiserver(ApiServerArgs),
    /// The controller manager alone, a client of the API server named by `--kubeconfig`.
    ControllerManager(ControllerManagerArgs),
}

#[derive(Debug, Args)]
struct ControllerManagerArgs {
    /// The kubeconfig to reach the API server with (for example the
    /// `controller-manager.kubeconfig` that `keel-controlplane all` writes to its data dir).
    #[arg(long)]
    kubeconfig: PathBuf,
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
    /// CIDR pod networks are carved from (used by the node IPAM controller).
    #[arg(long, default_value = "10.244.0.0/16", value_parser = parse_cidr)]
    cluster_cidr: Cidr,
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
            Component::All(args) => run_apiserver(args, true).await,
            Component::Apiserver(args) => run_apiserver(args, false).await,
            Component::ControllerManager(args) => run_controller_manager(args).await,
        }
    });
    if let Err(error) = result {
        eprintln!("keel-controlplane: {error:#}");
        std::process::exit(1);
    }
}

async fn run_controller_manager(args: ControllerManagerArgs) -> anyhow::Result<()> {
    let path = &args.kubeconfig;
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("cannot read the kubeconfig {}", path.display()))?;
    let client = client_from(kubeconfig)
        .await
        .with_context(|| format!("kubeconfig {}", path.display()))?;
    log::info!(
        "controller manager: reaching the API through {}",
        path.display()
    );
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => log::info!("interrupted, stopping"),
        _ = terminate.recv() => log::info!("terminated, stopping"),
        () = controllers::run(client) => bail!("the controllers stopped"),
    }
    Ok(())
}

async fn client_from(kubeconfig: kube::config::Kubeconfig) -> anyhow::Result<kube::Client> {
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .context("not a usable kubeconfig")?;
    kube::Client::try_from(config).context("cannot make an API client")
}

/// Writes `data_dir/controller-manager.kubeconfig` (user `system:kube-controller-manager`)
/// for `server_url` and returns a client made from it.
async fn controller_manager_client(
    pki: &Pki,
    data_dir: &std::path::Path,
    server_url: &str,
) -> anyhow::Result<kube::Client> {
    let path = data_dir.join("controller-manager.kubeconfig");
    let text =
        pki.write_client_kubeconfig(&path, server_url, "system:kube-controller-manager", None)?;
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&text)
        .with_context(|| format!("kubeconfig {}", path.display()))?;
    client_from(kubeconfig).await
}

async fn run_apiserver(args: ApiServerArgs, with_controllers: bool) -> anyhow::Result<()> {
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
    log::info!(
        "cluster CIDR {} (for node IPAM), service CIDR {}",
        args.cluster_cidr,
        allocator.service_cidr
    );
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
    let controllers = if with_controllers {
        let loopback = if args.bind_address.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            args.bind_address
        };
        let url = format!("https://{}", SocketAddr::new(loopback, args.secure_port));
        let client = controller_manager_client(&pki, &args.data_dir, &url).await?;
        tokio::spawn(controllers::run(client))
    } else {
        tokio::spawn(std::future::pending())
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => log::info!("interrupted, stopping"),
        _ = terminate.recv() => log::info!("terminated, stopping"),
        result = serve => result.context("the server task failed")?,
        result = controllers => {
            result.context("the controller manager failed")?;
            bail!("the controller manager stopped");
        }
    }
    Ok(())
}
