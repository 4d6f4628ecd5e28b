//! PodTopologySpread as upstream: `DoNotSchedule` constraints filter (the skew a node would
//! have after taking the pod may not pass `maxSkew`, with `minDomains`), `ScheduleAnyway`
//! constraints score (fewer matching pods in the node's domain scores higher). Pods are
//! counted in the pod's namespace, on nodes that carry every topology key of the
//! constraints and pass the node inclusion policies (node affinity honoured, taints ignored,
//! by default). A pod with no constraints at all is scored with upstream's system default
//! constraints (hostname skew 3, zone skew 5, `ScheduleAnyway`) over the pods its Services,
//! ReplicaSet or StatefulSet select.

use std::collections::{HashMap, HashSet};

use k8s_openapi::api::core::v1::{PodSpec, TopologySpreadConstraint};

use super::cache::{Cache, NodeInfo, PodInfo};
use super::filters::{Rejection, required_node_affinity};
use super::pass::{self, LabelMap};
use super::selectors::{self, Labels, Selector};

pub const REASON_CONSTRAINTS: &str = "node(s) didn't match pod topology spread constraints";
pub const REASON_MISSING_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";
const HOSTNAME: &str = "kubernetes.io/hostname";
const ZONE: &str = "topology.kubernetes.io/zone";

/// Upstream's system default constraints, over the pod's default selector.
fn default_constraints(pod: &PodInfo, cache: &Cache) -> Vec<Constraint> {
    let Some(selector) = cache.default_spread_selector(pod) else {
        return Vec::new();
    };
    [(HOSTNAME, 3), (ZONE, 5)]
        .into_iter()
        .map(|(key, max_skew)| Constraint {
            max_skew,
            topology_key: key.to_owned(),
            selector: selector.clone(),
            min_domains: 1,
            honor_affinity: true,
            honor_taints: false,
        })
        .collect()
}

/// One compiled constraint.
#[derive(Debug, Clone)]
pub struct Constraint {
    pub max_skew: i64,
    pub topology_key: String,
    pub selector: Selector,
    pub min_domains: usize,
    honor_affinity: bool,
    honor_taints: bool,
}

/// The pod's constraints with `whenUnsatisfiable` equal to `when`.
fn constraints(pod: &PodInfo, spec: &PodSpec, when: &str) -> Vec<Constraint> {
    spec.topology_spread_constraints
        .iter()
        .flatten()
        .filter(|constraint| constraint.when_unsatisfiable == when)
        .map(|constraint| compile(pod, constraint))
        .collect()
}

fn compile(pod: &PodInfo, constraint: &TopologySpreadConstraint) -> Constraint {
    let selector = Selector::new(constraint.label_selector.as_ref()).with_label_keys(
        constraint.match_label_keys.as_deref().unwrap_or_default(),
        &pod.labels,
        false,
    );
    Constraint {
        max_skew: i64::from(constraint.max_skew),
        topology_key: constraint.topology_key.clone(),
        selector,
        min_domains: constraint
            .min_domains
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(1),
        honor_affinity: constraint.node_affinity_policy.as_deref() != Some("Ignore"),
        honor_taints: constraint.node_taints_policy.as_deref() == Some("Honor"),
    }
}

fn has_all_keys(labels: &Labels, constraints: &[Constraint]) -> bool {
    constraints
        .iter()
        .all(|constraint| labels.contains_key(&constraint.topology_key))
}

fn included(constraint: &Constraint, spec: &PodSpec, node: &NodeInfo) -> bool {
    let Some(object) = node.node.as_deref() else {
        return false;
    };
    if constraint.honor_affinity && !required_node_affinity(spec, object) {
        return false;
    }
    if constraint.honor_taints {
        let tolerations = spec.tolerations.as_deref().unwrap_or_default();
        if selectors::untolerated_taint(selectors::node_taints(object), tolerations).is_some() {
            return false;
        }
    }
    true
}

/// Pods on the node that the selector picks, in `namespace`, not being deleted.
pub fn count_matching(node: &NodeInfo, selector: &Selector, namespace: &str) -> i64 {
    let count = node
        .pods
        .iter()
        .filter(|pod| {
            !pod.terminating && pod.namespace == namespace && selector.matches(&pod.labels)
        })
        .count();
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// The filter's pre-computed counts: per constraint, matching pods per domain (domains
/// borrowed from the cache's node labels for the attempt), the smallest of them and whether
/// the incoming pod counts itself.
#[derive(Debug, Default)]
pub struct FilterState<'a> {
    constraints: Vec<Constraint>,
    counts: Vec<LabelMap<'a, i64>>,
    global_min: Vec<i64>,
    own: Vec<i64>,
}

impl<'a> FilterState<'a> {
    /// Counts matching pods per domain for the pod's `DoNotSchedule` constraints.
    pub fn new(pod: &PodInfo, spec: &PodSpec, cache: &'a Cache) -> Self {
        let constraints = constraints(pod, spec, "DoNotSchedule");
        if constraints.is_empty() {
            return Self::default();
        }
        let parts = pass::over_nodes(
            cache,
            |node| node.pods.len(),
            |nodes| {
                let mut counts = vec![LabelMap::default(); constraints.len()];
                for node in nodes.iter().copied() {
                    let labels = node.labels();
                    if !has_all_keys(labels, &constraints) {
                        continue;
                    }
                    for (index, constraint) in constraints.iter().enumerate() {
                        if !included(constraint, spec, node) {
                            continue;
                        }
                        let value = labels[&constraint.topology_key].as_str();
                        *counts[index].entry(value).or_insert(0) +=
                            count_matching(node, &constraint.selector, &pod.namespace);
                    }
                }
                counts
            },
        );
        let mut counts: Vec<LabelMap<'a, i64>> = vec![LabelMap::default(); constraints.len()];
        for part in parts {
            for (mine, theirs) in counts.iter_mut().zip(part) {
                for (value, count) in theirs {
                    *mine.entry(value).or_insert(0) += count;
                }
            }
        }
        let global_min = constraints
            .iter()
            .zip(&counts)
            .map(|(constraint, counts)| {
                if counts.len() < constraint.min_domains {
                    0
                } else {
                    counts
                        .values()
                        .copied()
                        .min()
                        .unwrap_or(i64::from(i32::MAX))
                }
            })
            .collect();
        let own = constraints
            .iter()
            .map(|constraint| i64::from(constraint.selector.matches(&pod.labels)))
            .collect();
        Self {
            constraints,
            counts,
            global_min,
            own,
        }
    }

    /// Rejects a node whose domain would exceed `maxSkew` with the pod in it.
    pub fn filter(&self, node: &NodeInfo) -> Result<(), Rejection> {
        let labels = node.labels();
        for (index, constraint) in self.constraints.iter().enumerate() {
            let Some(value) = labels.get(&constraint.topology_key) else {
                return Err(Rejection::unresolvable(REASON_MISSING_LABEL));
            };
            let here = self.counts[index].get(value.as_str()).copied().unwrap_or(0);
            if here + self.own[index] - self.global_min[index] > constraint.max_skew {
                return Err(Rejection::unschedulable(REASON_CONSTRAINTS));
            }
        }
        Ok(())
    }
}

/// The score's pre-computed state over the feasible nodes.
#[derive(Debug, Default)]
pub struct ScoreState {
    constraints: Vec<Constraint>,
    /// Per constraint (not for hostname keys): matching pods per domain.
    counts: Vec<HashMap<String, i64>>,
    weights: Vec<f64>,
    ignored: HashSet<String>,
}

impl ScoreState {
    /// Prepares scoring for the pod's `ScheduleAnyway` constraints, or `None` to skip.
    pub fn new(
        pod: &PodInfo,
        spec: &PodSpec,
        cache: &Cache,
        feasible: &[&NodeInfo],
    ) -> Option<Self> {
        let explicit = spec
            .topology_spread_constraints
            .as_ref()
            .is_some_and(|constraints| !constraints.is_empty());
        // Only the pod's own constraints require nodes to carry every key.
        let (constraints, require_all) = if explicit {
            (constraints(pod, spec, "ScheduleAnyway"), true)
        } else {
            (default_constraints(pod, cache), false)
        };
        if constraints.is_empty() {
            return None;
        }
        let mut ignored = HashSet::new();
        let mut counts = vec![HashMap::new(); constraints.len()];
        let mut sizes = vec![0_usize; constraints.len()];
        // A missing key counts as the domain "" (upstream's map lookup of a missing label).
        for node in feasible {
            let labels = node.labels();
            if require_all && !has_all_keys(labels, &constraints) {
                ignored.insert(node.name.clone());
                continue;
            }
            for (index, constraint) in constraints.iter().enumerate() {
                if constraint.topology_key == HOSTNAME {
                    continue;
                }
                let value = labels
                    .get(&constraint.topology_key)
                    .map_or("", String::as_str);
                if !counts[index].contains_key(value) {
                    counts[index].insert(value.to_owned(), 0);
                    sizes[index] += 1;
                }
            }
        }
        for node in cache.nodes() {
            let labels = node.labels();
            if require_all && !has_all_keys(labels, &constraints) {
                continue;
            }
            for (index, constraint) in constraints.iter().enumerate() {
                if constraint.topology_key == HOSTNAME || !included(constraint, spec, node) {
                    continue;
                }
                let value = labels
                    .get(&constraint.topology_key)
                    .map_or("", String::as_str);
                if let Some(count) = counts[index].get_mut(value) {
                    *count += count_matching(node, &constraint.selector, &pod.namespace);
                }
            }
        }
        let weights = constraints
            .iter()
            .zip(&sizes)
            .map(|(constraint, size)| {
                let size = if constraint.topology_key == HOSTNAME {
                    feasible.len() - ignored.len()
                } else {
                    *size
                };
                // Upstream's topologyNormalizingWeight: log(size + 2).
                (size as f64 + 2.0).ln()
            })
            .collect();
        Some(Self {
            constraints,
            counts,
            weights,
            ignored,
        })
    }

    /// The node's raw score: higher for more matching pods (reversed by [`Self::normalize`]).
    pub fn score(&self, pod: &PodInfo, node: &NodeInfo) -> i64 {
        if self.ignored.contains(&node.name) {
            return 0;
        }
        let labels = node.labels();
        let mut score = 0.0;
        for (index, constraint) in self.constraints.iter().enumerate() {
            let Some(value) = labels.get(&constraint.topology_key) else {
                continue;
            };
            let count = if constraint.topology_key == HOSTNAME {
                count_matching(node, &constraint.selector, &pod.namespace)
            } else {
                self.counts[index].get(value).copied().unwrap_or(0)
            };
            score += count as f64 * self.weights[index] + (constraint.max_skew - 1) as f64;
        }
        score.round() as i64
    }

    /// Upstream's NormalizeScore: fewer matching pods scores closer to 100; ignored nodes 0.
    pub fn normalize(&self, nodes: &[&NodeInfo], scores: &mut [i64]) {
        let mut min = i64::MAX;
        let mut max = 0;
        for (node, score) in nodes.iter().zip(scores.iter()) {
            if self.ignored.contains(&node.name) {
                continue;
            }
            min = min.min(*score);
            max = max.max(*score);
        }
        for (node, score) in nodes.iter().zip(scores.iter_mut()) {
            *score = if self.ignored.contains(&node.name) {
                0
            } else if max == 0 {
                super::MAX_NODE_SCORE
            } else {
                super::MAX_NODE_SCORE * (max + min - *score) / max
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn cache_with(nodes: &[(&str, &str)], pods: &[(&str, &str)]) -> Cache {
        let mut cache = Cache::default();
        for (name, zone) in nodes {
            let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"zone": zone, "kubernetes.io/hostname": name}},
                "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}
            }))
            .expect("node");
            cache.set_node(node);
        }
        for (name, node) in pods {
            cache.set_bound_pod(Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": "default", "uid": name, "labels": {"app": "web"}},
                    "spec": {"nodeName": node, "containers": [{"name": "c"}]}
                }))
                .expect("pod"),
            ));
        }
        cache
    }

    fn incoming(when: &str, key: &str, min_domains: Option<i32>) -> PodInfo {
        PodInfo::new(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "new", "namespace": "default", "uid": "new", "labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c"}], "topologySpreadConstraints": [{
                    "maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": when,
                    "labelSelector": {"matchLabels": {"app": "web"}}, "minDomains": min_domains}]}
            }))
            .expect("pod"),
        ))
    }

    #[test]
    fn max_skew_keeps_domains_within_one() {
        let cache = cache_with(&[("a1", "a"), ("b1", "b")], &[("p1", "a1")]);
        let pod = incoming("DoNotSchedule", "zone", None);
        let spec = pod.pod.spec.clone().expect("spec");
        let state = FilterState::new(&pod, &spec, &cache);
        assert_eq!(
            state.filter(cache.node("a1").expect("a1")),
            Err(Rejection::unschedulable(REASON_CONSTRAINTS))
        );
        assert_eq!(state.filter(cache.node("b1").expect("b1")), Ok(()));
    }

    #[test]
    fn min_domains_counts_missing_domains_as_zero() {
        let cache = cache_with(&[("a1", "a"), ("b1", "b")], &[("p1", "b1")]);
        let pod = incoming("DoNotSchedule", "zone", Some(3));
        let spec = pod.pod.spec.clone().expect("spec");
        let state = FilterState::new(&pod, &spec, &cache);
        // Only two domains exist but three are wanted: the global minimum is 0, so b (1 + 1)
        // is too far ahead while a is fine.
        assert!(state.filter(cache.node("b1").expect("b1")).is_err());
        assert_eq!(state.filter(cache.node("a1").expect("a1")), Ok(()));
    }

    #[test]
    fn nodes_without_the_key_are_unresolvable() {
        let mut cache = cache_with(&[("a1", "a")], &[]);
        cache
            .set_node(serde_json::from_value(json!({"metadata": {"name": "bare"}})).expect("node"));
        let pod = incoming("DoNotSchedule", "zone", None);
        let spec = pod.pod.spec.clone().expect("spec");
        let state = FilterState::new(&pod, &spec, &cache);
        assert_eq!(
            state.filter(cache.node("bare").expect("bare")),
            Err(Rejection::unresolvable(REASON_MISSING_LABEL))
        );
    }

    #[test]
    fn replica_set_pods_spread_by_default() {
        let mut cache = cache_with(&[("a1", "a"), ("b1", "b")], &[("p1", "a1"), ("p2", "a1")]);
        let selector: k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector =
            serde_json::from_value(json!({"matchLabels": {"app": "web"}})).expect("selector");
        cache.set_controller("ReplicaSet", "default", "web-1", Some(selector));
        let pod = PodInfo::new(Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "new", "namespace": "default", "uid": "new", "labels": {"app": "web"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1",
                        "uid": "rs", "controller": true}]},
                "spec": {"containers": [{"name": "c"}]}
            }))
            .expect("pod"),
        ));
        let spec = pod.pod.spec.clone().expect("spec");
        let nodes: Vec<&NodeInfo> = cache.nodes().collect();
        let state = ScoreState::new(&pod, &spec, &cache, &nodes).expect("default constraints");
        let mut scores: Vec<i64> = nodes.iter().map(|node| state.score(&pod, node)).collect();
        state.normalize(&nodes, &mut scores);
        assert!(scores[1] > scores[0], "{scores:?}");
        // Without an owner or a Service, nothing to spread over.
        let orphan = incoming("DoNotSchedule", "zone", None);
        let mut orphan_spec = orphan.pod.spec.clone().expect("spec");
        orphan_spec.topology_spread_constraints = None;
        assert!(ScoreState::new(&orphan, &orphan_spec, &cache, &nodes).is_none());
        cache.set_service(
            "default",
            "web",
            Some([("app".to_owned(), "web".to_owned())].into()),
        );
        let nodes: Vec<&NodeInfo> = cache.nodes().collect();
        assert!(ScoreState::new(&orphan, &orphan_spec, &cache, &nodes).is_some());
    }

    #[test]
    fn soft_constraints_prefer_the_emptier_domain() {
        let cache = cache_with(&[("a1", "a"), ("b1", "b")], &[("p1", "a1"), ("p2", "a1")]);
        let pod = incoming("ScheduleAnyway", "zone", None);
        let spec = pod.pod.spec.clone().expect("spec");
        let nodes: Vec<&NodeInfo> = cache.nodes().collect();
        let state = ScoreState::new(&pod, &spec, &cache, &nodes).expect("constraints");
        let mut scores: Vec<i64> = nodes.iter().map(|node| state.score(&pod, node)).collect();
        state.normalize(&nodes, &mut scores);
        assert!(scores[1] > scores[0], "{scores:?}");
        assert_eq!(scores[1], 100);
    }
}
