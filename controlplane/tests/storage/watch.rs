//! Watches straight from etcd.

use std::time::Duration;

use keel_controlplane::storage::{
    Preconditions, Predicate, StorageError, WatchEvent, WatchOptions, WatchStream,
};
use serde_json::json;

use super::{name, pod, pod_key, pods, rv, setup};

/// The next event, failing the test if none comes within a few seconds.
pub(crate) async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("no watch event within 10s")
        .expect("watch ended early")
}

#[tokio::test]
async fn watch_from_a_revision_sees_changes_in_order() -> anyhow::Result<()> {
    let (_etcd, store) = setup().await?;
    let before = store
        .create(&pod_key("default", "old"), pod("default", "old", "web"))
        .await?;
    let mut stream = store
        .watch(
            &pods().prefix(),
            &WatchOptions {
                resource_version: rv(&before).to_string(),
                ..WatchOptions::default()
            },
        )
        .await?;

    let key = pod_key("default", "web");
    let created = store.create(&key, pod("default", "web", "web")).await?;
    let mut changed = created.clone();
    changed["metadata"]["labels"]["tier"] = json!("front");
    let updated = store.update(&key, changed).await?;
    let deleted = store.delete(&key, &Preconditions::default()).await?;
    let other = store
        .create(&pod_key("default", "next"), pod("default", "next", "web"))
        .await?;

    let WatchEvent::Added(added) = next_event(&mut stream).await else {
        panic!("expected ADDED");
    };
    assert_eq!(*added, created);
    let WatchEvent::Modified(modified) = next_event(&mut stream).await else {
        panic!("expected MODIFIED");
    };
    assert_eq!(*modified, updated);
    let WatchEvent::Deleted(gone) = next_event(&mut stream).await else {
        panic!("expected DELETED");
    };
    // The last state, at the revision of the delete.
    assert_eq!(*gone, deleted);
    assert_eq!(gone["metadata"]["labels"]["tier"], "front");
    assert_eq!(rv(&gone), rv(&updated) + 1);
    let WatchEvent::Added(next) = next_event(&mut stream).await else {
        panic!("expected ADDED");
    };
    assert_eq!(*next, other);
    // One etcd watch for this stream.
    assert_eq!(store.etcd_watches_opened(), 1);
    Ok(())
}

#[tokio::test]
async fn watch_from_zero_replays_current_state_then_follows() -> anyhow::Result<()> {
    let (_etcd, store) = setup().await?;
    for pod_name in ["a", "b"] {
        store
            .create(
                &pod_key("default", pod_name),
                pod("default", pod_name, "web"),
            )
            .await?;
    }
    store
        .create(&pod_key("other", "c"), pod("other", "c", "web"))
        .await?;
    let mut stream = store
        .watch(
            &pods().namespace_prefix("default")?,
            &WatchOptions {
                resource_version: "0".into(),
                ..WatchOptions::default()
            },
        )
        .await?;
    // The replay, read through the poll form.
    for expected in ["a", "b"] {
        let event = std::future::poll_fn(|context| stream.poll_next(context)).await;
        let Some(WatchEvent::Added(object)) = event else {
            panic!("expected ADDED, got {event:?}");
        };
        assert_eq!(name(&object), expected);
    }
    // Changes outside the namespace are not in range; this one is.
    store
        .create(&pod_key("other", "d"), pod("other", "d", "web"))
        .await?;
    store
        .create(&pod_key("default", "e"), pod("default", "e", "web"))
        .await?;
    let WatchEvent::Added(object) = next_event(&mut stream).await else {
        panic!("expected ADDED");
    };
    assert_eq!(name(&object), "e");
    Ok(())
}

#[tokio::test]
async fn watch_from_a_compacted_revision_is_expired() -> anyhow::Result<()> {
    let (etcd, store) = setup().await?;
    let first = store
        .create(&pod_key("default", "a"), pod("default", "a", "web"))
        .await?;
    for index in 0..5 {
        store
            .create(
                &pod_key("default", &format!("b{index}")),
                pod("default", "b", "web"),
            )
            .await?;
    }
    let compacted_at = store.current_revision().await?;
    etcd.compact(compacted_at).await?;

    let mut stream = store
        .watch(
            &pods().prefix(),
            &WatchOptions {
                resource_version: rv(&first).to_string(),
                ..WatchOptions::default()
            },
        )
        .await?;
    let WatchEvent::Error(error) = next_event(&mut stream).await else {
        panic!("expected an ERROR event");
    };
    let StorageError::Expired {
        requested, oldest, ..
    } = &error
    else {
        panic!("expected Expired, got {error:?}");
    };
    assert_eq!(*requested, rv(&first));
    assert_eq!(*oldest, Some(compacted_at));
    assert_eq!(error.api_status().code, 410);
    assert!(
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await?
            .is_none(),
        "the watch must end after its error"
    );
    Ok(())
}

#[tokio::test]
async fn filtered_watch_turns_leaving_updates_into_deletes() -> anyhow::Result<()> {
    let (_etcd, store) = setup().await?;
    let start = store.current_revision().await?;
    let web = Predicate::new(|object| object["metadata"]["labels"]["app"] == "web");
    let mut stream = store
        .watch(
            &pods().prefix(),
            &WatchOptions {
                resource_version: start.to_string(),
                predicate: web,
                ..WatchOptions::default()
            },
        )
        .await?;

    let key = pod_key("default", "a");
    store.create(&key, pod("default", "a", "db")).await?; // not matching: invisible
    let moved_in = store
        .guaranteed_update(&key, |mut current| {
            current["metadata"]["labels"]["app"] = json!("web");
            Ok(current)
        })
        .await?;
    let moved_out = store
        .guaranteed_update(&key, |mut current| {
            current["metadata"]["labels"]["app"] = json!("db");
            Ok(current)
        })
        .await?;

    let WatchEvent::Added(added) = next_event(&mut stream).await else {
        panic!("expected ADDED when the object starts matching");
    };
    assert_eq!(*added, moved_in);
    let WatchEvent::Deleted(left) = next_event(&mut stream).await else {
        panic!("expected DELETED when the object stops matching");
    };
    assert_eq!(left["metadata"]["labels"]["app"], "web");
    assert_eq!(rv(&left), rv(&moved_out));
    Ok(())
}

#[tokio::test]
async fn etcd_progress_becomes_bookmarks() -> anyhow::Result<()> {
    let (etcd, store) = setup().await?;
    let created = store
        .create(&pod_key("default", "a"), pod("default", "a", "web"))
        .await?;
    let mut stream = store
        .watch(
            &pods().prefix(),
            &WatchOptions {
                resource_version: rv(&created).to_string(),
                bookmarks: true,
                ..WatchOptions::default()
            },
        )
        .await?;
    // Writes elsewhere move the revision; the test etcd reports progress every 500ms.
    let mut raw = etcd.client().await?;
    raw.put("/registry/configmaps/default/x", "{}", None)
        .await?;
    let elsewhere = store.current_revision().await?;
    let WatchEvent::Bookmark { resource_version } = next_event(&mut stream).await else {
        panic!("expected BOOKMARK");
    };
    assert!(resource_version >= elsewhere);
    Ok(())
}
