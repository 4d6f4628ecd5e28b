//! CronJobs on the real clock: a Job each minute, the history limit kept. (Schedules,
//! missed starts and names are unit-tested with an injected clock in the controller.)

use std::collections::BTreeSet;
use std::time::Duration;

use kube::ResourceExt as _;

use super::{Deadline, get_json, start};

const TICK: &str = r#"apiVersion: batch/v1
kind: CronJob
metadata: {name: tick, namespace: default}
spec:
  schedule: "*/1 * * * *"
  successfulJobsHistoryLimit: 1
  jobTemplate:
    metadata: {labels: {app: tick}}
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: main, image: registry.local/busybox:1.36}]
"#;

#[tokio::test]
async fn a_job_every_minute_and_only_the_newest_success_kept() -> anyhow::Result<()> {
    let (server, kubelet) = start().await?;
    server.ok_with_input(&["apply", "-f", "-"], TICK);
    let mut seen: BTreeSet<String> = BTreeSet::new();
    // The first start is at most a minute away, the second one more: two and a half minutes.
    let deadline = Deadline::new(
        &server,
        "two jobs, the older deleted",
        Duration::from_secs(150),
    );
    loop {
        for pod in kubelet
            .list("default", "batch.kubernetes.io/job-name")
            .await?
        {
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if phase != Some("Succeeded") && pod.metadata.deletion_timestamp.is_none() {
                kubelet.finish(&pod, 0).await?;
            }
        }
        let jobs = get_json(&server, &["get", "jobs"]);
        let names: Vec<String> = jobs["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|job| job["metadata"]["name"].as_str().map(str::to_owned))
            .collect();
        for job in jobs["items"].as_array().into_iter().flatten() {
            let name = job["metadata"]["name"].as_str().unwrap_or_default();
            let scheduled =
                job["metadata"]["annotations"]["batch.kubernetes.io/cronjob-scheduled-timestamp"]
                    .as_str()
                    .unwrap_or_default();
            let scheduled: k8s_openapi::jiff::Timestamp = scheduled.parse()?;
            assert_eq!(name, format!("tick-{}", scheduled.as_second() / 60));
            assert_eq!(job["metadata"]["ownerReferences"][0]["kind"], "CronJob");
            assert_eq!(job["metadata"]["labels"]["app"], "tick");
        }
        seen.extend(names.iter().cloned());
        assert!(
            names.len() <= 2,
            "more jobs than one running and one kept: {names:?}"
        );
        let newest = seen.iter().max().cloned().unwrap_or_default();
        if seen.len() >= 2 && names == [newest.clone()] {
            let complete = jobs["items"][0]["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Complete" && c["status"] == "True");
            if complete {
                break;
            }
        }
        deadline.tick().await?;
    }
    let deadline = Deadline::new(&server, "status caught up", Duration::from_secs(30));
    let status = loop {
        let status = get_json(&server, &["get", "cronjob", "tick"])["status"].clone();
        if status["lastSuccessfulTime"].is_string() && status.get("active").is_none() {
            break status;
        }
        deadline.tick().await?;
    };
    assert!(status["lastScheduleTime"].is_string(), "{status}");
    let events = server.ok(&["get", "events", "--field-selector=involvedObject.name=tick"]);
    for wanted in ["SuccessfulCreate", "SawCompletedJob", "SuccessfulDelete"] {
        assert!(events.contains(wanted), "no {wanted} event:\n{events}");
    }
    let pods = kubelet
        .list("default", "batch.kubernetes.io/job-name")
        .await?;
    assert!(
        pods.iter()
            .all(|pod| pod.labels()["job-name"].starts_with("tick-"))
    );
    Ok(())
}
