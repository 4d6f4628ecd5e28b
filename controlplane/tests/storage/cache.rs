//! The watch cache: many watchers on one etcd watch, the event ring, bookmarks, filters, and
//! lists from memory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keel_controlplane::storage::{
    CacheConfig, KeyPrefix, ListOptions, Preconditions, Predicate, Resource, StorageError, Store,
    WatchCache, WatchEvent, WatchOptions, WatchStream,
};
use serde_json::{Value, json};

use super::watch::next_event;
use super::{name, pod, pod_key, pods, rv, setup};

const WATCHERS_FROM_NOW: usize = 4;
const WATCHERS_FROM_REVISION: usize = 3;

fn namespace_of(object: &Value) -> &str {
    object["metadata"]["namespace"].as_str().expect("namespace")
}

/// Reads events until one at `until` arrives, folding them into `state` (namespace/name ->
/// object), and
/// checks that live events come in strictly increasing revision order.
async fn follow_until(
    stream: &mut WatchStream,
    mut state: BTreeMap<String, Value>,
    until: i64,
    replay_below: i64,
) -> BTreeMap<String, Value> {
    let mut last = replay_below;
    loop {
        let event = next_event(stream).await;
        let revision = event.resource_version().expect("event has a revision");
        if revision > replay_below {
            assert!(revision > last, "revision {revision} after {last}");
            last = revision;
        }
        let object = event.object().expect("object event").clone();
        let key = format!("{}/{}", namespace_of(&object), name(&object));
        match event {
            WatchEvent::Added(_) | WatchEvent::Modified(_) => {
                state.insert(key, object);
            }
            WatchEvent::Deleted(_) => {
                state.remove(&key);
            }
            other => panic!("unexpected {other:?}"),
        }
        if revision >= until {
            return state;
        }
    }
}

async fn etcd_state(
    store: &Store,
    prefix: &KeyPrefix,
    predicate: Predicate,
) -> anyhow::Result<BTreeMap<String, Value>> {
    let listing = store
        .list(
            prefix,
            &ListOptions {
                predicate,
                ..ListOptions::default()
            },
        )
        .await?;
    Ok(listing
        .items
        .iter()
        .map(|item| {
            (
                format!("{}/{}", namespace_of(item), name(item)),
                Value::clone(item),
            )
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_watchers_share_one_etcd_watch_and_agree_with_etcd() -> anyhow::Result<()> {
    let (_etcd, store) = setup().await?;
    for index in 0..10 {
        let namespace = if index % 2 == 0 { "a" } else { "b" };
        let pod_name = format!("seed{index}");
        store
            .create(
                &pod_key(namespace, &pod_name),
                pod(namespace, &pod_name, "web"),
            )
            .await?;
    }
    let seeded_at = store.current_revision().await?;
    let cache = WatchCache::start(store.clone(), pods().prefix(), CacheConfig::default());
    cache.wait_until_fresh(seeded_at).await?;

    let everything = || WatchOptions::default();
    let mut from_now = Vec::new();
    for _ in 0..WATCHERS_FROM_NOW {
        from_now.push(cache.watch(&pods().prefix(), &everything()).await?);
    }
    let mut from_revision = Vec::new();
    for _ in 0..WATCHERS_FROM_REVISION {
        let options = WatchOptions {
            resource_version: seeded_at.to_string(),
            ..WatchOptions::default()
        };
        from_revision.push(cache.watch(&pods().prefix(), &options).await?);
    }
    let only_web_in_a = Predicate::new(|object| object["metadata"]["labels"]["app"] == "web");
    let namespace_a = pods().namespace_prefix("a")?;
    let mut filtered = cache
        .watch(
            &namespace_a,
            &WatchOptions {
                predicate: only_web_in_a.clone(),
                ..WatchOptions::default()
            },
        )
        .await?;
    assert_eq!(
        cache.watcher_count(),
        WATCHERS_FROM_NOW + WATCHERS_FROM_REVISION + 1
    );

    // Two writers create, relabel and delete objects in both namespaces concurrently.
    let mut writers = Vec::new();
    for writer in 0..2 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for step in 0..120usize {
                let slot = step % 8;
                let namespace = if (step / 8) % 2 == 0 { "a" } else { "b" };
                let pod_name = format!("w{writer}-{slot}");
                let key = pod_key(namespace, &pod_name);
                let found = store.get(&key).await.is_ok();
                if !found {
                    store.create(&key, pod(namespace, &pod_name, "web")).await?;
                } else if step % 3 == 0 {
                    store.delete(&key, &Preconditions::default()).await?;
                } else {
                    store
                        .guaranteed_update(&key, |mut current| {
                            let app = if step % 2 == 0 { "web" } else { "db" };
                            current["metadata"]["labels"]["app"] = json!(app);
                            current["status"] = json!({"step": step});
                            Ok(current)
                        })
                        .await?;
                }
            }
            anyhow::Ok(())
        }));
    }
    for writer in writers {
        writer.await??;
    }
    // A last write every watcher's filter lets through marks the end.
    let sentinel = store
        .create(&pod_key("a", "zz-sentinel"), pod("a", "zz-sentinel", "web"))
        .await?;
    let end = rv(&sentinel);

    let expected_all = etcd_state(&store, &pods().prefix(), Predicate::everything()).await?;
    for stream in from_now.iter_mut() {
        let state = follow_until(stream, BTreeMap::new(), end, seeded_at).await;
        assert_eq!(state, expected_all);
    }
    for stream in from_revision.iter_mut() {
        // These start after the seed: start from etcd's state at that revision.
        let seed = etcd_state_at(&store, seeded_at).await?;
        assert_eq!(seed.len(), 10);
        let state = follow_until(stream, seed, end, seeded_at).await;
        assert_eq!(state, expected_all);
    }
    let expected_filtered = etcd_state(&store, &namespace_a, only_web_in_a).await?;
    let state = follow_until(&mut filtered, BTreeMap::new(), end, seeded_at).await;
    assert_eq!(state, expected_filtered);

    // Lists from the cache agree with etcd too.
    let listed = cache
        .list(
            &pods().prefix(),
            &ListOptions {
                resource_version: end.to_string(),
                ..ListOptions::default()
            },
        )
        .await?;
    assert!(listed.resource_version >= end);
    // Same key order: namespace, then name.
    let from_cache: Vec<Value> = listed.items.iter().map(|item| Value::clone(item)).collect();
    let from_etcd: Vec<Value> = expected_all.values().cloned().collect();
    assert_eq!(from_cache, from_etcd);

    // Eight watchers and a list, and still the one etcd watch of the cache.
    assert_eq!(store.etcd_watches_opened(), 1);
    Ok(())
}

/// The pods as they were at `revision`, by exact read.
async fn etcd_state_at(store: &Store, revision: i64) -> anyhow::Result<BTreeMap<String, Value>> {
    let listing = store
        .list(
            &pods().prefix(),
            &ListOptions {
                resource_version: revision.to_string(),
                resource_version_match: keel_controlplane::storage::ResourceVersionMatch::Exact,
                ..ListOptions::default()
            },
        )
        .await?;
    Ok(listing
        .items
        .iter()
        .map(|item| {
            (
                format!("{}/{}", namespace_of(item), name(item)),
                Value::clone(item),
            )
        })
        .collect())
}

#[tokio::test]
async fn watch_older_than_the_ring_is_expired() -> anyhow::Result<()> {
    let (_etcd, store) = setup().await?;
    let config = CacheConfig {
        ring_capacity: 5,
        ..CacheConfig::default()
    };
    let cache = WatchCache::start(store.clone(), pods().prefix(), config);
    cache.wait_until_fresh(0).await?;
    let mut revisions = Vec::new();
    for index in 0..10 {
        let pod_name = format!("p{index}");
        let created = store
            .create(
                &pod_key("default", &pod_name),
                pod("default", &pod_name, "web"),
            )
            .await?;
        revisions.push(rv(&created));
    }
    cache.wait_until_fresh(revisions[9]).await?;
    assert_eq!(cache.oldest_resource_version(), revisions[4]);

    let too_old = WatchOptions {
        resource_version: revisions[0].to_string(),
        ..WatchOptions::default()
    };
    let error = cache.watch(&pods().prefix(), &too_old).await.unwrap_err();
    assert!(
        matches!(error, StorageError::Expired { oldest: Some(oldest), .. } if oldest == revisions[4]),
        "{error:?}"
    );
    assert_eq!(error.api_status().code, 410);

    // The window itself is replayed in order.
    let in_window = WatchOptions {
        resource_version: revisions[4].to_string(),
        ..WatchOptions::default()
    };
    let mut stream = cache.watch(&pods().prefix(), &in_window).await?;
    for expected in &revisions[5..] {
        let WatchEvent::Added(object) = next_event(&mut stream).await else {
            panic!("expected ADDED");
        };
        assert_eq!(rv(&object), *expected);
    }
    Ok(())
}

#[tokio::test]
async fn bookmarks_go_only_to_watchers_that_ask() -> anyhow::Result<()> {
    let (etcd, store) = setup().await?;
    let config = CacheConfig {
        bookmark_interval: Duration::from_millis(200),
        ..CacheConfig::default()
    };
    let cache = Arc::new(WatchCache::start(store.clone(), pods().prefix(), config));
    cache.wait_until_fresh(0).await?;
    let mut wants = cache
        .watch(
            &pods().prefix(),
            &WatchOptions {
                bookmarks: true,
                ..WatchOptions::default()
            },
        )
        .await?;
    let mut plain = cache
        .watch(
            &pods().prefix(),
            &WatchOptions {
                predicate: Predicate::new(|object| object["metadata"]["labels"]["app"] == "db"),
                ..WatchOptions::default()
            },
        )
        .await?;

    let created = store
        .create(&pod_key("default", "a"), pod("default", "a", "web"))
        .await?;
    // A write outside the cached prefix: only etcd's progress notification reveals it.
    etcd.client()
        .await?
        .put("/registry/configmaps/default/x", "{}", None)
        .await?;
    let elsewhere = store.current_revision().await?;

    let WatchEvent::Added(object) = next_event(&mut wants).await else {
        panic!("expected ADDED");
    };
    assert_eq!(*object, created);
    let mut bookmark = 0;
    while bookmark < elsewhere {
        match next_event(&mut wants).await {
            WatchEvent::Bookmark { resource_version } => {
                assert!(resource_version >= bookmark);
                bookmark = resource_version;
            }
            other => panic!("expected BOOKMARK, got {other:?}"),
        }
    }

    // The filtered watcher without bookmarks saw nothing at all.
    let quiet = tokio::time::timeout(Duration::from_millis(800), plain.next()).await;
    assert!(quiet.is_err(), "unexpected event {quiet:?}");
    Ok(())
}

#[tokio::test]
async fn lists_from_memory_wait_for_freshness() -> anyhow::Result<()> {
    let (etcd, store) = setup().await?;
    store
        .create(&pod_key("default", "a"), pod("default", "a", "web"))
        .await?;
    let cache = WatchCache::start(store.clone(), pods().prefix(), CacheConfig::default());
    let any = cache
        .list(
            &pods().prefix(),
            &ListOptions {
                resource_version: "0".into(),
                ..ListOptions::default()
            },
        )
        .await?;
    assert_eq!(any.items.len(), 1);

    // A revision reached only by a write elsewhere: the cache catches up through etcd's
    // progress notifications and then answers from memory.
    etcd.client()
        .await?
        .put("/registry/configmaps/default/x", "{}", None)
        .await?;
    let elsewhere = store.current_revision().await?;
    let fresh = cache
        .list(
            &pods().prefix(),
            &ListOptions {
                resource_version: elsewhere.to_string(),
                ..ListOptions::default()
            },
        )
        .await?;
    assert!(fresh.resource_version >= elsewhere);
    assert_eq!(fresh.items.len(), 1);

    // A revision nobody has written yet: 504 after the freshness timeout.
    let future = cache
        .list(
            &pods().prefix(),
            &ListOptions {
                resource_version: (elsewhere + 1000).to_string(),
                ..ListOptions::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(future, StorageError::TooLargeResourceVersion { .. }),
        "{future:?}"
    );
    assert_eq!(future.api_status().code, 504);

    // resourceVersion "" is a consistent read from etcd.
    let consistent = cache
        .list(&pods().prefix(), &ListOptions::default())
        .await?;
    assert_eq!(consistent.resource_version, store.current_revision().await?);

    // Only the cached prefix is served.
    let services = Resource::core("services")?.prefix();
    assert!(matches!(
        cache.list(&services, &ListOptions::default()).await,
        Err(StorageError::InvalidKey { .. })
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_relists_after_losing_etcd_and_ends_its_watchers() -> anyhow::Result<()> {
    let (mut etcd, store) = setup().await?;
    store
        .create(&pod_key("default", "a"), pod("default", "a", "web"))
        .await?;
    let config = CacheConfig {
        relist_backoff: Duration::from_millis(200),
        ..CacheConfig::default()
    };
    let cache = WatchCache::start(store.clone(), pods().prefix(), config);
    cache.wait_until_fresh(0).await?;
    let mut stream = cache
        .watch(&pods().prefix(), &WatchOptions::default())
        .await?;
    assert!(matches!(
        next_event(&mut stream).await,
        WatchEvent::Added(_)
    ));

    etcd.restart().await?;

    // The watcher may have missed changes while the cache was cut off, so it is ended and its
    // client must watch again.
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while stream.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "watcher not ended after etcd went away");

    // Once etcd is back, the cache re-lists and follows again (the client reconnects by itself).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let created = loop {
        match store
            .create(&pod_key("default", "b"), pod("default", "b", "web"))
            .await
        {
            Ok(created) => break created,
            Err(error) if tokio::time::Instant::now() < deadline => {
                eprintln!("etcd not back yet: {error}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => return Err(error.into()),
        }
    };
    loop {
        match cache.wait_until_fresh(rv(&created)).await {
            Ok(_) => break,
            Err(error) if tokio::time::Instant::now() < deadline => {
                eprintln!("cache not fresh yet: {error}");
            }
            Err(error) => return Err(error.into()),
        }
    }
    let listed = cache
        .list(
            &pods().prefix(),
            &ListOptions {
                resource_version: rv(&created).to_string(),
                ..ListOptions::default()
            },
        )
        .await?;
    let names: Vec<&str> = listed.items.iter().map(|item| name(item)).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(
        store.etcd_watches_opened() >= 2,
        "the cache never re-watched"
    );
    Ok(())
}
