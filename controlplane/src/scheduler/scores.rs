//! The node-local score plugins with upstream's formulas: NodeResourcesFit (LeastAllocated
//! over cpu and memory, weight 1 each, on non-zero requests), NodeResourcesBalancedAllocation
//! (1 - the standard deviation of the cpu and memory fractions, on real requests; skipped
//! for BestEffort pods), NodeAffinity (sum of matching preferred terms' weights) and
//! TaintToleration (count of untolerated `PreferNoSchedule` taints, reversed), plus
//! upstream's `DefaultNormalizeScore`.

use k8s_openapi::api::core::v1::{PodSpec, Toleration};

use super::MAX_NODE_SCORE;
use super::cache::{NodeInfo, PodInfo};
use super::selectors;

/// (requested, allocatable) of cpu and memory, given what would be requested.
fn after_pod(node: &NodeInfo, milli_cpu: i64, memory: i64) -> [(i64, i64); 2] {
    [
        (milli_cpu, node.allocatable.milli_cpu),
        (memory, node.allocatable.memory),
    ]
}

/// LeastAllocated: the free share of cpu and memory after the pod, averaged, 0..100.
pub fn least_allocated(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let pairs = after_pod(
        node,
        node.non_zero_requested.milli_cpu + pod.non_zero.milli_cpu,
        node.non_zero_requested.memory + pod.non_zero.memory,
    );
    let mut total = 0;
    let mut weights = 0;
    for (requested, capacity) in pairs {
        if capacity == 0 {
            continue;
        }
        total += if requested > capacity {
            0
        } else {
            (capacity - requested) * MAX_NODE_SCORE / capacity
        };
        weights += 1;
    }
    if weights == 0 { 0 } else { total / weights }
}

/// BalancedAllocation: how evenly cpu and memory would be used after the pod, 0..100.
pub fn balanced_allocation(pod: &PodInfo, node: &NodeInfo) -> i64 {
    let pairs = after_pod(
        node,
        node.requested.milli_cpu + pod.requests.milli_cpu,
        node.requested.memory + pod.requests.memory,
    );
    let fractions: Vec<f64> = pairs
        .iter()
        .filter(|(_, capacity)| *capacity != 0)
        .map(|(requested, capacity)| (*requested as f64 / *capacity as f64).min(1.0))
        .collect();
    let deviation = match fractions.as_slice() {
        [a, b] => ((a - b) / 2.0).abs(),
        _ => 0.0,
    };
    ((1.0 - deviation) * MAX_NODE_SCORE as f64) as i64
}

/// Whether BalancedAllocation takes part (not for pods that request nothing).
pub fn balanced_applies(pod: &PodInfo) -> bool {
    pod.requests.milli_cpu != 0 || pod.requests.memory != 0
}

/// NodeAffinity: the summed weight of the preferred terms the node matches.
pub fn preferred_node_affinity(spec: &PodSpec, node: &NodeInfo) -> i64 {
    let Some(object) = node.node.as_deref() else {
        return 0;
    };
    preferred_terms(spec)
        .iter()
        .filter(|term| selectors::node_term_matches(&term.preference, object))
        .map(|term| i64::from(term.weight))
        .sum()
}

/// Whether the NodeAffinity score takes part (the pod has preferred terms).
pub fn preferred_node_affinity_applies(spec: &PodSpec) -> bool {
    !preferred_terms(spec).is_empty()
}

fn preferred_terms(spec: &PodSpec) -> &[k8s_openapi::api::core::v1::PreferredSchedulingTerm] {
    spec.affinity
        .as_ref()
        .and_then(|affinity| affinity.node_affinity.as_ref())
        .and_then(|affinity| {
            affinity
                .preferred_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or_default()
}

/// TaintToleration: the node's `PreferNoSchedule` taints the pod does not tolerate.
pub fn intolerable_prefer_no_schedule(tolerations: &[Toleration], node: &NodeInfo) -> i64 {
    let taints = node
        .node
        .as_deref()
        .map(selectors::node_taints)
        .unwrap_or_default();
    let relevant = |toleration: &&Toleration| {
        toleration
            .effect
            .as_deref()
            .is_none_or(|effect| effect.is_empty() || effect == "PreferNoSchedule")
    };
    let count = taints
        .iter()
        .filter(|taint| taint.effect == "PreferNoSchedule")
        .filter(|taint| {
            !tolerations
                .iter()
                .filter(relevant)
                .any(|t| selectors::tolerates(t, taint))
        })
        .count();
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Upstream's `DefaultNormalizeScore`: scales so the best is 100 (`reverse`: the lowest).
pub fn default_normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max == 0 {
        if reverse {
            scores.iter_mut().for_each(|score| *score = MAX_NODE_SCORE);
        }
        return;
    }
    for score in scores {
        let scaled = MAX_NODE_SCORE * *score / max;
        *score = if reverse {
            MAX_NODE_SCORE - scaled
        } else {
            scaled
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn node(extra: serde_json::Value, pods: &[serde_json::Value]) -> NodeInfo {
        let mut value = json!({"metadata": {"name": "n1", "labels": {"disk": "ssd"}},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"}}});
        json_patch::merge(&mut value, &extra);
        let pods = pods.iter().map(|spec| {
            serde_json::from_value(json!({
            "metadata": {"name": "x", "uid": "x", "namespace": "default"}, "spec": spec}))
            .expect("pod")
        });
        NodeInfo::with_pods(serde_json::from_value(value).expect("node"), pods)
    }

    fn pod(spec: serde_json::Value) -> PodInfo {
        PodInfo::new(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": "p", "uid": "p", "namespace": "default"}, "spec": spec}))
                .expect("pod"),
        ))
    }

    fn requesting(cpu: &str, memory: &str) -> serde_json::Value {
        json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu, "memory": memory}}}]})
    }

    #[test]
    fn least_allocated_and_balanced_follow_upstream_arithmetic() {
        let empty = node(json!({}), &[]);
        let incoming = pod(requesting("1", "2Gi"));
        // cpu (4000-1000)*100/4000 = 75, memory (8-2)*100/8 = 75.
        assert_eq!(least_allocated(&incoming, &empty), 75);
        assert_eq!(balanced_allocation(&incoming, &empty), 100);
        let busy = node(json!({}), &[requesting("2", "0")]);
        // cpu 3/4 = 0.75, memory 2/8 = 0.25: deviation 0.25.
        assert_eq!(balanced_allocation(&incoming, &busy), 75);
        assert_eq!(least_allocated(&incoming, &busy), (25 + 75) / 2);
        // A container without requests counts as 100m / 200Mi for LeastAllocated only.
        let best_effort = pod(json!({"containers": [{"name": "c"}]}));
        assert!(!balanced_applies(&best_effort));
        assert_eq!(least_allocated(&best_effort, &empty), (97 + 97) / 2);
    }

    #[test]
    fn node_affinity_and_taint_scores() {
        let spec: PodSpec = serde_json::from_value(json!({"containers": [], "affinity": {"nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 5, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}},
                {"weight": 7, "preference": {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}}]}}}))
        .expect("spec");
        assert_eq!(preferred_node_affinity(&spec, &node(json!({}), &[])), 5);
        let tainted = node(
            json!({"spec": {"taints": [{"key": "a", "effect": "PreferNoSchedule"},
            {"key": "b", "effect": "PreferNoSchedule"}, {"key": "c", "effect": "NoSchedule"}]}}),
            &[],
        );
        let tolerate_a: Vec<Toleration> =
            serde_json::from_value(json!([{"key": "a", "operator": "Exists"}])).expect("t");
        assert_eq!(intolerable_prefer_no_schedule(&[], &tainted), 2);
        assert_eq!(intolerable_prefer_no_schedule(&tolerate_a, &tainted), 1);
        let mut scores = vec![2, 1, 0];
        default_normalize(&mut scores, true);
        assert_eq!(scores, vec![0, 50, 100]);
        let mut scores = vec![0, 0];
        default_normalize(&mut scores, true);
        assert_eq!(scores, vec![100, 100]);
    }
}
