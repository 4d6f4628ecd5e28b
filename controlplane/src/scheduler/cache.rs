//! The scheduler's view of the cluster (upstream's scheduler cache): every node with the pods
//! bound or assumed to it and what they request, kept current from the watches. A pod the
//! scheduler has chosen a node for is *assumed* on that node until the binding shows up in
//! the watch (or is forgotten when the binding fails), so the next pod already sees it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm, WeightedPodAffinityTerm};

use super::resources::{self, NonZero, Resources};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::selectors::{Labels, Selector};

/// A host port a pod's container asks for: protocol, address (`0.0.0.0` for any) and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub protocol: String,
    pub ip: String,
    pub port: i32,
}

impl HostPort {
    /// Two ports collide on a node when protocol and port agree and either address is the
    /// wildcard or both are the same.
    pub fn conflicts(&self, other: &HostPort) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || self.ip == "0.0.0.0" || other.ip == "0.0.0.0")
    }
}

/// One pod affinity term, compiled: the namespaces it covers, its selectors and key.
#[derive(Debug, Clone)]
pub struct AffinityTerm {
    pub namespaces: Vec<String>,
    pub namespace_selector: Option<Selector>,
    pub selector: Selector,
    pub topology_key: String,
}

impl AffinityTerm {
    fn new(owner: &Labels, namespace: &str, term: &PodAffinityTerm) -> Self {
        let namespaces = term.namespaces.clone().unwrap_or_default();
        let namespace_selector = term
            .namespace_selector
            .as_ref()
            .map(|s| Selector::new(Some(s)));
        let namespaces = if namespaces.is_empty() && namespace_selector.is_none() {
            vec![namespace.to_owned()]
        } else {
            namespaces
        };
        let selector = Selector::new(term.label_selector.as_ref())
            .with_label_keys(
                term.match_label_keys.as_deref().unwrap_or_default(),
                owner,
                false,
            )
            .with_label_keys(
                term.mismatch_label_keys.as_deref().unwrap_or_default(),
                owner,
                true,
            );
        Self {
            namespaces,
            namespace_selector,
            selector,
            topology_key: term.topology_key.clone(),
        }
    }

    /// Whether `pod` is selected by the term (its namespace's labels, for a namespace
    /// selector, looked up in `cache` only when the namespace list does not decide).
    pub fn matches(&self, pod: &PodInfo, cache: &Cache) -> bool {
        let in_namespace = self.namespaces.contains(&pod.namespace)
            || self
                .namespace_selector
                .as_ref()
                .is_some_and(|selector| selector.matches(cache.namespace_labels(&pod.namespace)));
        in_namespace && self.selector.matches(&pod.labels)
    }
}

/// A pod's inter-pod affinity terms, compiled.
#[derive(Debug, Clone, Default)]
pub struct AffinityTerms {
    pub required: Vec<AffinityTerm>,
    pub required_anti: Vec<AffinityTerm>,
    pub preferred: Vec<(i32, AffinityTerm)>,
    pub preferred_anti: Vec<(i32, AffinityTerm)>,
}

impl AffinityTerms {
    /// Whether the pod has any affinity or anti-affinity term at all.
    pub fn any(&self) -> bool {
        !(self.required.is_empty()
            && self.required_anti.is_empty()
            && self.preferred.is_empty()
            && self.preferred_anti.is_empty())
    }
}

/// A pod with what the scheduler needs of it computed once.
#[derive(Debug, Clone)]
pub struct PodInfo {
    pub pod: Arc<Pod>,
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub node_name: String,
    pub requests: Resources,
    pub non_zero: NonZero,
    pub host_ports: Vec<HostPort>,
    pub priority: i32,
    pub terminating: bool,
    pub affinity: AffinityTerms,
}

impl PodInfo {
    /// Computes the pod's requests, host ports and affinity terms.
    pub fn new(pod: Arc<Pod>) -> Self {
        let metadata = &pod.metadata;
        let namespace = metadata.namespace.clone().unwrap_or_default();
        let labels = metadata.labels.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let (requests, non_zero) = resources::pod_requests(&pod);
        let host_ports = spec
            .into_iter()
            .flat_map(|spec| spec.containers.iter())
            .flat_map(|container| container.ports.iter().flatten())
            .filter_map(|port| {
                let host_port = port.host_port.filter(|port| *port > 0)?;
                let ip = port
                    .host_ip
                    .as_deref()
                    .filter(|ip| !ip.is_empty())
                    .unwrap_or("0.0.0.0");
                let protocol = port
                    .protocol
                    .as_deref()
                    .filter(|p| !p.is_empty())
                    .unwrap_or("TCP");
                Some(HostPort {
                    protocol: protocol.to_owned(),
                    ip: ip.to_owned(),
                    port: host_port,
                })
            })
            .collect();
        let mut affinity = AffinityTerms::default();
        if let Some(pod_affinity) = spec.and_then(|spec| spec.affinity.as_ref()) {
            let compile = |terms: Option<&Vec<PodAffinityTerm>>| -> Vec<AffinityTerm> {
                terms
                    .into_iter()
                    .flatten()
                    .map(|term| AffinityTerm::new(&labels, &namespace, term))
                    .collect()
            };
            let weighted =
                |terms: Option<&Vec<WeightedPodAffinityTerm>>| -> Vec<(i32, AffinityTerm)> {
                    terms
                        .into_iter()
                        .flatten()
                        .map(|term| {
                            let compiled =
                                AffinityTerm::new(&labels, &namespace, &term.pod_affinity_term);
                            (term.weight, compiled)
                        })
                        .collect()
                };
            if let Some(positive) = &pod_affinity.pod_affinity {
                affinity.required = compile(
                    positive
                        .required_during_scheduling_ignored_during_execution
                        .as_ref(),
                );
                affinity.preferred = weighted(
                    positive
                        .preferred_during_scheduling_ignored_during_execution
                        .as_ref(),
                );
            }
            if let Some(negative) = &pod_affinity.pod_anti_affinity {
                affinity.required_anti = compile(
                    negative
                        .required_during_scheduling_ignored_during_execution
                        .as_ref(),
                );
                affinity.preferred_anti = weighted(
                    negative
                        .preferred_during_scheduling_ignored_during_execution
                        .as_ref(),
                );
            }
        }
        Self {
            uid: metadata.uid.clone().unwrap_or_default(),
            name: metadata.name.clone().unwrap_or_default(),
            node_name: spec
                .and_then(|spec| spec.node_name.clone())
                .unwrap_or_default(),
            priority: spec.and_then(|spec| spec.priority).unwrap_or(0),
            terminating: metadata.deletion_timestamp.is_some(),
            namespace,
            labels,
            requests,
            non_zero,
            host_ports,
            affinity,
            pod,
        }
    }
}

/// A node and the pods on it.
#[derive(Debug, Clone, Default)]
pub struct NodeInfo {
    pub name: String,
    /// `None` while pods name a node the watch has not shown (or has deleted).
    pub node: Option<Arc<Node>>,
    pub allocatable: Resources,
    pub pods: Vec<Arc<PodInfo>>,
    pub requested: Resources,
    pub non_zero_requested: NonZero,
    pub used_ports: Vec<HostPort>,
    /// Pods here with any affinity term (they matter to every other pod's affinity).
    pub pods_with_affinity: usize,
}

impl NodeInfo {
    fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(&pod.requests);
        self.non_zero_requested.milli_cpu += pod.non_zero.milli_cpu;
        self.non_zero_requested.memory += pod.non_zero.memory;
        self.used_ports.extend(pod.host_ports.iter().cloned());
        if pod.affinity.any() {
            self.pods_with_affinity += 1;
        }
        self.pods.push(pod);
    }

    fn remove_pod(&mut self, uid: &str) -> bool {
        let Some(index) = self.pods.iter().position(|pod| pod.uid == uid) else {
            return false;
        };
        let pod = self.pods.swap_remove(index);
        self.requested.subtract(&pod.requests);
        self.non_zero_requested.milli_cpu -= pod.non_zero.milli_cpu;
        self.non_zero_requested.memory -= pod.non_zero.memory;
        for port in &pod.host_ports {
            if let Some(used) = self.used_ports.iter().position(|used| used == port) {
                self.used_ports.swap_remove(used);
            }
        }
        if pod.affinity.any() {
            self.pods_with_affinity -= 1;
        }
        true
    }

    /// The node's labels.
    pub fn labels(&self) -> &Labels {
        static EMPTY: Labels = BTreeMap::new();
        self.node
            .as_ref()
            .and_then(|node| node.metadata.labels.as_ref())
            .unwrap_or(&EMPTY)
    }

    /// A node with `pods` on it, for tests and dry runs.
    pub fn with_pods(node: Node, pods: impl IntoIterator<Item = Pod>) -> Self {
        let mut info = NodeInfo::default();
        info.set_node(Arc::new(node));
        for pod in pods {
            info.add_pod(Arc::new(PodInfo::new(Arc::new(pod))));
        }
        info
    }

    fn set_node(&mut self, node: Arc<Node>) {
        self.name = node.metadata.name.clone().unwrap_or_default();
        self.allocatable = resources::allocatable(&node);
        self.node = Some(node);
    }
}

#[derive(Debug, Clone)]
struct Placement {
    node: String,
    assumed: bool,
}

/// Nodes, the pods placed on them and namespace labels, as the watches last showed them
/// plus the pods assumed since.
#[derive(Debug, Default)]
pub struct Cache {
    nodes: BTreeMap<String, NodeInfo>,
    placements: HashMap<String, Placement>,
    namespaces: HashMap<String, Labels>,
    /// Service selectors by namespace, then name (for default spreading).
    services: HashMap<String, HashMap<String, Labels>>,
    /// ReplicaSet and StatefulSet selectors by (kind, namespace, name).
    controllers: HashMap<(String, String, String), LabelSelector>,
}

impl Cache {
    /// Adds or replaces a node.
    pub fn set_node(&mut self, node: Node) {
        let name = node.metadata.name.clone().unwrap_or_default();
        self.nodes.entry(name).or_default().set_node(Arc::new(node));
    }

    /// Removes a node; its entry stays while pods still name it.
    pub fn remove_node(&mut self, name: &str) {
        if let Some(info) = self.nodes.get_mut(name) {
            info.node = None;
            if info.pods.is_empty() {
                self.nodes.remove(name);
            }
        }
    }

    /// Keeps only the nodes `keep` accepts (after a relist).
    pub fn retain_nodes(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self
            .nodes()
            .filter(|info| !keep(&info.name))
            .map(|info| info.name.clone())
            .collect();
        for name in gone {
            self.remove_node(&name);
        }
    }

    /// Keeps only the bound pods `keep` accepts, and every assumed pod (after a relist).
    pub fn retain_bound_pods(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<String> = self
            .placements
            .iter()
            .filter(|(uid, placement)| !placement.assumed && !keep(uid))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            self.remove_pod(&uid);
        }
    }

    /// Records a pod the watch shows bound to a node (confirming an assumed one).
    pub fn set_bound_pod(&mut self, pod: Arc<Pod>) {
        let info = PodInfo::new(pod);
        if info.node_name.is_empty() {
            return;
        }
        self.remove_pod(&info.uid);
        self.place(info, false);
    }

    /// Forgets a pod the watch shows deleted (or finished).
    pub fn remove_pod(&mut self, uid: &str) {
        if let Some(placement) = self.placements.remove(uid)
            && let Some(info) = self.nodes.get_mut(&placement.node)
        {
            info.remove_pod(uid);
            if info.node.is_none() && info.pods.is_empty() {
                self.nodes.remove(&placement.node);
            }
        }
    }

    /// Places `pod` on `node` before its binding is written.
    pub fn assume(&mut self, pod: &PodInfo, node: &str) {
        let mut info = pod.clone();
        info.node_name = node.to_owned();
        self.remove_pod(&info.uid);
        self.place(info, true);
    }

    /// Takes back an assumed pod whose binding failed.
    pub fn forget(&mut self, uid: &str) {
        if self.is_assumed(uid) {
            self.remove_pod(uid);
        }
    }

    /// Whether the pod is assumed and not yet seen bound.
    pub fn is_assumed(&self, uid: &str) -> bool {
        self.placements
            .get(uid)
            .is_some_and(|placement| placement.assumed)
    }

    /// Whether the pod is bound or assumed anywhere.
    pub fn is_placed(&self, uid: &str) -> bool {
        self.placements.contains_key(uid)
    }

    fn place(&mut self, info: PodInfo, assumed: bool) {
        let node = info.node_name.clone();
        self.placements.insert(
            info.uid.clone(),
            Placement {
                node: node.clone(),
                assumed,
            },
        );
        let entry = self.nodes.entry(node.clone()).or_default();
        entry.name = node;
        entry.add_pod(Arc::new(info));
    }

    /// Records a namespace's labels (for namespace selectors of affinity terms).
    pub fn set_namespace(&mut self, name: String, labels: Labels) {
        self.namespaces.insert(name, labels);
    }

    /// Forgets a deleted namespace.
    pub fn remove_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    /// Records a Service's selector (`None`: the Service selects no pods itself).
    pub fn set_service(&mut self, namespace: &str, name: &str, selector: Option<Labels>) {
        let services = self.services.entry(namespace.to_owned()).or_default();
        match selector {
            Some(selector) => services.insert(name.to_owned(), selector),
            None => services.remove(name),
        };
    }

    /// Records a ReplicaSet's or StatefulSet's selector (`None`: deleted).
    pub fn set_controller(
        &mut self,
        kind: &str,
        namespace: &str,
        name: &str,
        selector: Option<LabelSelector>,
    ) {
        let key = (kind.to_owned(), namespace.to_owned(), name.to_owned());
        match selector {
            Some(selector) => self.controllers.insert(key, selector),
            None => self.controllers.remove(&key),
        };
    }

    /// Upstream's `DefaultSelector`: the selectors of the Services that select the pod,
    /// and of the ReplicaSet or StatefulSet that controls it; `None` when that is empty.
    pub fn default_spread_selector(&self, pod: &PodInfo) -> Option<Selector> {
        let mut merged = Labels::new();
        for selector in self
            .services
            .get(&pod.namespace)
            .into_iter()
            .flat_map(HashMap::values)
        {
            if Selector::from_labels(selector).matches(&pod.labels) {
                merged.extend(selector.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        let mut selector = Selector::from_labels(&merged);
        let owner = pod
            .pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|owner| owner.controller == Some(true));
        if let Some(owner) = owner
            && owner.api_version == "apps/v1"
            && (owner.kind == "ReplicaSet" || owner.kind == "StatefulSet")
            && let Some(controller) = self.controllers.get(&(
                owner.kind.clone(),
                pod.namespace.clone(),
                owner.name.clone(),
            ))
        {
            selector = selector.and(Selector::new(Some(controller)));
        }
        (!selector.is_empty()).then_some(selector)
    }

    /// Labels of a namespace (none if unknown).
    pub fn namespace_labels(&self, name: &str) -> &Labels {
        static EMPTY: Labels = BTreeMap::new();
        self.namespaces.get(name).unwrap_or(&EMPTY)
    }

    /// Every node the watch shows, in name order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values().filter(|info| info.node.is_some())
    }

    /// How many nodes the watch shows.
    pub fn node_count(&self) -> usize {
        self.nodes().count()
    }

    /// One node by name, if the watch shows it.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.get(name).filter(|info| info.node.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(uid: &str, node: &str, cpu: &str) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": uid, "namespace": "default", "uid": uid},
                "spec": {"nodeName": node, "containers": [{"name": "c",
                    "resources": {"requests": {"cpu": cpu}},
                    "ports": [{"containerPort": 80, "hostPort": 8080}]}]}
            }))
            .expect("pod"),
        )
    }

    fn node(name: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name},
            "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"}}}))
        .expect("node")
    }

    #[test]
    fn assumed_pods_count_until_forgotten_and_confirmation_replaces_them() {
        let mut cache = Cache::default();
        cache.set_node(node("n1"));
        let incoming = PodInfo::new(pod("a", "", "500m"));
        cache.assume(&incoming, "n1");
        let n1 = cache.node("n1").expect("n1");
        assert_eq!(n1.requested.milli_cpu, 500);
        assert_eq!(n1.used_ports.len(), 1);
        assert!(cache.is_assumed("a"));
        cache.forget("a");
        assert_eq!(cache.node("n1").expect("n1").requested.milli_cpu, 0);
        assert!(cache.node("n1").expect("n1").used_ports.is_empty());

        cache.assume(&incoming, "n1");
        cache.set_bound_pod(pod("a", "n1", "500m"));
        assert!(!cache.is_assumed("a"));
        assert_eq!(cache.node("n1").expect("n1").requested.milli_cpu, 500);
        cache.remove_pod("a");
        assert_eq!(cache.node("n1").expect("n1").pods.len(), 0);
    }

    #[test]
    fn pods_on_unknown_nodes_wait_for_the_node() {
        let mut cache = Cache::default();
        cache.set_bound_pod(pod("a", "n2", "1"));
        assert!(cache.node("n2").is_none());
        cache.set_node(node("n2"));
        assert_eq!(cache.node("n2").expect("n2").requested.milli_cpu, 1000);
        cache.remove_node("n2");
        assert_eq!(cache.node_count(), 0);
    }
}
