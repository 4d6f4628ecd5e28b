//! Watch responses: a chunked stream of `{"type": ..., "object": ...}` JSON lines, as
//! kube-apiserver's `WatchServer` writes them, ending after `timeoutSeconds`, after an
//! `ERROR` event, or when the client goes away.

use std::time::Duration;

use ::http::{HeaderValue, Response, header};
use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{Value, json};

use super::http::Body;
use super::table::{self, Include};
use crate::api::{ApiError, ResourceInfo};
use crate::storage::{WatchEvent, WatchStream};

/// Upstream's default `--min-request-timeout` (1800 s); each watch gets a random timeout
/// between it and twice it unless the client asks for one.
const MIN_REQUEST_TIMEOUT: u64 = 1800;

/// How the stream should end and what its bookmarks look like.
#[derive(Debug, Clone)]
pub struct WatchParams {
    pub timeout: Duration,
    /// `sendInitialEvents=true`: the bookmark after the replay carries the
    /// `k8s.io/initial-events-end` annotation.
    pub initial_events_end: bool,
    pub api_version: String,
    pub kind: &'static str,
    /// Objects are sent as one-row Tables (`kubectl get -w`), column definitions in the first.
    pub table: Option<(ResourceInfo, Include)>,
}

impl WatchParams {
    pub fn new(info: &ResourceInfo, timeout_seconds: Option<i64>, initial_events: bool) -> Self {
        let timeout = match timeout_seconds {
            Some(seconds) if seconds > 0 => Duration::from_secs(seconds as u64),
            _ => {
                let jitter =
                    u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * MIN_REQUEST_TIMEOUT / 256;
                Duration::from_secs(MIN_REQUEST_TIMEOUT + jitter)
            }
        };
        Self {
            timeout,
            initial_events_end: initial_events,
            api_version: info.api_version(),
            kind: info.kind,
            table: None,
        }
    }
}

/// An event's object as the client asked for it.
fn shaped(object: &Value, params: &WatchParams, first: &mut bool) -> Value {
    match &params.table {
        Some((info, include)) => {
            let metadata = json!({"resourceVersion": object.pointer("/metadata/resourceVersion")});
            let headers = std::mem::take(first);
            table::table(
                info,
                std::slice::from_ref(object),
                metadata,
                *include,
                headers,
            )
        }
        None => object.clone(),
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut bytes =
        serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn bookmark(params: &WatchParams, resource_version: i64, initial_end: bool) -> Value {
    let mut metadata = json!({"resourceVersion": resource_version.to_string()});
    if initial_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": params.kind, "apiVersion": params.api_version, "metadata": metadata})
}

/// Encodes one event; an `ERROR` event ends the stream after it is sent. `first` is true
/// until an object has been sent (Tables carry their column definitions once).
fn encode(event: &WatchEvent, params: &WatchParams, first: &mut bool) -> Bytes {
    match event {
        WatchEvent::Added(object) => line("ADDED", &shaped(object, params, first)),
        WatchEvent::Modified(object) => line("MODIFIED", &shaped(object, params, first)),
        WatchEvent::Deleted(object) => line("DELETED", &shaped(object, params, first)),
        WatchEvent::Bookmark { resource_version } => {
            line("BOOKMARK", &bookmark(params, *resource_version, false))
        }
        WatchEvent::Error(error) => {
            let status = ApiError::from_storage(clone_error(error), Default::default());
            line("ERROR", &status.to_status())
        }
    }
}

/// `StorageError` is not `Clone`; the stream only needs its message and mapping.
fn clone_error(error: &crate::storage::StorageError) -> crate::storage::StorageError {
    use crate::storage::StorageError;
    match error {
        StorageError::Expired {
            prefix,
            requested,
            oldest,
            ..
        } => StorageError::Expired {
            prefix: prefix.clone(),
            requested: *requested,
            oldest: *oldest,
            inconsistent_continue: None,
        },
        other => StorageError::WatchCanceled {
            prefix: String::new(),
            reason: other.to_string(),
        },
    }
}

/// A watch that ends at once with one `ERROR` event carrying `error`'s `Status`.
pub fn error_response(error: &ApiError) -> Response<Body> {
    let mut response = Response::new(super::http::full(line("ERROR", &error.to_status())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The streaming response of a watch. `replayed` events (from `sendInitialEvents`) are sent
/// first, then a bookmark at `initial_revision` marks their end.
pub fn response(
    stream: WatchStream,
    params: WatchParams,
    replay: Vec<WatchEvent>,
    initial_revision: Option<i64>,
) -> Response<Body> {
    let deadline = tokio::time::Instant::now() + params.timeout;
    let mut first = true;
    let head = {
        let params = params.clone();
        let mut lines: Vec<Bytes> = replay
            .iter()
            .map(|event| encode(event, &params, &mut first))
            .collect();
        if let Some(revision) = initial_revision {
            lines.push(line("BOOKMARK", &bookmark(&params, revision, true)));
        }
        futures::stream::iter(lines)
    };
    let live = futures::stream::unfold(
        (Some(stream), params, first),
        move |(stream, params, mut first)| async move {
            let mut stream = stream?;
            match tokio::time::timeout_at(deadline, stream.next()).await {
                Ok(Some(event)) => {
                    let ends = matches!(event, WatchEvent::Error(_));
                    let bytes = encode(&event, &params, &mut first);
                    let stream = if ends { None } else { Some(stream) };
                    Some((bytes, (stream, params, first)))
                }
                Ok(None) | Err(_) => None,
            }
        },
    );
    let body = head
        .chain(live)
        .map(|bytes| Ok::<_, std::convert::Infallible>(Frame::data(bytes)));
    let mut response = Response::new(BodyExt::boxed(StreamBody::new(body)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    response
}
