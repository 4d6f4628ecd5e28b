//! This node in the API, as kubelet keeps it: the `Node` object registered at start (capacity,
//! allocatable, addresses, nodeInfo, the four conditions), its status refreshed every
//! [`STATUS_PERIOD`], and its `Lease` in `kube-node-lease` renewed every [`LEASE_RENEW`] (what
//! the node lifecycle controller watches).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// kubelet's `nodeStatusUpdateFrequency`.
pub const STATUS_PERIOD: Duration = Duration::from_secs(10);
/// kubelet renews its lease every quarter of its duration.
pub const LEASE_DURATION_SECONDS: i32 = 40;
pub const LEASE_RENEW: Duration = Duration::from_secs(10);
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// kubelet's default `maxPods`.
pub const MAX_PODS: u32 = 110;
/// What `nodeInfo.kubeletVersion` reports: the API version Keel serves.
pub const KUBELET_VERSION: &str = "v1.33.0-keel";

/// What the node is made of.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub name: String,
    pub internal_ip: Option<Ipv4Addr>,
    pub pod_cidr: Option<String>,
    /// Whether the pod network is ready: the node has its pod CIDR. Until then the node
    /// reports Ready=False, as kubelet does while its network plugin is not ready.
    pub network_ready: bool,
    pub cpus: u32,
    pub memory_bytes: i64,
    pub ephemeral_storage_bytes: u64,
    pub kernel_version: String,
    pub os_image: String,
    pub machine_id: String,
    pub boot_id: String,
    pub runtime_version: String,
    /// `capacity.pods` (kubelet's `maxPods`).
    pub max_pods: u32,
    /// Labels beyond the well-known ones (`kubernetes.io/hostname`, `os`, `arch`).
    pub labels: BTreeMap<String, String>,
    /// The node API's port (`status.daemonEndpoints.kubeletEndpoint.Port`).
    pub kubelet_port: Option<u16>,
}

impl NodeFacts {
    /// Reads the host's facts (`/proc`, `/etc/os-release`, `statvfs` of `root_dir`).
    pub fn read(
        name: &str,
        internal_ip: Option<Ipv4Addr>,
        pod_cidr: Option<String>,
        root_dir: &std::path::Path,
    ) -> NodeFacts {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let os_image = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_else(|| "Linux".to_owned());
        let meminfo = read("/proc/meminfo");
        NodeFacts {
            name: name.to_owned(),
            internal_ip,
            network_ready: pod_cidr.is_some(),
            pod_cidr,
            cpus: std::thread::available_parallelism()
                .map_or(1, |n| u32::try_from(n.get()).unwrap_or(1)),
            memory_bytes: crate::pods::node::memory_capacity(&meminfo).unwrap_or(0),
            ephemeral_storage_bytes: disk_bytes(root_dir),
            kernel_version: read("/proc/sys/kernel/osrelease"),
            os_image,
            machine_id: read("/etc/machine-id"),
            boot_id: read("/proc/sys/kernel/random/boot_id"),
            runtime_version: "runc://1".to_owned(),
            max_pods: MAX_PODS,
            labels: BTreeMap::new(),
            kubelet_port: None,
        }
    }
}

fn disk_bytes(path: &std::path::Path) -> u64 {
    crate::sys::filesystem_bytes(path).map_or(0, |(total, _)| total)
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// Why a node whose pod network is not ready is not Ready (kubelet's wording, with the
/// runtime's network condition in it).
pub const NETWORK_NOT_READY: &str = "container runtime network not ready: NetworkReady=false \
     reason:NetworkPluginNotReady message:the node has no pod CIDR yet (spec.podCIDR)";

/// The four conditions kubelet reports, with its reasons and messages: healthy, except Ready
/// while the pod network is not (`network_ready`).
pub fn conditions(since: &BTreeMap<String, Time>, network_ready: bool) -> Vec<NodeCondition> {
    let heartbeat = now();
    let ready = if network_ready {
        ("True", "KubeletReady", "kubelet is posting ready status")
    } else {
        ("False", "KubeletNotReady", NETWORK_NOT_READY)
    };
    [
        (
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        (
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        (
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        ("Ready", ready.0, ready.1, ready.2),
    ]
    .into_iter()
    .map(|(type_, status, reason, message)| NodeCondition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        last_heartbeat_time: Some(heartbeat.clone()),
        last_transition_time: Some(since.get(type_).cloned().unwrap_or_else(now)),
    })
    .collect()
}

/// The node's status (capacity = allocatable: no reservations yet).
pub fn status(facts: &NodeFacts, since: &BTreeMap<String, Time>) -> NodeStatus {
    let resources = BTreeMap::from([
        ("cpu".to_owned(), Quantity(facts.cpus.to_string())),
        (
            "memory".to_owned(),
            Quantity(format!("{}Ki", facts.memory_bytes / 1024)),
        ),
        ("pods".to_owned(), Quantity(facts.max_pods.to_string())),
        (
            "ephemeral-storage".to_owned(),
            Quantity(format!("{}Ki", facts.ephemeral_storage_bytes / 1024)),
        ),
    ]);
    let mut addresses = Vec::new();
    if let Some(ip) = facts.internal_ip {
        addresses.push(NodeAddress {
            type_: "InternalIP".to_owned(),
            address: ip.to_string(),
        });
    }
    addresses.push(NodeAddress {
        type_: "Hostname".to_owned(),
        address: facts.name.clone(),
    });
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        addresses: Some(addresses),
        conditions: Some(conditions(since, facts.network_ready)),
        daemon_endpoints: facts.kubelet_port.map(|port| NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                other => other,
            }
            .to_owned(),
            operating_system: "linux".to_owned(),
            kernel_version: facts.kernel_version.clone(),
            os_image: facts.os_image.clone(),
            machine_id: facts.machine_id.clone(),
            system_uuid: facts.machine_id.clone(),
            boot_id: facts.boot_id.clone(),
            container_runtime_version: facts.runtime_version.clone(),
            kubelet_version: KUBELET_VERSION.to_owned(),
            kube_proxy_version: String::new(),
            ..NodeSystemInfo::default()
        }),
        ..NodeStatus::default()
    }
}

/// The node's labels: the given ones and the well-known ones kubelet sets.
pub fn labels(facts: &NodeFacts) -> BTreeMap<String, String> {
    let mut labels = facts.labels.clone();
    labels.extend([
        ("kubernetes.io/hostname".to_owned(), facts.name.clone()),
        ("kubernetes.io/os".to_owned(), "linux".to_owned()),
        (
            "kubernetes.io/arch".to_owned(),
            status(facts, &BTreeMap::new())
                .node_info
                .map(|i| i.architecture)
                .unwrap_or_default(),
        ),
    ]);
    labels
}

/// Registers the node (creating it, or taking over an existing one of the same name) and
/// writes its status. Returns the node as stored. A node that has a pod CIDR already (an
/// agent restarting) is network-ready from the start.
pub async fn register(client: &kube::Client, facts: &mut NodeFacts) -> Result<Node, kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(facts.name.clone()),
            labels: Some(labels(facts)),
            ..ObjectMeta::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: facts.pod_cidr.clone(),
            pod_cidrs: facts.pod_cidr.clone().map(|c| vec![c]),
            ..NodeSpec::default()
        }),
        status: None,
    };
    let stored = match nodes.create(&PostParams::default(), &node).await {
        Ok(created) => created,
        Err(kube::Error::Api(status)) if status.code == 409 => nodes.get(&facts.name).await?,
        Err(error) => return Err(error),
    };
    if stored.spec.and_then(|spec| spec.pod_cidr).is_some() {
        facts.network_ready = true;
    }
    update_status(client, facts, &BTreeMap::new()).await
}

/// Writes the node's status (heartbeat).
pub async fn update_status(
    client: &kube::Client,
    facts: &NodeFacts,
    since: &BTreeMap<String, Time>,
) -> Result<Node, kube::Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = json!({"status": status(facts, since)});
    nodes
        .patch_status(&facts.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
}

/// Renews the node's Lease, creating it when there is none: one request per renewal once it
/// exists.
pub async fn renew_lease(client: &kube::Client, node: &Node) -> Result<(), kube::Error> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let renew = MicroTime(jiff::Timestamp::now());
    let patch = json!({"spec": {"holderIdentity": name, "leaseDurationSeconds": LEASE_DURATION_SECONDS, "renewTime": renew}});
    match leases
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => return Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(error) => return Err(error),
    }
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(LEASE_NAMESPACE.to_owned()),
            owner_references: node.metadata.uid.clone().map(|uid| {
                vec![OwnerReference {
                    api_version: "v1".to_owned(),
                    kind: "Node".to_owned(),
                    name: name.clone(),
                    uid,
                    ..OwnerReference::default()
                }]
            }),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.clone()),
            lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
            renew_time: Some(renew),
            ..LeaseSpec::default()
        }),
    };
    match leases.create(&PostParams::default(), &lease).await {
        Ok(_) => Ok(()),
        // Created meanwhile (a previous agent's request landing late): renewed next time.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(error) => Err(error),
    }
}

/// The conditions' transition times as stored, to keep them across heartbeats; not those the
/// node lifecycle controller set to Unknown (reporting again is a transition).
pub fn transition_times(node: &Node) -> BTreeMap<String, Time> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.status != "Unknown")
        .filter_map(|c| Some((c.type_.clone(), c.last_transition_time.clone()?)))
        .collect()
}

/// How often the Node is read while waiting for its pod CIDR.
const POD_CIDR_POLL: Duration = Duration::from_secs(1);
/// How often the wait for a pod CIDR is logged.
const POD_CIDR_LOG: Duration = Duration::from_secs(10);

/// The node's `spec.podCIDR`, as kubelet and CNI plugins take it: once the controller
/// manager's node IPAM has set it. Until then the node's Lease is renewed (the node is alive,
/// only its pod network is not ready) and the wait is logged every [`POD_CIDR_LOG`].
pub async fn wait_for_pod_cidr(client: &kube::Client, node: &Node) -> String {
    let nodes: Api<Node> = Api::all(client.clone());
    let name = node.metadata.name.clone().unwrap_or_default();
    let started = tokio::time::Instant::now();
    let mut next_log = started;
    let mut next_renew = started + LEASE_RENEW;
    loop {
        match nodes.get(&name).await {
            Ok(current) => {
                if let Some(cidr) = current.spec.and_then(|spec| spec.pod_cidr) {
                    return cidr;
                }
            }
            Err(error) => log::warn!("cannot read node {name}: {error}"),
        }
        let now = tokio::time::Instant::now();
        if now >= next_log {
            log::info!(
                "waiting for the control plane to assign node {name} a pod CIDR (spec.podCIDR; \
                 the controller manager's node IPAM, --cluster-cidr), {}s so far; --pod-cidr sets one",
                (now - started).as_secs()
            );
            next_log = now + POD_CIDR_LOG;
        }
        if now >= next_renew {
            if let Err(error) = renew_lease(client, node).await {
                log::warn!("cannot renew the node lease: {error}");
            }
            next_renew = now + LEASE_RENEW;
        }
        tokio::time::sleep(POD_CIDR_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(conditions: &[NodeCondition]) -> (&str, &str, &str) {
        let ready = conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        (
            ready.status.as_str(),
            ready.reason.as_deref().unwrap_or_default(),
            ready.message.as_deref().unwrap_or_default(),
        )
    }

    #[test]
    fn a_node_without_its_pod_network_is_not_ready_as_kubelet_says() {
        let not_ready = conditions(&BTreeMap::new(), false);
        let (status, reason, message) = ready(&not_ready);
        assert_eq!((status, reason), ("False", "KubeletNotReady"));
        assert!(message.contains("NetworkReady=false"), "{message}");
        assert!(message.contains("spec.podCIDR"), "{message}");
        let healthy = conditions(&BTreeMap::new(), true);
        let (status, reason, _) = ready(&healthy);
        assert_eq!((status, reason), ("True", "KubeletReady"));
        // The facts of a node given no pod CIDR start out not network-ready.
        let facts = NodeFacts::read("n", None, None, std::path::Path::new("/"));
        assert!(!facts.network_ready);
        let facts = NodeFacts::read(
            "n",
            None,
            Some("10.0.0.0/24".into()),
            std::path::Path::new("/"),
        );
        assert!(facts.network_ready);
    }
}
