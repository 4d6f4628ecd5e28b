//! DaemonSets: a pod per node, for nodes added later too.

use std::collections::BTreeSet;
use std::time::Duration;

use kube::ResourceExt as _;

use super::{Deadline, create_nodes, get_json, start};

const AGENT: &str = r#"apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: default}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: main, image: registry.local/busybox:1.36}]
"#;

#[tokio::test]
async fn one_pod_per_node_including_a_node_added_later() -> anyhow::Result<()> {
    let (server, kubelet) = start().await?;
    create_nodes(&server, &["node-a", "node-b", "node-c"], "");
    server.ok_with_input(&["apply", "-f", "-"], AGENT);
    let mut expected: BTreeSet<String> = ["node-a", "node-b", "node-c"].map(String::from).into();
    for round in 0..2 {
        let deadline = Deadline::new(
            &server,
            "a daemon pod on every node",
            Duration::from_secs(60),
        );
        loop {
            let pods = kubelet.list("default", "app=agent").await?;
            let mut pinned = BTreeSet::new();
            for pod in &pods {
                let node = pinned_node(pod);
                // No scheduler here: the pod stays pinned by affinity, the kubelet reports it.
                if pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running") {
                    kubelet.run_ready(pod).await?;
                }
                pinned.insert(node);
            }
            let status = get_json(&server, &["get", "ds", "agent"])["status"].clone();
            let want = expected.len();
            if pinned == expected && pods.len() == want && status["numberReady"] == want {
                assert_eq!(status["desiredNumberScheduled"], want, "{status}");
                assert_eq!(status["currentNumberScheduled"], want, "{status}");
                assert_eq!(status["updatedNumberScheduled"], want, "{status}");
                assert_eq!(status["numberAvailable"], want, "{status}");
                assert_eq!(status["numberMisscheduled"], 0, "{status}");
                break;
            }
            deadline.tick().await?;
        }
        if round == 0 {
            create_nodes(&server, &["node-d"], "");
            expected.insert("node-d".into());
        }
    }
    let pods = kubelet.list("default", "app=agent").await?;
    for pod in &pods {
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unschedulable",
        ] {
            assert!(
                tolerations.iter().any(|t| t.key.as_deref() == Some(key)),
                "{} lacks the toleration for {key}",
                pod.name_any()
            );
        }
        assert!(pod.labels().contains_key("controller-revision-hash"));
    }
    let revisions = server.ok(&["get", "controllerrevisions", "-o", "name"]);
    assert_eq!(revisions.lines().count(), 1, "{revisions}");
    Ok(())
}

/// The node a daemon pod's required affinity names.
fn pinned_node(pod: &k8s_openapi::api::core::v1::Pod) -> String {
    let value = serde_json::to_value(pod).unwrap_or_default();
    let terms = &value["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    assert_eq!(terms.as_array().map(Vec::len), Some(1), "{terms}");
    let field = &terms[0]["matchFields"][0];
    assert_eq!(field["key"], "metadata.name");
    assert_eq!(field["operator"], "In");
    field["values"][0].as_str().unwrap_or_default().to_owned()
}

/// Plays the kubelet for one poll: live pods reported ready, graceful deletions finished;
/// returns the live pods' (node, revision hash).
async fn live_pods(kubelet: &super::FakeKubelet) -> anyhow::Result<BTreeSet<(String, String)>> {
    kubelet.finish_deletions("default").await?;
    let mut live = BTreeSet::new();
    for pod in kubelet.list("default", "app=agent").await? {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running") {
            kubelet.run_ready(&pod).await?;
        }
        let hash = pod.labels().get("controller-revision-hash").cloned();
        live.insert((pinned_node(&pod), hash.unwrap_or_default()));
    }
    Ok(live)
}

#[tokio::test]
async fn template_changes_roll_out_and_pods_leave_nodes_that_stop_fitting() -> anyhow::Result<()> {
    let (server, kubelet) = start().await?;
    create_nodes(&server, &["node-a", "node-b"], "");
    server.ok_with_input(&["apply", "-f", "-"], AGENT);
    let deadline = Deadline::new(&server, "two ready daemon pods", Duration::from_secs(60));
    let first_hash = loop {
        let live = live_pods(&kubelet).await?;
        let status = get_json(&server, &["get", "ds", "agent"])["status"].clone();
        if live.len() == 2 && status["numberReady"] == 2 {
            break live
                .first()
                .map(|(_, hash)| hash.clone())
                .unwrap_or_default();
        }
        deadline.tick().await?;
    };

    // A new image: every node's pod is replaced by one with the new revision's hash.
    server.ok(&[
        "set",
        "image",
        "ds/agent",
        "main=registry.local/busybox:1.37",
    ]);
    let deadline = Deadline::new(
        &server,
        "the new template on both nodes",
        Duration::from_secs(60),
    );
    loop {
        let live = live_pods(&kubelet).await?;
        let status = get_json(&server, &["get", "ds", "agent"])["status"].clone();
        let hashes: BTreeSet<&String> = live.iter().map(|(_, hash)| hash).collect();
        if live.len() == 2
            && hashes.len() == 1
            && !hashes.contains(&first_hash)
            && status["updatedNumberScheduled"] == 2
            && status["numberAvailable"] == 2
        {
            break;
        }
        deadline.tick().await?;
    }
    let revisions = server.ok(&["get", "controllerrevisions", "-o", "name"]);
    assert_eq!(revisions.lines().count(), 2, "{revisions}");

    // An untolerated NoExecute taint evicts; a deleted node loses its pod.
    server.ok(&["taint", "node", "node-a", "dedicated=infra:NoExecute"]);
    server.ok(&["delete", "node", "node-b"]);
    let deadline = Deadline::new(&server, "no node fits any more", Duration::from_secs(60));
    loop {
        let live = live_pods(&kubelet).await?;
        let status = get_json(&server, &["get", "ds", "agent"])["status"].clone();
        if live.is_empty() && status["desiredNumberScheduled"] == 0 {
            assert_eq!(status["currentNumberScheduled"], 0, "{status}");
            break;
        }
        deadline.tick().await?;
    }
    Ok(())
}
