//! Cluster DNS served by each agent (the Kubernetes DNS specification, as CoreDNS's
//! `kubernetes` plugin answers it) from the same Services and EndpointSlices the dataplane
//! load-balances, on a node-local address (`--cluster-dns`, node-local DNS's `169.254.20.10`,
//! on the loopback interface under the label `lo:keel-dns`). Names outside the cluster domain are forwarded
//! to the host's resolvers.
//!
//! Records ([`Zone`], cluster domain `--cluster-domain`, default `cluster.local`):
//! - `<svc>.<ns>.svc.<domain>` A: the ClusterIP; for a headless Service the ready endpoints;
//! - `<hostname>.<svc>.<ns>.svc.<domain>` A for a headless Service's endpoints (their
//!   `hostname`, else the address with dashes, as CoreDNS names them);
//! - `_<port>._<proto>.<svc>.<ns>.svc.<domain>` SRV for named ports (the Service for a
//!   ClusterIP, each endpoint for a headless Service);
//! - `<a-b-c-d>.<ns>.pod.<domain>` A: the address the name spells;
//! - an ExternalName Service: a CNAME to its `externalName`;
//! - anything else in the domain: NXDOMAIN (or NODATA for a name that exists), with the SOA.

mod server;
mod zone;

pub use server::{DnsServer, ensure_interface, remove_interface, upstreams_from_resolv_conf};
pub use zone::{DEFAULT_DOMAIN, Zone};

/// The node-local address the agent serves DNS on unless told otherwise (node-local DNS's).
pub const DEFAULT_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 20, 10);

/// The label of the address on the loopback interface that holds [`DEFAULT_ADDRESS`] (or
/// `--cluster-dns`).
pub const INTERFACE: &str = "lo:keel-dns";

/// The file under the agent's root dir that records the address it put on the loopback, so
/// `keel-agent reset` removes that one and no other agent's.
const ADDRESS_FILE: &str = "cluster-dns";

/// Puts `address` on the loopback interface ([`ensure_interface`]) and records it under
/// `root_dir` for [`release_address`].
pub fn claim_address(
    root_dir: &std::path::Path,
    address: std::net::Ipv4Addr,
) -> std::io::Result<()> {
    std::fs::create_dir_all(root_dir)?;
    std::fs::write(root_dir.join(ADDRESS_FILE), format!("{address}\n"))?;
    ensure_interface(address)
}

/// Removes the address the agent of `root_dir` claimed, if any, and its record.
pub fn release_address(root_dir: &std::path::Path) -> std::io::Result<()> {
    let record = root_dir.join(ADDRESS_FILE);
    let text = match std::fs::read_to_string(&record) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    let address: std::net::Ipv4Addr = text.trim().parse().map_err(|_| {
        std::io::Error::other(format!(
            "{}: `{}` is not an IPv4 address",
            record.display(),
            text.trim()
        ))
    })?;
    remove_interface(address)?;
    std::fs::remove_file(record)
}
