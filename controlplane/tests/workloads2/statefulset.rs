//! StatefulSets: ordered start, claims from volumeClaimTemplates, ordered scale-down.

use std::collections::BTreeSet;
use std::time::Duration;

use kube::ResourceExt as _;

use super::{Deadline, get_json, start};

const WEB: &str = r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web, namespace: default}
spec:
  replicas: 3
  serviceName: web
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: main
        image: registry.local/busybox:1.36
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
"#;

#[tokio::test]
async fn pods_start_in_order_with_their_claims_and_leave_from_the_top() -> anyhow::Result<()> {
    let (server, kubelet) = start().await?;
    server.ok_with_input(&["apply", "-f", "-"], WEB);
    let mut ready: BTreeSet<String> = BTreeSet::new();
    let deadline = Deadline::new(&server, "web-0..2 ready in order", Duration::from_secs(60));
    loop {
        let pods = kubelet.list("default", "app=web").await?;
        let names: BTreeSet<String> = pods.iter().map(|pod| pod.name_any()).collect();
        for ordinal in 1..3 {
            if names.contains(&format!("web-{ordinal}")) {
                let previous = format!("web-{}", ordinal - 1);
                assert!(
                    ready.contains(&previous),
                    "web-{ordinal} was created before {previous} was Ready"
                );
            }
        }
        // At most one pod becomes ready per poll, a while after it appeared: a controller
        // that did not wait would create the next one meanwhile.
        if let Some(pod) = pods.iter().find(|pod| !ready.contains(&pod.name_any())) {
            tokio::time::sleep(Duration::from_millis(700)).await;
            kubelet.run_ready(pod).await?;
            ready.insert(pod.name_any());
        }
        let status = get_json(&server, &["get", "sts", "web"])["status"].clone();
        if ready.len() == 3 && status["readyReplicas"] == 3 {
            assert_eq!(status["replicas"], 3, "{status}");
            assert_eq!(status["availableReplicas"], 3, "{status}");
            assert_eq!(status["updatedReplicas"], 3, "{status}");
            assert_eq!(status["currentReplicas"], 3, "{status}");
            assert!(
                status["currentRevision"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("web-"))
            );
            assert_eq!(
                status["currentRevision"], status["updateRevision"],
                "{status}"
            );
            break;
        }
        deadline.tick().await?;
    }
    for ordinal in 0..3 {
        let pod = get_json(&server, &["get", "pod", &format!("web-{ordinal}")]);
        let labels = &pod["metadata"]["labels"];
        assert_eq!(
            labels["statefulset.kubernetes.io/pod-name"],
            format!("web-{ordinal}")
        );
        assert_eq!(labels["apps.kubernetes.io/pod-index"], ordinal.to_string());
        assert_eq!(pod["spec"]["hostname"], format!("web-{ordinal}"));
        assert_eq!(pod["spec"]["subdomain"], "web");
        let volume = pod["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|volume| volume["name"] == "data")
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            volume["persistentVolumeClaim"]["claimName"],
            format!("data-web-{ordinal}"),
            "{pod}"
        );
    }
    let claims = server.ok(&["get", "pvc", "-o", "name"]);
    let claims: BTreeSet<&str> = claims.lines().collect();
    let expected: BTreeSet<&str> = [
        "persistentvolumeclaim/data-web-0",
        "persistentvolumeclaim/data-web-1",
        "persistentvolumeclaim/data-web-2",
    ]
    .into();
    assert_eq!(claims, expected);
    let revisions = server.ok(&["get", "controllerrevisions", "-o", "name"]);
    assert_eq!(
        revisions.lines().count(),
        1,
        "one template, one revision:\n{revisions}"
    );
    let claim = get_json(&server, &["get", "pvc", "data-web-1"]);
    assert_eq!(claim["metadata"]["labels"]["app"], "web", "{claim}");

    // Scale down to one: web-2 goes first, web-1 only once web-2 is gone; claims stay.
    server.ok(&["scale", "sts", "web", "--replicas=1"]);
    let deadline = Deadline::new(&server, "web scaled down to 1", Duration::from_secs(60));
    loop {
        let pods = kubelet.list("default", "app=web").await?;
        let names: BTreeSet<String> = pods.iter().map(|pod| pod.name_any()).collect();
        let web_1_leaving = pods
            .iter()
            .any(|pod| pod.name_any() == "web-1" && pod.metadata.deletion_timestamp.is_some());
        assert!(
            !(web_1_leaving && names.contains("web-2")),
            "web-1 was deleted while web-2 still existed"
        );
        if names == BTreeSet::from(["web-0".to_owned()]) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        kubelet.finish_deletions("default").await?;
        deadline.tick().await?;
    }
    let claims = server.ok(&["get", "pvc", "-o", "name"]);
    assert_eq!(
        claims.lines().count(),
        3,
        "claims are kept on scale-down:\n{claims}"
    );
    let events = server.ok(&["get", "events", "--field-selector=involvedObject.name=web"]);
    assert!(
        events.contains("create Pod web-0 in StatefulSet web successful"),
        "{events}"
    );
    assert!(
        events.contains("delete Pod web-2 in StatefulSet web successful"),
        "{events}"
    );
    Ok(())
}

#[tokio::test]
async fn rolling_update_replaces_pods_from_the_highest_ordinal() -> anyhow::Result<()> {
    let (server, kubelet) = start().await?;
    let parallel = WEB.replace(
        "  serviceName: web\n",
        "  serviceName: web\n  podManagementPolicy: Parallel\n",
    );
    server.ok_with_input(&["apply", "-f", "-"], &parallel);
    let status =
        |server: &super::TestApiServer| get_json(server, &["get", "sts", "web"])["status"].clone();
    let deadline = Deadline::new(&server, "three ready pods", Duration::from_secs(60));
    let first = loop {
        let pods = kubelet.list("default", "app=web").await?;
        for pod in &pods {
            if pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running") {
                kubelet.run_ready(pod).await?;
            }
        }
        let status = status(&server);
        if status["readyReplicas"] == 3 {
            break status["currentRevision"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
        deadline.tick().await?;
    };

    server.ok(&[
        "set",
        "image",
        "sts/web",
        "main=registry.local/busybox:1.37",
    ]);
    let mut replaced: Vec<String> = Vec::new();
    let deadline = Deadline::new(&server, "the rolling update done", Duration::from_secs(90));
    loop {
        kubelet.finish_deletions("default").await?;
        for pod in kubelet.list("default", "app=web").await? {
            let revision = pod
                .labels()
                .get("controller-revision-hash")
                .cloned()
                .unwrap_or_default();
            if revision != first && !replaced.contains(&pod.name_any()) {
                replaced.push(pod.name_any());
            }
            if pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running") {
                kubelet.run_ready(&pod).await?;
            }
        }
        let status = status(&server);
        if status["updatedReplicas"] == 3 && status["readyReplicas"] == 3 {
            assert_eq!(
                status["currentRevision"], status["updateRevision"],
                "{status}"
            );
            assert_ne!(status["currentRevision"], first.as_str(), "{status}");
            break;
        }
        deadline.tick().await?;
    }
    assert_eq!(replaced, ["web-2", "web-1", "web-0"]);
    Ok(())
}
