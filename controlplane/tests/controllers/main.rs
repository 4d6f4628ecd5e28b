//! The controller manager against a real API server (real etcd, the real
//! `keel-controlplane all`): the tests play the kubelet themselves, creating pods bound to a
//! Node and writing their status through `pods/status`.

#[path = "../support/etcd.rs"]
mod etcd;
#[path = "../support/apiserver.rs"]
mod server;

mod endpointslices;
mod garbage;
mod serviceaccounts;

use std::future::Future;
use std::time::Duration;

use anyhow::bail;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

pub use server::TestApiServer;

/// How long a controller gets to converge.
const DEADLINE: Duration = Duration::from_secs(60);

/// A kube-rs client with the server's admin kubeconfig.
pub async fn client(server: &TestApiServer) -> anyhow::Result<kube::Client> {
    server.client().await
}

/// Polls `check` until it returns `Some`, failing after [`DEADLINE`] with `what`, the last
/// error and the control plane's log.
pub async fn eventually<T, F, Fut>(
    server: &TestApiServer,
    what: &str,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut last = String::from("none");
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last = format!("{error:#}"),
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{what}: not within {DEADLINE:?} (last error: {last})\ncontrol plane log (tail):\n{}",
                tail(&server.log())
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Creates namespace `name`.
pub async fn namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    Ok(())
}

/// Registers Node `name` in `zone`, as a kubelet would.
pub async fn node(client: &kube::Client, name: &str, zone: &str) -> anyhow::Result<()> {
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}},
    }))?;
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await?;
    Ok(())
}

/// Writes a pod's status as its kubelet would: running with `ip`, Ready or not.
pub async fn set_pod_status(
    pods: &Api<Pod>,
    name: &str,
    ip: &str,
    ready: bool,
) -> anyhow::Result<()> {
    let ready = if ready { "True" } else { "False" };
    let status = json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [
            {"type": "Ready", "status": ready},
            {"type": "ContainersReady", "status": ready},
        ],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await?;
    Ok(())
}
