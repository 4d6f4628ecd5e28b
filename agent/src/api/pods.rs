//! Pods from the API: the pods bound to this node (a watch with `spec.nodeName=<node>`), their
//! status written back through `pods/status` when it changes, and the final `DELETE` with grace
//! period 0 once a pod marked for deletion has stopped, as kubelet does. Static pods get a
//! mirror pod in the API (annotation `kubernetes.io/config.mirror`), so `kubectl get pods`
//! shows them; the agent never runs a mirror pod itself.

use std::collections::BTreeMap;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::json;

/// A store of this node's pods, kept current by a watch, and the task that feeds it; `changed`
/// is notified on every event.
pub fn watch_pods(
    client: &kube::Client,
    node_name: &str,
    changed: std::sync::Arc<tokio::sync::Notify>,
) -> (Store<Pod>, tokio::task::JoinHandle<()>) {
    let pods: Api<Pod> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node_name}"));
    let stream = reflector::reflector(writer, watcher(pods, config))
        .default_backoff()
        .touched_objects();
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => changed.notify_one(),
                Err(error) => log::warn!("pod watch: {error}"),
            }
        }
    });
    (reader, task)
}

/// The annotation that marks a mirror pod; its value is the static pod's config hash.
pub const CONFIG_MIRROR: &str = "kubernetes.io/config.mirror";

fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(CONFIG_MIRROR))
}

/// The API pods this node should run now, by UID: those not marked for deletion, mirror pods
/// aside.
pub fn desired(store: &Store<Pod>) -> BTreeMap<String, Pod> {
    store
        .state()
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none() && !is_mirror(pod))
        .filter_map(|pod| Some((pod.metadata.uid.clone()?, (**pod).clone())))
        .collect()
}

/// Pods marked for deletion that no worker runs any more: deleted for good (grace 0, only
/// this very pod, by UID).
pub fn finished_deletions(store: &Store<Pod>, running: &BTreeMap<String, Pod>) -> Vec<Pod> {
    store
        .state()
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_some() && !is_mirror(pod))
        .filter(|pod| {
            pod.metadata
                .uid
                .as_ref()
                .is_some_and(|uid| !running.contains_key(uid))
        })
        .map(|pod| (**pod).clone())
        .collect()
}

pub async fn delete_finished(client: &kube::Client, pod: &Pod) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(
        client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    );
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api
        .delete(pod.metadata.name.as_deref().unwrap_or(""), &params)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 || status.code == 409 => Ok(()),
        Err(error) => Err(error),
    }
}

/// Whether the API's status of a pod disagrees with the agent's on what the agent owns: the
/// phase and each condition's status. (Not a full comparison: the API server may fill in or
/// normalise other fields, and a difference there must not make the agent write forever.)
pub fn status_differs(api: Option<&PodStatus>, ours: &PodStatus) -> bool {
    let owned = |status: Option<&PodStatus>| {
        let phase = status.and_then(|s| s.phase.clone());
        let mut conditions: Vec<(String, String)> = status
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .map(|c| (c.type_.clone(), c.status.clone()))
            .collect();
        conditions.sort();
        (phase, conditions)
    };
    let (api_phase, api_conditions) = owned(api);
    let (our_phase, our_conditions) = owned(Some(ours));
    // Conditions only the agent writes; others (PodScheduled, DisruptionTarget) are the
    // control plane's and may be there without the agent knowing.
    let mine = |conditions: &[(String, String)]| -> Vec<(String, String)> {
        conditions
            .iter()
            .filter(|(kind, _)| our_conditions.iter().any(|(ours, _)| ours == kind))
            .cloned()
            .collect()
    };
    api_phase != our_phase || mine(&api_conditions) != our_conditions
}

/// Writes `status` to the pod's `status` subresource; false when the pod is not (or no
/// longer) in the API.
pub async fn write_status(
    client: &kube::Client,
    pod: &Pod,
    status: &PodStatus,
) -> Result<bool, kube::Error> {
    let api: Api<Pod> = Api::namespaced(
        client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    );
    let patch = json!({"status": status});
    let name = pod.metadata.name.as_deref().unwrap_or("");
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(error) => Err(error),
    }
}

/// Makes the mirror pods match the static pods (by name): creates missing ones, replaces those
/// of an older manifest (another config hash), deletes those whose static pod is gone.
pub async fn sync_mirrors(
    client: &kube::Client,
    store: &Store<Pod>,
    static_pods: &BTreeMap<String, Pod>,
) {
    let mirrors: Vec<Pod> = store
        .state()
        .iter()
        .filter(|p| is_mirror(p))
        .map(|p| (**p).clone())
        .collect();
    for (uid, pod) in static_pods {
        let existing = mirrors.iter().find(|m| {
            m.metadata.name == pod.metadata.name && m.metadata.namespace == pod.metadata.namespace
        });
        let current =
            existing.and_then(|m| m.metadata.annotations.as_ref()?.get(CONFIG_MIRROR).cloned());
        if current.as_deref() == Some(uid.as_str()) {
            continue;
        }
        if let Some(stale) = existing {
            let _ = delete_finished(client, stale).await;
        }
        let mut mirror = pod.clone();
        mirror.metadata.uid = None;
        mirror.metadata.resource_version = None;
        mirror.status = None;
        mirror
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(CONFIG_MIRROR.to_owned(), uid.clone());
        let api: Api<Pod> = Api::namespaced(
            client.clone(),
            pod.metadata.namespace.as_deref().unwrap_or("default"),
        );
        match api.create(&kube::api::PostParams::default(), &mirror).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(error) => log::warn!(
                "cannot create the mirror pod of static pod {}: {error}",
                pod.metadata.name.as_deref().unwrap_or("")
            ),
        }
    }
    for mirror in &mirrors {
        let wanted = static_pods.values().any(|p| {
            p.metadata.name == mirror.metadata.name
                && p.metadata.namespace == mirror.metadata.namespace
        });
        if !wanted && mirror.metadata.deletion_timestamp.is_none() {
            let _ = delete_finished(client, mirror).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodCondition;

    fn condition(kind: &str, status: &str) -> PodCondition {
        PodCondition {
            type_: kind.to_owned(),
            status: status.to_owned(),
            ..PodCondition::default()
        }
    }

    #[test]
    fn status_differs_on_phase_and_the_agents_conditions_only() {
        let ours = PodStatus {
            phase: Some("Running".into()),
            conditions: Some(vec![
                condition("Ready", "True"),
                condition("ContainersReady", "True"),
            ]),
            ..PodStatus::default()
        };
        let mut api = ours.clone();
        // The scheduler's condition and a field the API server keeps: no difference.
        api.conditions
            .as_mut()
            .unwrap()
            .push(condition("PodScheduled", "True"));
        api.host_ip = Some("198.18.0.1".into());
        assert!(!status_differs(Some(&api), &ours));
        // The node lifecycle controller cleared Ready.
        api.conditions.as_mut().unwrap()[0] = condition("Ready", "False");
        assert!(status_differs(Some(&api), &ours));
        assert!(status_differs(None, &ours));
    }
}
