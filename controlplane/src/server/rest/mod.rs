//! The generic REST handlers: get, list, watch, create, update, patch, delete and
//! deletecollection of any catalog resource, with upstream's object semantics (see
//! [`crate::api::meta`]), defaulting, validation and `Status` errors.

use std::sync::Arc;

use ::http::{HeaderMap, Method, Response};
use serde_json::{Value, json};

use super::ApiServer;
use super::http::{self, Body, Query};
use super::patch;
use super::route::ResourcePath;
use super::subresource;
use super::table;
use crate::api::{ApiError, ResourceInfo, Subresource, Target};
use crate::storage::{KeyPrefix, Resource, ResourceKey, StorageError, object};

mod change;
mod delete;
mod read;

use change::patch_object;
pub use change::{check_type, create, update, write};
use delete::delete_collection;
pub use delete::{DeleteOptions, delete};
use read::{list, table_request};

/// One resource request, resolved against the catalog.
#[derive(Debug)]
pub struct Call<'a> {
    pub server: &'a ApiServer,
    pub info: &'a ResourceInfo,
    pub path: ResourcePath,
    pub query: Query,
    /// `Warning` headers for the response (`299 - "..."`).
    pub warnings: std::sync::Mutex<Vec<String>>,
}

impl Call<'_> {
    pub fn target(&self, name: &str) -> Target {
        Target::new(self.info.group, self.info.plural, name)
    }

    fn resource(&self) -> Result<Resource, ApiError> {
        Resource::new(self.info.group, self.info.plural)
            .map_err(|error| ApiError::internal(error.to_string()))
    }

    pub fn key(&self, name: &str) -> Result<ResourceKey, ApiError> {
        let resource = self.resource()?;
        let key = match (&self.path.namespace, self.info.namespaced) {
            (Some(namespace), true) => resource.namespaced_key(namespace, name),
            (None, false) => resource.cluster_key(name),
            _ => return Err(ApiError::no_route()),
        };
        key.map_err(|error| ApiError::bad_request(error.to_string()))
    }

    fn prefix(&self) -> Result<KeyPrefix, ApiError> {
        let resource = self.resource()?;
        match &self.path.namespace {
            Some(namespace) => resource
                .namespace_prefix(namespace)
                .map_err(|error| ApiError::bad_request(error.to_string())),
            None => Ok(resource.prefix()),
        }
    }

    pub fn storage_error(&self, error: StorageError, name: &str) -> ApiError {
        ApiError::from_storage(error, self.target(name))
    }

    pub fn dry_run(&self) -> bool {
        self.query.get("dryRun") == Some("All")
    }

    pub async fn get_object(&self, name: &str) -> Result<Value, ApiError> {
        let key = self.key(name)?;
        self.server
            .store
            .get(&key)
            .await
            .map_err(|error| self.storage_error(error, name))
    }

    /// The stored object and its resourceVersion, read from etcd (the base of a
    /// read-modify-write).
    pub async fn get_versioned(&self, name: &str) -> Result<(Value, i64), ApiError> {
        let current = self.get_object(name).await?;
        let version = object::resource_version(&current)
            .map_err(|error| ApiError::internal(error.to_string()))?
            .unwrap_or(0);
        Ok((current, version))
    }
}

/// Dispatches a resource request.
pub async fn handle(
    server: &Arc<ApiServer>,
    info: &ResourceInfo,
    path: ResourcePath,
    method: &Method,
    query: Query,
    headers: &HeaderMap,
    body: Option<hyper::body::Incoming>,
) -> Result<Response<Body>, ApiError> {
    if info.namespaced
        && path.namespace.is_none()
        && (path.name.is_some() || *method != Method::GET)
    {
        return Err(ApiError::no_route());
    }
    let call = Call {
        server,
        info,
        path,
        query,
        warnings: Default::default(),
    };
    let mut response = route(&call, method, headers, body).await?;
    let warnings = std::mem::take(
        &mut *call
            .warnings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    );
    for warning in warnings {
        let text = format!("299 - {:?}", warning);
        if let Ok(value) = ::http::HeaderValue::from_str(&text) {
            response
                .headers_mut()
                .append(::http::header::WARNING, value);
        }
    }
    Ok(response)
}

async fn route(
    call: &Call<'_>,
    method: &Method,
    headers: &HeaderMap,
    body: Option<hyper::body::Incoming>,
) -> Result<Response<Body>, ApiError> {
    let info = call.info;
    let name = call.path.name.clone();
    let subresource = match &call.path.subresource {
        Some(sub) => Some(info.subresource(sub).ok_or_else(ApiError::no_route)?),
        None => None,
    };
    let watching = call.path.watch || call.query.flag("watch");
    let read_body = |body: Option<hyper::body::Incoming>| async move {
        match body {
            Some(body) => http::read_body(body).await,
            None => Ok(bytes::Bytes::new()),
        }
    };
    match (method.clone(), name, subresource) {
        (Method::GET, None, None) if watching => read::watch(call, headers).await,
        (Method::GET, None, None) => list(call, headers).await,
        (Method::GET, Some(name), None) => {
            let object = call.get_object(&name).await?;
            if let Some(include) = table_request(call, headers) {
                let metadata =
                    json!({"resourceVersion": object.pointer("/metadata/resourceVersion")});
                let table = table::table(call.info, &[object], metadata, include, true);
                return Ok(http::json_with_type(200, &table, table::TABLE_TYPE));
            }
            Ok(http::json(200, &object))
        }
        (Method::POST, None, None) => {
            let bytes = read_body(body).await?;
            let object = decode_body(call, &bytes, headers)?;
            create(call, object).await
        }
        (Method::PUT, Some(name), sub) if matches!(sub, None | Some(Subresource::Status)) => {
            let bytes = read_body(body).await?;
            let object = decode_body(call, &bytes, headers)?;
            let (code, object) = update(call, &name, sub, object).await?;
            Ok(http::json(code, &object))
        }
        (Method::PATCH, Some(name), sub) if matches!(sub, None | Some(Subresource::Status)) => {
            let bytes = read_body(body).await?;
            let kind = patch::PatchKind::from_media_type(&http::media_type(headers))?;
            let object = patch_object(call, &name, sub, kind, &bytes).await?;
            Ok(http::json(200, &object))
        }
        (Method::DELETE, Some(name), None) => {
            let bytes = read_body(body).await?;
            let options = DeleteOptions::parse(&call.query, &bytes, headers)?;
            let (code, object) = delete(call, &name, &options).await?;
            Ok(http::json(code, &object))
        }
        (Method::DELETE, None, None) => {
            let bytes = read_body(body).await?;
            let options = DeleteOptions::parse(&call.query, &bytes, headers)?;
            delete_collection(call, &options).await
        }
        (Method::GET, Some(name), Some(Subresource::Status)) => {
            let object = call.get_object(&name).await?;
            Ok(http::json(200, &object))
        }
        (method, Some(name), Some(sub)) => {
            let bytes = read_body(body).await?;
            subresource::handle(call, &method, &name, sub, headers, &bytes).await
        }
        (method, _, _) => Err(ApiError::method_not_allowed(method.as_str())),
    }
}

/// A request body as JSON: JSON, YAML, or Kubernetes protobuf (decoded against the
/// endpoint's kind, or the subresource's: `Binding`, `Scale`).
pub fn decode_body(call: &Call<'_>, bytes: &[u8], headers: &HeaderMap) -> Result<Value, ApiError> {
    let media_type = http::media_type(headers);
    if media_type != "application/vnd.kubernetes.protobuf" {
        return http::decode(bytes, &media_type);
    }
    let api_version = call.info.api_version();
    let candidates = [
        (
            api_version.as_str(),
            call.info.kind,
            call.info.schema_name.as_str(),
        ),
        ("v1", "Binding", "io.k8s.api.core.v1.Binding"),
        ("autoscaling/v1", "Scale", "io.k8s.api.autoscaling.v1.Scale"),
    ];
    crate::api::protobuf::decode(bytes, &candidates, &call.server.openapi)
        .map_err(|error| ApiError::bad_request(format!("cannot decode the protobuf body: {error}")))
}
