//! The agent as a client of the API server (kube-rs): this node's `Node` and `Lease`
//! ([`node`]), the pods bound to it with their status ([`pods`]), and the Services and
//! EndpointSlices the dataplane load-balances ([`services`]). The same calls work
//! against upstream kube-apiserver.

pub mod events;
pub mod node;
pub mod pods;
pub mod refs;
pub mod services;
