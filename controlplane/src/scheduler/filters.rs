//! The filter plugins, in upstream's order: NodeUnschedulable, NodeName, TaintToleration,
//! NodeAffinity, NodePorts, NodeResourcesFit, PodTopologySpread, InterPodAffinity. A node
//! fails at the first plugin that rejects it, with that plugin's reasons (upstream's wording)
//! and whether removing pods could ever help (`Unschedulable` against
//! `UnschedulableAndUnresolvable`), which the preemption part of the message reports.

use std::borrow::Cow;

use k8s_openapi::api::core::v1::{Node, PodSpec, Taint};

use super::cache::{Cache, NodeInfo, PodInfo};
use super::selectors::{self, node_labels};
use super::{interpod, spread};

pub const REASON_UNSCHEDULABLE: &str = "node(s) were unschedulable";
pub const REASON_NODE_NAME: &str = "node(s) didn't match the requested node name";
pub const REASON_NODE_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
pub const REASON_NODE_PORTS: &str = "node(s) didn't have free ports for the requested pod ports";
pub const REASON_TOO_MANY_PODS: &str = "Too many pods";

/// Why a node cannot take the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Removing pods from the node would not help (`UnschedulableAndUnresolvable`).
    pub unresolvable: bool,
    pub reasons: Vec<Cow<'static, str>>,
}

impl Rejection {
    /// A rejection that preemption could not fix.
    pub fn unresolvable(reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            unresolvable: true,
            reasons: vec![reason.into()],
        }
    }

    /// A rejection that fewer pods on the node might fix.
    pub fn unschedulable(reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            unresolvable: false,
            reasons: vec![reason.into()],
        }
    }
}

/// What one scheduling attempt computes once for the pod before looking at nodes
/// (upstream's PreFilter state).
#[derive(Debug)]
pub struct Cycle<'a> {
    pub pod: &'a PodInfo,
    pub spec: &'a PodSpec,
    pub spread: spread::FilterState<'a>,
    pub interpod: interpod::FilterState<'a>,
}

impl<'a> Cycle<'a> {
    /// Prepares the filters for `pod` over the cache's nodes.
    pub fn new(pod: &'a PodInfo, spec: &'a PodSpec, cache: &'a Cache) -> Self {
        Self {
            pod,
            spec,
            spread: spread::FilterState::new(pod, spec, cache),
            interpod: interpod::FilterState::new(pod, cache),
        }
    }

    /// Runs every filter on one node; the first rejection wins.
    pub fn filter(&self, node: &NodeInfo) -> Result<(), Rejection> {
        let Some(object) = node.node.as_deref() else {
            return Err(Rejection::unresolvable("node(s) not found"));
        };
        node_unschedulable(self.spec, object)?;
        node_name(self.spec, object)?;
        taint_toleration(self.spec, object)?;
        if !required_node_affinity(self.spec, object) {
            return Err(Rejection::unresolvable(REASON_NODE_AFFINITY));
        }
        node_ports(self.pod, node)?;
        resources_fit(self.pod, node)?;
        self.spread.filter(node)?;
        self.interpod.filter(node)
    }
}

fn node_unschedulable(spec: &PodSpec, node: &Node) -> Result<(), Rejection> {
    let cordoned = node.spec.as_ref().and_then(|spec| spec.unschedulable) == Some(true);
    if !cordoned {
        return Ok(());
    }
    let taint = Taint {
        key: "node.kubernetes.io/unschedulable".to_owned(),
        effect: "NoSchedule".to_owned(),
        ..Default::default()
    };
    if selectors::tolerated(spec.tolerations.as_deref().unwrap_or_default(), &taint) {
        Ok(())
    } else {
        Err(Rejection::unresolvable(REASON_UNSCHEDULABLE))
    }
}

fn node_name(spec: &PodSpec, node: &Node) -> Result<(), Rejection> {
    match spec.node_name.as_deref() {
        Some(wanted) if !wanted.is_empty() && Some(wanted) != node.metadata.name.as_deref() => {
            Err(Rejection::unresolvable(REASON_NODE_NAME))
        }
        _ => Ok(()),
    }
}

fn taint_toleration(spec: &PodSpec, node: &Node) -> Result<(), Rejection> {
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    match selectors::untolerated_taint(selectors::node_taints(node), tolerations) {
        None => Ok(()),
        Some(taint) => Err(Rejection::unresolvable(format!(
            "node(s) had untolerated taint {{{}: {}}}",
            taint.key,
            taint.value.as_deref().unwrap_or_default()
        ))),
    }
}

/// Whether the node satisfies the pod's `nodeSelector` and required node affinity.
pub fn required_node_affinity(spec: &PodSpec, node: &Node) -> bool {
    let labels = node_labels(node);
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    selector_ok
        && spec
            .affinity
            .as_ref()
            .and_then(|affinity| affinity.node_affinity.as_ref())
            .and_then(|affinity| {
                affinity
                    .required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .is_none_or(|required| selectors::node_terms_match(&required.node_selector_terms, node))
}

fn node_ports(pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
    let conflict = pod
        .host_ports
        .iter()
        .any(|wanted| node.used_ports.iter().any(|used| used.conflicts(wanted)));
    if conflict {
        Err(Rejection::unschedulable(REASON_NODE_PORTS))
    } else {
        Ok(())
    }
}

/// NodeResourcesFit: pod count, then each resource the pod requests against what the
/// node's allocatable leaves.
pub fn resources_fit(pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
    let mut rejection = Rejection {
        unresolvable: false,
        reasons: Vec::new(),
    };
    if i64::try_from(node.pods.len()).unwrap_or(i64::MAX) + 1 > node.allocatable.pods {
        rejection.reasons.push(REASON_TOO_MANY_PODS.into());
    }
    let wanted = &pod.requests;
    let allocatable = &node.allocatable;
    let used = &node.requested;
    let mut check = |name: &str, want: i64, have: i64, taken: i64| {
        if want > 0 && want > have - taken {
            rejection.unresolvable |= want > have;
            rejection.reasons.push(match name {
                "cpu" => Cow::Borrowed("Insufficient cpu"),
                "memory" => Cow::Borrowed("Insufficient memory"),
                "ephemeral-storage" => Cow::Borrowed("Insufficient ephemeral-storage"),
                other => Cow::Owned(format!("Insufficient {other}")),
            });
        }
    };
    check(
        "cpu",
        wanted.milli_cpu,
        allocatable.milli_cpu,
        used.milli_cpu,
    );
    check("memory", wanted.memory, allocatable.memory, used.memory);
    check(
        "ephemeral-storage",
        wanted.ephemeral_storage,
        allocatable.ephemeral_storage,
        used.ephemeral_storage,
    );
    for (name, want) in &wanted.scalar {
        let have = allocatable.scalar.get(name).copied().unwrap_or(0);
        let taken = used.scalar.get(name).copied().unwrap_or(0);
        check(name, *want, have, taken);
    }
    if rejection.reasons.is_empty() {
        Ok(())
    } else {
        Err(rejection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    pub(crate) fn node(name: &str, extra: serde_json::Value) -> Node {
        let mut value = json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "3"}}});
        merge(&mut value, extra);
        serde_json::from_value(value).expect("node")
    }

    pub(crate) fn pod(name: &str, extra: serde_json::Value) -> k8s_openapi::api::core::v1::Pod {
        let mut value = json!({"metadata": {"name": name, "namespace": "default", "uid": name},
            "spec": {"containers": [{"name": "c"}]}});
        merge(&mut value, extra);
        serde_json::from_value(value).expect("pod")
    }

    fn merge(target: &mut serde_json::Value, patch: serde_json::Value) {
        json_patch::merge(target, &patch);
    }

    fn check(pod: k8s_openapi::api::core::v1::Pod, node: NodeInfo) -> Result<(), Rejection> {
        let info = PodInfo::new(Arc::new(pod));
        let spec = info.pod.spec.clone().expect("spec");
        let cache = Cache::default();
        Cycle::new(&info, &spec, &cache).filter(&node)
    }

    fn requests(cpu: &str, memory: &str) -> serde_json::Value {
        json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}})
    }

    #[test]
    fn resources_fit_counts_pods_cpu_and_memory() {
        let busy = NodeInfo::with_pods(node("n1", json!({})), [pod("a", requests("1500m", "1Gi"))]);
        assert_eq!(
            check(pod("p", requests("500m", "1Gi")), busy.clone()),
            Ok(())
        );
        let rejection =
            check(pod("p", requests("600m", "4Gi")), busy.clone()).expect_err("too big");
        assert_eq!(
            rejection.reasons,
            vec!["Insufficient cpu", "Insufficient memory"]
        );
        assert!(!rejection.unresolvable);
        let rejection = check(pod("p", requests("3", "1Mi")), busy).expect_err("over allocatable");
        assert!(rejection.unresolvable);
        let full = NodeInfo::with_pods(
            node("n1", json!({})),
            [
                pod("a", json!({})),
                pod("b", json!({})),
                pod("c", json!({})),
            ],
        );
        assert_eq!(
            check(pod("p", json!({})), full).expect_err("full").reasons,
            vec![REASON_TOO_MANY_PODS]
        );
    }

    #[test]
    fn extended_resources_are_checked_by_name() {
        let gpu = node(
            "n1",
            json!({"status": {"allocatable": {"example.com/gpu": "1"}}}),
        );
        let wants = json!({"spec": {"containers": [{"name": "c", "resources": {"requests": {"example.com/gpu": "2"}}}]}});
        let rejection = check(pod("p", wants), NodeInfo::with_pods(gpu, [])).expect_err("2 > 1");
        assert_eq!(rejection.reasons, vec!["Insufficient example.com/gpu"]);
    }

    #[test]
    fn unschedulable_nodes_name_taints_and_selectors() {
        let cordoned =
            NodeInfo::with_pods(node("n1", json!({"spec": {"unschedulable": true}})), []);
        assert_eq!(
            check(pod("p", json!({})), cordoned.clone()),
            Err(Rejection::unresolvable(REASON_UNSCHEDULABLE))
        );
        let tolerant = json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}]}});
        assert_eq!(check(pod("p", tolerant), cordoned), Ok(()));

        let plain = NodeInfo::with_pods(node("n1", json!({})), []);
        assert_eq!(
            check(pod("p", json!({"spec": {"nodeName": "n2"}})), plain.clone()),
            Err(Rejection::unresolvable(REASON_NODE_NAME))
        );
        assert_eq!(
            check(
                pod("p", json!({"spec": {"nodeSelector": {"disk": "ssd"}}})),
                plain.clone()
            ),
            Err(Rejection::unresolvable(REASON_NODE_AFFINITY))
        );
        let affinity = json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}}}}});
        assert_eq!(check(pod("p", affinity), plain), Ok(()));

        let tainted = NodeInfo::with_pods(
            node(
                "n1",
                json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"},
                {"key": "soft", "effect": "PreferNoSchedule"}]}}),
            ),
            [],
        );
        assert_eq!(
            check(pod("p", json!({})), tainted.clone())
                .expect_err("taint")
                .reasons,
            vec!["node(s) had untolerated taint {dedicated: gpu}"]
        );
        let tolerant = json!({"spec": {"tolerations": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}});
        assert_eq!(check(pod("p", tolerant), tainted), Ok(()));
    }

    #[test]
    fn host_ports_conflict_per_protocol_and_address() {
        let port = |ip: &str, protocol: &str| {
            json!({"spec": {"containers": [{"name": "c",
            "ports": [{"containerPort": 80, "hostPort": 8080, "hostIP": ip, "protocol": protocol}]}]}})
        };
        let used = NodeInfo::with_pods(node("n1", json!({})), [pod("a", port("", "TCP"))]);
        assert_eq!(
            check(pod("p", port("127.0.0.1", "TCP")), used.clone()),
            Err(Rejection::unschedulable(REASON_NODE_PORTS))
        );
        assert_eq!(check(pod("p", port("", "UDP")), used), Ok(()));
        let specific =
            NodeInfo::with_pods(node("n1", json!({})), [pod("a", port("10.0.0.1", "TCP"))]);
        assert_eq!(check(pod("p", port("10.0.0.2", "TCP")), specific), Ok(()));
    }
}
