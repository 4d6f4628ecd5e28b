//! Failures as kube-apiserver reports them: `Status` reasons, codes and messages.

use std::process::Command;

use crate::{DEMO_NAMESPACE, TestApiServer};

#[tokio::test(flavor = "multi_thread")]
async fn invalid_conflicting_and_duplicate_writes() -> anyhow::Result<()> {
    let server = TestApiServer::start().await?;
    server.ok_with_input(&["create", "-f", "-"], DEMO_NAMESPACE);

    let bad = "apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name, namespace: demo}\nspec: {containers: []}\n";
    let error = server.fails_with_input(&["create", "-f", "-"], bad);
    // kubectl renders the causes of an `Invalid` Status one per line.
    assert!(
        error.contains("The Pod \"Bad_Name\" is invalid:"),
        "{error}"
    );
    assert!(
        error.contains(
            "* metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"
        ),
        "{error}"
    );
    assert!(
        error.contains("* spec.containers: Required value"),
        "{error}"
    );

    let config =
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: twice, namespace: demo}\ndata: {a: b}\n";
    server.ok_with_input(&["create", "-f", "-"], config);
    let error = server.fails_with_input(&["create", "-f", "-"], config);
    assert!(error.contains("(AlreadyExists)"), "{error}");
    assert!(
        error.contains("configmaps \"twice\" already exists"),
        "{error}"
    );

    // A replace carrying an old resourceVersion loses against a newer write.
    let stale = server.ok(&["get", "cm", "twice", "-n", "demo", "-o", "json"]);
    server.ok(&["label", "cm", "twice", "-n", "demo", "moved=on"]);
    let error = server.fails_with_input(&["replace", "-f", "-"], &stale);
    assert!(error.contains("(Conflict)"), "{error}");
    assert!(error.contains("Operation cannot be fulfilled on configmaps \"twice\": the object has been modified; please apply your changes to the latest version and try again"), "{error}");

    let missing_namespace =
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: lost, namespace: nowhere}\n";
    let error = server.fails_with_input(&["create", "-f", "-"], missing_namespace);
    assert!(
        error.contains("namespaces \"nowhere\" not found"),
        "{error}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_credentials_get_401() -> anyhow::Result<()> {
    let server = TestApiServer::start().await?;
    let ca = server.data_dir().join("pki/ca.crt");
    let url = format!("https://127.0.0.1:{}/api/v1/namespaces", server.port);
    let output = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&ca)
        .args(["-w", "\n%{http_code}", &url])
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.trim_end().ends_with("401"), "{text}");
    let status: serde_json::Value = serde_json::from_str(text.trim_end().trim_end_matches("401"))?;
    assert_eq!(status["reason"], "Unauthorized");
    assert_eq!(status["code"], 401);
    // Health needs no credentials, as upstream's public-info endpoints.
    let ready = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&ca)
        .arg(format!("https://127.0.0.1:{}/readyz", server.port))
        .output()?;
    assert_eq!(String::from_utf8_lossy(&ready.stdout), "ok");
    Ok(())
}
