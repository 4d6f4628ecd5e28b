//! The storage layer against a real etcd: each test starts its own member (see
//! `tests/support/etcd.rs`), so they run in parallel without sharing state.

#[path = "../support/etcd.rs"]
mod etcd;

mod cache;
mod crud;
mod list;
mod watch;

use keel_controlplane::storage::{Resource, ResourceKey, Store, object};
use serde_json::{Value, json};

use etcd::TestEtcd;

/// A fresh etcd and a store connected to it.
async fn setup() -> anyhow::Result<(TestEtcd, Store)> {
    let etcd = TestEtcd::start().await?;
    let store = Store::connect(&[etcd.endpoint()]).await?;
    Ok((etcd, store))
}

fn pods() -> Resource {
    Resource::core("pods").expect("valid resource")
}

fn pod_key(namespace: &str, name: &str) -> ResourceKey {
    pods().namespaced_key(namespace, name).expect("valid key")
}

fn pod(namespace: &str, name: &str, app: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": format!("uid-{namespace}-{name}"),
            "labels": {"app": app},
        },
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
    })
}

/// The object's resourceVersion as a number (panics if it has none).
fn rv(object: &Value) -> i64 {
    object::resource_version(object)
        .expect("valid resourceVersion")
        .expect("resourceVersion set")
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().expect("name set")
}

#[tokio::test]
async fn test_etcd_leaves_no_process_or_directory_behind() -> anyhow::Result<()> {
    let etcd = TestEtcd::start().await?;
    let data_dir = etcd.data_dir().to_path_buf();
    let proc_entry = std::path::PathBuf::from(format!("/proc/{}", etcd.pid()));
    assert!(data_dir.join("data").is_dir());
    assert!(
        data_dir
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("keel-"))
    );
    assert!(proc_entry.exists());
    drop(etcd);
    assert!(!data_dir.exists(), "{} left behind", data_dir.display());
    assert!(!proc_entry.exists(), "etcd still running");
    Ok(())
}
