//! Jobs: parallelism and completions, the back-off limit, the tracking finalizer.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt as _;
use serde_json::Value;

use super::{Deadline, get_json, start};

const WORK: &str = r#"apiVersion: batch/v1
kind: Job
metadata: {name: work, namespace: default}
spec:
  completions: 5
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: main, image: registry.local/busybox:1.36}]
"#;

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

/// The Job's condition of `type_` when it is true.
pub fn true_condition(object: &Value, type_: &str) -> Option<Value> {
    object["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_ && c["status"] == "True")
        .cloned()
}

#[tokio::test]
async fn completions_run_at_most_parallelism_pods_at_once() -> anyhow::Result<()> {
    let (server, kubelet) = start().await?;
    server.ok_with_input(&["apply", "-f", "-"], WORK);
    let mut most_active = 0;
    let mut finished = 0;
    let deadline = Deadline::new(&server, "job work completes", Duration::from_secs(90));
    let job = loop {
        let pods = kubelet
            .list("default", "batch.kubernetes.io/job-name=work")
            .await?;
        let active: Vec<&Pod> = pods
            .iter()
            .filter(|pod| !matches!(phase(pod), Some("Succeeded" | "Failed")))
            .collect();
        most_active = most_active.max(active.len());
        for pod in &active {
            let finalizers = pod.finalizers();
            assert!(
                finalizers
                    .iter()
                    .any(|f| f == "batch.kubernetes.io/job-tracking")
            );
            assert_eq!(
                pod.labels().get("job-name").map(String::as_str),
                Some("work")
            );
            // One step per poll: running first, then done.
            if phase(pod) == Some("Running") {
                kubelet.finish(pod, 0).await?;
                finished += 1;
            } else {
                kubelet.run_ready(pod).await?;
            }
        }
        let job = get_json(&server, &["get", "job", "work"]);
        if true_condition(&job, "Complete").is_some() {
            break job;
        }
        deadline.tick().await?;
    };
    assert_eq!(job["status"]["succeeded"], 5, "{job}");
    assert!(job["status"]["completionTime"].is_string(), "{job}");
    assert!(job["status"]["startTime"].is_string(), "{job}");
    assert!(job["status"].get("active").is_none(), "{job}");
    assert!(
        true_condition(&job, "SuccessCriteriaMet").is_some(),
        "{job}"
    );
    assert!(most_active <= 2, "{most_active} pods were active at once");
    assert_eq!(most_active, 2, "parallelism 2 was never used");
    assert_eq!(finished, 5, "exactly five pods ran to completion");
    // Counted pods lose the tracking finalizer.
    let pods = kubelet
        .list("default", "batch.kubernetes.io/job-name=work")
        .await?;
    assert!(pods.iter().all(|pod| pod.finalizers().is_empty()));
    let events = server.ok(&["get", "events", "--field-selector=involvedObject.name=work"]);
    assert!(events.contains("SuccessfulCreate"), "{events}");
    assert!(events.contains("Completed"), "{events}");
    Ok(())
}

#[tokio::test]
async fn failing_pods_hit_the_backoff_limit() -> anyhow::Result<()> {
    let (server, kubelet) = start().await?;
    let manifest = WORK
        .replace("name: work", "name: crash")
        .replace("completions: 5\n  parallelism: 2", "backoffLimit: 1");
    server.ok_with_input(&["apply", "-f", "-"], &manifest);
    let deadline = Deadline::new(&server, "job crash fails", Duration::from_secs(90));
    let job = loop {
        for pod in kubelet
            .list("default", "batch.kubernetes.io/job-name=crash")
            .await?
        {
            if phase(&pod) != Some("Failed") {
                kubelet.finish(&pod, 1).await?;
            }
        }
        let job = get_json(&server, &["get", "job", "crash"]);
        if true_condition(&job, "Failed").is_some() {
            break job;
        }
        deadline.tick().await?;
    };
    let condition = true_condition(&job, "Failed").unwrap_or_default();
    assert_eq!(condition["reason"], "BackoffLimitExceeded", "{job}");
    assert_eq!(
        condition["message"],
        "Job has reached the specified backoff limit"
    );
    // backoffLimit 1: the second failure ends the Job, no third pod starts.
    assert_eq!(job["status"]["failed"], 2, "{job}");
    let pods = kubelet
        .list("default", "batch.kubernetes.io/job-name=crash")
        .await?;
    assert_eq!(pods.len(), 2);
    let events = server.ok(&[
        "get",
        "events",
        "--field-selector=involvedObject.name=crash",
    ]);
    assert!(events.contains("BackoffLimitExceeded"), "{events}");
    Ok(())
}

#[tokio::test]
async fn indexed_jobs_complete_every_index() -> anyhow::Result<()> {
    let (server, kubelet) = start().await?;
    let manifest = WORK
        .replace("name: work", "name: shards")
        .replace(
            "parallelism: 2",
            "parallelism: 3\n  completionMode: Indexed",
        )
        .replace("completions: 5", "completions: 3");
    server.ok_with_input(&["apply", "-f", "-"], &manifest);
    let deadline = Deadline::new(&server, "every index completed", Duration::from_secs(60));
    let job = loop {
        for pod in kubelet
            .list("default", "batch.kubernetes.io/job-name=shards")
            .await?
        {
            if phase(&pod) == Some("Succeeded") {
                continue;
            }
            let index = pod.labels()["batch.kubernetes.io/job-completion-index"].clone();
            assert_eq!(
                pod.annotations()
                    .get("batch.kubernetes.io/job-completion-index"),
                Some(&index)
            );
            let spec = pod.spec.clone().unwrap_or_default();
            assert_eq!(spec.hostname, Some(format!("shards-{index}")));
            assert!(pod.name_any().starts_with(&format!("shards-{index}-")));
            let env = spec.containers[0].env.clone().unwrap_or_default();
            assert!(env.iter().any(|var| var.name == "JOB_COMPLETION_INDEX"));
            kubelet.finish(&pod, 0).await?;
        }
        let job = get_json(&server, &["get", "job", "shards"]);
        if true_condition(&job, "Complete").is_some() {
            break job;
        }
        deadline.tick().await?;
    };
    assert_eq!(job["status"]["completedIndexes"], "0-2", "{job}");
    assert_eq!(job["status"]["succeeded"], 3, "{job}");
    Ok(())
}
