//! The Deployment controller: ReplicaSets per template hash, rolling updates within
//! maxSurge / maxUnavailable at every observed moment, `kubectl rollout status / undo /
//! pause / resume`, `kubectl scale`, Recreate, revision history cleanup, progress deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt as _;
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt as _, watcher};

use crate::Cluster;
use crate::kubelet::FakeKubelet;

const REVISION: &str = "deployment.kubernetes.io/revision";

fn deployment(replicas: u32, strategy: &str, extra_spec: &str, pod_spec: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  strategy:
{strategy}
{extra_spec}
  template:
    metadata:
      labels: {{app: web}}
    spec:
{pod_spec}
      containers:
      - {{name: web, image: "registry.local/busybox:1.36"}}
"#
    )
}

const SURGE_ONE: &str =
    "    type: RollingUpdate\n    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}";

fn image(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|spec| spec.containers.first())
        .and_then(|container| container.image.clone())
        .unwrap_or_default()
}

use crate::kubelet::is_ready as ready;

/// Waits for the deployment's Progressing condition to have `reason`.
async fn progressing_with(
    cluster: &Cluster,
    deployments: &Api<Deployment>,
    reason: &str,
) -> k8s_openapi::api::apps::v1::DeploymentCondition {
    cluster
        .until(reason, || async {
            let status = deployments.get("web").await?.status.unwrap_or_default();
            Ok(status
                .conditions
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "Progressing" && c.reason.as_deref() == Some(reason)))
        })
        .await
}

/// Watches every pod change of a namespace and calls `check` with all pods after each.
struct PodObserver {
    task: tokio::task::JoinHandle<()>,
}

impl PodObserver {
    fn start(pods: Api<Pod>, mut check: impl FnMut(&[Pod]) + Send + 'static) -> Self {
        let task = tokio::spawn(async move {
            let mut known: HashMap<String, Pod> = HashMap::new();
            let mut listing: HashMap<String, Pod> = HashMap::new();
            let mut events = watcher(pods, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(pod)) => {
                        known.insert(pod.name_any(), pod);
                    }
                    Ok(watcher::Event::Delete(pod)) => {
                        known.remove(&pod.name_any());
                    }
                    Ok(watcher::Event::Init) => {
                        listing.clear();
                        continue;
                    }
                    Ok(watcher::Event::InitApply(pod)) => {
                        listing.insert(pod.name_any(), pod);
                        continue;
                    }
                    Ok(watcher::Event::InitDone) => known = std::mem::take(&mut listing),
                    Err(_) => continue,
                }
                let all: Vec<Pod> = known.values().cloned().collect();
                check(&all);
            }
        });
        Self { task }
    }
}

impl Drop for PodObserver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn replicasets(cluster: &Cluster) -> anyhow::Result<Vec<ReplicaSet>> {
    let api: Api<ReplicaSet> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    Ok(api.list(&ListParams::default()).await?.items)
}

fn revision(replicaset: &ReplicaSet) -> Option<&str> {
    replicaset.annotations().get(REVISION).map(String::as_str)
}

fn spec_replicas(replicaset: &ReplicaSet) -> i32 {
    replicaset
        .spec
        .as_ref()
        .and_then(|spec| spec.replicas)
        .unwrap_or(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_keeps_surge_and_availability_then_undo_and_scale() -> anyhow::Result<()> {
    let cluster = Cluster::start("roll").await?;
    let _kubelet = FakeKubelet::start(&cluster.server.kubeconfig(), "roll", None);
    cluster.kubectl_with_input(&["apply", "-f", "-"], &deployment(10, SURGE_ONE, "", ""));
    cluster.rollout_status("deployment/web", "120s");

    let pods = cluster.pods().list(&ListParams::default()).await?.items;
    assert_eq!(crate::live(&pods).len(), 10);
    assert!(pods.iter().all(ready));
    let first = replicasets(&cluster).await?;
    assert_eq!(first.len(), 1);
    let first = &first[0];
    let hash = first
        .labels()
        .get("pod-template-hash")
        .cloned()
        .expect("the replicaset carries the pod-template-hash label");
    assert_eq!(first.name_any(), format!("web-{hash}"));
    let selector = first.spec.as_ref().map(|spec| &spec.selector);
    assert_eq!(
        selector
            .and_then(|selector| selector.match_labels.as_ref())
            .and_then(|labels| labels.get("pod-template-hash")),
        Some(&hash)
    );
    assert_eq!(revision(first), Some("1"));
    assert!(
        pods.iter()
            .all(|pod| pod.labels().get("pod-template-hash") == Some(&hash))
    );
    let scaling = cluster.event_messages("ScalingReplicaSet").await?;
    assert_eq!(
        scaling,
        [format!("Scaled up replica set web-{hash} from 0 to 10")]
    );
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), "roll");
    let status = deployments.get("web").await?.status.unwrap_or_default();
    assert_eq!(status.replicas, Some(10));
    assert_eq!(status.updated_replicas, Some(10));
    assert_eq!(status.ready_replicas, Some(10));
    assert_eq!(status.available_replicas, Some(10));
    assert_eq!(status.unavailable_replicas, None);
    let reasons: Vec<(String, Option<String>)> = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .map(|condition| (condition.type_, condition.reason))
        .collect();
    assert!(reasons.contains(&("Available".into(), Some("MinimumReplicasAvailable".into()))));
    assert!(reasons.contains(&("Progressing".into(), Some("NewReplicaSetAvailable".into()))));

    // Roll out a new image, watching every pod change.
    let extremes = Arc::new(Mutex::new((0_usize, usize::MAX, 0_usize)));
    let observed = extremes.clone();
    let observer = PodObserver::start(cluster.pods(), move |pods| {
        let live = crate::live(pods);
        let available = live.iter().filter(|pod| ready(pod)).count();
        let mut extremes = observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        extremes.0 = extremes.0.max(live.len());
        extremes.1 = extremes.1.min(available);
        extremes.2 += 1;
    });
    cluster
        .until("the observer's first listing", || async {
            let seen = extremes.lock().map(|e| e.2).unwrap_or(0);
            Ok((seen > 0).then_some(()))
        })
        .await;
    cluster.kubectl(&[
        "set",
        "image",
        "deployment/web",
        "web=registry.local/busybox:1.37",
    ]);
    cluster.rollout_status("deployment/web", "180s");
    drop(observer);
    let (most, fewest_available, changes) = *extremes
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // The listing, then per replaced pod: created, marked ready, deleted.
    assert!(changes > 30, "only {changes} pod changes observed");
    assert!(most <= 11, "{most} pods at once with maxSurge 1");
    assert!(
        fewest_available >= 10,
        "only {fewest_available} available pods with maxUnavailable 0"
    );

    let pods = cluster.pods().list(&ListParams::default()).await?.items;
    let live = crate::live(&pods);
    assert_eq!(live.len(), 10);
    assert!(
        live.iter()
            .all(|pod| image(pod) == "registry.local/busybox:1.37")
    );
    let all = replicasets(&cluster).await?;
    assert_eq!(all.len(), 2);
    let old = all
        .iter()
        .find(|rs| rs.name_any() == first.name_any())
        .expect("old replicaset kept");
    let new = all
        .iter()
        .find(|rs| rs.name_any() != first.name_any())
        .expect("new replicaset");
    assert_eq!(spec_replicas(old), 0);
    assert_eq!(spec_replicas(new), 10);
    assert_eq!(revision(new), Some("2"));
    let scaling = cluster.event_messages("ScalingReplicaSet").await?;
    assert!(scaling.contains(&format!(
        "Scaled up replica set {} from 0 to 1",
        new.name_any()
    )));
    assert!(scaling.contains(&format!(
        "Scaled down replica set {} from 1 to 0",
        old.name_any()
    )));

    // Undo: back to the first template and its ReplicaSet, as revision 3.
    let undone = cluster.kubectl(&["rollout", "undo", "deployment/web"]);
    assert!(undone.contains("rolled back"), "{undone}");
    cluster.rollout_status("deployment/web", "180s");
    let pods = cluster.pods().list(&ListParams::default()).await?.items;
    let live = crate::live(&pods);
    assert_eq!(live.len(), 10);
    assert!(
        live.iter()
            .all(|pod| image(pod) == "registry.local/busybox:1.36")
    );
    assert!(
        live.iter()
            .all(|pod| pod.labels().get("pod-template-hash") == Some(&hash))
    );
    let all = replicasets(&cluster).await?;
    assert_eq!(all.len(), 2, "no third replicaset for an old template");
    let back = all
        .iter()
        .find(|rs| rs.name_any() == first.name_any())
        .expect("first replicaset");
    assert_eq!(spec_replicas(back), 10);
    assert_eq!(revision(back), Some("3"));
    assert_eq!(
        back.annotations()
            .get("deployment.kubernetes.io/revision-history")
            .map(String::as_str),
        Some("1")
    );
    let current = deployments.get("web").await?;
    assert_eq!(
        current.annotations().get(REVISION).map(String::as_str),
        Some("3")
    );
    let history = cluster.kubectl(&["rollout", "history", "deployment/web"]);
    assert!(history.contains('2') && history.contains('3'), "{history}");

    // kubectl scale: the one active ReplicaSet takes the whole change.
    cluster.kubectl(&["scale", "deployment/web", "--replicas=4"]);
    cluster
        .until("4 pods", || async {
            let pods = cluster.pods().list(&ListParams::default()).await?.items;
            let status = deployments.get("web").await?.status.unwrap_or_default();
            Ok(
                (crate::live(&pods).len() == 4 && status.available_replicas == Some(4))
                    .then_some(()),
            )
        })
        .await;
    let scaling = cluster.event_messages("ScalingReplicaSet").await?;
    assert!(
        scaling.contains(&format!(
            "Scaled down replica set {} from 10 to 4",
            back.name_any()
        )),
        "{scaling:?}"
    );
    cluster.rollout_status("deployment/web", "60s");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_removes_old_pods_before_new_ones_start() -> anyhow::Result<()> {
    let cluster = Cluster::start("recreate").await?;
    crate::kubelet::create_node(&cluster.client, "node-a").await?;
    let _kubelet = FakeKubelet::start(&cluster.server.kubeconfig(), "recreate", Some("node-a"));
    // Pods on a node go through graceful deletion: Recreate must wait until they are gone.
    let manifest = deployment(3, "    type: Recreate", "", "      nodeName: node-a");
    cluster.kubectl_with_input(&["apply", "-f", "-"], &manifest);
    cluster.rollout_status("deployment/web", "120s");

    let overlap = Arc::new(Mutex::new((false, 0_usize)));
    let observed = overlap.clone();
    let observer = PodObserver::start(cluster.pods(), move |pods| {
        let old = pods.iter().any(|pod| image(pod).ends_with(":1.36"));
        let new = pods.iter().any(|pod| image(pod).ends_with(":1.37"));
        let mut overlap = observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        overlap.0 |= old && new;
        overlap.1 += 1;
    });
    cluster
        .until("the observer's first listing", || async {
            Ok((overlap.lock().map(|o| o.1).unwrap_or(0) > 0).then_some(()))
        })
        .await;
    cluster.kubectl(&[
        "set",
        "image",
        "deployment/web",
        "web=registry.local/busybox:1.37",
    ]);
    cluster.rollout_status("deployment/web", "120s");
    drop(observer);
    let (overlapped, _) = *overlap
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    assert!(!overlapped, "an old and a new pod existed at the same time");
    let pods = cluster.pods().list(&ListParams::default()).await?.items;
    assert_eq!(pods.len(), 3);
    assert!(pods.iter().all(|pod| image(pod).ends_with(":1.37")));
    let scaling = cluster.event_messages("ScalingReplicaSet").await?;
    let down = scaling
        .iter()
        .position(|m| m.starts_with("Scaled down") && m.ends_with("from 3 to 0"));
    let up = scaling
        .iter()
        .rposition(|m| m.starts_with("Scaled up") && m.ends_with("from 0 to 3"));
    assert!(down.is_some() && up.is_some() && down < up, "{scaling:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_history_limit_and_progress_deadline() -> anyhow::Result<()> {
    let cluster = Cluster::start("pause").await?;
    let kubelet = FakeKubelet::start(&cluster.server.kubeconfig(), "pause", None);
    let manifest = deployment(2, SURGE_ONE, "  revisionHistoryLimit: 0", "");
    cluster.kubectl_with_input(&["apply", "-f", "-"], &manifest);
    cluster.rollout_status("deployment/web", "120s");
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), "pause");

    // Paused: a template change makes no ReplicaSet.
    cluster.kubectl(&["rollout", "pause", "deployment/web"]);
    cluster.kubectl(&[
        "set",
        "image",
        "deployment/web",
        "web=registry.local/busybox:1.37",
    ]);
    let condition = progressing_with(&cluster, &deployments, "DeploymentPaused").await;
    assert_eq!(condition.status, "Unknown");
    assert_eq!(condition.message.as_deref(), Some("Deployment is paused"));
    assert_eq!(replicasets(&cluster).await?.len(), 1);

    // Resumed: rolls out; with revisionHistoryLimit 0 the old ReplicaSet is deleted.
    cluster.kubectl(&["rollout", "resume", "deployment/web"]);
    cluster.rollout_status("deployment/web", "120s");
    cluster
        .until("only the new replicaset left", || async {
            let all = replicasets(&cluster).await?;
            Ok((all.len() == 1 && revision(&all[0]) == Some("2")).then_some(()))
        })
        .await;

    // No pod gets ready: past progressDeadlineSeconds the rollout has failed.
    kubelet.pause();
    cluster.kubectl(&[
        "patch",
        "deployment/web",
        "-p",
        r#"{"spec":{"progressDeadlineSeconds":2,"template":{"spec":{"containers":[{"name":"web","image":"registry.local/busybox:1.38"}]}}}}"#,
    ]);
    let condition = progressing_with(&cluster, &deployments, "ProgressDeadlineExceeded").await;
    assert_eq!(condition.status, "False");
    assert!(
        condition
            .message
            .as_deref()
            .is_some_and(|m| m.ends_with("has timed out progressing.")),
        "{condition:?}"
    );
    let output = cluster.server.kubectl(&[
        "-n",
        "pause",
        "rollout",
        "status",
        "deployment/web",
        "--timeout=30s",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("exceeded its progress deadline"),
        "{stderr}"
    );
    // maxUnavailable 0: the two old pods still serve.
    let status = deployments.get("web").await?.status.unwrap_or_default();
    assert_eq!(status.available_replicas, Some(2));
    assert_eq!(status.updated_replicas, Some(1));
    Ok(())
}

/// Scaling in the middle of a rollout spreads the change over the old and the new
/// ReplicaSet in proportion to their sizes (upstream's proportional scaling).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_mid_rollout_is_proportional() -> anyhow::Result<()> {
    let cluster = Cluster::start("proportional").await?;
    let kubelet = FakeKubelet::start(&cluster.server.kubeconfig(), "proportional", None);
    cluster.kubectl_with_input(&["apply", "-f", "-"], &deployment(10, SURGE_ONE, "", ""));
    cluster.rollout_status("deployment/web", "120s");
    let first = replicasets(&cluster).await?;
    let old_name = first[0].name_any();

    // The new pod never gets ready: the rollout stays at old 10, new 1.
    kubelet.pause();
    cluster.kubectl(&[
        "set",
        "image",
        "deployment/web",
        "web=registry.local/busybox:1.37",
    ]);
    let new_name = cluster
        .until("a new replicaset of 1", || async {
            let all = replicasets(&cluster).await?;
            Ok(all
                .iter()
                .find(|rs| rs.name_any() != old_name && spec_replicas(rs) == 1)
                .map(|rs| rs.name_any()))
        })
        .await;

    // 10 -> 20 with maxSurge 1: 21 allowed, 10 to add; old gets round(10*21/11) = 19,
    // new round(1*21/11) = 2.
    cluster.kubectl(&["scale", "deployment/web", "--replicas=20"]);
    cluster
        .until("old 19, new 2", || async {
            let all = replicasets(&cluster).await?;
            let size = |name: &str| {
                all.iter()
                    .find(|rs| rs.name_any() == name)
                    .map(spec_replicas)
            };
            Ok((size(&old_name) == Some(19) && size(&new_name) == Some(2)).then_some(()))
        })
        .await;
    let scaling = cluster.event_messages("ScalingReplicaSet").await?;
    assert!(
        scaling.contains(&format!("Scaled up replica set {old_name} from 10 to 19")),
        "{scaling:?}"
    );
    let max = replicasets(&cluster)
        .await?
        .iter()
        .filter_map(|rs| {
            rs.annotations()
                .get("deployment.kubernetes.io/max-replicas")
                .cloned()
        })
        .collect::<Vec<_>>();
    assert_eq!(max, ["21", "21"]);
    Ok(())
}
