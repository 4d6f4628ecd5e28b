//! `keel-controlplane`: the Kubernetes-compatible API server of Keel. It speaks the Kubernetes
//! REST API and keeps all state in etcd; [`storage`] is its etcd layer.

pub mod storage;
