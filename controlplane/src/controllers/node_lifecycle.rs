//! The node lifecycle controller, as upstream's (`pkg/controller/nodelifecycle`): every
//! `node-monitor-period` it looks at each Node's heartbeats (its Lease in `kube-node-lease` and
//! its Ready condition's `lastHeartbeatTime`). A node that renewed neither within
//! `node-monitor-grace-period` (`node-startup-grace-period` if it never reported Ready) gets
//! its Ready, MemoryPressure, DiskPressure and PIDPressure conditions set to Unknown
//! (`NodeStatusUnknown`, "Kubelet stopped posting node status."). Then, from the conditions,
//! the taints: `node.kubernetes.io/unreachable` (Ready Unknown) or `node.kubernetes.io/not-ready`
//! (Ready False) as `NoExecute` (taint-based eviction, see
//! [`super::taint_eviction`]) and as `NoSchedule`, the pressure and `unschedulable` `NoSchedule`
//! taints; they go when the condition clears. When a node stops being Ready its pods' Ready
//! condition is set False (upstream's `MarkPodsNotReady`).
//!
//! Not done as upstream: no zone disruption states and no eviction rate limit (every
//! unreachable node is tainted at once, however many there are).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use tokio::time::Instant;

use super::reflect::store;
use crate::api::defaults::{TAINT_NOT_READY, TAINT_UNREACHABLE};

/// The namespace of the nodes' Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// The conditions set to Unknown when the node stops reporting (upstream's list).
const REPORTED_CONDITIONS: [&str; 4] = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];
/// `NoSchedule` taints by condition and the status that calls for them
/// (upstream's `nodeConditionToTaintKeyStatusMap`).
const NO_SCHEDULE_TAINTS: [(&str, &str, &str); 6] = [
    ("Ready", "False", TAINT_NOT_READY),
    ("Ready", "Unknown", TAINT_UNREACHABLE),
    (
        "MemoryPressure",
        "True",
        "node.kubernetes.io/memory-pressure",
    ),
    ("DiskPressure", "True", "node.kubernetes.io/disk-pressure"),
    ("PIDPressure", "True", "node.kubernetes.io/pid-pressure"),
    (
        "NetworkUnavailable",
        "True",
        "node.kubernetes.io/network-unavailable",
    ),
];
/// The taint of a node with `spec.unschedulable`.
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// kube-controller-manager's `--node-monitor-period`, `--node-monitor-grace-period` and
/// `--node-startup-grace-period` (the grace of a node that never reported Ready).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub monitor_period: Duration,
    pub grace_period: Duration,
    pub startup_grace_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            monitor_period: Duration::from_secs(5),
            grace_period: Duration::from_secs(40),
            startup_grace_period: Duration::from_secs(60),
        }
    }
}

/// What the controller last saw of a node's heartbeats, and when that changed (its own clock,
/// as upstream: the node's clock may be off).
#[derive(Debug)]
struct Health {
    probed: Instant,
    heartbeat: Option<Time>,
    renewed: Option<MicroTime>,
    /// Ready was True when last seen: its pods are marked not ready when that ends.
    ready: bool,
}

/// Runs the controller until it is dropped.
pub async fn run(client: kube::Client, timing: Timing) {
    let nodes_api: Api<Node> = Api::all(client.clone());
    let pods_api: Api<Pod> = Api::all(client.clone());
    let leases_api: Api<Lease> = Api::namespaced(client, LEASE_NAMESPACE);
    let (nodes, nodes_task) = store(nodes_api.clone(), "node lifecycle");
    let (leases, leases_task) = store(leases_api, "node lifecycle");
    tokio::spawn(nodes_task);
    tokio::spawn(leases_task);
    let mut health: HashMap<String, Health> = HashMap::new();
    let mut ticker = tokio::time::interval(timing.monitor_period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if nodes.wait_until_ready().await.is_err() || leases.wait_until_ready().await.is_err() {
            return;
        }
        let now = Instant::now();
        let current = nodes.state();
        health.retain(|name, _| {
            current
                .iter()
                .any(|n| n.metadata.name.as_ref() == Some(name))
        });
        for node in current {
            let name = node.metadata.name.clone().unwrap_or_default();
            let lease = leases.find(|l| l.metadata.name.as_ref() == Some(&name));
            let renewed = lease.and_then(|l| l.spec.as_ref()?.renew_time.clone());
            let heartbeat = condition(&node, "Ready").and_then(|c| c.last_heartbeat_time.clone());
            let seen = health.entry(name.clone()).or_insert_with(|| Health {
                probed: now,
                heartbeat: heartbeat.clone(),
                renewed: renewed.clone(),
                ready: is_ready(&node),
            });
            if seen.heartbeat != heartbeat || seen.renewed != renewed {
                seen.probed = now;
                seen.heartbeat = heartbeat;
                seen.renewed = renewed;
            }
            let grace = if condition(&node, "Ready").is_some() {
                timing.grace_period
            } else {
                timing.startup_grace_period
            };
            let silent = now.duration_since(seen.probed) > grace;
            let ready = match reconcile(&nodes_api, &node, silent).await {
                Ok(updated) => is_ready(&updated),
                Err(error) => {
                    log::warn!("node lifecycle: node {name}: {}", super::chain(&error));
                    continue;
                }
            };
            if seen.ready
                && !ready
                && let Err(error) = mark_pods_not_ready(&pods_api, &name).await
            {
                // Tried again at the next pass.
                log::warn!(
                    "node lifecycle: pods of node {name}: {}",
                    super::chain(&error)
                );
                continue;
            }
            seen.ready = ready;
        }
    }
}

fn is_ready(node: &Node) -> bool {
    condition(node, "Ready").is_some_and(|c| c.status == "True")
}

/// Upstream's `MarkPodsNotReady`: the pods of a node that is no longer Ready get their Ready
/// condition False (so Services stop sending them traffic), until their node reports again.
async fn mark_pods_not_ready(pods: &Api<Pod>, node: &str) -> Result<(), kube::Error> {
    let on_node = pods
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await?;
    let now = Time(jiff::Timestamp::now());
    for pod in on_node.items {
        let Some(mut conditions) = pod.status.as_ref().and_then(|s| s.conditions.clone()) else {
            continue;
        };
        let Some(ready) = conditions
            .iter_mut()
            .find(|c| c.type_ == "Ready" && c.status == "True")
        else {
            continue;
        };
        ready.status = "False".to_owned();
        ready.last_transition_time = Some(now.clone());
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let patch = json!({
            "metadata": {"resourceVersion": pod.metadata.resource_version},
            "status": {"conditions": conditions},
        });
        let api: Api<Pod> = Api::namespaced(pods.clone().into_client(), namespace);
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => log::info!("node {node}: pod {namespace}/{name} marked not ready"),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

fn condition<'a>(node: &'a Node, type_: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// The node's conditions once the controller has marked a silent node: the reported ones
/// Unknown. `None` when nothing changes.
pub fn unknown_conditions(node: &Node, now: &Time) -> Option<Vec<NodeCondition>> {
    let mut conditions = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut changed = false;
    for type_ in REPORTED_CONDITIONS {
        match conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(c) if c.status == "Unknown" => {}
            Some(c) => {
                c.status = "Unknown".to_owned();
                c.reason = Some("NodeStatusUnknown".to_owned());
                c.message = Some("Kubelet stopped posting node status.".to_owned());
                c.last_transition_time = Some(now.clone());
                changed = true;
            }
            None => {
                conditions.push(NodeCondition {
                    type_: type_.to_owned(),
                    status: "Unknown".to_owned(),
                    reason: Some("NodeStatusNeverUpdated".to_owned()),
                    message: Some("Kubelet never posted node status.".to_owned()),
                    last_heartbeat_time: Some(now.clone()),
                    last_transition_time: Some(now.clone()),
                });
                changed = true;
            }
        }
    }
    changed.then_some(conditions)
}

/// The taints the node should carry: those the controller does not manage as they are, and
/// the managed ones its conditions call for (kept with their `timeAdded` when already there).
pub fn desired_taints(node: &Node, now: &Time) -> Vec<Taint> {
    let existing = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let status_of = |type_: &str| condition(node, type_).map(|c| c.status.as_str());
    let mut wanted: Vec<(&str, &str)> = NO_SCHEDULE_TAINTS
        .iter()
        .filter(|(type_, status, _)| status_of(type_) == Some(*status))
        .map(|(_, _, key)| (*key, "NoSchedule"))
        .collect();
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        wanted.push((TAINT_UNSCHEDULABLE, "NoSchedule"));
    }
    match status_of("Ready") {
        Some("False") => wanted.push((TAINT_NOT_READY, "NoExecute")),
        Some("Unknown") => wanted.push((TAINT_UNREACHABLE, "NoExecute")),
        _ => {}
    }
    let managed = |t: &Taint| {
        t.key == TAINT_UNSCHEDULABLE && t.effect == "NoSchedule"
            || (t.key == TAINT_NOT_READY || t.key == TAINT_UNREACHABLE) && t.effect == "NoExecute"
            || NO_SCHEDULE_TAINTS
                .iter()
                .any(|(_, _, key)| t.key == *key && t.effect == "NoSchedule")
    };
    let mut taints: Vec<Taint> = existing.iter().filter(|t| !managed(t)).cloned().collect();
    for (key, effect) in wanted {
        let kept = existing
            .iter()
            .find(|t| t.key == key && t.effect == effect)
            .cloned();
        taints.push(kept.unwrap_or_else(|| Taint {
            key: key.to_owned(),
            effect: effect.to_owned(),
            time_added: (effect == "NoExecute").then(|| now.clone()),
            value: None,
        }));
    }
    taints
}

/// Marks a silent node's conditions Unknown, then makes its taints follow its conditions.
async fn reconcile(nodes: &Api<Node>, node: &Arc<Node>, silent: bool) -> Result<Node, kube::Error> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let now = Time(jiff::Timestamp::now());
    let mut node = (**node).clone();
    if silent && let Some(conditions) = unknown_conditions(&node, &now) {
        log::info!("node {name}: Kubelet stopped posting node status, conditions now Unknown");
        let patch = json!({
            "metadata": {"resourceVersion": node.metadata.resource_version},
            "status": {"conditions": conditions},
        });
        node = nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let taints = desired_taints(&node, &now);
    let current = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    if taints != current {
        let keys = |list: &[Taint]| {
            list.iter()
                .map(|t| format!("{}:{}", t.key, t.effect))
                .collect::<Vec<_>>()
                .join(",")
        };
        log::info!(
            "node {name}: taints [{}] -> [{}]",
            keys(&current),
            keys(&taints)
        );
        let patch = json!({
            "metadata": {"resourceVersion": node.metadata.resource_version},
            "spec": {"taints": taints},
        });
        node = nodes
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(conditions: &[(&str, &str)], taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n1"},
            "spec": {"taints": taints},
            "status": {"conditions": conditions.iter().map(|(t, s)| json!({"type": t, "status": s, "reason": "KubeletReady"})).collect::<Vec<_>>()},
        }))
        .unwrap()
    }

    fn now() -> Time {
        Time(jiff::Timestamp::from_second(1_000_000).unwrap())
    }

    #[test]
    fn a_silent_node_gets_every_reported_condition_unknown() {
        let n = node(
            &[
                ("Ready", "True"),
                ("MemoryPressure", "False"),
                ("DiskPressure", "False"),
            ],
            json!([]),
        );
        let conditions = unknown_conditions(&n, &now()).unwrap();
        let by_type: HashMap<&str, &NodeCondition> =
            conditions.iter().map(|c| (c.type_.as_str(), c)).collect();
        assert_eq!(by_type.len(), 4);
        let ready = by_type["Ready"];
        assert_eq!(ready.status, "Unknown");
        assert_eq!(ready.reason.as_deref(), Some("NodeStatusUnknown"));
        assert_eq!(
            ready.message.as_deref(),
            Some("Kubelet stopped posting node status.")
        );
        assert_eq!(
            by_type["PIDPressure"].reason.as_deref(),
            Some("NodeStatusNeverUpdated")
        );
        let mut marked = n.clone();
        marked.status.as_mut().unwrap().conditions = Some(conditions);
        assert_eq!(unknown_conditions(&marked, &now()), None);
    }

    #[test]
    fn taints_follow_the_conditions_and_others_are_kept() {
        let other = json!({"key": "dedicated", "value": "gpu", "effect": "NoSchedule"});
        let unknown = node(&[("Ready", "Unknown")], json!([other]));
        let taints = desired_taints(&unknown, &now());
        let keys: Vec<(&str, &str)> = taints
            .iter()
            .map(|t| (t.key.as_str(), t.effect.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                ("dedicated", "NoSchedule"),
                (TAINT_UNREACHABLE, "NoSchedule"),
                (TAINT_UNREACHABLE, "NoExecute")
            ]
        );
        assert_eq!(taints[2].time_added, Some(now()));

        let not_ready = node(
            &[("Ready", "False"), ("DiskPressure", "True")],
            serde_json::to_value(&taints).unwrap(),
        );
        let keys: Vec<String> = desired_taints(&not_ready, &now())
            .iter()
            .map(|t| format!("{}:{}", t.key, t.effect))
            .collect();
        assert_eq!(
            keys,
            [
                "dedicated:NoSchedule",
                "node.kubernetes.io/not-ready:NoSchedule",
                "node.kubernetes.io/disk-pressure:NoSchedule",
                "node.kubernetes.io/not-ready:NoExecute"
            ]
        );

        let back = node(&[("Ready", "True")], serde_json::to_value(&taints).unwrap());
        assert_eq!(desired_taints(&back, &now()).len(), 1);
        // An existing managed taint keeps its timeAdded.
        let earlier = node(
            &[("Ready", "Unknown")],
            json!([{"key": TAINT_UNREACHABLE, "effect": "NoExecute", "timeAdded": "1970-01-01T00:00:10Z"}]),
        );
        let kept = desired_taints(&earlier, &now());
        assert_eq!(
            kept.iter()
                .find(|t| t.effect == "NoExecute")
                .unwrap()
                .time_added,
            Some(Time(jiff::Timestamp::from_second(10).unwrap()))
        );
    }
}
