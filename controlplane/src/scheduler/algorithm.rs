//! One scheduling attempt (upstream's `schedulePod`): filter the nodes (in parallel chunks
//! only when there are many), stop once enough feasible nodes are found (upstream's adaptive
//! `percentageOfNodesToScore`), score them with the default plugin weights, and pick the
//! best, ties at random. A pod no node takes gets upstream's `FitError` message.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::PodSpec;

use super::cache::{Cache, NodeInfo, PodInfo};
use super::filters::{Cycle, Rejection};
use super::{interpod, scores, spread};

/// Upstream's `ErrNoNodesAvailable`.
pub const NO_NODES: &str = "no nodes available to schedule pods";
const MIN_FEASIBLE_NODES: usize = 100;
const MIN_FEASIBLE_PERCENTAGE: usize = 5;
/// Below this many nodes one thread filters them all faster than threads start.
const PARALLEL_FILTER_NODES: usize = 512;
const FILTER_CHUNK: usize = 128;

const WEIGHT_FIT: i64 = 1;
const WEIGHT_BALANCED: i64 = 1;
const WEIGHT_NODE_AFFINITY: i64 = 2;
const WEIGHT_TAINT: i64 = 3;
const WEIGHT_SPREAD: i64 = 2;
const WEIGHT_INTERPOD: i64 = 2;

/// State that lasts across attempts: where the next filter pass starts and a random source.
#[derive(Debug)]
pub struct Picker {
    next_start: usize,
    random: u64,
}

impl Picker {
    /// A picker seeded from `seed` (any value but zero).
    pub fn new(seed: u64) -> Self {
        Self {
            next_start: 0,
            random: seed.max(1),
        }
    }

    fn below(&mut self, bound: usize) -> usize {
        // xorshift64: enough to break ties evenly.
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        usize::try_from(self.random % u64::try_from(bound).unwrap_or(1)).unwrap_or(0)
    }
}

/// Why no node was picked: the message for the event and the pod's condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitError(pub String);

/// Picks a node for `pod`, or says why none fits.
pub fn schedule(
    cache: &Cache,
    pod: &PodInfo,
    spec: &PodSpec,
    picker: &mut Picker,
) -> Result<String, FitError> {
    let nodes: Vec<&NodeInfo> = cache.nodes().collect();
    if nodes.is_empty() {
        return Err(FitError(NO_NODES.to_owned()));
    }
    let cycle = Cycle::new(pod, spec, cache);
    let start = picker.next_start % nodes.len();
    let order = || nodes[start..].iter().chain(&nodes[..start]).copied();
    let wanted = feasible_to_find(nodes.len());
    let mut feasible: Vec<&NodeInfo> = Vec::new();
    let mut rejected: Vec<Rejection> = Vec::new();
    let mut examined = 0;
    if nodes.len() < PARALLEL_FILTER_NODES {
        for node in order() {
            examined += 1;
            match cycle.filter(node) {
                Ok(()) => feasible.push(node),
                Err(rejection) => rejected.push(rejection),
            }
            if feasible.len() >= wanted {
                break;
            }
        }
    } else {
        // Rounds of one chunk per thread, until enough nodes are feasible.
        let ordered: Vec<&NodeInfo> = order().collect();
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        'rounds: for round in ordered.chunks(FILTER_CHUNK * threads) {
            let verdicts = filter_parallel(&cycle, round, threads);
            for (node, verdict) in round.iter().zip(verdicts) {
                examined += 1;
                match verdict {
                    Ok(()) => feasible.push(node),
                    Err(rejection) => rejected.push(rejection),
                }
                if feasible.len() >= wanted {
                    break 'rounds;
                }
            }
        }
    }
    picker.next_start = (start + examined) % nodes.len();
    if feasible.is_empty() {
        return Err(FitError(fit_error(nodes.len(), &rejected, spec)));
    }
    if feasible.len() == 1 {
        return Ok(feasible[0].name.clone());
    }
    let totals = score(cache, pod, spec, &feasible);
    Ok(feasible[select(&totals, picker)].name.clone())
}

/// Filters `nodes` in one part per thread, the first on the calling thread (one spawn
/// fewer per round); verdicts in node order.
fn filter_parallel(
    cycle: &Cycle<'_>,
    nodes: &[&NodeInfo],
    threads: usize,
) -> Vec<Result<(), Rejection>> {
    let chunk = nodes.len().div_ceil(threads).max(1);
    let filter = |part: &[&NodeInfo]| -> Vec<Result<(), Rejection>> {
        part.iter().map(|node| cycle.filter(node)).collect()
    };
    std::thread::scope(|scope| {
        let mut parts = nodes.chunks(chunk);
        let first = parts.next().unwrap_or_default();
        let filter = &filter;
        let handles: Vec<_> = parts
            .map(|part| (part.len(), scope.spawn(move || filter(part))))
            .collect();
        let mut verdicts = filter(first);
        for (len, handle) in handles {
            match handle.join() {
                Ok(part) => verdicts.extend(part),
                Err(_) => {
                    verdicts.extend((0..len).map(|_| Err(Rejection::unresolvable("filter failed"))))
                }
            }
        }
        verdicts
    })
}

/// Upstream's `numFeasibleNodesToFind` with the adaptive percentage.
fn feasible_to_find(all: usize) -> usize {
    if all < MIN_FEASIBLE_NODES {
        return all;
    }
    let percentage = 50_usize
        .saturating_sub(all / 125)
        .max(MIN_FEASIBLE_PERCENTAGE);
    (all * percentage / 100).max(MIN_FEASIBLE_NODES)
}

/// Weighted sum of the normalised scores of every score plugin, per feasible node.
fn score(cache: &Cache, pod: &PodInfo, spec: &PodSpec, feasible: &[&NodeInfo]) -> Vec<i64> {
    let mut totals: Vec<i64> = feasible
        .iter()
        .map(|node| WEIGHT_FIT * scores::least_allocated(pod, node))
        .collect();
    let mut add = |weight: i64, plugin: &[i64]| {
        for (total, score) in totals.iter_mut().zip(plugin) {
            *total += weight * score;
        }
    };
    if scores::balanced_applies(pod) {
        let plugin: Vec<i64> = feasible
            .iter()
            .map(|n| scores::balanced_allocation(pod, n))
            .collect();
        add(WEIGHT_BALANCED, &plugin);
    }
    if scores::preferred_node_affinity_applies(spec) {
        let mut plugin: Vec<i64> = feasible
            .iter()
            .map(|n| scores::preferred_node_affinity(spec, n))
            .collect();
        scores::default_normalize(&mut plugin, false);
        add(WEIGHT_NODE_AFFINITY, &plugin);
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    let mut plugin: Vec<i64> = feasible
        .iter()
        .map(|n| scores::intolerable_prefer_no_schedule(tolerations, n))
        .collect();
    scores::default_normalize(&mut plugin, true);
    add(WEIGHT_TAINT, &plugin);
    if let Some(state) = spread::ScoreState::new(pod, spec, cache, feasible) {
        let mut plugin: Vec<i64> = feasible.iter().map(|n| state.score(pod, n)).collect();
        state.normalize(feasible, &mut plugin);
        add(WEIGHT_SPREAD, &plugin);
    }
    if let Some(state) = interpod::ScoreState::new(pod, cache) {
        let mut plugin: Vec<i64> = feasible.iter().map(|n| state.score(n)).collect();
        interpod::normalize(&mut plugin);
        add(WEIGHT_INTERPOD, &plugin);
    }
    totals
}

/// The index of the best total; among equal bests each is equally likely.
fn select(totals: &[i64], picker: &mut Picker) -> usize {
    let mut best = 0;
    let mut ties = 1;
    for (index, total) in totals.iter().enumerate().skip(1) {
        if *total > totals[best] {
            best = index;
            ties = 1;
        } else if *total == totals[best] {
            ties += 1;
            if picker.below(ties) == 0 {
                best = index;
            }
        }
    }
    best
}

/// Upstream's `FitError.Error()` with the DefaultPreemption post-filter message: nodes
/// rejected as unresolvable make preemption not helpful; on the others no pod of lower
/// priority could make room (preemption itself is not implemented).
fn fit_error(all: usize, rejected: &[Rejection], spec: &PodSpec) -> String {
    let histogram = |reasons: &mut dyn Iterator<Item = &str>| -> String {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for reason in reasons {
            *counts.entry(reason).or_insert(0) += 1;
        }
        let mut lines: Vec<String> = counts
            .into_iter()
            .map(|(reason, count)| format!("{count} {reason}"))
            .collect();
        lines.sort();
        lines.join(", ")
    };
    let filters = histogram(
        &mut rejected
            .iter()
            .flat_map(|r| r.reasons.iter().map(|reason| reason.as_ref())),
    );
    let preemption = if spec.preemption_policy.as_deref() == Some("Never") {
        "not eligible due to preemptionPolicy=Never.".to_owned()
    } else {
        let outcomes = histogram(&mut rejected.iter().map(|rejection| {
            if rejection.unresolvable {
                "Preemption is not helpful for scheduling"
            } else {
                "No preemption victims found for incoming pod"
            }
        }));
        format!("0/{all} nodes are available: {outcomes}.")
    };
    format!("0/{all} nodes are available: {filters}. preemption: {preemption}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn cluster(nodes: &[(&str, &str)]) -> Cache {
        let mut cache = Cache::default();
        for (name, cpu) in nodes {
            cache.set_node(
                serde_json::from_value(
                    json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                    "status": {"allocatable": {"cpu": cpu, "memory": "4Gi", "pods": "110"}}}),
                )
                .expect("node"),
            );
        }
        cache
    }

    fn pod(name: &str, spec: serde_json::Value) -> PodInfo {
        let mut value = json!({"metadata": {"name": name, "namespace": "default", "uid": name},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}});
        json_patch::merge(&mut value, &json!({"spec": spec}));
        PodInfo::new(Arc::new(serde_json::from_value(value).expect("pod")))
    }

    fn run(cache: &Cache, pod: &PodInfo, picker: &mut Picker) -> Result<String, FitError> {
        let spec = pod.pod.spec.clone().expect("spec");
        schedule(cache, pod, &spec, picker)
    }

    #[test]
    fn a_burst_spreads_and_never_overcommits() {
        let mut cache = cluster(&[("n1", "2"), ("n2", "2"), ("n3", "2")]);
        let mut picker = Picker::new(7);
        let mut placed = HashMap::new();
        for index in 0..6 {
            let incoming = pod(&format!("p{index}"), json!({}));
            let node = run(&cache, &incoming, &mut picker).expect("fits");
            cache.assume(&incoming, &node);
            *placed.entry(node).or_insert(0) += 1;
        }
        assert_eq!(placed.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
        let extra = pod("p6", json!({}));
        assert_eq!(
            run(&cache, &extra, &mut picker),
            Err(FitError(
                "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are available: \
                 3 No preemption victims found for incoming pod."
                    .to_owned()
            ))
        );
    }

    #[test]
    fn the_message_counts_reasons_sorted_as_upstream() {
        let mut cache = cluster(&[("n1", "500m"), ("n2", "500m"), ("n3", "4")]);
        cache.set_node(
            serde_json::from_value(
                json!({"metadata": {"name": "n3", "labels": {"disk": "hdd"}},
                "status": {"allocatable": {"cpu": "4", "memory": "4Gi", "pods": "110"}}}),
            )
            .expect("node"),
        );
        let incoming = pod("p", json!({"nodeSelector": {"disk": "ssd"}}));
        let error = run(&cache, &incoming, &mut Picker::new(1)).expect_err("nothing fits");
        assert_eq!(
            error.0,
            "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector. \
             preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
        );
        let never = pod("q", json!({"preemptionPolicy": "Never"}));
        let error = run(&cache, &never, &mut Picker::new(1)).expect("n3 has room");
        assert_eq!(error, "n3");
        let big = pod(
            "r",
            json!({"preemptionPolicy": "Never", "containers": [{"name": "c",
            "resources": {"requests": {"cpu": "8"}}}]}),
        );
        assert_eq!(
            run(&cache, &big, &mut Picker::new(1))
                .expect_err("too big")
                .0,
            "0/3 nodes are available: 3 Insufficient cpu. preemption: not eligible due to preemptionPolicy=Never."
        );
        assert_eq!(
            run(&Cache::default(), &big, &mut Picker::new(1)),
            Err(FitError(NO_NODES.to_owned()))
        );
    }

    #[test]
    fn mixed_reasons_histogram() {
        let mut cache = cluster(&[("n1", "1"), ("n2", "1")]);
        cache.assume(&pod("x1", json!({})), "n1");
        cache.assume(&pod("x2", json!({})), "n2");
        cache.set_node(
            serde_json::from_value(json!({"metadata": {"name": "n3"},
                "spec": {"taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]},
                "status": {"allocatable": {"cpu": "4", "memory": "4Gi", "pods": "110"}}}))
            .expect("node"),
        );
        let error = run(&cache, &pod("p", json!({})), &mut Picker::new(1)).expect_err("no fit");
        assert_eq!(
            error.0,
            "0/3 nodes are available: 1 node(s) had untolerated taint {k: v}, 2 Insufficient cpu. \
             preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, \
             2 No preemption victims found for incoming pod."
        );
    }

    #[test]
    fn feasible_node_count_follows_upstream() {
        assert_eq!(feasible_to_find(50), 50);
        assert_eq!(feasible_to_find(1000), 420);
        assert_eq!(feasible_to_find(5000), 500);
        assert_eq!(feasible_to_find(200), 100);
    }

    #[test]
    fn many_nodes_filter_in_parallel_with_the_same_answer() {
        let names: Vec<String> = (0..600).map(|i| format!("n{i:03}")).collect();
        let specs: Vec<(&str, &str)> = names
            .iter()
            .map(|name| (name.as_str(), if name == "n599" { "8" } else { "1" }))
            .collect();
        let cache = cluster(&specs);
        let incoming = pod(
            "p",
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "4"}}}]}),
        );
        assert_eq!(
            run(&cache, &incoming, &mut Picker::new(3)).expect("one fits"),
            "n599"
        );
    }
}
