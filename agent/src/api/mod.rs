//! The agent as a client of the API server (kube-rs): this node's `Node` and `Lease`
//! ([`node`]), and the pods bound to it with their status ([`pods`]). The same calls work
//! against upstream kube-apiserver.

pub mod events;
pub mod node;
pub mod pods;
pub mod refs;
