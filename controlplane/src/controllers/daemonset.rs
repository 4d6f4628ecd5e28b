//! The DaemonSet controller, as upstream's `pkg/controller/daemon`: one pod on every node
//! the pod template fits ([`placement`]), pinned there with node affinity for the scheduler to
//! bind; pods leave nodes that are gone or no longer fit; failed pods are replaced. Updates
//! roll out node by node within `maxUnavailable` (`RollingUpdate`) or when pods are deleted
//! (`OnDelete`); templates are kept as ControllerRevisions and pods carry the
//! `controller-revision-hash` of theirs.

mod placement;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use serde_json::json;

use super::workload::{self, CONTROLLER_REVISION_HASH, Error, PodControl};

/// Runs the DaemonSet controller until its watch streams end.
pub async fn run(client: Client) {
    let context = Arc::new(PodControl::new(client.clone(), "daemonset-controller"));
    let controller = Controller::new(
        Api::<DaemonSet>::all(client.clone()),
        watcher::Config::default(),
    );
    let daemonsets = controller.store();
    let controller = controller
        .owns(Api::<Pod>::all(client.clone()), watcher::Config::default())
        // Any node change may add or remove a pod of any DaemonSet.
        .watches(
            Api::<Node>::all(client),
            watcher::Config::default(),
            move |_| {
                daemonsets
                    .state()
                    .into_iter()
                    .map(|daemonset| ObjectRef::from_obj(&*daemonset))
            },
        )
        .run(reconcile, workload::error_policy, context);
    workload::drain("daemonset controller", controller).await;
}

/// A node's daemon pods, and where the DaemonSet's pod belongs.
struct NodeState {
    node: Node,
    placement: placement::Placement,
    pods: Vec<Pod>,
}

async fn reconcile(cached: Arc<DaemonSet>, context: Arc<PodControl>) -> Result<Action, Error> {
    let client = &context.client;
    let namespace = cached.namespace().unwrap_or_default();
    let Some((api, daemonset)) = workload::fresh(client, &*cached).await? else {
        return Ok(Action::await_change());
    };
    if daemonset.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let uid = daemonset.uid().unwrap_or_default();
    let spec = daemonset.spec.clone().unwrap_or_default();
    let selector = workload::selector_query(&spec.selector);
    let collision = daemonset.status.as_ref().and_then(|s| s.collision_count);
    let history = workload::sync_history(
        client,
        &daemonset,
        &selector,
        &spec.template,
        CONTROLLER_REVISION_HASH,
        collision,
    )
    .await?;
    let hash = history.hash.clone();

    let nodes: Vec<Node> = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(Error::api("listing nodes"))?
        .items;
    let pods = workload::owned_pods(client, &namespace, &selector, &uid).await?;
    let mut daemon_spec = spec.template.spec.clone().unwrap_or_default();
    placement::add_daemon_tolerations(&mut daemon_spec);
    let mut by_node: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
    for pod in pods {
        let node = pod.spec.as_ref().and_then(placement::node_of);
        by_node
            .entry(node.unwrap_or_default())
            .or_default()
            .push(pod);
    }
    let mut states: Vec<NodeState> = Vec::new();
    for node in nodes {
        let node_name = node.name_any();
        states.push(NodeState {
            placement: placement::placement(&node, &daemon_spec),
            pods: by_node.remove(&node_name).unwrap_or_default(),
            node,
        });
    }
    // Pods on nodes that no longer exist (or on none at all).
    for pod in by_node.into_values().flatten() {
        if !workload::terminating(&pod) {
            context.delete(&daemonset, &pod).await?;
        }
    }

    let mut changed = false;
    for state in &mut states {
        changed |= converge_node(&context, &daemonset, state, &daemon_spec, &hash).await?;
    }
    if !changed && rolling(&daemonset) {
        roll(&context, &daemonset, &states, &hash).await?;
    }

    let in_use: Vec<String> = states
        .iter()
        .flat_map(|state| state.pods.iter())
        .filter_map(|pod| pod.labels().get(CONTROLLER_REVISION_HASH))
        .map(|hash| format!("{}-{hash}", daemonset.name_any()))
        .collect();
    workload::prune_history(
        client,
        &history,
        &in_use,
        spec.revision_history_limit.unwrap_or(10),
    )
    .await?;
    update_status(&api, &daemonset, &states, &hash).await?;
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let waiting = states
        .iter()
        .flat_map(|state| &state.pods)
        .any(|pod| workload::ready(pod) && !workload::available(pod, min_ready, Timestamp::now()));
    Ok(if waiting {
        Action::requeue(Duration::from_secs(1))
    } else {
        Action::await_change()
    })
}

/// Starts, replaces or removes the daemon pods of one node; true when it changed anything.
async fn converge_node(
    context: &PodControl,
    daemonset: &DaemonSet,
    state: &mut NodeState,
    daemon_spec: &k8s_openapi::api::core::v1::PodSpec,
    hash: &str,
) -> Result<bool, Error> {
    let node_name = state.node.name_any();
    let mut live: Vec<Pod> = state
        .pods
        .iter()
        .filter(|pod| !workload::terminating(pod))
        .cloned()
        .collect();
    if !state.placement.should_continue_running {
        for pod in &live {
            context.delete(daemonset, pod).await?;
        }
        return Ok(!live.is_empty());
    }
    if !state.placement.should_run && live.is_empty() {
        return Ok(false);
    }
    let mut changed = false;
    for pod in live.iter().filter(|pod| workload::phase(pod) == "Failed") {
        context
            .recorder
            .warning(
                daemonset,
                "FailedDaemonPod",
                format!(
                    "Found failed daemon pod {}/{} on node {node_name}, will try to kill it",
                    pod.namespace().unwrap_or_default(),
                    pod.name_any()
                ),
            )
            .await;
        context.delete(daemonset, pod).await?;
        changed = true;
    }
    live.retain(|pod| workload::phase(pod) != "Failed");
    if live.is_empty() {
        if state.placement.should_run && !changed {
            let pod = new_pod(daemonset, daemon_spec, &node_name, hash);
            let created = context.create(daemonset, &pod).await?;
            state.pods.push(created);
        }
        return Ok(true);
    }
    // More than one daemon pod on a node: the oldest stays.
    live.sort_by_key(|pod| pod.metadata.creation_timestamp.as_ref().map(|time| time.0));
    for pod in live.iter().skip(1) {
        context.delete(daemonset, pod).await?;
        changed = true;
    }
    Ok(changed)
}

/// One rolling-update step: old pods that are unavailable go at once, available ones while
/// fewer than `maxUnavailable` nodes lack an available pod.
async fn roll(
    context: &PodControl,
    daemonset: &DaemonSet,
    states: &[NodeState],
    hash: &str,
) -> Result<(), Error> {
    let spec = daemonset.spec.clone().unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let now = Timestamp::now();
    let wanted: Vec<&NodeState> = states.iter().filter(|s| s.placement.should_run).collect();
    let desired = i32::try_from(wanted.len()).unwrap_or(i32::MAX);
    let max_unavailable = spec
        .update_strategy
        .and_then(|strategy| strategy.rolling_update)
        .and_then(|rolling| rolling.max_unavailable)
        .map_or(1, |value| scaled_value(&value, desired))
        .max(1);
    let live = |state: &NodeState| -> Option<Pod> {
        state
            .pods
            .iter()
            .find(|pod| !workload::terminating(pod))
            .cloned()
    };
    let mut unavailable = wanted
        .iter()
        .filter(|state| live(state).is_none_or(|pod| !workload::available(&pod, min_ready, now)))
        .count();
    let old: Vec<Pod> = wanted
        .iter()
        .filter_map(|state| live(state))
        .filter(|pod| {
            pod.labels()
                .get(CONTROLLER_REVISION_HASH)
                .map(String::as_str)
                != Some(hash)
        })
        .collect();
    let (old_available, old_unavailable): (Vec<Pod>, Vec<Pod>) = old
        .into_iter()
        .partition(|pod| workload::available(pod, min_ready, now));
    for pod in &old_unavailable {
        context.delete(daemonset, pod).await?;
    }
    for pod in &old_available {
        if unavailable >= usize::try_from(max_unavailable).unwrap_or(1) {
            break;
        }
        context.delete(daemonset, pod).await?;
        unavailable += 1;
    }
    Ok(())
}

async fn update_status(
    api: &Api<DaemonSet>,
    daemonset: &DaemonSet,
    states: &[NodeState],
    hash: &str,
) -> Result<(), Error> {
    let min_ready = daemonset
        .spec
        .as_ref()
        .and_then(|spec| spec.min_ready_seconds)
        .unwrap_or(0);
    let now = Timestamp::now();
    let (mut desired, mut current, mut misscheduled) = (0, 0, 0);
    let (mut ready, mut available, mut updated) = (0, 0, 0);
    for state in states {
        let pod = state.pods.iter().find(|pod| !workload::terminating(pod));
        if state.placement.should_run {
            desired += 1;
            if let Some(pod) = pod {
                current += 1;
                if workload::ready(pod) {
                    ready += 1;
                }
                if workload::available(pod, min_ready, now) {
                    available += 1;
                }
                if pod
                    .labels()
                    .get(CONTROLLER_REVISION_HASH)
                    .map(String::as_str)
                    == Some(hash)
                {
                    updated += 1;
                }
            }
        } else if pod.is_some() {
            misscheduled += 1;
        }
    }
    let unavailable = desired - available;
    workload::patch_status(
        api,
        daemonset,
        json!({
            "desiredNumberScheduled": desired,
            "currentNumberScheduled": current,
            "numberMisscheduled": misscheduled,
            "numberReady": ready,
            "numberAvailable": (available > 0).then_some(available),
            "numberUnavailable": (unavailable > 0).then_some(unavailable),
            "updatedNumberScheduled": (updated > 0).then_some(updated),
            "observedGeneration": daemonset.metadata.generation,
        }),
    )
    .await
}

fn new_pod(
    daemonset: &DaemonSet,
    daemon_spec: &k8s_openapi::api::core::v1::PodSpec,
    node: &str,
    hash: &str,
) -> Pod {
    let spec = daemonset.spec.clone().unwrap_or_default();
    let mut pod = workload::pod_from_template(&spec.template, daemonset);
    pod.metadata.generate_name = Some(format!("{}-", daemonset.name_any()));
    workload::set_label(&mut pod.metadata, CONTROLLER_REVISION_HASH, hash);
    let mut pod_spec = daemon_spec.clone();
    placement::pin_to_node(&mut pod_spec, node);
    pod.spec = Some(pod_spec);
    pod
}

fn rolling(daemonset: &DaemonSet) -> bool {
    daemonset
        .spec
        .as_ref()
        .and_then(|spec| spec.update_strategy.as_ref())
        .and_then(|strategy| strategy.type_.as_deref())
        .is_none_or(|type_| type_ == "RollingUpdate")
}

/// An int-or-percent of `total`, percentages rounded up (upstream's
/// `GetScaledValueFromIntOrPercent(..., true)`).
pub fn scaled_value(value: &IntOrString, total: i32) -> i32 {
    match value {
        IntOrString::Int(value) => *value,
        IntOrString::String(text) => {
            let percent: i64 = text.trim_end_matches('%').parse().unwrap_or(0);
            let scaled = (percent * i64::from(total) + 99) / 100;
            i32::try_from(scaled).unwrap_or(i32::MAX)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_up() {
        assert_eq!(scaled_value(&IntOrString::String("25%".into()), 3), 1);
        assert_eq!(scaled_value(&IntOrString::String("50%".into()), 3), 2);
        assert_eq!(scaled_value(&IntOrString::Int(2), 10), 2);
        assert_eq!(scaled_value(&IntOrString::String("0%".into()), 10), 0);
    }
}
