//! kube-rs against the API server: watchers through a restart and an etcd compaction, and
//! writes that survive `kill -9` of the server.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use keel_controlplane::storage::{Resource, Store};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use serde_json::json;

use crate::TestApiServer;

async fn client(server: &TestApiServer) -> anyhow::Result<kube::Client> {
    server.client().await
}

fn config_map(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "data": {"value": value},
    }))
    .expect("a valid ConfigMap")
}

/// Next event of a watcher stream, or a failure after 30 s.
async fn next(
    stream: &mut (impl futures::Stream<Item = Result<Event<ConfigMap>, watcher::Error>> + Unpin),
) -> Event<ConfigMap> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut errors = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(event))) => return event,
            // Errors while the server restarts are expected; the watcher retries by itself.
            Ok(Some(Err(error))) => errors.push(error.to_string()),
            Ok(None) => panic!("the watcher stream ended"),
            Err(_) => panic!("no watch event within 30s; errors: {errors:?}"),
        }
    }
}

fn name(config: &ConfigMap) -> &str {
    config.metadata.name.as_deref().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn watcher_sees_changes_in_order_and_relists_after_compaction() -> anyhow::Result<()> {
    let mut server = TestApiServer::start().await?;
    let api: Api<ConfigMap> = Api::namespaced(client(&server).await?, "default");
    let config = watcher::Config::default()
        .labels("")
        .fields("metadata.namespace=default");
    let mut stream = Box::pin(watcher::watcher(api.clone(), config));
    // The initial list.
    assert!(matches!(next(&mut stream).await, Event::Init));
    loop {
        if matches!(next(&mut stream).await, Event::InitDone) {
            break;
        }
    }

    api.create(&PostParams::default(), &config_map("a", "1"))
        .await?;
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"value": "2"}})),
    )
    .await?;
    api.delete("a", &DeleteParams::default()).await?;
    let events = [
        next(&mut stream).await,
        next(&mut stream).await,
        next(&mut stream).await,
    ];
    match &events {
        [
            Event::Apply(added),
            Event::Apply(modified),
            Event::Delete(deleted),
        ] => {
            assert_eq!(
                (name(added), added.data.as_ref().unwrap()["value"].as_str()),
                ("a", "1")
            );
            assert_eq!(
                (
                    name(modified),
                    modified.data.as_ref().unwrap()["value"].as_str()
                ),
                ("a", "2")
            );
            assert_eq!(name(deleted), "a");
        }
        other => panic!("expected ADDED, MODIFIED, DELETED; got {other:?}"),
    }

    // With the server down, objects change in etcd and etcd compacts past the watcher's
    // resourceVersion: its next watch gets 410 Expired, and it lists again by itself.
    server.stop()?;
    let store = Store::connect(&[server.etcd.endpoint()]).await?;
    let configmaps = Resource::core("configmaps")?;
    for index in 0..20 {
        let key = configmaps.namespaced_key("default", &format!("direct-{index}"))?;
        let object = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("direct-{index}"), "namespace": "default", "uid": format!("uid-{index}"), "creationTimestamp": "2026-01-01T00:00:00Z"},
            "data": {"value": index.to_string()}});
        store.create(&key, object).await?;
    }
    for index in 0..5 {
        let key = configmaps.namespaced_key("default", &format!("direct-{index}"))?;
        store.delete(&key, &Default::default()).await?;
    }
    let revision = store.current_revision().await?;
    server.etcd.compact(revision).await?;
    server.start_again()?;

    // The watcher relists (a new Init) and its view converges on etcd's.
    let mut seen = BTreeMap::new();
    loop {
        if matches!(next(&mut stream).await, Event::Init) {
            break;
        }
    }
    loop {
        match next(&mut stream).await {
            Event::InitApply(config) => {
                seen.insert(
                    name(&config).to_owned(),
                    config.data.clone().unwrap_or_default(),
                );
            }
            Event::InitDone => break,
            other => panic!("unexpected event during the relist: {other:?}"),
        }
    }
    let listed = api.list(&ListParams::default()).await?;
    let expected: Vec<String> = listed
        .items
        .iter()
        .map(|config| name(config).to_owned())
        .collect();
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), expected);
    assert_eq!(expected.len(), 15, "{expected:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_kill_9() -> anyhow::Result<()> {
    const WRITES: usize = 2000;
    const KILL_AFTER: usize = 600;
    let mut server = TestApiServer::start().await?;
    let api: Api<ConfigMap> = Api::namespaced(client(&server).await?, "default");
    let writer = {
        let api = api.clone();
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut index = 0;
            while index < WRITES {
                let name = format!("cm-{index}");
                match api
                    .create(
                        &PostParams::default(),
                        &config_map(&name, &index.to_string()),
                    )
                    .await
                {
                    Ok(_) => {
                        acknowledged.push(name);
                        index += 1;
                    }
                    // A create in flight when the server died may or may not have been
                    // stored; retrying tells which.
                    Err(kube::Error::Api(status)) if status.code == 409 => index += 1,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            acknowledged
        })
    };
    // Kill the server in the middle of the writes and start it again on the same data.
    loop {
        let count = api
            .list(&ListParams::default())
            .await
            .map(|list| list.items.len())
            .unwrap_or(0);
        if count >= KILL_AFTER {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.restart_killed()?;
    let acknowledged = tokio::time::timeout(Duration::from_secs(600), writer).await??;
    assert!(acknowledged.len() > KILL_AFTER);

    // Every acknowledged write is there, whole; the cache (resourceVersion=0) and etcd
    // (resourceVersion unset) agree on every object and its version.
    let from_etcd = api.list(&ListParams::default()).await?;
    let from_cache = api.list(&ListParams::default().match_any().at("0")).await?;
    let index_of =
        |list: &kube::core::ObjectList<ConfigMap>| -> BTreeMap<String, (String, String)> {
            list.items
                .iter()
                .map(|config| {
                    let value = config
                        .data
                        .as_ref()
                        .and_then(|data| data.get("value"))
                        .cloned()
                        .unwrap_or_default();
                    (
                        name(config).to_owned(),
                        (
                            value,
                            config.metadata.resource_version.clone().unwrap_or_default(),
                        ),
                    )
                })
                .collect()
        };
    let stored = index_of(&from_etcd);
    assert_eq!(stored, index_of(&from_cache));
    assert_eq!(stored.len(), WRITES);
    for name in &acknowledged {
        let (value, _) = stored
            .get(name)
            .unwrap_or_else(|| panic!("{name} got 201 but is missing"));
        assert_eq!(format!("cm-{value}"), *name, "{name} is not whole");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_binding_is_one_write_with_the_node_and_the_scheduled_condition() -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::{Binding, ObjectReference, Pod};
    use kube::api::{WatchEvent, WatchParams};

    let server = TestApiServer::start_apiserver_only().await?;
    let pods: Api<Pod> = Api::namespaced(client(&server).await?, "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "registry.local/busybox:1.36"}]},
    }))?;
    let created = pods.create(&PostParams::default(), &pod).await?;
    let version = created
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    let mut events = pods
        .watch(&WatchParams::default().fields("metadata.name=p"), &version)
        .await?
        .boxed();
    let binding = Binding {
        metadata: kube::api::ObjectMeta {
            name: Some("p".into()),
            uid: created.metadata.uid.clone(),
            ..Default::default()
        },
        target: ObjectReference {
            kind: Some("Node".into()),
            name: Some("n1".into()),
            ..Default::default()
        },
    };
    let _: serde_json::Value = pods
        .create_subresource("binding", "p", &PostParams::default(), &binding)
        .await?;
    // The first change a watcher sees already carries both, as from upstream's BindingREST.
    let event = tokio::time::timeout(Duration::from_secs(30), events.next())
        .await?
        .expect("the watch stays open")?;
    let WatchEvent::Modified(bound) = event else {
        panic!("expected MODIFIED, got {event:?}");
    };
    assert_eq!(
        bound
            .spec
            .as_ref()
            .and_then(|spec| spec.node_name.as_deref()),
        Some("n1")
    );
    let scheduled = bound
        .status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .and_then(|conditions| conditions.iter().find(|c| c.type_ == "PodScheduled"))
        .map(|condition| condition.status.clone());
    assert_eq!(scheduled.as_deref(), Some("True"), "{bound:?}");
    // And nothing was written after it.
    let now = pods.get("p").await?;
    assert_eq!(
        now.metadata.resource_version,
        bound.metadata.resource_version
    );
    Ok(())
}
