//! `keel-controlplane`: the Kubernetes-compatible API server of Keel. It speaks the Kubernetes
//! REST API and keeps all state in etcd.
//!
//! * [`storage`]: objects in etcd, and the watch cache.
//! * [`api`]: resources, defaulting, validation, selectors and `Status` errors.
//! * [`pki`]: the cluster CA, serving and client certificates, the admin kubeconfig.
//! * [`server`]: the HTTPS server, authentication, discovery and the REST handlers.
//! * [`controllers`]: the controller manager (today the namespace controller).
//! * [`scheduler`]: the scheduler, a client of the API that binds pods to nodes.
//! * [`leader`]: leader election on a `coordination.k8s.io/v1` Lease.

pub mod api;
pub mod controllers;
pub mod leader;
pub mod pki;
pub mod scheduler;
pub mod server;
pub mod storage;
