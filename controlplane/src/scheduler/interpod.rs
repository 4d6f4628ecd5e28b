//! InterPodAffinity as upstream: the filter (required affinity of the pod, required
//! anti-affinity of the pod, required anti-affinity of the pods already placed) on counts per
//! topology domain computed once per attempt, and the score (preferred terms both ways, plus
//! existing pods' required affinity at `hardPodAffinityWeight` 1) normalised min..max.

use super::cache::{AffinityTerm, Cache, NodeInfo, PodInfo};
use super::filters::Rejection;
use super::pass::{self, LabelMap};

pub const REASON_AFFINITY: &str = "node(s) didn't match pod affinity rules";
pub const REASON_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
pub const REASON_EXISTING_ANTI_AFFINITY: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";
const HARD_POD_AFFINITY_WEIGHT: i64 = 1;

/// Counts per topology domain: key, then value, both borrowed from the cache's node labels
/// for the attempt (no allocation per counted pod).
#[derive(Debug, Default)]
struct DomainCounts<'a>(LabelMap<'a, LabelMap<'a, i64>>);

impl<'a> DomainCounts<'a> {
    fn bump(&mut self, node: &'a NodeInfo, key: &str, by: i64) {
        if let Some((key, value)) = node.labels().get_key_value(key) {
            *self
                .0
                .entry(key.as_str())
                .or_default()
                .entry(value.as_str())
                .or_insert(0) += by;
        }
    }

    fn get(&self, key: &str, value: &str) -> i64 {
        self.0
            .get(key)
            .and_then(|values| values.get(value))
            .copied()
            .unwrap_or(0)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds another pass's counts (from another chunk of nodes).
    fn merge(&mut self, other: DomainCounts<'a>) {
        for (key, values) in other.0 {
            let mine = self.0.entry(key).or_default();
            for (value, count) in values {
                *mine.entry(value).or_insert(0) += count;
            }
        }
    }
}

/// Sums per topology key for the pods of one node, flushed into [`DomainCounts`] once per
/// node instead of once per pod.
#[derive(Debug, Default)]
struct NodeSums<'t>(Vec<(&'t str, i64)>);

impl<'t> NodeSums<'t> {
    fn add(&mut self, key: &'t str, by: i64) {
        match self.0.iter_mut().find(|(known, _)| *known == key) {
            Some((_, sum)) => *sum += by,
            None => self.0.push((key, by)),
        }
    }

    /// Adds `weight` under the term's key if the term selects `who`.
    fn add_if(&mut self, term: &'t AffinityTerm, who: &PodInfo, cache: &Cache, weight: i64) {
        if term.matches(who, cache) {
            self.add(&term.topology_key, weight);
        }
    }

    fn flush<'a>(&mut self, counts: &mut DomainCounts<'a>, node: &'a NodeInfo) {
        for (key, sum) in self.0.drain(..) {
            counts.bump(node, key, sum);
        }
    }
}

/// The filter's pre-computed counts.
#[derive(Debug, Default)]
pub struct FilterState<'a> {
    /// Domains where a placed pod's required anti-affinity selects the incoming pod.
    existing_anti: DomainCounts<'a>,
    /// Domains holding pods that match all of the incoming pod's affinity terms.
    affinity: DomainCounts<'a>,
    /// Domains holding pods that one of the incoming pod's anti-affinity terms selects.
    anti: DomainCounts<'a>,
    required: &'a [AffinityTerm],
    required_anti: &'a [AffinityTerm],
    /// The pod matches its own affinity terms (the first pod of a group may go anywhere).
    matches_itself: bool,
}

impl<'a> FilterState<'a> {
    /// Counts the domains the pod's and the placed pods' required terms care about.
    pub fn new(pod: &'a PodInfo, cache: &'a Cache) -> Self {
        let required: &'a [AffinityTerm] = &pod.affinity.required;
        let required_anti: &'a [AffinityTerm] = &pod.affinity.required_anti;
        let incoming_terms = !required.is_empty() || !required_anti.is_empty();
        let visits = |node: &NodeInfo| {
            if incoming_terms || node.pods_with_affinity > 0 {
                node.pods.len()
            } else {
                0
            }
        };
        let parts = pass::over_nodes(cache, visits, |nodes| {
            let mut counts = [
                DomainCounts::default(),
                DomainCounts::default(),
                DomainCounts::default(),
            ];
            let (mut existing_anti, mut anti) = (NodeSums::default(), NodeSums::default());
            for node in nodes.iter().copied() {
                if !incoming_terms && node.pods_with_affinity == 0 {
                    continue;
                }
                let mut matching_all = 0;
                for existing in &node.pods {
                    for term in &existing.affinity.required_anti {
                        if term.matches(pod, cache) {
                            existing_anti.add(&term.topology_key, 1);
                        }
                    }
                    if !incoming_terms {
                        continue;
                    }
                    if !required.is_empty()
                        && required.iter().all(|term| term.matches(existing, cache))
                    {
                        matching_all += 1;
                    }
                    for term in required_anti {
                        if term.matches(existing, cache) {
                            anti.add(&term.topology_key, 1);
                        }
                    }
                }
                existing_anti.flush(&mut counts[0], node);
                if matching_all > 0 {
                    for term in required {
                        counts[1].bump(node, &term.topology_key, matching_all);
                    }
                }
                anti.flush(&mut counts[2], node);
            }
            counts
        });
        let mut state = Self {
            required,
            required_anti,
            matches_itself: required.iter().all(|term| term.matches(pod, cache)),
            ..Self::default()
        };
        for [existing_anti, affinity, anti] in parts {
            state.existing_anti.merge(existing_anti);
            state.affinity.merge(affinity);
            state.anti.merge(anti);
        }
        state
    }

    /// Rejects a node where the pod's or the placed pods' required terms fail.
    pub fn filter(&self, node: &NodeInfo) -> Result<(), Rejection> {
        let labels = node.labels();
        let count = |counts: &DomainCounts<'_>, key: &str| -> i64 {
            labels.get(key).map_or(0, |value| counts.get(key, value))
        };
        if !self.required.is_empty() {
            let satisfied = self.required.iter().all(|term| {
                labels.contains_key(&term.topology_key)
                    && count(&self.affinity, &term.topology_key) > 0
            });
            let first_of_group = self.affinity.is_empty()
                && self.matches_itself
                && self
                    .required
                    .iter()
                    .all(|term| labels.contains_key(&term.topology_key));
            if !satisfied && !first_of_group {
                return Err(Rejection::unresolvable(REASON_AFFINITY));
            }
        }
        if self
            .required_anti
            .iter()
            .any(|term| count(&self.anti, &term.topology_key) > 0)
        {
            return Err(Rejection::unschedulable(REASON_ANTI_AFFINITY));
        }
        if !self.existing_anti.is_empty()
            && labels
                .iter()
                .any(|(key, value)| self.existing_anti.get(key, value) > 0)
        {
            return Err(Rejection::unschedulable(REASON_EXISTING_ANTI_AFFINITY));
        }
        Ok(())
    }
}

/// The score's per-domain sums, or `None` to skip the plugin.
#[derive(Debug, Default)]
pub struct ScoreState<'a> {
    sums: DomainCounts<'a>,
}

impl<'a> ScoreState<'a> {
    /// Sums the weights of the terms that hold between the pod and each placed pod.
    pub fn new(pod: &PodInfo, cache: &'a Cache) -> Option<Self> {
        let own = &pod.affinity;
        let preferring = !own.preferred.is_empty() || !own.preferred_anti.is_empty();
        let skip = |node: &NodeInfo| {
            (!preferring && node.pods_with_affinity == 0) || node.labels().is_empty()
        };
        let visits = |node: &NodeInfo| if skip(node) { 0 } else { node.pods.len() };
        let parts = pass::over_nodes(cache, visits, |nodes| {
            let mut sums = DomainCounts::default();
            let mut node_sums = NodeSums::default();
            for node in nodes.iter().copied() {
                if skip(node) {
                    continue;
                }
                for existing in &node.pods {
                    if !preferring && !existing.affinity.any() {
                        continue;
                    }
                    let mut add = |term, who, weight| {
                        node_sums.add_if(term, who, cache, weight);
                    };
                    for (weight, term) in &own.preferred {
                        add(term, existing, i64::from(*weight));
                    }
                    for (weight, term) in &own.preferred_anti {
                        add(term, existing, -i64::from(*weight));
                    }
                    for term in &existing.affinity.required {
                        add(term, pod, HARD_POD_AFFINITY_WEIGHT);
                    }
                    for (weight, term) in &existing.affinity.preferred {
                        add(term, pod, i64::from(*weight));
                    }
                    for (weight, term) in &existing.affinity.preferred_anti {
                        add(term, pod, -i64::from(*weight));
                    }
                }
                node_sums.flush(&mut sums, node);
            }
            sums
        });
        let mut sums = DomainCounts::default();
        for part in parts {
            sums.merge(part);
        }
        (!sums.is_empty()).then_some(Self { sums })
    }

    /// The node's raw score: the sums of the domains it is in.
    pub fn score(&self, node: &NodeInfo) -> i64 {
        node.labels()
            .iter()
            .map(|(key, value)| self.sums.get(key, value))
            .sum()
    }
}

/// Upstream's InterPodAffinity NormalizeScore: min..max mapped to 0..100.
pub fn normalize(scores: &mut [i64]) {
    let (Some(min), Some(max)) = (scores.iter().copied().min(), scores.iter().copied().max())
    else {
        return;
    };
    for score in scores {
        *score = if max > min {
            (super::MAX_NODE_SCORE as f64 * ((*score - min) as f64 / (max - min) as f64)) as i64
        } else {
            0
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn cache(pods: &[(&str, &str, serde_json::Value)]) -> Cache {
        let mut cache = Cache::default();
        for (name, zone) in [("n1", "a"), ("n2", "a"), ("n3", "b")] {
            cache.set_node(
                serde_json::from_value(json!({"metadata": {"name": name,
                    "labels": {"zone": zone, "kubernetes.io/hostname": name}}}))
                .expect("node"),
            );
        }
        for (name, node, spec) in pods {
            cache.set_bound_pod(Arc::new(pod(name, node, spec.clone())));
        }
        cache
    }

    fn pod(name: &str, node: &str, extra: serde_json::Value) -> k8s_openapi::api::core::v1::Pod {
        let mut value = json!({"metadata": {"name": name, "namespace": "default", "uid": name, "labels": {"app": "web"}},
            "spec": {"nodeName": node, "containers": [{"name": "c"}]}});
        json_patch::merge(&mut value, &extra);
        serde_json::from_value(value).expect("pod")
    }

    fn term(kind: &str, key: &str) -> serde_json::Value {
        json!({"spec": {"affinity": {kind: {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": key}]}}}})
    }

    fn verdicts(cache: &Cache, incoming: serde_json::Value) -> Vec<Result<(), Rejection>> {
        let pod = PodInfo::new(Arc::new(pod("new", "", incoming)));
        let state = FilterState::new(&pod, cache);
        cache.nodes().map(|node| state.filter(node)).collect()
    }

    #[test]
    fn anti_affinity_keeps_one_per_domain() {
        let cache = cache(&[("p1", "n1", json!({}))]);
        let result = verdicts(&cache, term("podAntiAffinity", "kubernetes.io/hostname"));
        assert_eq!(
            result[0],
            Err(Rejection::unschedulable(REASON_ANTI_AFFINITY))
        );
        assert_eq!(result[1], Ok(()));
        let result = verdicts(&cache, term("podAntiAffinity", "zone"));
        assert!(result[1].is_err() && result[2].is_ok());
    }

    #[test]
    fn placed_pods_anti_affinity_protects_them() {
        let cache = cache(&[("p1", "n1", term("podAntiAffinity", "zone"))]);
        let result = verdicts(&cache, json!({}));
        assert_eq!(
            result[1],
            Err(Rejection::unschedulable(REASON_EXISTING_ANTI_AFFINITY))
        );
        assert_eq!(result[2], Ok(()));
    }

    #[test]
    fn affinity_follows_matching_pods_and_lets_the_first_one_anywhere() {
        let empty = cache(&[]);
        assert!(
            verdicts(&empty, term("podAffinity", "zone"))
                .iter()
                .all(Result::is_ok)
        );
        let cache = cache(&[("p1", "n3", json!({}))]);
        let result = verdicts(&cache, term("podAffinity", "zone"));
        assert_eq!(result[0], Err(Rejection::unresolvable(REASON_AFFINITY)));
        assert_eq!(result[2], Ok(()));
    }

    #[test]
    fn preferred_terms_score_the_domain() {
        let cache = cache(&[("p1", "n3", json!({}))]);
        let preferred = json!({"spec": {"affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "zone"}}]}}}});
        let pod = PodInfo::new(Arc::new(pod("new", "", preferred)));
        let state = ScoreState::new(&pod, &cache).expect("terms");
        let mut scores: Vec<i64> = cache.nodes().map(|node| state.score(node)).collect();
        normalize(&mut scores);
        assert_eq!(scores, vec![0, 0, 100]);
    }
}
