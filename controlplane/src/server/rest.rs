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
use super::watch::{self, WatchParams};
use crate::api::{
    ApiError, Cause, ResourceInfo, Subresource, Target, defaults, meta, selector, validation,
};
use crate::storage::{
    KeyPrefix, ListOptions, Preconditions, Resource, ResourceKey, ResourceVersionMatch,
    StorageError, WatchOptions, object,
};

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
        (Method::GET, None, None) if watching => watch(call, headers).await,
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

/// Whether the client asked for a Table, and what its rows should carry.
fn table_request(call: &Call<'_>, headers: &HeaderMap) -> Option<table::Include> {
    let accept = headers.get(::http::header::ACCEPT)?.to_str().ok()?;
    table::wanted(accept).then(|| table::Include::parse(call.query.get("includeObject")))
}

/// The label and field selectors of a request as one predicate.
fn predicate(call: &Call<'_>) -> Result<crate::storage::Predicate, ApiError> {
    let labels = selector::parse_labels(call.query.get("labelSelector").unwrap_or(""))?;
    let fields = selector::parse_fields(
        call.query.get("fieldSelector").unwrap_or(""),
        call.info.kind,
    )?;
    Ok(selector::predicate(labels, fields))
}

fn list_options(call: &Call<'_>) -> Result<ListOptions, ApiError> {
    let resource_version_match = match call.query.get("resourceVersionMatch").unwrap_or("") {
        "" => ResourceVersionMatch::Unset,
        "NotOlderThan" => ResourceVersionMatch::NotOlderThan,
        "Exact" => ResourceVersionMatch::Exact,
        other => {
            return Err(ApiError::bad_request(format!(
                "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
            )));
        }
    };
    Ok(ListOptions {
        resource_version: call.query.get("resourceVersion").unwrap_or("").to_owned(),
        resource_version_match,
        limit: call.query.int("limit")?.unwrap_or(0).max(0),
        continue_token: call
            .query
            .get("continue")
            .filter(|token| !token.is_empty())
            .map(str::to_owned),
        predicate: predicate(call)?,
    })
}

async fn list(call: &Call<'_>, headers: &HeaderMap) -> Result<Response<Body>, ApiError> {
    let options = list_options(call)?;
    let prefix = call.prefix()?;
    let cache = call.server.cache(call.info)?;
    let result = cache
        .list(&prefix, &options)
        .await
        .map_err(|error| ApiError::from_storage(error, call.target("")))?;
    let mut metadata = json!({"resourceVersion": result.resource_version.to_string()});
    if let Some(token) = &result.continue_token {
        metadata["continue"] = json!(token);
    }
    if let Some(remaining) = result.remaining_item_count {
        metadata["remainingItemCount"] = json!(remaining);
    }
    let items: Vec<Value> = result.items.iter().map(|item| (**item).clone()).collect();
    if let Some(include) = table_request(call, headers) {
        let table = table::table(call.info, &items, metadata, include, true);
        return Ok(http::json_with_type(200, &table, table::TABLE_TYPE));
    }
    let list = json!({
        "kind": call.info.list_kind,
        "apiVersion": call.info.api_version(),
        "metadata": metadata,
        "items": items,
    });
    Ok(http::json(200, &list))
}

async fn watch(call: &Call<'_>, headers: &HeaderMap) -> Result<Response<Body>, ApiError> {
    let predicate = predicate(call)?;
    let prefix = call.prefix()?;
    let cache = call.server.cache(call.info)?;
    let bookmarks = call.query.flag("allowWatchBookmarks");
    let initial = call.query.flag("sendInitialEvents");
    let mut params = WatchParams::new(call.info, call.query.int("timeoutSeconds")?, initial);
    params.table = table_request(call, headers).map(|include| (call.info.clone(), include));
    let storage = |error| ApiError::from_storage(error, call.target(""));
    if initial {
        // The state as of a list, then every change after it, with the end of the initial
        // events marked by a bookmark (the WatchList protocol).
        let listed = cache
            .list(
                &prefix,
                &ListOptions {
                    resource_version: call.query.get("resourceVersion").unwrap_or("").to_owned(),
                    predicate: predicate.clone(),
                    ..ListOptions::default()
                },
            )
            .await
            .map_err(storage)?;
        let stream = cache
            .watch(
                &prefix,
                &WatchOptions {
                    resource_version: listed.resource_version.to_string(),
                    predicate,
                    bookmarks,
                },
            )
            .await
            .map_err(storage)?;
        let replay = listed
            .items
            .into_iter()
            .map(crate::storage::WatchEvent::Added)
            .collect();
        return Ok(watch::response(
            stream,
            params,
            replay,
            Some(listed.resource_version),
        ));
    }
    let started = cache
        .watch(
            &prefix,
            &WatchOptions {
                resource_version: call.query.get("resourceVersion").unwrap_or("").to_owned(),
                predicate,
                bookmarks,
            },
        )
        .await;
    match started {
        Ok(stream) => Ok(watch::response(stream, params, Vec::new(), None)),
        // Past parsing, a watch fails as upstream's cacher does: a 200 whose only event is
        // an ERROR (clients relist on its 410 rather than retrying the same version).
        Err(error @ StorageError::InvalidResourceVersion { .. }) => Err(storage(error)),
        Err(error) => Ok(watch::error_response(&storage(error))),
    }
}

/// Checks `apiVersion` and `kind` of a request body (filling them when absent).
pub fn check_type(info: &ResourceInfo, object: &mut Value) -> Result<(), ApiError> {
    if !object.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON or YAML object",
        ));
    }
    let api_version = info.api_version();
    match object.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => object["apiVersion"] = json!(api_version),
        Some(given) if given == api_version => {}
        Some(given) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({given}) does not match the expected API version ({api_version})"
            )));
        }
    }
    match object.get("kind").and_then(Value::as_str) {
        None | Some("") => object["kind"] = json!(info.kind),
        Some(given) if given == info.kind => {}
        Some(given) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({given}) does not match the expected kind ({})",
                info.kind
            )));
        }
    }
    Ok(())
}

/// Sets the object's namespace from the path, refusing a different one in the body.
fn check_namespace(call: &Call<'_>, object: &mut Value) -> Result<(), ApiError> {
    let metadata = meta::metadata_mut(object);
    if !call.info.namespaced {
        metadata.remove("namespace");
        return Ok(());
    }
    let wanted = call.path.namespace.clone().unwrap_or_default();
    match metadata.get("namespace").and_then(Value::as_str) {
        None | Some("") => {
            metadata.insert("namespace".into(), json!(wanted));
            Ok(())
        }
        Some(given) if given == wanted => Ok(()),
        Some(_) => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
    }
}

/// New objects need their namespace to exist and not be terminating.
async fn check_namespace_active(call: &Call<'_>, object: &Value) -> Result<(), ApiError> {
    if !call.info.namespaced {
        return Ok(());
    }
    let name = meta::namespace(object);
    let key = Resource::core("namespaces")
        .and_then(|namespaces| namespaces.cluster_key(name))
        .map_err(|error| ApiError::bad_request(error.to_string()))?;
    let namespace = call
        .server
        .store
        .get(&key)
        .await
        .map_err(|error| ApiError::from_storage(error, Target::new("", "namespaces", name)))?;
    if namespace.pointer("/metadata/deletionTimestamp").is_some()
        || namespace.pointer("/status/phase") == Some(&json!("Terminating"))
    {
        return Err(ApiError::forbidden(
            Target::new(call.info.group, call.info.plural, meta::name(object)),
            format!(
                "unable to create new content in namespace {name} because it is being terminated"
            ),
        ));
    }
    Ok(())
}

fn invalid(call: &Call<'_>, object: &Value, causes: Vec<Cause>) -> ApiError {
    ApiError::invalid(call.info.kind, call.target(meta::name(object)), causes)
}

/// Status a resource starts with (upstream's `PrepareForCreate`).
fn initial_status(info: &ResourceInfo, object: &mut Value) {
    match (info.group, info.kind) {
        ("", "Namespace") => object["status"] = json!({"phase": "Active"}),
        ("", "Pod") => {
            let qos = subresource::qos_class(object.get("spec").unwrap_or(&Value::Null));
            object["status"] = json!({"phase": "Pending", "qosClass": qos});
        }
        ("", "Service") => object["status"] = json!({"loadBalancer": {}}),
        ("", "PersistentVolumeClaim") => object["status"] = json!({"phase": "Pending"}),
        ("", "PersistentVolume") => object["status"] = json!({"phase": "Pending"}),
        _ => {}
    }
}

/// Applies `fieldValidation`: fields the kind's schema does not declare are dropped, and
/// reported as warnings (`Warn`, the default), refused (`Strict`) or ignored (`Ignore`).
fn validate_fields(call: &Call<'_>, object: &mut Value) -> Result<(), ApiError> {
    let mode = call.query.get("fieldValidation").unwrap_or("Warn");
    if !["Ignore", "Warn", "Strict"].contains(&mode) {
        return Err(ApiError::bad_request(format!(
            "fieldValidation: Unsupported value: {mode:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
        )));
    }
    let unknown = call.server.openapi.unknown_fields(call.info, object, true);
    if unknown.is_empty() || mode == "Ignore" {
        return Ok(());
    }
    let listed: Vec<String> = unknown
        .iter()
        .map(|field| format!("unknown field \"{field}\""))
        .collect();
    if mode == "Strict" {
        let kind = call.info.kind;
        return Err(ApiError::bad_request(format!(
            "{kind} in version \"{}\" cannot be handled as a {kind}: strict decoding error: {}",
            call.info.version,
            listed.join(", ")
        )));
    }
    call.warnings
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .extend(listed);
    Ok(())
}

pub async fn create(call: &Call<'_>, mut object: Value) -> Result<Response<Body>, ApiError> {
    check_type(call.info, &mut object)?;
    validate_fields(call, &mut object)?;
    check_namespace(call, &mut object)?;
    defaults::apply(call.info.group, call.info.kind, &mut object);
    meta::prepare_create(call.info, &mut object);
    initial_status(call.info, &mut object);
    let causes = validation::validate(call.info.kind, &object, None);
    if !causes.is_empty() {
        return Err(invalid(call, &object, causes));
    }
    check_namespace_active(call, &object).await?;
    let name = meta::name(&object).to_owned();
    let key = call.key(&name)?;
    call.server.allocate(call.info, &mut object, None).await?;
    if call.dry_run() {
        return Ok(http::json(201, &object));
    }
    match call.server.store.create(&key, object.clone()).await {
        Ok(created) => Ok(http::json(201, &created)),
        Err(error) => {
            call.server.release(call.info, &object, None).await;
            Err(call.storage_error(error, &name))
        }
    }
}

/// Replaces an object (or its status). Without a resourceVersion in the body the update is
/// unconditional and retried on conflicts; with one, a stale version is a 409.
pub async fn update(
    call: &Call<'_>,
    name: &str,
    subresource: Option<Subresource>,
    mut object: Value,
) -> Result<(u16, Value), ApiError> {
    check_type(call.info, &mut object)?;
    check_namespace(call, &mut object)?;
    let body_name = meta::name(&object);
    if body_name.is_empty() {
        meta::metadata_mut(&mut object).insert("name".into(), json!(name));
    } else if body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let wanted_version = object::resource_version(&object)
        .map_err(|error| ApiError::bad_request(error.to_string()))?;
    write(call, name, subresource, wanted_version, |_| {
        Ok(object.clone())
    })
    .await
}

/// Read-modify-write of one object: `change` turns the stored object into the new one, which
/// is then prepared, validated and written; lost races are retried unless the caller pinned a
/// resourceVersion.
pub async fn write(
    call: &Call<'_>,
    name: &str,
    subresource: Option<Subresource>,
    pinned_version: Option<i64>,
    mut change: impl FnMut(&Value) -> Result<Value, ApiError>,
) -> Result<(u16, Value), ApiError> {
    let key = call.key(name)?;
    loop {
        let current = call.get_object(name).await?;
        let current_version = object::resource_version(&current)
            .map_err(|error| ApiError::internal(error.to_string()))?
            .unwrap_or(0);
        if pinned_version.is_some_and(|version| version != current_version) {
            return Err(call.storage_error(
                StorageError::Conflict {
                    key: key.to_string(),
                },
                name,
            ));
        }
        let mut new = change(&current)?;
        check_type(call.info, &mut new)?;
        if subresource != Some(Subresource::Status) {
            validate_fields(call, &mut new)?;
        }
        check_namespace(call, &mut new)?;
        if subresource != Some(Subresource::Status) {
            defaults::apply(call.info.group, call.info.kind, &mut new);
        }
        meta::prepare_update(call.info, &mut new, &current, subresource);
        object::set_resource_version(&mut new, current_version);
        let causes = validation::validate(call.info.kind, &new, Some(&current));
        if !causes.is_empty() {
            return Err(invalid(call, &new, causes));
        }
        call.server
            .allocate(call.info, &mut new, Some(&current))
            .await?;
        if call.dry_run() {
            return Ok((200, new));
        }
        if finished_deleting(&new) {
            let preconditions = Preconditions {
                resource_version: Some(current_version.to_string()),
                ..Preconditions::default()
            };
            return match call.server.store.delete(&key, &preconditions).await {
                Ok(deleted) => {
                    call.server.release(call.info, &deleted, None).await;
                    Ok((200, deleted))
                }
                Err(StorageError::Conflict { .. } | StorageError::PreconditionFailed { .. })
                    if pinned_version.is_none() =>
                {
                    continue;
                }
                Err(error) => Err(call.storage_error(error, name)),
            };
        }
        match call.server.store.update(&key, new.clone()).await {
            Ok(updated) => {
                call.server
                    .release(call.info, &current, Some(&updated))
                    .await;
                return Ok((200, updated));
            }
            Err(StorageError::Conflict { .. }) if pinned_version.is_none() => continue,
            Err(error) => {
                call.server.release(call.info, &new, Some(&current)).await;
                return Err(call.storage_error(error, name));
            }
        }
    }
}

/// An object marked for deletion whose last finalizer just went, with no grace period left
/// to wait for (upstream's `shouldDeleteDuringUpdate`).
fn finished_deleting(object: &Value) -> bool {
    let metadata = object.get("metadata").unwrap_or(&Value::Null);
    metadata.get("deletionTimestamp").is_some()
        && metadata
            .get("finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
        && metadata
            .get("deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            == 0
}

async fn patch_object(
    call: &Call<'_>,
    name: &str,
    subresource: Option<Subresource>,
    kind: patch::PatchKind,
    bytes: &[u8],
) -> Result<Value, ApiError> {
    let document = patch::parse(kind, bytes)?;
    let pinned = patch::pinned_version(&document);
    let (_, object) = write(call, name, subresource, pinned, |current| {
        patch::apply(kind, current, &document, call.info.kind)
    })
    .await?;
    Ok(object)
}

/// `DeleteOptions` from the body and the query.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub grace_period: Option<i64>,
    pub propagation: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl DeleteOptions {
    fn parse(query: &Query, bytes: &[u8], headers: &HeaderMap) -> Result<Self, ApiError> {
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            http::decode(bytes, &http::media_type(headers))?
        };
        let mut options = Self {
            grace_period: body.get("gracePeriodSeconds").and_then(Value::as_i64),
            propagation: body
                .get("propagationPolicy")
                .and_then(Value::as_str)
                .map(str::to_owned),
            uid: body
                .pointer("/preconditions/uid")
                .and_then(Value::as_str)
                .map(str::to_owned),
            resource_version: body
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_owned),
        };
        if let Some(grace) = query.int("gracePeriodSeconds")? {
            options.grace_period = Some(grace);
        }
        if let Some(policy) = query.get("propagationPolicy") {
            options.propagation = Some(policy.to_owned());
        }
        if body.get("orphanDependents") == Some(&Value::Bool(true))
            || query.flag("orphanDependents")
        {
            options.propagation.get_or_insert_with(|| "Orphan".into());
        }
        if let Some(policy) = &options.propagation
            && !["Orphan", "Background", "Foreground"].contains(&policy.as_str())
        {
            return Err(ApiError::bad_request(format!(
                "propagationPolicy: Unsupported value: {policy:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
            )));
        }
        Ok(options)
    }
}

/// The grace period a delete waits for: pods bound to a node and still running get theirs
/// (the request's, else `spec.terminationGracePeriodSeconds`); everything else is 0.
fn grace_period(info: &ResourceInfo, object: &Value, requested: Option<i64>) -> i64 {
    if !info.group.is_empty() || info.kind != "Pod" {
        return 0;
    }
    let bound = object
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|node| !node.is_empty());
    let phase = object.pointer("/status/phase").and_then(Value::as_str);
    if !bound || matches!(phase, Some("Succeeded" | "Failed")) {
        return 0;
    }
    requested
        .or_else(|| {
            object
                .pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(30)
        .max(0)
}

/// Deletes an object, or marks it for deletion when finalizers or a grace period hold it.
pub async fn delete(
    call: &Call<'_>,
    name: &str,
    options: &DeleteOptions,
) -> Result<(u16, Value), ApiError> {
    let key = call.key(name)?;
    loop {
        let current = call.get_object(name).await?;
        let version = object::resource_version(&current)
            .map_err(|error| ApiError::internal(error.to_string()))?
            .unwrap_or(0);
        let preconditions = Preconditions {
            uid: options.uid.clone(),
            resource_version: options.resource_version.clone(),
        };
        preconditions
            .check(&key, &current)
            .map_err(|error| call.storage_error(error, name))?;
        let grace = grace_period(call.info, &current, options.grace_period);
        let mut finalizers: Vec<Value> = current
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let propagation_finalizer = match options.propagation.as_deref() {
            Some("Foreground") => Some("foregroundDeletion"),
            Some("Orphan") => Some("orphan"),
            _ => None,
        };
        if let Some(finalizer) = propagation_finalizer
            && !finalizers.contains(&json!(finalizer))
        {
            finalizers.push(json!(finalizer));
        }
        let namespace_finalizers = call.info.kind == "Namespace"
            && current
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|list| !list.is_empty());
        if grace == 0 && finalizers.is_empty() && !namespace_finalizers {
            if call.dry_run() {
                return Ok((200, current));
            }
            let exact = Preconditions {
                resource_version: Some(version.to_string()),
                ..preconditions
            };
            match call.server.store.delete(&key, &exact).await {
                Ok(deleted) => {
                    call.server.release(call.info, &deleted, None).await;
                    return Ok((200, deleted_response(call, &deleted)));
                }
                Err(StorageError::Conflict { .. } | StorageError::PreconditionFailed { .. })
                    if options.resource_version.is_none() =>
                {
                    continue;
                }
                Err(error) => return Err(call.storage_error(error, name)),
            }
        }
        // Graceful or finalized deletion: mark the object and let its owners finish.
        let mut marked = current.clone();
        let metadata = meta::metadata_mut(&mut marked);
        let existing_grace = metadata
            .get("deletionGracePeriodSeconds")
            .and_then(Value::as_i64);
        let already = metadata.contains_key("deletionTimestamp");
        if already
            && existing_grace.is_none_or(|existing| grace >= existing)
            && propagation_finalizer.is_none()
        {
            return Ok((200, current));
        }
        if !already || existing_grace.is_some_and(|existing| grace < existing) {
            let when = jiff::Timestamp::now()
                .checked_add(jiff::SignedDuration::from_secs(grace))
                .unwrap_or_else(|_| jiff::Timestamp::now());
            metadata.insert(
                "deletionTimestamp".into(),
                json!(when.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()),
            );
            metadata.insert("deletionGracePeriodSeconds".into(), json!(grace));
        }
        if !finalizers.is_empty() {
            metadata.insert("finalizers".into(), Value::Array(finalizers));
        }
        if call.info.kind == "Namespace" {
            marked["status"] = json!({"phase": "Terminating"});
        }
        if call.dry_run() {
            return Ok((200, marked));
        }
        match call.server.store.update(&key, marked).await {
            Ok(updated) => return Ok((200, updated)),
            Err(StorageError::Conflict { .. }) if options.resource_version.is_none() => continue,
            Err(error) => return Err(call.storage_error(error, name)),
        }
    }
}

/// What a completed delete answers: the object for resources that return it (Services, as
/// upstream), otherwise a `Status` of success naming it.
fn deleted_response(call: &Call<'_>, deleted: &Value) -> Value {
    if call.info.group.is_empty() && call.info.kind == "Service" {
        return deleted.clone();
    }
    crate::api::status::success(
        &call.target(meta::name(deleted)),
        deleted.pointer("/metadata/uid").and_then(Value::as_str),
    )
}

async fn delete_collection(
    call: &Call<'_>,
    options: &DeleteOptions,
) -> Result<Response<Body>, ApiError> {
    let listed = call
        .server
        .cache(call.info)?
        .list(
            &call.prefix()?,
            &ListOptions {
                predicate: predicate(call)?,
                ..ListOptions::default()
            },
        )
        .await
        .map_err(|error| ApiError::from_storage(error, call.target("")))?;
    let mut items = Vec::new();
    for item in listed.items {
        let namespace = meta::namespace(&item).to_owned();
        let name = meta::name(&item).to_owned();
        let scoped = Call {
            server: call.server,
            info: call.info,
            path: ResourcePath {
                namespace: (!namespace.is_empty()).then_some(namespace),
                ..call.path.clone()
            },
            query: call.query.clone(),
            warnings: Default::default(),
        };
        match delete(&scoped, &name, options).await {
            Ok((_, object)) => items.push(object),
            Err(error) if error.code == 404 => {}
            Err(error) => return Err(error),
        }
    }
    let list = json!({
        "kind": call.info.list_kind,
        "apiVersion": call.info.api_version(),
        "metadata": {"resourceVersion": listed.resource_version.to_string()},
        "items": items,
    });
    Ok(http::json(200, &list))
}
