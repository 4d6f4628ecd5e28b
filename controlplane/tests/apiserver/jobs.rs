//! Job selectors as kube-apiserver makes them: generated from the Job's uid unless
//! `spec.manualSelector` is true, refused (422 `Invalid`) when given without it or missing
//! with it.

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use crate::TestApiServer;

fn job(name: &str, extra_spec: Value) -> Value {
    let mut spec = json!({
        "template": {
            "metadata": {"labels": {"app": "pi"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "pi", "image": "registry.local/pi:1"}]},
        },
    });
    for (key, value) in extra_spec.as_object().into_iter().flatten() {
        spec[key] = value.clone();
    }
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

#[tokio::test(flavor = "multi_thread")]
async fn job_selectors_are_generated_unless_manual() -> anyhow::Result<()> {
    let server = TestApiServer::start_apiserver_only().await?;

    // Generated: the selector names the uid, the template (and the Job, which has no labels
    // of its own) carry the four labels.
    server.ok_with_input(&["create", "-f", "-"], &job("pi", json!({})).to_string());
    let created: Value = serde_json::from_str(&server.ok(&["get", "job", "pi", "-o", "json"]))?;
    let uid = created["metadata"]["uid"].as_str().expect("a uid");
    assert_eq!(
        created["spec"]["selector"],
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}})
    );
    assert_eq!(created["spec"]["manualSelector"], false);
    let generated = json!({
        "app": "pi",
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": "pi",
        "controller-uid": uid,
        "job-name": "pi",
    });
    assert_eq!(created["spec"]["template"]["metadata"]["labels"], generated);
    assert_eq!(created["metadata"]["labels"], generated);
    // Selectable as kubectl users select a Job's pods' owner.
    let named = server.ok(&[
        "get",
        "jobs",
        "-l",
        "batch.kubernetes.io/job-name=pi",
        "-o",
        "name",
    ]);
    assert_eq!(named.trim(), "job.batch/pi");

    // A selector without manualSelector: 422, the selector is not the generated one.
    let given = job("given", json!({"selector": {"matchLabels": {"app": "pi"}}}));
    let error = server.fails_with_input(&["create", "-f", "-"], &given.to_string());
    assert!(error.contains("The Job \"given\" is invalid"), "{error}");
    assert!(
        error.contains("spec.selector: Invalid value:")
            && error.contains("`selector` not auto-generated"),
        "{error}"
    );

    // manualSelector without a selector: 422, the selector is required.
    let missing = job("missing", json!({"manualSelector": true}));
    let error = server.fails_with_input(&["create", "-f", "-"], &missing.to_string());
    assert!(error.contains("* spec.selector: Required value"), "{error}");
    assert!(
        error.contains("* spec.template.metadata.labels: Invalid value:")
            && error.contains("`selector` does not match template `labels`"),
        "{error}"
    );

    // kube-rs sees the Status: 422, reason Invalid, the causes listed.
    let jobs: Api<Job> = Api::namespaced(server.client().await?, "default");
    let missing: Job = serde_json::from_value(job("missing", json!({"manualSelector": true})))?;
    match jobs.create(&PostParams::default(), &missing).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
            assert!(
                status.message.contains("spec.selector: Required value"),
                "{}",
                status.message
            );
        }
        other => panic!("manualSelector without a selector was not refused: {other:?}"),
    }

    // manualSelector with a selector that matches the template: kept as given, no labels added.
    let manual = job(
        "manual",
        json!({"manualSelector": true, "selector": {"matchLabels": {"app": "pi"}}}),
    );
    server.ok_with_input(&["create", "-f", "-"], &manual.to_string());
    let manual: Value = serde_json::from_str(&server.ok(&["get", "job", "manual", "-o", "json"]))?;
    assert_eq!(
        manual["spec"]["selector"],
        json!({"matchLabels": {"app": "pi"}})
    );
    assert_eq!(
        manual["spec"]["template"]["metadata"]["labels"],
        json!({"app": "pi"})
    );

    // The selector stays immutable.
    let error = server.fails(&[
        "patch",
        "job",
        "pi",
        "--type=merge",
        "-p",
        r#"{"spec":{"selector":{"matchLabels":{"batch.kubernetes.io/controller-uid":"other"}}}}"#,
    ]);
    assert!(error.contains("field is immutable"), "{error}");
    Ok(())
}
