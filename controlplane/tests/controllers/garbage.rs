//! The garbage collector: background, foreground and orphan propagation over
//! `ownerReferences`, with a ConfigMap as the owner and pods and ConfigMaps as dependents.

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::ResourceExt as _;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::{TestApiServer, client, eventually, namespace};

/// An owner reference to `owner`.
fn reference(owner: &ConfigMap, block: bool) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "name": owner.name_any(),
           "uid": owner.uid().unwrap_or_default(), "blockOwnerDeletion": block})
}

async fn owner(configs: &Api<ConfigMap>, name: &str) -> anyhow::Result<ConfigMap> {
    let config: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    Ok(configs.create(&PostParams::default(), &config).await?)
}

/// A pod (not bound to a node, so it is deleted at once) owned through `owners`.
async fn dependent_pod(
    pods: &Api<Pod>,
    name: &str,
    owners: Vec<Value>,
    finalizers: &[&str],
) -> anyhow::Result<Pod> {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "ownerReferences": owners, "finalizers": finalizers},
        "spec": {"containers": [{"name": "c", "image": "registry.local/busybox:1.36"}]},
    }))?;
    Ok(pods.create(&PostParams::default(), &pod).await?)
}

async fn dependent_config(
    configs: &Api<ConfigMap>,
    name: &str,
    owners: Vec<Value>,
) -> anyhow::Result<ConfigMap> {
    let config: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": name, "ownerReferences": owners}}))?;
    Ok(configs.create(&PostParams::default(), &config).await?)
}

/// Waits until object `name` is gone.
async fn wait_gone<K>(
    server: &TestApiServer,
    what: &str,
    api: &Api<K>,
    name: &str,
) -> anyhow::Result<()>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(server, what, || async {
        Ok(api.get_opt(name).await?.is_none().then_some(()))
    })
    .await
}

/// A control plane with namespace `gc`, and its ConfigMaps and pods.
async fn start() -> anyhow::Result<(TestApiServer, Api<ConfigMap>, Api<Pod>)> {
    let server = TestApiServer::start().await?;
    let client = client(&server).await?;
    namespace(&client, "gc").await?;
    Ok((
        server,
        Api::namespaced(client.clone(), "gc"),
        Api::namespaced(client, "gc"),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn background_deletion_removes_dependents() -> anyhow::Result<()> {
    let (server, configs, pods) = start().await?;
    let first = owner(&configs, "first").await?;
    let second = owner(&configs, "second").await?;
    dependent_pod(&pods, "only-first", vec![reference(&first, true)], &[]).await?;
    dependent_config(&configs, "config-of-first", vec![reference(&first, false)]).await?;
    dependent_pod(
        &pods,
        "both",
        vec![reference(&first, true), reference(&second, false)],
        &[],
    )
    .await?;
    // An owner that never existed (a uid nobody has): collected too.
    let mut ghost = reference(&first, false);
    ghost["name"] = json!("ghost");
    ghost["uid"] = json!("00000000-0000-0000-0000-000000000001");
    dependent_pod(&pods, "orphaned-at-birth", vec![ghost], &[]).await?;
    wait_gone(
        &server,
        "a dependent of a missing owner deleted",
        &pods,
        "orphaned-at-birth",
    )
    .await?;

    // A cluster-scoped owner (as a Node owns its Lease).
    let node: k8s_openapi::api::core::v1::Node =
        serde_json::from_value(json!({"metadata": {"name": "worker-1"}}))?;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(configs.clone().into_client());
    let node = nodes.create(&PostParams::default(), &node).await?;
    let by_node = json!({"apiVersion": "v1", "kind": "Node", "name": "worker-1",
                         "uid": node.uid().unwrap_or_default()});
    dependent_config(&configs, "config-of-node", vec![by_node]).await?;
    nodes.delete("worker-1", &DeleteParams::default()).await?;
    wait_gone(
        &server,
        "the dependent of a deleted Node deleted",
        &configs,
        "config-of-node",
    )
    .await?;

    // kubectl's default: background propagation.
    server.ok(&["delete", "configmap", "first", "-n", "gc"]);
    wait_gone(&server, "the pod of first deleted", &pods, "only-first").await?;
    wait_gone(
        &server,
        "the ConfigMap of first deleted",
        &configs,
        "config-of-first",
    )
    .await?;
    // A dependent with another live owner stays, without the reference to the deleted one.
    let both = eventually(&server, "the dangling reference removed", || async {
        let pod = pods.get("both").await?;
        Ok((pod.owner_references().len() == 1).then_some(pod))
    })
    .await?;
    assert_eq!(
        both.owner_references()[0].uid,
        second.uid().unwrap_or_default()
    );
    assert!(configs.get_opt("second").await?.is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn foreground_deletion_waits_for_dependents() -> anyhow::Result<()> {
    let (server, configs, pods) = start().await?;
    let parent = owner(&configs, "parent").await?;
    // A dependent held back by a finalizer of its own, and one that goes at once.
    dependent_pod(
        &pods,
        "held",
        vec![reference(&parent, true)],
        &["example.com/hold"],
    )
    .await?;
    dependent_pod(&pods, "quick", vec![reference(&parent, true)], &[]).await?;

    server.ok(&[
        "delete",
        "configmap",
        "parent",
        "-n",
        "gc",
        "--cascade=foreground",
        "--wait=false",
    ]);
    wait_gone(&server, "the quick dependent deleted", &pods, "quick").await?;
    eventually(
        &server,
        "the held dependent marked for deletion",
        || async {
            Ok(pods
                .get("held")
                .await?
                .metadata
                .deletion_timestamp
                .map(|_| ()))
        },
    )
    .await?;
    // The owner waits, marked, with its finalizer, as long as a blocking dependent exists.
    let waiting = configs.get("parent").await?;
    assert!(waiting.metadata.deletion_timestamp.is_some());
    assert!(
        waiting
            .finalizers()
            .iter()
            .any(|finalizer| finalizer == "foregroundDeletion")
    );
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(
        configs.get_opt("parent").await?.is_some(),
        "the owner went before its dependent"
    );

    // The dependent's own finalizer goes: the dependent, then the owner, are deleted.
    let release = json!({"metadata": {"finalizers": null}});
    pods.patch("held", &PatchParams::default(), &Patch::Merge(release))
        .await?;
    wait_gone(&server, "the held dependent deleted", &pods, "held").await?;
    wait_gone(
        &server,
        "the owner deleted after its dependents",
        &configs,
        "parent",
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn orphan_deletion_keeps_dependents() -> anyhow::Result<()> {
    let (server, configs, pods) = start().await?;
    let parent = owner(&configs, "parent").await?;
    let other = owner(&configs, "other").await?;
    dependent_pod(&pods, "kept", vec![reference(&parent, true)], &[]).await?;
    dependent_config(
        &configs,
        "shared",
        vec![reference(&parent, false), reference(&other, false)],
    )
    .await?;
    // Let the garbage collector's watches deliver the dependents before the owner goes (an
    // owner orphaned before its dependents reach the graph loses them, as upstream's).
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;

    server.ok(&[
        "delete",
        "configmap",
        "parent",
        "-n",
        "gc",
        "--cascade=orphan",
    ]);
    wait_gone(&server, "the owner deleted", &configs, "parent").await?;
    let kept = pods.get("kept").await?;
    assert!(
        kept.owner_references().is_empty(),
        "{:?}",
        kept.metadata.owner_references
    );
    assert!(kept.metadata.deletion_timestamp.is_none());
    let shared = configs.get("shared").await?;
    let owners: Vec<&str> = shared
        .owner_references()
        .iter()
        .map(|owner| owner.name.as_str())
        .collect();
    assert_eq!(owners, ["other"]);
    // Still there a little later: nothing collects an orphan.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(pods.get_opt("kept").await?.is_some());
    let _ = pods.delete("kept", &DeleteParams::default()).await?;
    Ok(())
}
