//! `keel-agent simulate`: many simulated nodes in one process (see `keel_agent::simulate`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::Parser;
use keel_agent::simulate::pods::SimPods;
use keel_agent::simulate::{Fleet, FleetSpec, client};

#[derive(Debug, Parser)]
#[command(
    name = "keel-agent simulate",
    about = "Simulated nodes: registered, kept alive and running pods as far as the API can tell, without containers"
)]
pub struct SimulateArgs {
    /// The API server's kubeconfig.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// How many nodes to simulate.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    nodes: u32,
    /// Node names are this prefix and a number from 0.
    #[arg(long, default_value = "sim-")]
    name_prefix: String,
    /// CPUs each node reports.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    cpu: u32,
    /// Memory each node reports (a quantity: 256Gi).
    #[arg(long, default_value = "256Gi")]
    memory: String,
    /// Pods each node takes (`capacity.pods`).
    #[arg(long, default_value_t = 110, value_parser = clap::value_parser!(u32).range(1..))]
    pods: u32,
    /// Labels of every node: k=v,k2=v2.
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Zones the nodes are spread over in turn (`topology.kubernetes.io/zone`).
    #[arg(long, value_delimiter = ',')]
    zones: Vec<String>,
}

/// Runs the simulated nodes until the process is stopped.
pub fn run(argv: impl Iterator<Item = std::ffi::OsString>) -> anyhow::Result<()> {
    let args = SimulateArgs::parse_from(std::iter::once("keel-agent simulate".into()).chain(argv));
    let spec = spec(&args)?;
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("cannot install rustls' crypto provider"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the Tokio runtime")?;
    runtime.block_on(async {
        let client = client::http2_client(&args.kubeconfig).await?;
        let fleet = Fleet::new(client, &spec);
        log::info!(
            "simulating {} nodes {}0..{}{}",
            spec.count,
            spec.name_prefix,
            spec.name_prefix,
            spec.count - 1
        );
        let pods = SimPods::new(fleet.clone());
        let watch_nodes = tokio::spawn(fleet.clone().watch_nodes());
        let watch_pods = tokio::spawn(pods.run());
        fleet.register_all().await?;
        let heartbeat = tokio::spawn(fleet.heartbeat());
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("cannot watch for SIGTERM")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => log::info!("interrupted, stopping"),
            _ = terminate.recv() => log::info!("terminated, stopping"),
            _ = watch_nodes => bail!("the node watch stopped"),
            _ = watch_pods => bail!("the pod watch stopped"),
            _ = heartbeat => bail!("the heartbeat stopped"),
        }
        Ok(())
    })
}

/// A DNS-1123 subdomain, what a Node's name must be.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn spec(args: &SimulateArgs) -> anyhow::Result<FleetSpec> {
    let memory_bytes = keel_agent::quantity::value(&args.memory)
        .map_err(|e| anyhow::anyhow!("--memory {}: {e}", args.memory))?;
    if memory_bytes <= 0 {
        bail!("--memory {}: must be positive", args.memory);
    }
    let mut labels = BTreeMap::new();
    for pair in args.labels.iter().filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--labels: `{pair}` is not key=value");
        };
        if key.is_empty() {
            bail!("--labels: `{pair}` has an empty key");
        }
        labels.insert(key.to_owned(), value.to_owned());
    }
    let last = format!("{}{}", args.name_prefix, args.nodes - 1);
    if !is_dns_subdomain(&last) {
        bail!(
            "--name-prefix {:?}: node names such as {last:?} must be lowercase letters, digits, \
             '-' and '.', start with a letter or digit, at most 253 characters",
            args.name_prefix
        );
    }
    if args.zones.iter().any(String::is_empty) {
        bail!("--zones: empty zone name");
    }
    Ok(FleetSpec {
        name_prefix: args.name_prefix.clone(),
        count: usize::try_from(args.nodes).context("--nodes")?,
        cpus: args.cpu,
        memory_bytes,
        max_pods: args.pods,
        labels,
        zones: args.zones.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> anyhow::Result<FleetSpec> {
        let argv = ["keel-agent simulate", "--kubeconfig", "k", "--nodes", "3"];
        spec(&SimulateArgs::try_parse_from(argv.iter().chain(extra))?)
    }

    #[test]
    fn flags_make_the_fleet_spec() {
        let spec = parse(&["--memory", "1Gi", "--labels", "a=1,b=", "--zones", "z1,z2"]).unwrap();
        assert_eq!(spec.memory_bytes, 1 << 30);
        assert_eq!(spec.labels["a"], "1");
        assert_eq!(spec.labels["b"], "");
        assert_eq!(spec.zones, ["z1", "z2"]);
        assert_eq!((spec.count, spec.cpus, spec.max_pods), (3, 32, 110));
    }

    #[test]
    fn bad_flags_are_refused_with_the_reason() {
        for (flags, says) in [
            (&["--memory", "lots"][..], "--memory"),
            (&["--memory", "0"], "--memory"),
            (&["--labels", "novalue"], "--labels"),
            (&["--labels", "=v"], "--labels"),
            (&["--name-prefix", "Sim_"], "--name-prefix"),
            (&["--zones", "z1,,z2"], "--zones"),
        ] {
            let error = parse(flags).unwrap_err().to_string();
            assert!(error.contains(says), "{flags:?}: {error}");
        }
        let zero = ["keel-agent simulate", "--kubeconfig", "k", "--nodes", "0"];
        assert!(SimulateArgs::try_parse_from(zero).is_err());
    }
}
