//! [`Store`]: single-object reads and writes against etcd, each one a transaction guarded by
//! the key's revisions the way kube-apiserver's etcd3 store does it.
//!
//! * create puts only if the key has never been created (`create_revision == 0`);
//! * update puts only if the key exists, and, when the caller's object carries a
//!   resourceVersion, only if it still equals the key's `mod_revision`;
//! * [`Store::guaranteed_update`] and delete compare against the revision they read and, on a
//!   lost race, take the current value from the transaction's `else` branch and go again.
//!
//! Lists live in `list.rs` and watches in `watch.rs`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use etcd_client::{Client, Compare, CompareOp, KeyValue, Txn, TxnOp, TxnOpResponse, TxnResponse};
use serde_json::Value;

use super::object;
use super::{ResourceKey, StorageError};

/// The etcd-backed object store. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct Store {
    pub(crate) client: Client,
    pub(crate) etcd_watches_opened: Arc<AtomicU64>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("etcd_watches_opened", &self.etcd_watches_opened())
            .finish_non_exhaustive()
    }
}

/// Conditions a delete must meet (`DeleteOptions.preconditions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl Preconditions {
    pub fn check(&self, key: &ResourceKey, current: &Value) -> Result<(), StorageError> {
        let failed = |field, expected: &str, actual: &str| StorageError::PreconditionFailed {
            key: key.to_string(),
            field,
            expected: expected.to_owned(),
            actual: actual.to_owned(),
        };
        if let Some(uid) = &self.uid {
            let actual = object::uid(current).unwrap_or_default();
            if uid != actual {
                return Err(failed("UID", uid, actual));
            }
        }
        if let Some(expected) = &self.resource_version {
            let actual = current
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if expected != actual {
                return Err(failed("ResourceVersion", expected, actual));
            }
        }
        Ok(())
    }
}

/// A value read from etcd: its raw bytes (to detect no-op updates) and revision.
struct Current {
    data: Vec<u8>,
    revision: i64,
}

impl Current {
    fn from_kv(kv: &KeyValue) -> Self {
        Self {
            data: kv.value().to_vec(),
            revision: kv.mod_revision(),
        }
    }

    fn object(&self, key: &ResourceKey) -> Result<Value, StorageError> {
        object::decode(key.as_str().as_bytes(), &self.data, self.revision)
    }
}

impl Store {
    /// Connects to etcd at `endpoints` (such as `http://127.0.0.1:2379`).
    pub async fn connect<E: AsRef<str>>(endpoints: &[E]) -> Result<Self, StorageError> {
        let client = Client::connect(endpoints, None).await.map_err(|source| {
            let endpoints: Vec<&str> = endpoints.iter().map(AsRef::as_ref).collect();
            StorageError::etcd("connect", &endpoints.join(","), source)
        })?;
        Ok(Self::new(client))
    }

    /// Wraps an existing etcd client.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            etcd_watches_opened: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How many etcd watch streams this store (and every cache built on it) has opened.
    pub fn etcd_watches_opened(&self) -> u64 {
        self.etcd_watches_opened.load(Ordering::Relaxed)
    }

    /// The current etcd revision (the header revision of a cheap read).
    pub async fn current_revision(&self) -> Result<i64, StorageError> {
        let options = etcd_client::GetOptions::new().with_count_only();
        let response = self
            .client
            .kv_client()
            .get(super::REGISTRY_ROOT, Some(options))
            .await
            .map_err(|source| StorageError::etcd("get", super::REGISTRY_ROOT, source))?;
        Ok(response.header().map_or(0, |header| header.revision()))
    }

    /// Stores a new object; fails with [`StorageError::AlreadyExists`] if the key is taken.
    /// Returns the object as stored, with its new resourceVersion.
    pub async fn create(&self, key: &ResourceKey, object: Value) -> Result<Value, StorageError> {
        if object::resource_version(&object)?.is_some_and(|revision| revision != 0) {
            return Err(StorageError::InvalidObject {
                key: key.to_string(),
                reason: "resourceVersion should not be set on objects to be created".to_owned(),
            });
        }
        let data = object::encode(key.as_str(), object)?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), data.clone(), None)]);
        let response = self.txn("create", key, txn).await?;
        if !response.succeeded() {
            return Err(StorageError::AlreadyExists {
                key: key.to_string(),
            });
        }
        object::decode(key.as_str().as_bytes(), &data, header_revision(&response))
    }

    /// Reads one object.
    pub async fn get(&self, key: &ResourceKey) -> Result<Value, StorageError> {
        self.read(key).await?.object(key)
    }

    /// Replaces an existing object. If `object` carries a resourceVersion, the write only
    /// happens while that is still the key's revision, else [`StorageError::Conflict`].
    pub async fn update(&self, key: &ResourceKey, object: Value) -> Result<Value, StorageError> {
        let expected = object::resource_version(&object)?;
        let data = object::encode(key.as_str(), object)?;
        let mut compares = vec![Compare::version(key.as_str(), CompareOp::Greater, 0)];
        if let Some(revision) = expected {
            compares.push(Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                revision,
            ));
        }
        let txn = Txn::new()
            .when(compares)
            .and_then([TxnOp::put(key.as_str(), data.clone(), None)])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let response = self.txn("update", key, txn).await?;
        if !response.succeeded() {
            return Err(match else_value(&response) {
                None => StorageError::NotFound {
                    key: key.to_string(),
                },
                Some(_) => StorageError::Conflict {
                    key: key.to_string(),
                },
            });
        }
        object::decode(key.as_str().as_bytes(), &data, header_revision(&response))
    }

    /// Reads the object, hands it (with its resourceVersion) to `update`, and writes the
    /// result if the key has not changed meanwhile; otherwise retries with the newer value.
    /// An `update` that returns the object unchanged writes nothing. Errors of `update` end
    /// the loop and are returned as they are.
    pub async fn guaranteed_update<F>(
        &self,
        key: &ResourceKey,
        mut update: F,
    ) -> Result<Value, StorageError>
    where
        F: FnMut(Value) -> Result<Value, StorageError>,
    {
        let mut current = self.read(key).await?;
        loop {
            let updated = update(current.object(key)?)?;
            let data = object::encode(key.as_str(), updated)?;
            if data == current.data {
                return current.object(key);
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    current.revision,
                )])
                .and_then([TxnOp::put(key.as_str(), data.clone(), None)])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let response = self.txn("update", key, txn).await?;
            if response.succeeded() {
                return object::decode(key.as_str().as_bytes(), &data, header_revision(&response));
            }
            log::debug!("guaranteed update of {key} lost a race, retrying");
            current = else_value(&response).ok_or_else(|| StorageError::NotFound {
                key: key.to_string(),
            })?;
        }
    }

    /// Deletes the object if `preconditions` hold. Returns its last state with the
    /// resourceVersion of the delete.
    pub async fn delete(
        &self,
        key: &ResourceKey,
        preconditions: &Preconditions,
    ) -> Result<Value, StorageError> {
        let mut current = self.read(key).await?;
        loop {
            preconditions.check(key, &current.object(key)?)?;
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    current.revision,
                )])
                .and_then([TxnOp::delete(key.as_str(), None)])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let response = self.txn("delete", key, txn).await?;
            if response.succeeded() {
                return object::decode(
                    key.as_str().as_bytes(),
                    &current.data,
                    header_revision(&response),
                );
            }
            log::debug!("delete of {key} lost a race, retrying");
            current = else_value(&response).ok_or_else(|| StorageError::NotFound {
                key: key.to_string(),
            })?;
        }
    }

    async fn read(&self, key: &ResourceKey) -> Result<Current, StorageError> {
        let response = self
            .client
            .kv_client()
            .get(key.as_str(), None)
            .await
            .map_err(|source| StorageError::etcd("get", key.as_str(), source))?;
        response
            .kvs()
            .first()
            .map(Current::from_kv)
            .ok_or_else(|| StorageError::NotFound {
                key: key.to_string(),
            })
    }

    async fn txn(
        &self,
        operation: &'static str,
        key: &ResourceKey,
        txn: Txn,
    ) -> Result<TxnResponse, StorageError> {
        self.client
            .kv_client()
            .txn(txn)
            .await
            .map_err(|source| StorageError::etcd(operation, key.as_str(), source))
    }
}

/// The revision a successful write transaction created.
fn header_revision(response: &TxnResponse) -> i64 {
    response.header().map_or(0, |header| header.revision())
}

/// The value the `else` branch of a failed transaction read, if the key still exists.
fn else_value(response: &TxnResponse) -> Option<Current> {
    response.op_responses().into_iter().find_map(|op| match op {
        TxnOpResponse::Get(get) => get.kvs().first().map(Current::from_kv),
        _ => None,
    })
}
