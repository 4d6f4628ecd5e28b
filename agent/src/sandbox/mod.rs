//! The pod sandbox: what a pod's containers share. A network namespace bind-mounted under the
//! agent's state directory ([`crate::sys::netns`]), its wiring to the node ([`network`]) and
//! its address from this node's pod CIDR ([`ipam`]); and the routes to the other nodes' pods
//! ([`routes`]).

pub mod ipam;
pub mod network;
pub mod routes;

pub use ipam::{Ipam, IpamError, Ipv4Cidr};
pub use network::{NetworkError, POD_GATEWAY};
