//! keel-agent: Keel's node agent.
//!
//! - [`dataplane`]: the eBPF programs, loaded from the embedded object, attached to interfaces
//!   and cgroups, and their maps; [`services`]: Services and EndpointSlices to the dataplane's
//!   desired state.
//! - Pods: [`image`] (pulls, content-addressed blobs, chain-ID snapshots, overlay rootfs),
//!   [`cgroups`] (upstream's cgroup layout and values), [`sandbox`] (network namespace, veth,
//!   IPAM), [`runtime`] (OCI bundles, runc, the keeper, logs), [`sys`] (the raw namespace and
//!   mount calls).
//! - [`reset`]: `keel-agent reset`, what a stopped agent made on its node removed.
//! - [`probe`]: container startup, liveness and readiness probes (the schedule and thresholds,
//!   and the `httpGet`, `tcpSocket` and `exec` probers).
//! - [`simulate`]: many simulated nodes in one process (`keel-agent simulate`), through the
//!   same API calls as the real agent ([`api`]).

pub mod api;
pub mod cgroups;
pub mod cni;
pub mod dataplane;
pub mod dns;
pub mod image;
pub mod metrics;
pub mod nodeapi;
pub mod pods;
pub mod probe;
pub mod quantity;
pub mod reset;
pub mod runtime;
pub mod sandbox;
pub mod services;
pub mod simulate;
pub mod sys;
