//! Pods from the API: the pods bound to this node (a watch with `spec.nodeName=<node>`), their
//! status written back through `pods/status` when it changes, and the final `DELETE` with grace
//! period 0 once a pod marked for deletion has stopped, as kubelet does.

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

/// The API pods this node should run now, by UID: those not marked for deletion.
pub fn desired(store: &Store<Pod>) -> BTreeMap<String, Pod> {
    store
        .state()
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter_map(|pod| Some((pod.metadata.uid.clone()?, (**pod).clone())))
        .collect()
}

/// Pods marked for deletion that no worker runs any more: deleted for good (grace 0, only
/// this very pod, by UID).
pub fn finished_deletions(store: &Store<Pod>, running: &BTreeMap<String, Pod>) -> Vec<Pod> {
    store
        .state()
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_some())
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

/// Writes `status` to the pod's `status` subresource.
pub async fn write_status(
    client: &kube::Client,
    pod: &Pod,
    status: &PodStatus,
) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(
        client.clone(),
        pod.metadata.namespace.as_deref().unwrap_or("default"),
    );
    let patch = json!({"status": status});
    match api
        .patch_status(
            pod.metadata.name.as_deref().unwrap_or(""),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error),
    }
}
