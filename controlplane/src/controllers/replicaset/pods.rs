//! Pod state as the ReplicaSet controller reads it (upstream's `podutil` and
//! `controller.ActivePodsWithRanks`): readiness, availability after `minReadySeconds`, which
//! pods count, the order in which surplus pods are deleted, and new pods from a template.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use kube::api::ObjectMeta;

use crate::controllers::ownership;

/// The annotation that orders pods for deletion (lower cost first).
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// Pods that count toward replicas: not finished, not being deleted.
pub fn is_active(pod: &Pod) -> bool {
    let phase = phase(pod);
    phase != "Succeeded" && phase != "Failed" && pod.metadata.deletion_timestamp.is_none()
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|status| status.phase.as_deref())
        .unwrap_or("")
}

/// When the pod's `Ready` condition became true, if it is true.
pub fn ready_since(pod: &Pod) -> Option<Option<Timestamp>> {
    pod.status
        .as_ref()?
        .conditions
        .as_deref()?
        .iter()
        .find(|condition| condition.type_ == "Ready" && condition.status == "True")
        .map(|condition| condition.last_transition_time.as_ref().map(|time| time.0))
}

/// Whether the pod is Ready.
pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Whether the pod has been Ready for at least `min_ready_seconds` at `now` (upstream's
/// `IsPodAvailable`).
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    match ready_since(pod) {
        None => false,
        Some(_) if min_ready_seconds <= 0 => true,
        Some(None) => false,
        Some(Some(since)) => since
            .checked_add(jiff::SignedDuration::from_secs(i64::from(
                min_ready_seconds,
            )))
            .is_ok_and(|ready_at| ready_at <= now),
    }
}

/// How long until a ready pod becomes available, if it is ready but not yet available.
pub fn until_available(
    pod: &Pod,
    min_ready_seconds: i32,
    now: Timestamp,
) -> Option<std::time::Duration> {
    let since = ready_since(pod)??;
    let ready_at = since
        .checked_add(jiff::SignedDuration::from_secs(i64::from(
            min_ready_seconds,
        )))
        .ok()?;
    let left = now.duration_until(ready_at);
    left.is_positive()
        .then(|| std::time::Duration::try_from(left).ok())
        .flatten()
}

/// Whether the pod carries every label of the template with the same value.
pub fn fully_labeled(pod: &Pod, template_labels: &BTreeMap<String, String>) -> bool {
    let labels = pod.metadata.labels.as_ref();
    template_labels
        .iter()
        .all(|(key, value)| labels.and_then(|labels| labels.get(key)) == Some(value))
}

/// A pod to delete before another: upstream's `ActivePodsWithRanks.Less` with
/// `LogarithmicScaleDown`. `rank` is how many pods of the same owner share the pod's node.
pub fn delete_first(a: (&Pod, usize), b: (&Pod, usize), now: Timestamp) -> Ordering {
    let (pod_a, rank_a) = a;
    let (pod_b, rank_b) = b;
    let assigned = |pod: &Pod| {
        pod.spec
            .as_ref()
            .and_then(|spec| spec.node_name.as_deref())
            .is_some_and(|node| !node.is_empty())
    };
    let phase_rank = |pod: &Pod| match phase(pod) {
        "Pending" => 0,
        "Unknown" => 1,
        "Running" => 2,
        _ => 3,
    };
    let cost = |pod: &Pod| {
        pod.metadata
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(DELETION_COST))
            .and_then(|cost| cost.parse::<i32>().ok())
            .unwrap_or(0)
    };
    let restarts = |pod: &Pod| {
        pod.status
            .as_ref()
            .and_then(|status| status.container_statuses.as_deref())
            .unwrap_or_default()
            .iter()
            .map(|container| container.restart_count)
            .max()
            .unwrap_or(0)
    };
    assigned(pod_a)
        .cmp(&assigned(pod_b))
        .then_with(|| phase_rank(pod_a).cmp(&phase_rank(pod_b)))
        .then_with(|| is_ready(pod_a).cmp(&is_ready(pod_b)))
        .then_with(|| cost(pod_a).cmp(&cost(pod_b)))
        // More pods on the same node: delete first.
        .then_with(|| rank_b.cmp(&rank_a))
        .then_with(
            || match (ready_since(pod_a).flatten(), ready_since(pod_b).flatten()) {
                (Some(a), Some(b)) => newer_first(a, b, now),
                _ => Ordering::Equal,
            },
        )
        .then_with(|| restarts(pod_b).cmp(&restarts(pod_a)))
        .then_with(|| {
            match (
                pod_a.metadata.creation_timestamp.as_ref(),
                pod_b.metadata.creation_timestamp.as_ref(),
            ) {
                (None, Some(_)) => Ordering::Less,
                (Some(_), None) => Ordering::Greater,
                (Some(a), Some(b)) => newer_first(a.0, b.0, now),
                (None, None) => Ordering::Equal,
            }
        })
        .then_with(|| pod_a.metadata.name.cmp(&pod_b.metadata.name))
}

/// Newer before older, comparing the base-2 logarithm of their ages (upstream's
/// `logarithmicRankDiff`), so pods of about the same age are treated alike.
fn newer_first(a: Timestamp, b: Timestamp, now: Timestamp) -> Ordering {
    let bucket = |time: Timestamp| {
        let age = now.duration_since(time).as_nanos();
        if age <= 0 {
            0
        } else {
            128 - age.leading_zeros()
        }
    };
    bucket(a).cmp(&bucket(b))
}

/// The pods to delete to remove `count`: the first `count` in deletion order. Ranks count
/// the owner's active pods per node.
pub fn pods_to_delete(pods: &[&Pod], count: usize, now: Timestamp) -> Vec<Pod> {
    let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
    for pod in pods {
        if let Some(node) = pod.spec.as_ref().and_then(|spec| spec.node_name.as_deref()) {
            *per_node.entry(node).or_default() += 1;
        }
    }
    let rank = |pod: &Pod| {
        pod.spec
            .as_ref()
            .and_then(|spec| spec.node_name.as_deref())
            .and_then(|node| per_node.get(node).copied())
            .unwrap_or(0)
    };
    let mut ranked: Vec<(&Pod, usize)> = pods.iter().map(|pod| (*pod, rank(pod))).collect();
    ranked.sort_by(|a, b| delete_first(*a, *b, now));
    ranked
        .into_iter()
        .take(count)
        .map(|(pod, _)| pod.clone())
        .collect()
}

/// A pod from `template` owned by `owner`, named `<prefix><random>` by the API server
/// (upstream's `GetPodFromTemplate`).
pub fn from_template<K: kube::Resource<DynamicType = ()>>(
    template: &PodTemplateSpec,
    owner: &K,
    prefix: &str,
) -> Pod {
    let template_metadata = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(prefix.to_owned()),
            namespace: owner.meta().namespace.clone(),
            labels: template_metadata.labels,
            annotations: template_metadata.annotations,
            finalizers: template_metadata.finalizers,
            owner_references: Some(vec![ownership::controller_reference(owner)]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn now() -> Timestamp {
        "2026-01-01T12:00:00Z".parse().expect("timestamp")
    }

    fn pod(name: &str, node: Option<&str>, phase: &str, ready_secs_ago: Option<i64>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(now() - jiff::SignedDuration::from_secs(3600))),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(str::to_owned),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: ready_secs_ago.map(|ago| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(
                            now() - jiff::SignedDuration::from_secs(ago),
                        )),
                        ..PodCondition::default()
                    }]
                }),
                ..PodStatus::default()
            }),
        }
    }

    fn names(pods: Vec<Pod>) -> Vec<String> {
        pods.into_iter()
            .map(|pod| pod.metadata.name.unwrap_or_default())
            .collect()
    }

    #[test]
    fn deletes_unassigned_then_pending_then_not_ready_then_ready() {
        let ready = pod("ready", Some("n1"), "Running", Some(600));
        let not_ready = pod("not-ready", Some("n2"), "Running", None);
        let pending = pod("pending", Some("n3"), "Pending", None);
        let unassigned = pod("unassigned", None, "Pending", None);
        let pods = [&ready, &not_ready, &pending, &unassigned];
        assert_eq!(
            names(pods_to_delete(&pods, 4, now())),
            ["unassigned", "pending", "not-ready", "ready"]
        );
        assert_eq!(names(pods_to_delete(&pods, 1, now())), ["unassigned"]);
    }

    #[test]
    fn deletes_newer_ready_pods_and_doubled_up_nodes_first() {
        let old = pod("old", Some("n1"), "Running", Some(100_000));
        let new = pod("new", Some("n2"), "Running", Some(10));
        assert_eq!(names(pods_to_delete(&[&old, &new], 1, now())), ["new"]);
        // Two pods on n1 outrank one on n2, whatever their age.
        let crowded = pod("crowded", Some("n1"), "Running", Some(100_000));
        assert_eq!(
            names(pods_to_delete(&[&old, &new, &crowded], 1, now())),
            ["crowded"]
        );
    }

    #[test]
    fn deletion_cost_orders_before_age() {
        let mut cheap = pod("cheap", Some("n1"), "Running", Some(100_000));
        cheap.metadata.annotations = Some(BTreeMap::from([(DELETION_COST.into(), "-5".into())]));
        let new = pod("new", Some("n2"), "Running", Some(10));
        assert_eq!(names(pods_to_delete(&[&new, &cheap], 1, now())), ["cheap"]);
    }

    #[test]
    fn availability_waits_min_ready_seconds() {
        let ready = pod("p", Some("n1"), "Running", Some(5));
        assert!(is_available(&ready, 0, now()));
        assert!(is_available(&ready, 5, now()));
        assert!(!is_available(&ready, 10, now()));
        assert_eq!(
            until_available(&ready, 10, now()),
            Some(std::time::Duration::from_secs(5))
        );
        assert!(!is_available(&pod("p", None, "Pending", None), 0, now()));
    }

    #[test]
    fn finished_and_deleting_pods_do_not_count() {
        assert!(is_active(&pod("p", None, "Pending", None)));
        assert!(!is_active(&pod("p", None, "Succeeded", None)));
        assert!(!is_active(&pod("p", None, "Failed", None)));
        let mut deleting = pod("p", None, "Running", None);
        deleting.metadata.deletion_timestamp = Some(Time(now()));
        assert!(!is_active(&deleting));
    }
}
