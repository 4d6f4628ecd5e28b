//! Plays the kubelet for controller tests: reports pods Running and Ready, Succeeded or Failed through `pods/status`,
//! and finishes graceful deletions (the final `DELETE` with grace 0 a kubelet sends).

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt as _};
use serde_json::{Value, json};

/// A fake kubelet acting through the API with the admin client.
#[derive(Clone)]
pub struct FakeKubelet {
    pub client: Client,
}

impl std::fmt::Debug for FakeKubelet {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("FakeKubelet")
    }
}

impl FakeKubelet {
    pub async fn new(kubeconfig: &std::path::Path) -> anyhow::Result<Self> {
        let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(Self {
            client: Client::try_from(config)?,
        })
    }

    pub fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// The pods in `namespace` matching `selector` (empty: all).
    pub async fn list(&self, namespace: &str, selector: &str) -> anyhow::Result<Vec<Pod>> {
        Ok(self
            .pods(namespace)
            .list(&ListParams::default().labels(selector))
            .await?
            .items)
    }

    /// Reports the pod Running with every container ready.
    pub async fn run_ready(&self, pod: &Pod) -> anyhow::Result<()> {
        let now = Time(Timestamp::now());
        let conditions: Vec<Value> = ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
            .iter()
            .map(|type_| json!({"type": type_, "status": "True", "lastTransitionTime": now}))
            .collect();
        let containers = container_statuses(pod, json!({"running": {"startedAt": now}}), true);
        self.patch_status(
            pod,
            json!({"phase": "Running", "conditions": conditions, "startTime": now,
                   "containerStatuses": containers}),
        )
        .await
    }

    /// Reports the pod's containers exited with `exit_code` (0: Succeeded, else Failed).
    pub async fn finish(&self, pod: &Pod, exit_code: i32) -> anyhow::Result<()> {
        let now = Time(Timestamp::now());
        let (phase, reason) = if exit_code == 0 {
            ("Succeeded", "Completed")
        } else {
            ("Failed", "Error")
        };
        let state = json!({"terminated": {"exitCode": exit_code, "reason": reason,
                                          "startedAt": now, "finishedAt": now}});
        let conditions: Vec<Value> = ["ContainersReady", "Ready"]
            .iter()
            .map(|type_| {
                json!({"type": type_, "status": "False", "reason": "PodCompleted",
                       "lastTransitionTime": now})
            })
            .collect();
        self.patch_status(
            pod,
            json!({"phase": phase, "conditions": conditions,
                   "containerStatuses": container_statuses(pod, state, false)}),
        )
        .await
    }

    /// Removes pods whose graceful deletion started, as the kubelet does once they stopped.
    pub async fn finish_deletions(&self, namespace: &str) -> anyhow::Result<()> {
        for pod in self.list(namespace, "").await? {
            if pod.metadata.deletion_timestamp.is_some() {
                let deleted = self
                    .pods(namespace)
                    .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
                    .await;
                match deleted {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.is_not_found() => {}
                    Err(error) => return Err(error.into()),
                }
            }
        }
        Ok(())
    }

    async fn patch_status(&self, pod: &Pod, status: Value) -> anyhow::Result<()> {
        self.pods(&pod.namespace().unwrap_or_default())
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await?;
        Ok(())
    }
}

fn container_statuses(pod: &Pod, state: Value, ready: bool) -> Vec<Value> {
    pod.spec
        .iter()
        .flat_map(|spec| &spec.containers)
        .map(|container| {
            json!({"name": container.name, "image": container.image, "imageID": "",
                   "ready": ready, "restartCount": 0, "state": state})
        })
        .collect()
}
