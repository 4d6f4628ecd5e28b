//! The simulated nodes: what they are made of ([`FleetSpec`]), their registration, one
//! heartbeat task that renews every node's Lease once per [`LEASE_RENEW`] (renewals spread
//! evenly over the period, at most [`HEARTBEAT_CONCURRENCY`] requests in flight), and one watch
//! of the simulated Nodes that learns their pod CIDRs (from the node IPAM controller) and
//! notices when the node lifecycle controller marked one not Ready.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use tokio::sync::Semaphore;

use super::{SIMULATED_LABEL, SimulateError};
use crate::api::node::{self as api_node, LEASE_RENEW, NodeFacts};
use crate::sandbox::Ipv4Cidr;

/// Lease renewals (and status writes) in flight at once.
pub const HEARTBEAT_CONCURRENCY: usize = 64;
/// Registrations in flight at once.
pub const REGISTER_CONCURRENCY: usize = 32;
/// A node's full status is written every this many Lease renewals (kubelet reports its status
/// less often than it renews its Lease when nothing changed), and at once when the API shows
/// the node not Ready.
pub const STATUS_EVERY: u64 = 6;
/// Where node addresses are made up from (hashed from the name): the shared address space,
/// never routed here (nothing is sent to these addresses).
const NODE_IP_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 64, 0, 0), 11);
/// Pod addresses of nodes that have no pod CIDR (no node IPAM in the cluster).
const FALLBACK_POD_RANGE: &str = "100.96.0.0/11";
/// Ephemeral storage each simulated node reports.
const EPHEMERAL_STORAGE_BYTES: u64 = 100 << 30;

/// What every simulated node is made of.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    pub name_prefix: String,
    pub count: usize,
    pub cpus: u32,
    pub memory_bytes: i64,
    pub max_pods: u32,
    /// Labels every node gets (besides the well-known ones and [`SIMULATED_LABEL`]).
    pub labels: BTreeMap<String, String>,
    /// Node `i` gets `topology.kubernetes.io/zone: zones[i % len]`; none: no zone label.
    pub zones: Vec<String>,
}

impl FleetSpec {
    /// The nodes, `<prefix>0` to `<prefix><count - 1>`.
    pub fn node_facts(&self) -> Vec<NodeFacts> {
        (0..self.count)
            .map(|index| {
                let name = format!("{}{index}", self.name_prefix);
                let hash = fnv1a(name.as_bytes());
                let mut labels = self.labels.clone();
                labels.insert(SIMULATED_LABEL.to_owned(), "true".to_owned());
                if !self.zones.is_empty() {
                    labels.insert(
                        "topology.kubernetes.io/zone".to_owned(),
                        self.zones[index % self.zones.len()].clone(),
                    );
                }
                NodeFacts {
                    internal_ip: Some(node_ip(hash)),
                    pod_cidr: None,
                    // Simulated pods get no network: nothing to wait for.
                    network_ready: true,
                    cpus: self.cpus,
                    memory_bytes: self.memory_bytes,
                    ephemeral_storage_bytes: EPHEMERAL_STORAGE_BYTES,
                    kernel_version: "simulated".to_owned(),
                    os_image: "Keel simulated node".to_owned(),
                    machine_id: format!("{hash:08x}{:024x}", index),
                    boot_id: format!("{:08x}-0000-4000-8000-{index:012x}", hash),
                    runtime_version: "keel-simulated://1".to_owned(),
                    max_pods: self.max_pods,
                    labels,
                    // No node API: logs and exec of simulated pods are not served.
                    kubelet_port: None,
                    name,
                }
            })
            .collect()
    }
}

/// FNV-1a, to spread made-up node addresses.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, byte| {
        (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
    })
}

fn node_ip(hash: u32) -> Ipv4Addr {
    let (base, prefix) = NODE_IP_RANGE;
    let hosts = (1u32 << (32 - prefix)) - 2;
    Ipv4Addr::from(u32::from(base) + 1 + hash % hosts)
}

/// One simulated node as the simulator knows it.
#[derive(Debug)]
struct SimNode {
    facts: NodeFacts,
    /// Set once the node is in the API; cleared when it is deleted there (no more heartbeats).
    uid: Option<String>,
    pod_cidr: Option<Ipv4Cidr>,
    transition_times: BTreeMap<String, Time>,
    /// The API shows the node not Ready: its status is written at the next renewal.
    stale_status: bool,
    used_ips: BTreeSet<Ipv4Addr>,
}

#[derive(Debug)]
struct FleetState {
    nodes: HashMap<String, SimNode>,
    fallback_used: BTreeSet<Ipv4Addr>,
}

/// The simulated nodes of this process.
pub struct Fleet {
    client: kube::Client,
    /// Heartbeat order.
    names: Vec<String>,
    state: Mutex<FleetState>,
    fallback_range: Ipv4Cidr,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("nodes", &self.names.len())
            .finish_non_exhaustive()
    }
}

impl Fleet {
    pub fn new(client: kube::Client, spec: &FleetSpec) -> Arc<Fleet> {
        let facts = spec.node_facts();
        let names = facts.iter().map(|f| f.name.clone()).collect();
        let nodes = facts
            .into_iter()
            .map(|facts| {
                let node = SimNode {
                    facts,
                    uid: None,
                    pod_cidr: None,
                    transition_times: BTreeMap::new(),
                    stale_status: false,
                    used_ips: BTreeSet::new(),
                };
                (node.facts.name.clone(), node)
            })
            .collect();
        Arc::new(Fleet {
            client,
            names,
            state: Mutex::new(FleetState {
                nodes,
                fallback_used: BTreeSet::new(),
            }),
            fallback_range: Ipv4Cidr::parse(FALLBACK_POD_RANGE).expect("a valid constant CIDR"),
        })
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    fn state(&self) -> MutexGuard<'_, FleetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `node` is one of this process's nodes.
    pub fn owns(&self, node: &str) -> bool {
        self.state().nodes.contains_key(node)
    }

    /// Registers every node (Node, status, Lease), retrying each until the API server takes it;
    /// stops at the first node the API server refuses as invalid (bad names or labels).
    pub async fn register_all(self: &Arc<Self>) -> Result<(), SimulateError> {
        let total = self.names.len();
        let mut done = 0;
        let mut registrations = futures::stream::iter(self.names.clone())
            .map(|name| {
                let fleet = Arc::clone(self);
                async move { fleet.register(&name).await }
            })
            .buffer_unordered(REGISTER_CONCURRENCY);
        while let Some(registered) = registrations.next().await {
            registered?;
            done += 1;
            if done % 500 == 0 || done == total {
                log::info!("registered {done}/{total} simulated nodes");
            }
        }
        Ok(())
    }

    async fn register(&self, name: &str) -> Result<(), SimulateError> {
        let Some(mut facts) = self.state().nodes.get(name).map(|n| n.facts.clone()) else {
            return Ok(());
        };
        loop {
            let registered = match api_node::register(&self.client, &mut facts).await {
                Ok(node) => api_node::renew_lease(&self.client, &node)
                    .await
                    .map(|()| node),
                Err(error) => Err(error),
            };
            match registered {
                Ok(node) => {
                    self.observe(&node);
                    return Ok(());
                }
                Err(kube::Error::Api(status)) if status.code == 400 || status.code == 422 => {
                    return Err(SimulateError::Refused {
                        node: name.to_owned(),
                        message: status.message,
                    });
                }
                Err(error) => {
                    log::warn!("cannot register simulated node {name}: {error}; retrying in 2 s");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            }
        }
    }

    /// Renews every node's Lease once per [`LEASE_RENEW`], forever.
    pub async fn heartbeat(self: Arc<Self>) {
        let count = u32::try_from(self.names.len().max(1)).unwrap_or(u32::MAX);
        let step = (LEASE_RENEW / count).max(Duration::from_micros(100));
        let mut ticker = tokio::time::interval(step);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let permits = Arc::new(Semaphore::new(HEARTBEAT_CONCURRENCY));
        for round in 1u64.. {
            for name in &self.names {
                ticker.tick().await;
                let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                    return;
                };
                let fleet = Arc::clone(&self);
                let name = name.clone();
                tokio::spawn(async move {
                    fleet.beat(&name, round % STATUS_EVERY == 0).await;
                    drop(permit);
                });
            }
        }
    }

    async fn beat(&self, name: &str, status_due: bool) {
        let (node, facts, times, stale) = {
            let state = self.state();
            let Some(sim) = state.nodes.get(name) else {
                return;
            };
            let Some(uid) = sim.uid.clone() else { return };
            let node = Node {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    uid: Some(uid),
                    ..ObjectMeta::default()
                },
                ..Node::default()
            };
            (
                node,
                sim.facts.clone(),
                sim.transition_times.clone(),
                sim.stale_status,
            )
        };
        if let Err(error) = api_node::renew_lease(&self.client, &node).await {
            log::warn!("cannot renew the lease of simulated node {name}: {error}");
        }
        if status_due || stale {
            match api_node::update_status(&self.client, &facts, &times).await {
                Ok(updated) => self.observe(&updated),
                Err(error) => log::warn!("cannot update simulated node {name}'s status: {error}"),
            }
        }
    }

    /// Watches the simulated nodes (by label), forever.
    pub async fn watch_nodes(self: Arc<Self>) {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let config = watcher::Config::default().labels(&format!("{SIMULATED_LABEL}=true"));
        let stream = watcher(nodes, config).default_backoff();
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) => {
                    self.observe(&node);
                }
                Ok(watcher::Event::Delete(node)) => {
                    let name = node.metadata.name.unwrap_or_default();
                    if let Some(sim) = self.state().nodes.get_mut(&name) {
                        log::warn!(
                            "simulated node {name} was deleted from the API: no more heartbeats for it"
                        );
                        sim.uid = None;
                    }
                }
                Ok(_) => {}
                Err(error) => log::warn!("simulated node watch: {error}"),
            }
        }
    }

    /// Takes in a node as the API has it.
    fn observe(&self, node: &Node) {
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let mut state = self.state();
        let Some(sim) = state.nodes.get_mut(name) else {
            return;
        };
        sim.uid = node.metadata.uid.clone();
        sim.pod_cidr = node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.as_deref())
            .and_then(|c| Ipv4Cidr::parse(c).ok());
        let conditions = node.status.as_ref().and_then(|s| s.conditions.as_ref());
        let ready = conditions
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        sim.stale_status = !ready && conditions.is_some();
        sim.transition_times = api_node::transition_times(node);
    }

    /// The node's address and a free pod address on it (from its pod CIDR, else from a made-up
    /// range); `None` when the node is unknown or its CIDR is full.
    pub fn assign_pod_ip(&self, node: &str) -> Option<(Ipv4Addr, Ipv4Addr)> {
        let mut state = self.state();
        let FleetState {
            nodes,
            fallback_used,
        } = &mut *state;
        let sim = nodes.get_mut(node)?;
        let host_ip = sim.facts.internal_ip?;
        let (cidr, used) = match sim.pod_cidr {
            Some(cidr) => (cidr, &mut sim.used_ips),
            None => (self.fallback_range, fallback_used),
        };
        let ip = cidr.hosts().find(|ip| !used.contains(ip))?;
        used.insert(ip);
        Some((host_ip, ip))
    }

    /// Records `ip` as used on `node` (a pod that already had it when the simulator started).
    pub fn claim_pod_ip(&self, node: &str, ip: Ipv4Addr) {
        self.update_ip(node, ip, true);
    }

    /// Frees a pod address of `node`.
    pub fn release_pod_ip(&self, node: &str, ip: Ipv4Addr) {
        self.update_ip(node, ip, false);
    }

    fn update_ip(&self, node: &str, ip: Ipv4Addr, used: bool) {
        let mut state = self.state();
        let FleetState {
            nodes,
            fallback_used,
        } = &mut *state;
        let Some(sim) = nodes.get_mut(node) else {
            return;
        };
        let set = match sim.pod_cidr {
            Some(cidr) if cidr.contains(ip) => &mut sim.used_ips,
            _ => fallback_used,
        };
        if used {
            set.insert(ip);
        } else {
            set.remove(&ip);
        }
    }

    /// The node's address.
    pub fn host_ip(&self, node: &str) -> Option<Ipv4Addr> {
        self.state().nodes.get(node)?.facts.internal_ip
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that is never called: these tests look at the fleet's own state.
    fn unused_client() -> kube::Client {
        let service = tower::service_fn(|_: http::Request<kube::client::Body>| async {
            Err::<http::Response<kube::client::Body>, _>(std::io::Error::other("no API server"))
        });
        kube::Client::new(service, "default")
    }

    fn node_with_cidr(name: &str, cidr: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "uid": "u1"},
            "spec": {"podCIDR": cidr},
            "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]},
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn pod_addresses_come_from_the_node_cidr_once_known() {
        let fleet = Fleet::new(unused_client(), &spec(2));
        assert!(fleet.owns("sim-1") && !fleet.owns("sim-2"));
        // No pod CIDR yet: the made-up range.
        let (host, first) = fleet.assign_pod_ip("sim-0").unwrap();
        assert_eq!(Some(host), fleet.host_ip("sim-0"));
        assert!(fleet.fallback_range.contains(first));

        fleet.observe(&node_with_cidr("sim-0", "10.244.7.0/30"));
        assert!(
            fleet.state().nodes["sim-0"].stale_status,
            "not Ready in the API"
        );
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        fleet.claim_pod_ip("sim-0", ip("10.244.7.1"));
        assert_eq!(
            fleet.assign_pod_ip("sim-0").map(|(_, p)| p),
            Some(ip("10.244.7.2"))
        );
        assert_eq!(
            fleet.assign_pod_ip("sim-0"),
            None,
            "a /30 has two pod addresses"
        );
        fleet.release_pod_ip("sim-0", ip("10.244.7.1"));
        assert_eq!(
            fleet.assign_pod_ip("sim-0").map(|(_, p)| p),
            Some(ip("10.244.7.1"))
        );
        // The made-up address is freed in its own pool.
        fleet.release_pod_ip("sim-0", first);
        assert!(fleet.state().fallback_used.is_empty());
        assert_eq!(fleet.assign_pod_ip("nobody"), None);
    }

    fn spec(count: usize) -> FleetSpec {
        FleetSpec {
            name_prefix: "sim-".to_owned(),
            count,
            cpus: 32,
            memory_bytes: 256 << 30,
            max_pods: 110,
            labels: BTreeMap::from([("pool".to_owned(), "a".to_owned())]),
            zones: vec!["z1".to_owned(), "z2".to_owned()],
        }
    }

    #[test]
    fn nodes_are_named_labelled_and_zoned_in_turn() {
        let facts = spec(3).node_facts();
        let names: Vec<&str> = facts.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["sim-0", "sim-1", "sim-2"]);
        let zones: Vec<&str> = facts
            .iter()
            .map(|f| f.labels["topology.kubernetes.io/zone"].as_str())
            .collect();
        assert_eq!(zones, ["z1", "z2", "z1"]);
        assert!(facts.iter().all(|f| f.labels["pool"] == "a"
            && f.labels[SIMULATED_LABEL] == "true"
            && f.max_pods == 110));
        let (base, prefix) = NODE_IP_RANGE;
        let range = Ipv4Cidr { base, prefix };
        assert!(
            facts
                .iter()
                .all(|f| f.internal_ip.is_some_and(|ip| range.contains(ip)))
        );
        assert_ne!(facts[0].internal_ip, facts[1].internal_ip);
    }
}
