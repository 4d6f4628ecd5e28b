//! `StorageError`: every way a storage call can fail, and the Kubernetes `Status` each one
//! becomes at the REST layer.
//!
//! | variant                      | HTTP | `Status.reason`        | upstream counterpart                          |
//! | ---------------------------- | ---- | ---------------------- | --------------------------------------------- |
//! | `NotFound`                   | 404  | `NotFound`             | `storage.ErrCodeKeyNotFound`                  |
//! | `AlreadyExists`              | 409  | `AlreadyExists`        | `storage.ErrCodeKeyExists`                    |
//! | `Conflict`                   | 409  | `Conflict`             | `storage.ErrCodeResourceVersionConflicts`     |
//! | `PreconditionFailed`         | 409  | `Conflict`             | `storage.ErrCodeInvalidObj` (preconditions)   |
//! | `Expired`                    | 410  | `Expired`              | `errors.NewResourceExpired`                   |
//! | `TooLargeResourceVersion`    | 504  | `Timeout`              | `storage.NewTooLargeResourceVersionError`     |
//! | `InvalidKey`                 | 400  | `BadRequest`           | `prepareKey` errors                           |
//! | `InvalidResourceVersion`     | 400  | `BadRequest`           | "invalid resource version"                    |
//! | `InvalidContinue`            | 400  | `BadRequest`           | "invalid continue token"                      |
//! | `InvalidObject`              | 500  | `InternalError`        | encode / `PrepareObjectForStorage` failures   |
//! | `Decode`                     | 500  | `InternalError`        | decode errors                                 |
//! | `WatchCanceled`              | 500  | `InternalError`        | etcd watch cancelled (not compaction)         |
//! | `Etcd` (unreachable, timeout)| 503  | `ServiceUnavailable`   | etcd client errors                            |
//! | `Etcd` (anything else)       | 500  | `InternalError`        | etcd client errors                            |
//! | `CacheStopped`               | 503  | `ServiceUnavailable`   | cacher not ready / stopped                    |
//!
//! [`StorageError::api_status`] returns the row for an error; the REST layer builds the
//! `Status` object (with its own resource / name wording) from it.

/// What the REST layer needs to turn a [`StorageError`] into a Kubernetes `Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiStatus {
    /// HTTP status code, also `Status.code`.
    pub code: u16,
    /// `Status.reason` (a `metav1.StatusReason`).
    pub reason: &'static str,
}

/// Errors of the etcd store and the watch cache.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The key holds no object.
    #[error("key {key} not found")]
    NotFound { key: String },

    /// `create` found an object under the key already.
    #[error("key {key} already exists")]
    AlreadyExists { key: String },

    /// An update carried a resourceVersion that is no longer the key's mod revision.
    #[error(
        "operation cannot be fulfilled on {key}: the object has been modified; please apply your changes to the latest version and try again"
    )]
    Conflict { key: String },

    /// A delete precondition (uid or resourceVersion) did not match the stored object.
    #[error(
        "precondition failed for {key}: {field} in precondition: {expected}, {field} in object meta: {actual}"
    )]
    PreconditionFailed {
        key: String,
        field: &'static str,
        expected: String,
        actual: String,
    },

    /// The requested revision has been compacted away in etcd, or is older than the watch
    /// cache's event window.
    #[error("{}", expired_message(.prefix, *.requested, *.oldest))]
    Expired {
        prefix: String,
        /// The revision the caller asked for (0 when it came from a continue token).
        requested: i64,
        /// The oldest revision still served, when known.
        oldest: Option<i64>,
        /// For an expired continue token: a token that continues the list at the latest
        /// revision instead (upstream's "inconsistent continue").
        inconsistent_continue: Option<String>,
    },

    /// The caller asked for a revision the cache (or etcd) has not reached in time.
    #[error("too large resource version: {requested}, current: {current} for {prefix}")]
    TooLargeResourceVersion {
        prefix: String,
        requested: i64,
        current: i64,
    },

    /// A name, namespace or resource that cannot form a key.
    #[error("invalid key segment {segment:?}: {reason}")]
    InvalidKey {
        segment: String,
        reason: &'static str,
    },

    /// A resourceVersion string that is not a non-negative integer.
    #[error("invalid resource version {value:?}")]
    InvalidResourceVersion { value: String },

    /// A continue token that this server did not issue or cannot use.
    #[error("invalid continue token: {reason}")]
    InvalidContinue { reason: String },

    /// An object that cannot be stored as given.
    #[error("invalid object for {key}: {reason}")]
    InvalidObject { key: String, reason: String },

    /// Bytes in etcd that are not a JSON object.
    #[error("cannot decode object at {key}")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },

    /// etcd refused or failed the request.
    #[error("etcd {operation} on {key} failed")]
    Etcd {
        operation: &'static str,
        key: String,
        #[source]
        source: etcd_client::Error,
    },

    /// etcd cancelled a watch for a reason other than compaction.
    #[error("etcd cancelled the watch on {prefix}: {reason}")]
    WatchCanceled { prefix: String, reason: String },

    /// The watch cache is re-listing or has been stopped.
    #[error("watch cache for {prefix} is not ready")]
    CacheStopped { prefix: String },
}

fn expired_message(prefix: &str, requested: i64, oldest: Option<i64>) -> String {
    match oldest {
        Some(oldest) => {
            format!("too old resource version: {requested} ({oldest}) for {prefix}")
        }
        None => format!("too old resource version: {requested} for {prefix}"),
    }
}

impl StorageError {
    /// The HTTP code and `Status.reason` this error maps to (see the module docs' table).
    pub fn api_status(&self) -> ApiStatus {
        let (code, reason) = match self {
            StorageError::NotFound { .. } => (404, "NotFound"),
            StorageError::AlreadyExists { .. } => (409, "AlreadyExists"),
            StorageError::Conflict { .. } | StorageError::PreconditionFailed { .. } => {
                (409, "Conflict")
            }
            StorageError::Expired { .. } => (410, "Expired"),
            StorageError::TooLargeResourceVersion { .. } => (504, "Timeout"),
            StorageError::InvalidKey { .. }
            | StorageError::InvalidResourceVersion { .. }
            | StorageError::InvalidContinue { .. } => (400, "BadRequest"),
            StorageError::InvalidObject { .. }
            | StorageError::Decode { .. }
            | StorageError::WatchCanceled { .. } => (500, "InternalError"),
            StorageError::Etcd { source, .. } if is_unavailable(source) => {
                (503, "ServiceUnavailable")
            }
            StorageError::Etcd { .. } => (500, "InternalError"),
            StorageError::CacheStopped { .. } => (503, "ServiceUnavailable"),
        };
        ApiStatus { code, reason }
    }

    pub(crate) fn etcd(operation: &'static str, key: &str, source: etcd_client::Error) -> Self {
        if is_compacted(&source) {
            return StorageError::Expired {
                prefix: key.to_owned(),
                requested: 0,
                oldest: None,
                inconsistent_continue: None,
            };
        }
        StorageError::Etcd {
            operation,
            key: key.to_owned(),
            source,
        }
    }
}

/// etcd's answer to a read at a revision older than its compaction point.
fn is_compacted(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            status.code() == tonic::Code::OutOfRange
                && status
                    .message()
                    .contains("required revision has been compacted")
        }
        _ => false,
    }
}

fn is_unavailable(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_uses_upstream_wording_and_409() {
        let error = StorageError::Conflict {
            key: "/registry/pods/default/web".into(),
        };
        assert!(error.to_string().contains(
            "the object has been modified; please apply your changes to the latest version and try again"
        ));
        assert_eq!(
            error.api_status(),
            ApiStatus {
                code: 409,
                reason: "Conflict"
            }
        );
    }

    #[test]
    fn compacted_grpc_status_becomes_expired() {
        let status =
            tonic::Status::out_of_range("etcdserver: mvcc: required revision has been compacted");
        let error = StorageError::etcd("list", "/registry/pods/", status.into());
        assert!(matches!(error, StorageError::Expired { .. }));
        assert_eq!(error.api_status().code, 410);
        assert_eq!(error.api_status().reason, "Expired");
    }

    #[test]
    fn unreachable_etcd_is_503_and_other_failures_500() {
        let down = StorageError::etcd(
            "get",
            "/registry/pods/default/web",
            tonic::Status::unavailable("connection refused").into(),
        );
        assert_eq!(down.api_status().code, 503);
        let broken = StorageError::etcd(
            "get",
            "/registry/pods/default/web",
            tonic::Status::internal("boom").into(),
        );
        assert_eq!(broken.api_status().code, 500);
    }
}
