//! Deletes: `DeleteOptions`, graceful deletion, finalizers and deletecollection.

use ::http::{HeaderMap, Response};
use serde_json::{Value, json};

use crate::api::{ApiError, ResourceInfo, meta};
use crate::server::http::{self, Body, Query};
use crate::server::route::ResourcePath;
use crate::storage::{ListOptions, Preconditions, StorageError};

use super::Call;
use super::read::predicate;

/// `DeleteOptions` from the body and the query.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub grace_period: Option<i64>,
    pub propagation: Option<String>,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl DeleteOptions {
    pub(super) fn parse(
        query: &Query,
        bytes: &[u8],
        headers: &HeaderMap,
    ) -> Result<Self, ApiError> {
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
        let (current, version) = call.get_versioned(name).await?;
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

pub(super) async fn delete_collection(
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
