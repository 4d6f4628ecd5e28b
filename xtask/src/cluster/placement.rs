//! Where a cluster lives on this host: the names, addresses and ports `up` claims and `down`
//! gives back. The defaults make the cluster the README describes; a second cluster beside it
//! (the e2e suite's, or a user's experiment) names its own everywhere, so neither touches the
//! other.
//!
//! `up` records the placement in its state dir (`run/placement`, one `--flag=value` per line);
//! `down --state-dir DIR` reads it back, so only the state dir needs naming again.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Parser as _;

/// The most nodes `up --nodes` makes (addresses `.11` ... `.110` of the node subnet).
pub const MAX_NODES: u8 = 100;

/// The host's placement flags of `up`; see the module doc.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Placement {
    /// The bridge `up` creates for the node network.
    #[arg(long, default_value = "keel0", value_parser = interface_name)]
    pub bridge: String,
    /// The node network on the bridge (a /25 or larger, best inside 198.18.0.0/15, which is
    /// never routed off a machine): this host takes its first address, where the API server
    /// and the image registry listen and the single node lives; node k of `--nodes` takes the
    /// (10+k)th.
    #[arg(long, default_value = "198.18.0.0/24", value_parser = Subnet::parse)]
    pub node_subnet: Subnet,
    /// The API server's port (on the host's node-network address).
    #[arg(long, default_value_t = 6443)]
    pub api_port: u16,
    /// etcd's client port (on 127.0.0.1).
    #[arg(long, default_value_t = 2379)]
    pub etcd_client_port: u16,
    /// etcd's peer port (on 127.0.0.1).
    #[arg(long, default_value_t = 2380)]
    pub etcd_peer_port: u16,
    /// The image registry's port (on the host's node-network address).
    #[arg(long, default_value_t = 5000)]
    pub registry_port: u16,
    /// Where the nodes' pod CIDRs come from (the control plane's `--cluster-cidr`; a /24
    /// each).
    #[arg(long, default_value = "10.244.0.0/16", value_parser = Subnet::parse)]
    pub cluster_cidr: Subnet,
    /// Where each node serves cluster DNS (on its loopback; node-local DNS's address).
    #[arg(long, default_value = "169.254.20.10")]
    pub cluster_dns: Ipv4Addr,
    /// The cgroup the nodes' pods go under (in every hierarchy).
    #[arg(long, default_value = "keel", value_parser = relative_cgroup)]
    pub cgroup_root: String,
    /// Where the single node pins its eBPF maps and links; the nodes of `--nodes` pin beside
    /// it, each under its own name.
    #[arg(long, default_value = "/sys/fs/bpf/keel", value_parser = bpf_root)]
    pub bpf_root: PathBuf,
    /// The start of the names of `--nodes`' nodes and their links: node k is
    /// `<prefix>node<k>` (its network namespace too), its veth on the bridge `<prefix>n<k>`.
    #[arg(long, default_value = "keel-", value_parser = node_prefix)]
    pub node_prefix: String,
}

impl Default for Placement {
    fn default() -> Placement {
        Placement::from_args(&[]).expect("the defaults parse")
    }
}

impl Placement {
    /// The placement these flags (`--flag=value` each) give, defaults for the rest.
    pub fn from_args(args: &[String]) -> anyhow::Result<Placement> {
        #[derive(Debug, clap::Parser)]
        struct Flags {
            #[command(flatten)]
            placement: Placement,
        }
        let flags = Flags::try_parse_from(
            std::iter::once("placement".to_owned()).chain(args.iter().cloned()),
        )
        .map_err(|error| anyhow::anyhow!("{error}"))?;
        Ok(flags.placement)
    }

    /// The flags that give this placement, one `--flag=value` each.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            format!("--bridge={}", self.bridge),
            format!("--node-subnet={}", self.node_subnet),
            format!("--api-port={}", self.api_port),
            format!("--etcd-client-port={}", self.etcd_client_port),
            format!("--etcd-peer-port={}", self.etcd_peer_port),
            format!("--registry-port={}", self.registry_port),
            format!("--cluster-cidr={}", self.cluster_cidr),
            format!("--cluster-dns={}", self.cluster_dns),
            format!("--cgroup-root={}", self.cgroup_root),
            format!("--bpf-root={}", self.bpf_root.display()),
            format!("--node-prefix={}", self.node_prefix),
        ]
    }

    /// This host's address on the node network.
    pub fn host_ip(&self) -> Ipv4Addr {
        self.node_subnet.nth(1)
    }

    /// The address of node `k` (from 1) of `--nodes`.
    pub fn node_ip(&self, k: u8) -> Ipv4Addr {
        self.node_subnet.nth(10 + u32::from(k))
    }

    /// The placement recorded in `file` by [`Placement::record`]; `None` if there is none.
    pub fn recorded(file: &Path) -> anyhow::Result<Option<Placement>> {
        let text = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(error).with_context(|| format!("cannot read {}", file.display()));
            }
        };
        let args: Vec<String> = text.lines().map(str::to_owned).collect();
        Placement::from_args(&args)
            .map(Some)
            .with_context(|| format!("{} does not hold a cluster's placement", file.display()))
    }

    pub fn record(&self, file: &Path) -> anyhow::Result<()> {
        let mut text = self.to_args().join("\n");
        text.push('\n');
        std::fs::write(file, text).with_context(|| format!("cannot write {}", file.display()))
    }
}

/// An IPv4 network: its first address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    pub fn parse(text: &str) -> Result<Subnet, String> {
        let (address, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not a CIDR (ADDRESS/PREFIX)"))?;
        let network: Ipv4Addr = address
            .parse()
            .map_err(|_| format!("`{address}` is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|prefix| (8..=25).contains(prefix))
            .ok_or_else(|| format!("the prefix length of `{text}` must be 8 to 25"))?;
        let subnet = Subnet { network, prefix };
        if subnet.nth(0) != network {
            return Err(format!(
                "`{text}` has host bits set: the network is {}/{prefix}",
                subnet.nth(0)
            ));
        }
        Ok(subnet)
    }

    /// The `n`th address of the network (0: the network's own).
    pub fn nth(&self, n: u32) -> Ipv4Addr {
        let mask = u32::MAX << (32 - u32::from(self.prefix));
        Ipv4Addr::from((u32::from(self.network) & mask) + n)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn interface_name(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 15 || text.contains(['/', ' ', ':']) {
        return Err(format!(
            "`{text}` is not an interface name (1 to 15 bytes, no `/`, `:` or space)"
        ));
    }
    Ok(text.to_owned())
}

fn relative_cgroup(text: &str) -> Result<String, String> {
    if text.is_empty() || text.starts_with('/') || text.split('/').any(|part| part == "..") {
        return Err(format!(
            "`{text}` must name a cgroup below the hierarchies' roots (relative, no `..`)"
        ));
    }
    Ok(text.to_owned())
}

fn bpf_root(text: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(text);
    if !path.starts_with("/sys/fs/bpf") || path == Path::new("/sys/fs/bpf") {
        return Err(format!("`{text}` must be a directory under /sys/fs/bpf"));
    }
    Ok(path)
}

fn node_prefix(text: &str) -> Result<String, String> {
    // `<prefix>n100` must still be an interface name.
    if text.len() > 11 || text.contains(['/', ' ', ':']) {
        return Err(format!(
            "`{text}` cannot start interface names: at most 11 bytes, no `/`, `:` or space"
        ));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_readme_cluster() {
        let placement = Placement::default();
        assert_eq!(placement.bridge, "keel0");
        assert_eq!(placement.host_ip(), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(placement.node_ip(1), Ipv4Addr::new(198, 18, 0, 11));
        assert_eq!(placement.node_ip(MAX_NODES), Ipv4Addr::new(198, 18, 0, 110));
        assert_eq!(placement.cluster_cidr.to_string(), "10.244.0.0/16");
        assert_eq!(placement.bpf_root, Path::new("/sys/fs/bpf/keel"));
    }

    #[test]
    fn a_recorded_placement_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("placement");
        assert_eq!(Placement::recorded(&file).unwrap(), None);
        let placement = Placement::from_args(&[
            "--bridge=kt-e2e0".to_owned(),
            "--node-subnet=198.19.254.0/24".to_owned(),
            "--api-port=16443".to_owned(),
            "--node-prefix=kt-e2e-".to_owned(),
        ])
        .unwrap();
        placement.record(&file).unwrap();
        assert_eq!(Placement::recorded(&file).unwrap(), Some(placement.clone()));
        assert_eq!(placement.host_ip(), Ipv4Addr::new(198, 19, 254, 1));
        std::fs::write(&file, "--bridge=x\n--no-such-flag=1\n").unwrap();
        let error = format!("{:#}", Placement::recorded(&file).unwrap_err());
        assert!(
            error.contains("placement") && error.contains("no-such-flag"),
            "{error}"
        );
    }

    #[test]
    fn bad_flags_say_what_is_wrong() {
        for (flag, expected) in [
            ("--node-subnet=198.18.0.1/24", "host bits"),
            ("--node-subnet=198.18.0.0/28", "prefix length"),
            ("--cluster-cidr=10.244.0.0", "not a CIDR"),
            ("--bridge=a-very-long-bridge-name", "interface name"),
            ("--cgroup-root=/keel", "relative"),
            ("--bpf-root=/tmp/keel", "/sys/fs/bpf"),
            ("--node-prefix=much-too-long-", "11 bytes"),
        ] {
            let error = Placement::from_args(&[flag.to_owned()])
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{flag}: {error}");
        }
    }
}
