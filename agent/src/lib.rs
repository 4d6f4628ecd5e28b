//! keel-agent: Keel's node agent.
//!
//! - [`dataplane`]: the eBPF programs, loaded from the embedded object, attached to interfaces
//!   and cgroups, and their maps; [`services`]: Services and EndpointSlices to the dataplane's
//!   desired state.
//! - Pods: [`image`] (pulls, content-addressed blobs, chain-ID snapshots, overlay rootfs),
//!   [`cgroups`] (upstream's cgroup layout and values), [`sandbox`] (network namespace, veth,
//!   IPAM), [`runtime`] (OCI bundles, runc, the keeper, logs), [`sys`] (the raw namespace and
//!   mount calls).
//! - [`simulate`]: many simulated nodes in one process (`keel-agent simulate`), through the
//!   same API calls as the real agent ([`api`]).

pub mod api;
pub mod cgroups;
pub mod dataplane;
pub mod image;
pub mod nodeapi;
pub mod pods;
pub mod quantity;
pub mod runtime;
pub mod sandbox;
pub mod services;
pub mod simulate;
pub mod sys;
