//! Which nodes a DaemonSet's pod belongs on, as upstream's `NodeShouldRunDaemonPod`: the
//! pod's `nodeSelector` and required node affinity must match the node, and its tolerations
//! (with the ones every daemon pod gets) must tolerate the node's `NoSchedule` and
//! `NoExecute` taints; a pod already there only has to go for untolerated `NoExecute` taints.

use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodSpec,
    Toleration,
};

use crate::api::taints::tolerates;

/// Whether a daemon pod should be started on a node, and whether one there may stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub should_run: bool,
    pub should_continue_running: bool,
}

/// The tolerations upstream adds to every daemon pod (`AddOrUpdateDaemonPodTolerations`).
pub fn add_daemon_tolerations(spec: &mut PodSpec) {
    let required = [
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    let network = spec
        .host_network
        .unwrap_or(false)
        .then_some(("node.kubernetes.io/network-unavailable", "NoSchedule"));
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for (key, effect) in required.into_iter().chain(network) {
        let present = tolerations.iter().any(|toleration| {
            toleration.key.as_deref() == Some(key)
                && toleration.effect.as_deref() == Some(effect)
                && toleration.operator.as_deref() == Some("Exists")
        });
        if !present {
            tolerations.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some(effect.into()),
                ..Toleration::default()
            });
        }
    }
}

/// Pins a daemon pod to `node` as upstream does: the required node affinity becomes one term
/// `matchFields metadata.name In [node]` (the scheduler binds it there).
pub fn pin_to_node(spec: &mut PodSpec, node: &str) {
    let term = NodeSelectorTerm {
        match_fields: Some(vec![NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "In".into(),
            values: Some(vec![node.into()]),
        }]),
        match_expressions: None,
    };
    let affinity = spec.affinity.get_or_insert_with(Affinity::default);
    let node_affinity = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
        node_selector_terms: vec![term],
    });
}

/// The node a daemon pod is on or pinned to: `spec.nodeName`, else its affinity's
/// `metadata.name` field (upstream's `nodeNameFromPod` for pods not yet scheduled).
pub fn node_of(spec: &PodSpec) -> Option<String> {
    if let Some(node) = &spec.node_name {
        return Some(node.clone());
    }
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|term| term.match_fields.iter().flatten())
        .find(|field| field.key == "metadata.name" && field.operator == "In")
        .and_then(|field| field.values.as_ref()?.first().cloned())
}

/// Where a daemon pod with `spec` (tolerations already added) may run.
pub fn placement(node: &Node, spec: &PodSpec) -> Placement {
    if !selector_matches(node, spec) {
        return Placement {
            should_run: false,
            should_continue_running: false,
        };
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let taints = node
        .spec
        .as_ref()
        .and_then(|spec| spec.taints.as_deref())
        .unwrap_or_default();
    let untolerated = |effect: &str| {
        taints
            .iter()
            .any(|taint| taint.effect == effect && !tolerations.iter().any(|t| tolerates(t, taint)))
    };
    let evicted = untolerated("NoExecute");
    Placement {
        should_run: !evicted && !untolerated("NoSchedule"),
        should_continue_running: !evicted,
    }
}

fn selector_matches(node: &Node, spec: &PodSpec) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    let required = spec
        .affinity
        .as_ref()
        .and_then(|affinity| affinity.node_affinity.as_ref())
        .and_then(|affinity| {
            affinity
                .required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let affinity_ok = required.is_none_or(|selector| {
        selector
            .node_selector_terms
            .iter()
            .any(|term| term_matches(term, node))
    });
    selector_ok && affinity_ok
}

/// A term matches when all its requirements do; an empty term matches nothing (upstream).
fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let name = node.metadata.name.clone().unwrap_or_default();
    expressions
        .iter()
        .all(|requirement| requirement_matches(requirement, labels.get(&requirement.key)))
        && fields.iter().all(|requirement| {
            requirement.key == "metadata.name" && requirement_matches(requirement, Some(&name))
        })
}

fn requirement_matches(requirement: &NodeSelectorRequirement, value: Option<&String>) -> bool {
    let values = requirement.values.as_deref().unwrap_or_default();
    let number = |text: &str| text.parse::<i64>().ok();
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|value| values.contains(value)),
        "NotIn" => value.is_none_or(|value| !values.contains(value)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), Some(bound)) = (
                value.and_then(|value| number(value)),
                values.first().and_then(|value| number(value)),
            ) else {
                return false;
            };
            if requirement.operator == "Gt" {
                have > bound
            } else {
                have < bound
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn node(name: &str, labels: &[(&str, &str)], taints: Vec<Taint>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).into(), (*v).into()))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                taints: Some(taints),
                ..NodeSpec::default()
            }),
            status: None,
        }
    }

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            ..Taint::default()
        }
    }

    fn daemon_spec() -> PodSpec {
        let mut spec = PodSpec::default();
        add_daemon_tolerations(&mut spec);
        spec
    }

    #[test]
    fn automatic_tolerations_cover_node_conditions_once() {
        let mut spec = daemon_spec();
        add_daemon_tolerations(&mut spec);
        assert_eq!(spec.tolerations.as_ref().map(Vec::len), Some(6));
        let cordoned = node(
            "a",
            &[],
            vec![taint("node.kubernetes.io/unschedulable", "NoSchedule")],
        );
        assert!(placement(&cordoned, &spec).should_run);
        let not_ready = node(
            "a",
            &[],
            vec![taint("node.kubernetes.io/not-ready", "NoExecute")],
        );
        assert!(placement(&not_ready, &spec).should_run);
    }

    #[test]
    fn untolerated_taints_keep_pods_off_and_no_execute_evicts() {
        let spec = daemon_spec();
        let no_schedule = node("a", &[], vec![taint("dedicated", "NoSchedule")]);
        assert_eq!(
            placement(&no_schedule, &spec),
            Placement {
                should_run: false,
                should_continue_running: true
            }
        );
        let no_execute = node("a", &[], vec![taint("dedicated", "NoExecute")]);
        assert!(!placement(&no_execute, &spec).should_continue_running);
        let mut tolerant = spec.clone();
        tolerant
            .tolerations
            .get_or_insert_with(Vec::new)
            .push(Toleration {
                key: Some("dedicated".into()),
                operator: Some("Exists".into()),
                ..Toleration::default()
            });
        assert!(placement(&no_execute, &tolerant).should_run);
    }

    #[test]
    fn node_selector_and_affinity_must_match() {
        let mut spec = daemon_spec();
        spec.node_selector = Some(BTreeMap::from([("disk".into(), "ssd".into())]));
        assert!(placement(&node("a", &[("disk", "ssd")], vec![]), &spec).should_run);
        assert!(!placement(&node("a", &[("disk", "hdd")], vec![]), &spec).should_run);
        let mut pinned = daemon_spec();
        pin_to_node(&mut pinned, "b");
        assert_eq!(node_of(&pinned).as_deref(), Some("b"));
        assert!(placement(&node("b", &[], vec![]), &pinned).should_run);
        assert!(!placement(&node("c", &[], vec![]), &pinned).should_run);
    }
}
