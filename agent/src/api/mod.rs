//! The agent as a client of the API server (kube-rs): this node's `Node` and `Lease`
//! ([`node`]), the pods bound to it with their status ([`pods`]), the Services and
//! EndpointSlices the dataplane load-balances ([`services`]), and the other Nodes' pod CIDRs
//! and addresses for the routes to their pods ([`routes`]). The same calls work against
//! upstream kube-apiserver.

pub mod events;
pub mod node;
pub mod pods;
pub mod refs;
pub mod routes;
pub mod services;
