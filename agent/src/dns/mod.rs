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
/// `--cluster-dns`); `keel-agent reset` removes what carries it.
pub const INTERFACE: &str = "lo:keel-dns";
