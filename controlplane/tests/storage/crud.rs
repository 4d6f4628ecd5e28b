//! create / get / update / guaranteed_update / delete.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use keel_controlplane::storage::{Preconditions, StorageError};
use serde_json::{Value, json};

use super::{pod, pod_key, rv, setup};

#[tokio::test]
async fn round_trip_carries_etcd_revisions() -> anyhow::Result<()> {
    let (etcd, store) = setup().await?;
    let key = pod_key("default", "web");

    let created = store.create(&key, pod("default", "web", "web")).await?;
    let created_rv = rv(&created);
    assert_eq!(created_rv, store.current_revision().await?);
    assert_eq!(created["spec"]["containers"][0]["image"], "busybox");

    // The value in etcd carries no resourceVersion; the key's mod revision is the RV.
    let mut raw = etcd.client().await?;
    let stored = raw.get(key.as_str(), None).await?;
    let kv = &stored.kvs()[0];
    assert_eq!(kv.mod_revision(), created_rv);
    let stored_value: Value = serde_json::from_slice(kv.value())?;
    assert!(stored_value["metadata"].get("resourceVersion").is_none());

    let fetched = store.get(&key).await?;
    assert_eq!(fetched, created);

    let mut changed = fetched.clone();
    changed["spec"]["containers"][0]["image"] = json!("nginx");
    let updated = store.update(&key, changed).await?;
    assert!(rv(&updated) > created_rv);
    assert_eq!(store.get(&key).await?, updated);

    let deleted = store.delete(&key, &Preconditions::default()).await?;
    // The last state, stamped with the revision of the delete itself.
    assert_eq!(deleted["spec"]["containers"][0]["image"], "nginx");
    assert_eq!(rv(&deleted), rv(&updated) + 1);
    assert_eq!(rv(&deleted), store.current_revision().await?);
    assert!(matches!(
        store.get(&key).await,
        Err(StorageError::NotFound { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn double_create_is_already_exists() -> anyhow::Result<()> {
    let (_etcd, store) = setup().await?;
    let key = pod_key("default", "web");
    let first = store.create(&key, pod("default", "web", "web")).await?;

    let again = store.create(&key, pod("default", "web", "db")).await;
    let Err(error) = again else {
        panic!("second create succeeded");
    };
    assert!(matches!(error, StorageError::AlreadyExists { .. }));
    assert_eq!(error.api_status().code, 409);
    assert_eq!(error.api_status().reason, "AlreadyExists");
    // The first object is untouched.
    assert_eq!(store.get(&key).await?, first);

    let mut with_rv = pod("default", "other", "web");
    with_rv["metadata"]["resourceVersion"] = json!("12");
    assert!(matches!(
        store.create(&pod_key("default", "other"), with_rv).await,
        Err(StorageError::InvalidObject { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn stale_update_is_conflict() -> anyhow::Result<()> {
    let (_etcd, store) = setup().await?;
    let key = pod_key("default", "web");
    let original = store.create(&key, pod("default", "web", "web")).await?;

    let mut first = original.clone();
    first["metadata"]["labels"]["app"] = json!("one");
    let winner = store.update(&key, first).await?;

    // Written against the original resourceVersion, after someone else's update.
    let mut stale = original.clone();
    stale["metadata"]["labels"]["app"] = json!("two");
    let error = store.update(&key, stale).await.unwrap_err();
    assert!(matches!(error, StorageError::Conflict { .. }), "{error:?}");
    assert!(error.to_string().contains(
        "the object has been modified; please apply your changes to the latest version and try again"
    ));
    assert_eq!(error.api_status().code, 409);
    assert_eq!(store.get(&key).await?, winner);

    // Without a resourceVersion the update is unconditional.
    let blind = store.update(&key, pod("default", "web", "three")).await?;
    assert_eq!(blind["metadata"]["labels"]["app"], "three");

    // Updating a key that does not exist is NotFound, with or without a resourceVersion.
    let missing = store
        .update(&pod_key("default", "ghost"), pod("default", "ghost", "x"))
        .await;
    assert!(matches!(missing, Err(StorageError::NotFound { .. })));
    let mut missing_with_rv = pod("default", "ghost", "x");
    missing_with_rv["metadata"]["resourceVersion"] = json!("0");
    let missing = store
        .update(&pod_key("default", "ghost"), missing_with_rv)
        .await;
    assert!(matches!(missing, Err(StorageError::NotFound { .. })));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guaranteed_update_retries_after_a_concurrent_write() -> anyhow::Result<()> {
    let (_etcd, store) = setup().await?;
    let key = pod_key("default", "web");
    store.create(&key, pod("default", "web", "web")).await?;

    // On its first attempt the closure lets another writer get in first, so the CAS must fail
    // and the closure must run again on the newer object.
    let attempts = AtomicUsize::new(0);
    let runtime = tokio::runtime::Handle::current();
    let result = store
        .guaranteed_update(&key, |mut current| {
            if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                let mut competing = current.clone();
                competing["metadata"]["annotations"] = json!({"writer": "other"});
                tokio::task::block_in_place(|| runtime.block_on(store.update(&key, competing)))?;
            }
            current["metadata"]["finalizers"] = json!(["keel.dev/cleanup"]);
            Ok(current)
        })
        .await?;
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(result["metadata"]["annotations"]["writer"], "other");
    assert_eq!(result["metadata"]["finalizers"][0], "keel.dev/cleanup");
    assert_eq!(store.get(&key).await?, result);

    // An update that changes nothing writes nothing.
    let before = store.current_revision().await?;
    let same = store.guaranteed_update(&key, Ok).await?;
    assert_eq!(same, result);
    assert_eq!(store.current_revision().await?, before);

    // Errors from the closure end the loop unchanged.
    let refused = store
        .guaranteed_update(&key, |_| {
            Err(StorageError::InvalidObject {
                key: key.to_string(),
                reason: "refused".into(),
            })
        })
        .await;
    assert!(matches!(refused, Err(StorageError::InvalidObject { .. })));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guaranteed_update_loses_no_increment_under_contention() -> anyhow::Result<()> {
    let (_etcd, store) = setup().await?;
    let key = pod_key("default", "counter");
    let mut object = pod("default", "counter", "web");
    object["status"] = json!({"count": 0});
    store.create(&key, object).await?;

    const WRITERS: usize = 4;
    const INCREMENTS: usize = 25;
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let (store, key, calls) = (store.clone(), key.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..INCREMENTS {
                store
                    .guaranteed_update(&key, |mut current| {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let count = current["status"]["count"].as_u64().unwrap_or(0);
                        current["status"]["count"] = json!(count + 1);
                        Ok(current)
                    })
                    .await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let last = store.get(&key).await?;
    assert_eq!(last["status"]["count"], json!(WRITERS * INCREMENTS));
    assert!(calls.load(Ordering::SeqCst) >= WRITERS * INCREMENTS);
    Ok(())
}

#[tokio::test]
async fn delete_checks_preconditions() -> anyhow::Result<()> {
    let (_etcd, store) = setup().await?;
    let key = pod_key("default", "web");
    let created = store.create(&key, pod("default", "web", "web")).await?;

    let wrong_uid = Preconditions {
        uid: Some("someone-else".into()),
        ..Preconditions::default()
    };
    let error = store.delete(&key, &wrong_uid).await.unwrap_err();
    assert!(
        matches!(error, StorageError::PreconditionFailed { field: "UID", .. }),
        "{error:?}"
    );
    assert_eq!(error.api_status().code, 409);

    let wrong_rv = Preconditions {
        resource_version: Some((rv(&created) - 1).to_string()),
        ..Preconditions::default()
    };
    assert!(matches!(
        store.delete(&key, &wrong_rv).await,
        Err(StorageError::PreconditionFailed {
            field: "ResourceVersion",
            ..
        })
    ));
    assert!(
        store.get(&key).await.is_ok(),
        "failed preconditions deleted the object"
    );

    let right = Preconditions {
        uid: Some("uid-default-web".into()),
        resource_version: Some(rv(&created).to_string()),
    };
    let deleted = store.delete(&key, &right).await?;
    assert_eq!(deleted["metadata"]["uid"], "uid-default-web");
    assert!(matches!(
        store.delete(&key, &Preconditions::default()).await,
        Err(StorageError::NotFound { .. })
    ));
    Ok(())
}
