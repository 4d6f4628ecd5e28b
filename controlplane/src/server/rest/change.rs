//! Writes: create, update and patch, through one read-modify-write loop with defaulting,
//! validation, field pruning and namespace checks.

use ::http::Response;
use serde_json::{Value, json};

use crate::api::{
    ApiError, Cause, ResourceInfo, Subresource, Target, defaults, job, meta, validation,
};
use crate::server::http::{self, Body};
use crate::server::patch;
use crate::server::subresource;
use crate::storage::{Preconditions, Resource, StorageError, object};

use super::Call;

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
    if (call.info.group, call.info.kind) == ("batch", "Job") {
        job::generate_selector(&mut object);
    }
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
        let (current, current_version) = call.get_versioned(name).await?;
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
        // A binding sets spec.nodeName as upstream's BindingREST does, outside the pod update
        // validation that keeps the rest of a pod's spec immutable.
        let causes = if subresource == Some(Subresource::Binding) {
            Vec::new()
        } else {
            validation::validate(call.info.kind, &new, Some(&current))
        };
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
/// to wait for (upstream's `shouldDeleteDuringUpdate`; for a namespace also its
/// `spec.finalizers`, which only `namespaces/finalize` empties).
fn finished_deleting(object: &Value) -> bool {
    let metadata = object.get("metadata").unwrap_or(&Value::Null);
    let namespace_finalized = object.get("kind").and_then(Value::as_str) != Some("Namespace")
        || object
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
    namespace_finalized
        && metadata.get("deletionTimestamp").is_some()
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

pub(super) async fn patch_object(
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
