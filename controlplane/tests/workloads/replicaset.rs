//! The ReplicaSet controller: creation from the template with a controller reference,
//! adoption of orphans, release of pods that stop matching, replacement of deleted pods,
//! scale down, status and events.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

use crate::Cluster;
use crate::kubelet::FakeKubelet;

const ORPHAN: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: orphan
  labels: {app: web}
spec:
  containers:
  - {name: web, image: registry.local/busybox:1.36}
"#;

const REPLICASET: &str = r#"apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web, tier: front}
    spec:
      containers:
      - {name: web, image: registry.local/busybox:1.36}
"#;

fn owned_by<'a>(pods: &'a [Pod], uid: &str) -> Vec<&'a Pod> {
    pods.iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter(|pod| {
            pod.owner_references()
                .iter()
                .any(|owner| owner.uid == uid && owner.controller == Some(true))
        })
        .collect()
}

#[tokio::test]
async fn replicaset_adopts_replaces_releases_and_scales() -> anyhow::Result<()> {
    let cluster = Cluster::start("rs").await?;
    let _kubelet = FakeKubelet::start(&cluster.server.kubeconfig(), "rs", None);
    cluster.kubectl_with_input(&["apply", "-f", "-"], ORPHAN);
    cluster.kubectl_with_input(&["apply", "-f", "-"], REPLICASET);
    let replicasets: Api<ReplicaSet> = Api::namespaced(cluster.client.clone(), "rs");
    let uid = replicasets.get("web").await?.uid().unwrap_or_default();

    // Three pods: the orphan adopted, two made from the template.
    let pods = cluster
        .until("3 ready pods owned by the replicaset", || async {
            let pods = cluster.pods().list(&ListParams::default()).await?.items;
            let owned = owned_by(&pods, &uid);
            let ready = replicasets
                .get("web")
                .await?
                .status
                .and_then(|s| s.ready_replicas);
            Ok((owned.len() == 3 && ready == Some(3)).then(|| pods.clone()))
        })
        .await;
    let orphan = pods.iter().find(|pod| pod.name_any() == "orphan");
    let owner = orphan
        .and_then(|pod| pod.owner_references().first().cloned())
        .expect("the orphan is adopted");
    assert_eq!(owner.kind, "ReplicaSet");
    assert_eq!(owner.name, "web");
    assert_eq!(owner.block_owner_deletion, Some(true));
    let made: Vec<&Pod> = owned_by(&pods, &uid)
        .into_iter()
        .filter(|pod| pod.name_any() != "orphan")
        .collect();
    assert_eq!(made.len(), 2);
    for pod in &made {
        assert!(pod.name_any().starts_with("web-"), "{}", pod.name_any());
        assert_eq!(pod.labels().get("tier").map(String::as_str), Some("front"));
    }
    // Exactly two creations, each with upstream's event.
    let created = cluster.event_messages("SuccessfulCreate").await?;
    let expected: BTreeSet<String> = made
        .iter()
        .map(|pod| format!("Created pod: {}", pod.name_any()))
        .collect();
    assert_eq!(created.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(created.len(), 2, "{created:?}");

    let status = replicasets.get("web").await?.status.unwrap_or_default();
    assert_eq!(status.replicas, 3);
    assert_eq!(status.available_replicas, Some(3));
    // The orphan lacks the template's `tier` label.
    assert_eq!(status.fully_labeled_replicas, Some(2));
    assert_eq!(status.observed_generation, Some(1));

    // A deleted pod is replaced.
    let victim = made[0].name_any();
    cluster
        .pods()
        .delete(&victim, &DeleteParams::default())
        .await?;
    cluster
        .until("the deleted pod replaced", || async {
            let pods = cluster.pods().list(&ListParams::default()).await?.items;
            let owned = owned_by(&pods, &uid);
            Ok(
                (owned.len() == 3 && owned.iter().all(|pod| pod.name_any() != victim))
                    .then_some(()),
            )
        })
        .await;

    // A pod relabeled out of the selector is released and replaced.
    cluster
        .pods()
        .patch(
            "orphan",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
        )
        .await?;
    cluster
        .until("the relabeled pod released and replaced", || async {
            let pods = cluster.pods().list(&ListParams::default()).await?.items;
            let released = pods
                .iter()
                .find(|pod| pod.name_any() == "orphan")
                .is_some_and(|pod| pod.owner_references().is_empty());
            Ok((released && owned_by(&pods, &uid).len() == 3).then_some(()))
        })
        .await;

    // Scale down with kubectl: two pods go, with upstream's events.
    cluster.kubectl(&["scale", "replicaset/web", "--replicas=1"]);
    cluster
        .until("one pod left", || async {
            let pods = cluster.pods().list(&ListParams::default()).await?.items;
            let status = replicasets.get("web").await?.status.unwrap_or_default();
            Ok((owned_by(&pods, &uid).len() == 1 && status.replicas == 1).then_some(()))
        })
        .await;
    let deleted = cluster.event_messages("SuccessfulDelete").await?;
    assert_eq!(deleted.len(), 2, "{deleted:?}");
    assert!(
        deleted
            .iter()
            .all(|message| message.starts_with("Deleted pod: web-"))
    );
    let status = replicasets.get("web").await?.status.unwrap_or_default();
    assert_eq!(status.observed_generation, Some(2));
    Ok(())
}

/// Scale down deletes the pods that are not ready before the ready ones; pods on a node
/// (`nodeName` in the template) go through graceful deletion, which the fake kubelet finishes.
#[tokio::test]
async fn replicaset_scales_down_unready_pods_first() -> anyhow::Result<()> {
    let cluster = Cluster::start("rs-order").await?;
    crate::kubelet::create_node(&cluster.client, "node-a").await?;
    let kubelet = FakeKubelet::start(&cluster.server.kubeconfig(), "rs-order", Some("node-a"));
    let on_node = REPLICASET.replace("replicas: 3", "replicas: 2").replace(
        "    spec:\n      containers:",
        "    spec:\n      nodeName: node-a\n      containers:",
    );
    assert!(on_node.contains("nodeName"));
    cluster.kubectl_with_input(&["apply", "-f", "-"], &on_node);
    let replicasets: Api<ReplicaSet> = Api::namespaced(cluster.client.clone(), "rs-order");
    cluster
        .until("2 ready pods", || async {
            let status = replicasets.get("web").await?.status.unwrap_or_default();
            Ok((status.ready_replicas == Some(2)).then_some(()))
        })
        .await;
    let ready: BTreeSet<String> = cluster
        .pods()
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|pod| pod.name_any())
        .collect();
    kubelet.pause();
    cluster.kubectl(&["scale", "replicaset/web", "--replicas=4"]);
    cluster
        .until("4 pods, 2 of them pending", || async {
            let status = replicasets.get("web").await?.status.unwrap_or_default();
            Ok((status.replicas == 4 && status.ready_replicas == Some(2)).then_some(()))
        })
        .await;
    cluster.kubectl(&["scale", "replicaset/web", "--replicas=2"]);
    cluster
        .until("the 2 ready pods left", || async {
            let pods = cluster.pods().list(&ListParams::default()).await?.items;
            let names: BTreeSet<String> = crate::live(&pods)
                .iter()
                .map(|pod| pod.name_any())
                .collect();
            Ok((names == ready && pods.len() == 2).then_some(()))
        })
        .await;
    // Scaling up again gets ready pods once the kubelet is back, no more than asked for.
    kubelet.resume();
    cluster.kubectl(&["scale", "replicaset/web", "--replicas=3"]);
    cluster
        .until("3 ready pods", || async {
            let status = replicasets.get("web").await?.status.unwrap_or_default();
            let pods = cluster.pods().list(&ListParams::default()).await?.items;
            Ok((status.ready_replicas == Some(3) && pods.len() == 3).then_some(()))
        })
        .await;
    Ok(())
}
