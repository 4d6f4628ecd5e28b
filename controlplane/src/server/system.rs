//! What the API server keeps in place itself, as upstream's bootstrap controllers do: the
//! system namespaces, and the `default/kubernetes` Service with an EndpointSlice (and
//! Endpoints) listing every live API server. Each API server renews a Lease
//! `kube-system/apiserver-<address>`; the endpoints are the addresses whose Lease is fresh
//! (upstream's "lease" endpoint reconciler).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::ApiServer;
use crate::api::{defaults, meta};
use crate::storage::{Resource, StorageError};

pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];
/// How often the lease is renewed and the endpoints reconciled.
const INTERVAL: Duration = Duration::from_secs(10);
/// A lease older than this no longer counts.
const LEASE_SECONDS: i64 = 45;

fn key(
    group: &str,
    resource: &str,
    namespace: Option<&str>,
    name: &str,
) -> Result<crate::storage::ResourceKey, StorageError> {
    let resource = Resource::new(group, resource)?;
    match namespace {
        Some(namespace) => resource.namespaced_key(namespace, name),
        None => resource.cluster_key(name),
    }
}

impl ApiServer {
    /// Creates what must exist; safe to run on every start and by several servers.
    pub async fn bootstrap(self: &Arc<Self>) -> Result<(), StorageError> {
        for name in SYSTEM_NAMESPACES {
            let mut namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}});
            defaults::apply("", "Namespace", &mut namespace);
            self.create_if_missing(key("", "namespaces", None, name)?, namespace, "Namespace")
                .await?;
        }
        self.reconcile_kubernetes_service().await
    }

    async fn create_if_missing(
        &self,
        key: crate::storage::ResourceKey,
        mut object: Value,
        kind: &str,
    ) -> Result<(), StorageError> {
        let info = self
            .catalog
            .resources()
            .iter()
            .find(|info| info.kind == kind)
            .cloned();
        if let Some(info) = info {
            meta::prepare_create(&info, &mut object);
            if kind == "Namespace" {
                object["status"] = json!({"phase": "Active"});
            }
            if kind == "Service" {
                object["status"] = json!({"loadBalancer": {}});
            }
        }
        match self.store.create(&key, object).await {
            Ok(_) | Err(StorageError::AlreadyExists { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Renews this server's lease and rewrites the `kubernetes` endpoints from fresh leases.
    async fn reconcile_kubernetes_service(&self) -> Result<(), StorageError> {
        let ip = self.allocator.service_cidr.first();
        if let Err(error) = self
            .allocator
            .reserve_ip(&self.store, ip, "default/kubernetes")
            .await
        {
            log::warn!("cannot reserve {ip} for the kubernetes Service: {error}");
        }
        let mut service = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()],
                     "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": self.secure_port}]},
        });
        defaults::apply("", "Service", &mut service);
        self.create_if_missing(
            key("", "services", Some("default"), "kubernetes")?,
            service,
            "Service",
        )
        .await?;

        let address = self.advertise_address.to_string();
        let lease_name = format!("apiserver-{}", address.replace(['.', ':'], "-"));
        let lease_key = key(
            "coordination.k8s.io",
            "leases",
            Some("kube-system"),
            &lease_name,
        )?;
        let now = jiff::Timestamp::now();
        let renew = now.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string();
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": lease_name, "namespace": "kube-system", "labels": {"apiserver.keel.dev/address": address, "k8s.io/component": "kube-apiserver"}},
            "spec": {"holderIdentity": address, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": renew},
        });
        match self.store.get(&lease_key).await {
            Ok(mut existing) => {
                existing["spec"]["renewTime"] = json!(renew);
                existing["spec"]["holderIdentity"] = json!(address);
                self.store.update(&lease_key, existing).await?;
            }
            Err(StorageError::NotFound { .. }) => {
                self.create_if_missing(lease_key, lease, "Lease").await?
            }
            Err(error) => return Err(error),
        }
        let leases = self
            .store
            .list(
                &Resource::new("coordination.k8s.io", "leases")?.namespace_prefix("kube-system")?,
                &Default::default(),
            )
            .await?;
        let mut addresses: Vec<String> = leases
            .items
            .iter()
            .filter_map(|lease| {
                let address = lease
                    .pointer("/metadata/labels/apiserver.keel.dev~1address")?
                    .as_str()?;
                let renewed: jiff::Timestamp =
                    lease.pointer("/spec/renewTime")?.as_str()?.parse().ok()?;
                (now.duration_since(renewed).as_secs() < LEASE_SECONDS).then(|| address.to_owned())
            })
            .collect();
        addresses.sort();
        addresses.dedup();
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": "IPv4",
            "endpoints": addresses.iter().map(|address| json!({"addresses": [address], "conditions": {"ready": true}})).collect::<Vec<_>>(),
            "ports": [{"name": "https", "port": self.secure_port, "protocol": "TCP"}],
        });
        let endpoints = json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
            "subsets": [{"addresses": addresses.iter().map(|address| json!({"ip": address})).collect::<Vec<_>>(),
                         "ports": [{"name": "https", "port": self.secure_port, "protocol": "TCP"}]}],
        });
        for (resource, group, object, kind) in [
            ("endpointslices", "discovery.k8s.io", slice, "EndpointSlice"),
            ("endpoints", "", endpoints, "Endpoints"),
        ] {
            let key = key(group, resource, Some("default"), "kubernetes")?;
            match self.store.get(&key).await {
                Ok(existing) => {
                    let mut updated = existing.clone();
                    for field in ["endpoints", "ports", "subsets", "addressType"] {
                        if let Some(value) = object.get(field) {
                            updated[field] = value.clone();
                        }
                    }
                    if updated != existing {
                        self.store.update(&key, updated).await?;
                    }
                }
                Err(StorageError::NotFound { .. }) => {
                    self.create_if_missing(key, object, kind).await?
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Keeps the lease and the `kubernetes` endpoints current, forever.
    pub async fn run_system_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(INTERVAL).await;
            if let Err(error) = self.reconcile_kubernetes_service().await {
                log::warn!("kubernetes Service endpoints: {error}");
            }
        }
    }
}
