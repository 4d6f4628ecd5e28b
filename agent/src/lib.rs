//! keel-agent: Keel's node agent.
//!
//! - [`dataplane`]: the eBPF programs, loaded from the embedded object, attached to interfaces
//!   and cgroups, and their maps; [`services`]: Services and EndpointSlices to the dataplane's
//!   desired state.
//! - Pods: [`cgroups`] (upstream's cgroup layout and values), [`sandbox`] (network namespace,
//!   veth, IPAM), [`sys`] (the raw namespace and mount calls).

pub mod cgroups;
pub mod dataplane;
pub mod quantity;
pub mod runtime;
pub mod sandbox;
pub mod services;
pub mod sys;
