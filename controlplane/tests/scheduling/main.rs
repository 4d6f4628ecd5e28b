//! The scheduler as clients see it: a real etcd, the real `keel-controlplane` (whose `all`
//! runs the scheduler), Nodes created through the real kubectl with capacity, labels and
//! taints (no kubelet: the scheduler only binds), and pods whose placement, events and
//! conditions are read back through kubectl.

#[path = "../support/etcd.rs"]
mod etcd;
#[path = "../support/apiserver.rs"]
mod server;

mod election;
mod placement;
mod resources;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

pub use server::TestApiServer;

/// How long a test waits for the scheduler to act (generous: the machine is shared).
pub const PATIENCE: Duration = Duration::from_secs(90);

/// A Node with `cpu` allocatable (and 8Gi memory, 110 pods), extra labels and taints.
pub fn node_manifest(name: &str, cpu: &str, labels: &[(&str, &str)], taints: &str) -> String {
    let mut label_lines = format!("    kubernetes.io/hostname: {name}\n");
    for (key, value) in labels {
        label_lines.push_str(&format!("    {key}: \"{value}\"\n"));
    }
    format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n{label_lines}spec:\n  taints: {taints}\nstatus:\n  capacity: {{cpu: \"{cpu}\", memory: 8Gi, pods: \"110\"}}\n  allocatable: {{cpu: \"{cpu}\", memory: 8Gi, pods: \"110\"}}\n"
    )
}

/// Creates the Node and makes sure its status (capacity, allocatable) is what was asked.
pub fn add_node(
    server: &TestApiServer,
    name: &str,
    cpu: &str,
    labels: &[(&str, &str)],
    taints: &str,
) {
    server.ok_with_input(
        &["apply", "-f", "-"],
        &node_manifest(name, cpu, labels, taints),
    );
    let status = format!(
        "{{\"status\":{{\"capacity\":{{\"cpu\":\"{cpu}\",\"memory\":\"8Gi\",\"pods\":\"110\"}},\"allocatable\":{{\"cpu\":\"{cpu}\",\"memory\":\"8Gi\",\"pods\":\"110\"}}}}}}"
    );
    server.ok(&[
        "patch",
        "node",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status,
    ]);
}

/// A pod in `default` with a 1-container spec; `extra` is YAML under `spec:` (indented 2).
pub fn pod_manifest(name: &str, labels: &str, cpu: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  labels: {labels}\nspec:\n  containers:\n  - name: c\n    image: registry.local/busybox:1.36\n    resources: {{requests: {{cpu: \"{cpu}\"}}}}\n{extra}"
    )
}

/// `kubectl get <what> -o json`, parsed.
pub fn get_json(server: &TestApiServer, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&server.ok(&all)).expect("kubectl printed JSON")
}

/// Pod name to node name (empty while unscheduled) for the pods in `default`.
pub fn placements(server: &TestApiServer) -> BTreeMap<String, String> {
    let list = get_json(server, &["get", "pods", "-n", "default"]);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|pod| {
            (
                pod["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                pod["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

/// Polls until `check` gives `Some`, or fails with `what` and the control plane's log.
pub fn wait_for<T>(server: &TestApiServer, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what}; control plane log:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until every pod named is bound; returns their nodes.
pub fn wait_bound(server: &TestApiServer, names: &[&str]) -> BTreeMap<String, String> {
    wait_for(server, &format!("{names:?} to be bound"), || {
        let placed = placements(server);
        names
            .iter()
            .all(|name| placed.get(*name).is_some_and(|node| !node.is_empty()))
            .then_some(placed)
    })
}

/// The events about pod `name` in `default` with `reason`.
pub fn events_for(server: &TestApiServer, name: &str, reason: &str) -> Vec<Value> {
    let list = get_json(server, &["get", "events", "-n", "default"]);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|event| event["involvedObject"]["name"] == name && event["reason"] == reason)
        .cloned()
        .collect()
}

/// Waits for a `FailedScheduling` event about `name` and returns its message, after
/// checking who reported it and how.
pub fn failed_scheduling_message(server: &TestApiServer, name: &str) -> String {
    let event = wait_for(server, &format!("FailedScheduling for {name}"), || {
        events_for(server, name, "FailedScheduling")
            .into_iter()
            .last()
    });
    assert_eq!(event["type"], "Warning", "{event}");
    assert_eq!(event["reportingComponent"], "default-scheduler", "{event}");
    event["message"].as_str().unwrap_or_default().to_owned()
}

/// The pod's `PodScheduled` condition.
pub fn scheduled_condition(server: &TestApiServer, name: &str) -> Value {
    let pod = get_json(server, &["get", "pod", name, "-n", "default"]);
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|condition| condition["type"] == "PodScheduled")
        .cloned()
        .unwrap_or(Value::Null)
}
