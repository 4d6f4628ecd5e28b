//! The taint eviction controller, as upstream's (`pkg/controller/tainteviction`): a pod bound
//! to a node with a `NoExecute` taint it does not tolerate is deleted at once; one that
//! tolerates every such taint, some for a limited `tolerationSeconds`, is deleted once the
//! shortest of those has passed since the taint was added (its `timeAdded`); tolerations
//! without `tolerationSeconds` keep it forever. Before the delete, the pod gets the
//! `DisruptionTarget` condition (`DeletionByTaintManager`) and an event
//! `TaintManagerEviction`, as upstream.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Event, EventSource, Node, ObjectReference, Pod, PodCondition, Taint, Toleration,
};

use crate::api::taints::tolerates;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::reflect::store;

/// How often the pods on tainted nodes are looked at.
const PERIOD: Duration = Duration::from_secs(1);
/// The component upstream's controller records events as.
const COMPONENT: &str = "taint-eviction-controller";

/// What the taints of a pod's node mean for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No `NoExecute` taint, or all tolerated for ever.
    Stay,
    /// A `NoExecute` taint it does not tolerate.
    EvictNow,
    /// Tolerated until this time.
    EvictAt(jiff::Timestamp),
}

/// The verdict for a pod with `tolerations` on a node with `taints`; `first_seen` stands in for
/// a `NoExecute` taint without `timeAdded`.
pub fn verdict(
    tolerations: &[Toleration],
    taints: &[Taint],
    mut first_seen: impl FnMut(&Taint) -> jiff::Timestamp,
) -> Verdict {
    let mut deadline: Option<jiff::Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Verdict::EvictNow;
        }
        // Upstream's getMinTolerationTime: the shortest limited toleration counts.
        let Some(seconds) = matching
            .iter()
            .filter_map(|t| t.toleration_seconds)
            .map(|s| s.max(0))
            .min()
        else {
            continue;
        };
        let added = taint
            .time_added
            .as_ref()
            .map_or_else(|| first_seen(taint), |t| t.0);
        let at = added + jiff::SignedDuration::from_secs(seconds);
        deadline = Some(deadline.map_or(at, |d| d.min(at)));
    }
    deadline.map_or(Verdict::Stay, Verdict::EvictAt)
}

/// Runs the controller until it is dropped.
pub async fn run(client: kube::Client) {
    let (pods, pods_task) = store(Api::<Pod>::all(client.clone()), "taint eviction");
    let (nodes, nodes_task) = store(Api::<Node>::all(client.clone()), "taint eviction");
    tokio::spawn(pods_task);
    tokio::spawn(nodes_task);
    // Taints without timeAdded: when this controller first saw them.
    let mut first_seen: HashMap<(String, String), jiff::Timestamp> = HashMap::new();
    // Pods already deleted, until the watch shows their deletionTimestamp.
    let mut evicted: HashSet<String> = HashSet::new();
    let mut ticker = tokio::time::interval(PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if pods.wait_until_ready().await.is_err() || nodes.wait_until_ready().await.is_err() {
            return;
        }
        let now = jiff::Timestamp::now();
        let mut tainted: HashMap<String, Vec<Taint>> = HashMap::new();
        for node in nodes.state() {
            let name = node.metadata.name.clone().unwrap_or_default();
            let taints: Vec<Taint> = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|t| t.effect == "NoExecute")
                .collect();
            if !taints.is_empty() {
                tainted.insert(name, taints);
            }
        }
        first_seen.retain(|(node, key), _| {
            tainted
                .get(node)
                .is_some_and(|taints| taints.iter().any(|t| &t.key == key))
        });
        let live: HashSet<String> = pods
            .state()
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        evicted.retain(|uid| live.contains(uid));
        for pod in pods.state() {
            let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                continue;
            };
            let Some(taints) = tainted.get(&node) else {
                continue;
            };
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_some() || evicted.contains(&uid) {
                continue;
            }
            let tolerations = pod
                .spec
                .as_ref()
                .and_then(|s| s.tolerations.clone())
                .unwrap_or_default();
            let due = match verdict(&tolerations, taints, |taint| {
                *first_seen
                    .entry((node.clone(), taint.key.clone()))
                    .or_insert(now)
            }) {
                Verdict::Stay => false,
                Verdict::EvictNow => true,
                Verdict::EvictAt(at) => at <= now,
            };
            if due {
                match evict(&client, &pod).await {
                    Ok(()) => {
                        evicted.insert(uid);
                    }
                    Err(error) => log::warn!(
                        "taint eviction: pod {}: {}",
                        pod_name(&pod),
                        super::chain(&error)
                    ),
                }
            }
        }
    }
}

fn pod_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Upstream's `addConditionAndDeletePod`: the `DisruptionTarget` condition, then the delete.
async fn evict(client: &kube::Client, pod: &Pod) -> Result<(), kube::Error> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let now = Time(jiff::Timestamp::now());
    let mut conditions: Vec<PodCondition> = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    conditions.retain(|c| c.type_ != "DisruptionTarget");
    conditions.push(PodCondition {
        type_: "DisruptionTarget".to_owned(),
        status: "True".to_owned(),
        reason: Some("DeletionByTaintManager".to_owned()),
        message: Some("Taint manager: deleting due to NoExecute taint".to_owned()),
        last_transition_time: Some(now.clone()),
        ..PodCondition::default()
    });
    let patch = json!({
        "metadata": {"resourceVersion": pod.metadata.resource_version},
        "status": {"conditions": conditions},
    });
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(error) => return Err(error),
    }
    log::info!(
        "taint eviction: deleting pod {}/{name} (NoExecute taint on node {})",
        namespace,
        pod.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or_default()
    );
    record_event(client, pod, &now).await;
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error),
    }
}

/// The `TaintManagerEviction` event upstream records; losing it loses nothing else.
async fn record_event(client: &kube::Client, pod: &Pod, now: &Time) {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}.")),
            namespace: Some(namespace.clone()),
            ..ObjectMeta::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some("Pod".to_owned()),
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            uid: pod.metadata.uid.clone(),
            ..ObjectReference::default()
        },
        reason: Some("TaintManagerEviction".to_owned()),
        message: Some(format!("Marking for deletion Pod {namespace}/{name}")),
        type_: Some("Normal".to_owned()),
        count: Some(1),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now.clone()),
        source: Some(EventSource {
            component: Some(COMPONENT.to_owned()),
            host: None,
        }),
        reporting_component: Some(COMPONENT.to_owned()),
        reporting_instance: Some(COMPONENT.to_owned()),
        ..Event::default()
    };
    let events: Api<Event> = Api::namespaced(client.clone(), &namespace);
    if let Err(error) = events.create(&PostParams::default(), &event).await {
        log::debug!("taint eviction: cannot record an event: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, effect: &str, added: Option<i64>) -> Taint {
        Taint {
            key: key.to_owned(),
            effect: effect.to_owned(),
            time_added: added.map(|s| Time(jiff::Timestamp::from_second(s).unwrap())),
            value: None,
        }
    }

    fn toleration(key: &str, operator: &str, effect: &str, seconds: Option<i64>) -> Toleration {
        Toleration {
            key: (!key.is_empty()).then(|| key.to_owned()),
            operator: Some(operator.to_owned()),
            effect: (!effect.is_empty()).then(|| effect.to_owned()),
            toleration_seconds: seconds,
            value: None,
        }
    }

    fn at(seconds: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(seconds).unwrap()
    }

    #[test]
    fn untolerated_no_execute_taints_evict_at_once() {
        let unreachable = taint("node.kubernetes.io/unreachable", "NoExecute", Some(100));
        let never = |_: &Taint| at(0);
        assert_eq!(
            verdict(&[], std::slice::from_ref(&unreachable), never),
            Verdict::EvictNow
        );
        let other = toleration("node.kubernetes.io/not-ready", "Exists", "NoExecute", None);
        assert_eq!(
            verdict(&[other], std::slice::from_ref(&unreachable), never),
            Verdict::EvictNow
        );
        // NoSchedule taints never evict.
        let no_schedule = taint("node.kubernetes.io/unreachable", "NoSchedule", None);
        assert_eq!(verdict(&[], &[no_schedule], never), Verdict::Stay);
    }

    #[test]
    fn limited_tolerations_evict_after_the_shortest_one() {
        let unreachable = taint("node.kubernetes.io/unreachable", "NoExecute", Some(100));
        let never = |_: &Taint| at(0);
        let five = toleration(
            "node.kubernetes.io/unreachable",
            "Exists",
            "NoExecute",
            Some(5),
        );
        let default = toleration(
            "node.kubernetes.io/unreachable",
            "Exists",
            "NoExecute",
            Some(300),
        );
        assert_eq!(
            verdict(
                &[default.clone(), five],
                std::slice::from_ref(&unreachable),
                never
            ),
            Verdict::EvictAt(at(105))
        );
        let forever = toleration("", "Exists", "", None);
        assert_eq!(
            verdict(&[forever], std::slice::from_ref(&unreachable), never),
            Verdict::Stay
        );
        // A taint without timeAdded counts from when it was first seen.
        let unstamped = taint("node.kubernetes.io/unreachable", "NoExecute", None);
        assert_eq!(
            verdict(&[default], &[unstamped], |_| at(1000)),
            Verdict::EvictAt(at(1300))
        );
    }
}
