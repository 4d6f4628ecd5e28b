//! Lists: pagination at one revision, filtering with refill, expiry after compaction.

use std::collections::BTreeSet;

use keel_controlplane::storage::{
    ListOptions, Preconditions, Predicate, ResourceVersionMatch, StorageError, Store,
};
use serde_json::json;

use super::{name, pod, pod_key, pods, rv, setup};

async fn create_pods(store: &Store, namespace: &str, count: usize) -> anyhow::Result<()> {
    for index in 0..count {
        let name = format!("p{index:02}");
        let app = if index % 2 == 0 { "even" } else { "odd" };
        store
            .create(&pod_key(namespace, &name), pod(namespace, &name, app))
            .await?;
    }
    Ok(())
}

#[tokio::test]
async fn pages_are_one_snapshot_even_with_writes_between_them() -> anyhow::Result<()> {
    let (_etcd, store) = setup().await?;
    create_pods(&store, "default", 25).await?;
    // Objects in another namespace and another resource stay out of the listed range.
    create_pods(&store, "defaultx", 3).await?;
    let prefix = pods().namespace_prefix("default")?;

    let first = store
        .list(
            &prefix,
            &ListOptions {
                limit: 10,
                ..ListOptions::default()
            },
        )
        .await?;
    let snapshot = first.resource_version;
    assert_eq!(first.items.len(), 10);
    assert_eq!(first.remaining_item_count, Some(15));
    let mut seen: Vec<String> = first
        .items
        .iter()
        .map(|item| name(item).to_owned())
        .collect();
    let mut token = first.continue_token.clone().expect("more pages");

    let mut pages = 1;
    loop {
        // Writes between pages: a new object that sorts into a later page, a delete and an
        // update of objects not yet returned. None of them may show in this list.
        let round = pages;
        store
            .create(
                &pod_key("default", &format!("p15-new{round}")),
                pod("default", &format!("p15-new{round}"), "new"),
            )
            .await?;
        if round == 1 {
            store
                .delete(&pod_key("default", "p22"), &Preconditions::default())
                .await?;
            store
                .guaranteed_update(&pod_key("default", "p18"), |mut current| {
                    current["metadata"]["labels"]["app"] = json!("changed");
                    Ok(current)
                })
                .await?;
        }

        let page = store
            .list(
                &prefix,
                &ListOptions {
                    limit: 10,
                    continue_token: Some(token.clone()),
                    ..ListOptions::default()
                },
            )
            .await?;
        pages += 1;
        assert_eq!(
            page.resource_version, snapshot,
            "page {pages} moved revision"
        );
        for item in &page.items {
            assert!(
                rv(item) <= snapshot,
                "{} is newer than the snapshot",
                name(item)
            );
            assert_ne!(item["metadata"]["labels"]["app"], "changed");
            seen.push(name(item).to_owned());
        }
        match page.continue_token {
            Some(next) => token = next,
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..25).map(|index| format!("p{index:02}")).collect();
    assert_eq!(seen, expected, "every object exactly once, in key order");

    // A new list sees the writes.
    let now = store.list(&prefix, &ListOptions::default()).await?;
    assert!(now.resource_version > snapshot);
    let names: BTreeSet<&str> = now.items.iter().map(|item| name(item)).collect();
    assert!(names.contains("p15-new1") && names.contains("p15-new2"));
    assert!(!names.contains("p22"));
    assert_eq!(now.items.len(), 25 - 1 + 2);
    Ok(())
}

#[tokio::test]
async fn filtered_pages_are_refilled_to_the_limit() -> anyhow::Result<()> {
    let (_etcd, store) = setup().await?;
    create_pods(&store, "default", 25).await?;
    let even = Predicate::new(|object| object["metadata"]["labels"]["app"] == "even");

    let mut names = Vec::new();
    let mut token = None;
    loop {
        let page = store
            .list(
                &pods().prefix(),
                &ListOptions {
                    limit: 4,
                    continue_token: token.take(),
                    predicate: even.clone(),
                    ..ListOptions::default()
                },
            )
            .await?;
        assert!(page.items.len() <= 4);
        // Unknown with a filter, as upstream.
        assert_eq!(page.remaining_item_count, None);
        names.extend(page.items.iter().map(|item| name(item).to_owned()));
        match page.continue_token {
            Some(next) => {
                assert_eq!(page.items.len(), 4, "a non-final page was not refilled");
                token = Some(next);
            }
            None => break,
        }
    }
    let expected: Vec<String> = (0..25)
        .step_by(2)
        .map(|index| format!("p{index:02}"))
        .collect();
    assert_eq!(names, expected);
    Ok(())
}

#[tokio::test]
async fn compacted_revisions_are_expired() -> anyhow::Result<()> {
    let (etcd, store) = setup().await?;
    create_pods(&store, "default", 6).await?;
    let prefix = pods().prefix();
    let first = store
        .list(
            &prefix,
            &ListOptions {
                limit: 2,
                ..ListOptions::default()
            },
        )
        .await?;
    let old = first.resource_version;
    store
        .create(
            &pod_key("default", "zz-late"),
            pod("default", "zz-late", "x"),
        )
        .await?;
    etcd.compact(store.current_revision().await?).await?;

    // The continue token pins a compacted revision.
    let error = store
        .list(
            &prefix,
            &ListOptions {
                limit: 2,
                continue_token: first.continue_token.clone(),
                ..ListOptions::default()
            },
        )
        .await
        .unwrap_err();
    let StorageError::Expired {
        requested,
        inconsistent_continue: Some(inconsistent),
        ..
    } = &error
    else {
        panic!("expected Expired with an inconsistent continue token, got {error:?}");
    };
    assert_eq!(*requested, old);
    assert_eq!(error.api_status().code, 410);
    assert_eq!(error.api_status().reason, "Expired");

    // The inconsistent token continues after the last returned key, at the latest revision.
    let rest = store
        .list(
            &prefix,
            &ListOptions {
                continue_token: Some(inconsistent.clone()),
                ..ListOptions::default()
            },
        )
        .await?;
    let names: Vec<&str> = rest.items.iter().map(|item| name(item)).collect();
    assert_eq!(names, ["p02", "p03", "p04", "p05", "zz-late"]);

    // An exact read at the old revision is expired too.
    let exact = store
        .list(
            &prefix,
            &ListOptions {
                resource_version: old.to_string(),
                resource_version_match: ResourceVersionMatch::Exact,
                ..ListOptions::default()
            },
        )
        .await;
    assert!(
        matches!(exact, Err(StorageError::Expired { .. })),
        "{exact:?}"
    );
    Ok(())
}

#[tokio::test]
async fn resource_version_semantics() -> anyhow::Result<()> {
    let (_etcd, store) = setup().await?;
    create_pods(&store, "default", 3).await?;
    let prefix = pods().prefix();
    let current = store.current_revision().await?;

    // Not older than a revision etcd has not reached.
    let future = store
        .list(
            &prefix,
            &ListOptions {
                resource_version: (current + 100).to_string(),
                ..ListOptions::default()
            },
        )
        .await;
    assert!(
        matches!(future, Err(StorageError::TooLargeResourceVersion { .. })),
        "{future:?}"
    );
    let future_exact = store
        .list(
            &prefix,
            &ListOptions {
                resource_version: (current + 100).to_string(),
                resource_version_match: ResourceVersionMatch::Exact,
                ..ListOptions::default()
            },
        )
        .await;
    assert!(
        matches!(
            future_exact,
            Err(StorageError::TooLargeResourceVersion { .. })
        ),
        "{future_exact:?}"
    );

    // An exact read in the past shows the past.
    let before_third = current - 1;
    store
        .delete(&pod_key("default", "p00"), &Preconditions::default())
        .await?;
    let past = store
        .list(
            &prefix,
            &ListOptions {
                resource_version: before_third.to_string(),
                resource_version_match: ResourceVersionMatch::Exact,
                ..ListOptions::default()
            },
        )
        .await?;
    let names: Vec<&str> = past.items.iter().map(|item| name(item)).collect();
    assert_eq!(names, ["p00", "p01"]);
    assert_eq!(past.resource_version, before_third);

    let bad = store
        .list(
            &prefix,
            &ListOptions {
                resource_version: "abc".into(),
                ..ListOptions::default()
            },
        )
        .await;
    assert!(matches!(
        bad,
        Err(StorageError::InvalidResourceVersion { .. })
    ));
    let bad_token = store
        .list(
            &prefix,
            &ListOptions {
                continue_token: Some("not-a-token".into()),
                ..ListOptions::default()
            },
        )
        .await;
    assert_eq!(bad_token.unwrap_err().api_status().code, 400);
    Ok(())
}
