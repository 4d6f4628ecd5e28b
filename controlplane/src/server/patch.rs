//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge
//! patch, the Kubernetes variant that merges lists of objects by a key (containers by `name`,
//! volume mounts by `mountPath`, ...) and understands the `$patch`, `$retainKeys`,
//! `$setElementOrder/` and `$deleteFromPrimitiveList/` directives. The merge keys are
//! upstream's `patchMergeKey` tags of the built-in types.

use serde_json::{Map, Value};

use crate::api::ApiError;
use crate::storage::object;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    Strategic,
}

impl PatchKind {
    pub fn from_media_type(media_type: &str) -> Result<Self, ApiError> {
        match media_type {
            "application/merge-patch+json" => Ok(Self::Merge),
            "application/json-patch+json" => Ok(Self::Json),
            "application/strategic-merge-patch+json" => Ok(Self::Strategic),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }
}

pub fn parse(kind: PatchKind, bytes: &[u8]) -> Result<Value, ApiError> {
    let document: Value = serde_json::from_slice(bytes)
        .map_err(|error| ApiError::bad_request(format!("error decoding patch: {error}")))?;
    match kind {
        PatchKind::Json if !document.is_array() => Err(ApiError::bad_request(
            "json patch must be an array of operations",
        )),
        PatchKind::Merge | PatchKind::Strategic if !document.is_object() => {
            Err(ApiError::bad_request("merge patch must be a JSON object"))
        }
        _ => Ok(document),
    }
}

/// The resourceVersion a merge-style patch pins (optimistic concurrency), if any.
pub fn pinned_version(document: &Value) -> Option<i64> {
    document
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|text| object::parse_resource_version(text).ok().flatten())
}

/// Applies a parsed patch to `current` (an object of `kind`).
pub fn apply(
    kind: PatchKind,
    current: &Value,
    document: &Value,
    _object_kind: &str,
) -> Result<Value, ApiError> {
    let mut patched = current.clone();
    match kind {
        PatchKind::Merge => json_patch::merge(&mut patched, document),
        PatchKind::Json => {
            let operations: json_patch::Patch = serde_json::from_value(document.clone())
                .map_err(|error| ApiError::bad_request(format!("invalid json patch: {error}")))?;
            json_patch::patch(&mut patched, &operations).map_err(|error| {
                ApiError::bad_request(format!("the json patch could not be applied: {error}"))
            })?;
        }
        PatchKind::Strategic => {
            patched = strategic(current, document, "")?;
        }
    }
    Ok(patched)
}

/// The merge key of a list field, given the field's name and its parent's path.
fn merge_key(parent: &str, field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        "conditions" | "addresses" => "type",
        "ownerReferences" => "uid",
        "ports" if parent.contains("ontainers") => "containerPort",
        "ports" if parent == ".spec" => "port",
        _ => return None,
    })
}

/// Primitive lists that merge (set union) instead of being replaced.
fn merges_primitives(parent: &str, field: &str) -> bool {
    parent == ".metadata" && field == "finalizers"
}

fn strategic(original: &Value, patch: &Value, path: &str) -> Result<Value, ApiError> {
    let (Some(original_map), Some(patch_map)) = (original.as_object(), patch.as_object()) else {
        return Ok(patch.clone());
    };
    match patch_map.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = patch_map.clone();
            replaced.remove("$patch");
            return Ok(Value::Object(strip_directives(replaced)));
        }
        Some("delete") => return Ok(Value::Null),
        Some("merge") | None => {}
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown patch directive $patch: {other}"
            )));
        }
    }
    let mut result = original_map.clone();
    if let Some(keep) = patch_map.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        result.retain(|key, _| keep.contains(&key.as_str()));
    }
    for (key, value) in patch_map {
        if key == "$patch" || key == "$retainKeys" || key.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Some(remove)) =
                (result.get_mut(field), value.as_array())
            {
                items.retain(|item| !remove.contains(item));
            }
            continue;
        }
        let child_path = format!("{path}.{key}");
        match value {
            Value::Null => {
                result.remove(key);
            }
            Value::Object(_) => {
                let merged =
                    strategic(result.get(key).unwrap_or(&Value::Null), value, &child_path)?;
                if merged.is_null() {
                    result.remove(key);
                } else {
                    result.insert(key.clone(), merged);
                }
            }
            Value::Array(items) => {
                let existing = result.get(key).and_then(Value::as_array);
                let merged = if let Some(merge_key) = merge_key(path, key) {
                    merge_list(
                        existing.map(Vec::as_slice).unwrap_or(&[]),
                        items,
                        merge_key,
                        &child_path,
                    )?
                } else if merges_primitives(path, key) {
                    let mut union = existing.cloned().unwrap_or_default();
                    for item in items {
                        if !union.contains(item) {
                            union.push(item.clone());
                        }
                    }
                    union
                } else {
                    items.iter().cloned().map(strip_value).collect()
                };
                result.insert(key.clone(), Value::Array(merged));
            }
            other => {
                result.insert(key.clone(), other.clone());
            }
        }
    }
    Ok(Value::Object(result))
}

fn merge_list(
    original: &[Value],
    patch: &[Value],
    key: &str,
    path: &str,
) -> Result<Vec<Value>, ApiError> {
    let mut result: Vec<Value> = original.to_vec();
    for item in patch {
        let Some(id) = item.get(key) else {
            return Err(ApiError::bad_request(format!(
                "map in {path} is missing its merge key {key:?}"
            )));
        };
        let position = result
            .iter()
            .position(|existing| existing.get(key) == Some(id));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(position), true) => {
                result.remove(position);
            }
            (None, true) => {}
            (Some(position), false) => {
                let merged = strategic(&result[position], item, path)?;
                result[position] = merged;
            }
            (None, false) => result.push(strip_value(item.clone())),
        }
    }
    Ok(result)
}

fn strip_value(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(strip_directives(map)),
        other => other,
    }
}

/// Removes directive keys from a map that is inserted as a whole.
fn strip_directives(map: Map<String, Value>) -> Map<String, Value> {
    map.into_iter()
        .filter(|(key, _)| !key.starts_with('$'))
        .map(|(key, value)| (key, strip_value(value)))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deployment() -> Value {
        json!({"metadata": {"name": "web", "labels": {"app": "web"}, "finalizers": ["a"]},
               "spec": {"replicas": 1, "template": {"spec": {"containers": [
                   {"name": "web", "image": "nginx:1", "env": [{"name": "A", "value": "1"}]},
                   {"name": "side", "image": "busybox"}]}}}})
    }

    #[test]
    fn strategic_merges_containers_by_name() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "web", "image": "nginx:2", "env": [{"name": "B", "value": "2"}]}]}}}});
        let patched = apply(PatchKind::Strategic, &deployment(), &patch, "Deployment").unwrap();
        let containers = patched.pointer("/spec/template/spec/containers").unwrap();
        assert_eq!(containers.as_array().unwrap().len(), 2);
        assert_eq!(containers[0]["image"], "nginx:2");
        assert_eq!(containers[0]["env"].as_array().unwrap().len(), 2);
        assert_eq!(containers[1]["name"], "side");
    }

    #[test]
    fn strategic_directives() {
        let patch = json!({"metadata": {"labels": {"app": null}, "finalizers": ["b"]},
            "spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}],
            "$setElementOrder/containers": [{"name": "web"}]}}}});
        let patched = apply(PatchKind::Strategic, &deployment(), &patch, "Deployment").unwrap();
        assert!(patched.pointer("/metadata/labels/app").is_none());
        assert_eq!(patched["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(
            patched
                .pointer("/spec/template/spec/containers")
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert!(
            patched
                .pointer("/spec/template/spec/$setElementOrder~1containers")
                .is_none()
        );
        let replace = json!({"spec": {"template": {"spec": {"$patch": "replace", "containers": [{"name": "x", "image": "y"}]}}}});
        let replaced = apply(PatchKind::Strategic, &deployment(), &replace, "Deployment").unwrap();
        assert_eq!(
            replaced.pointer("/spec/template/spec").unwrap(),
            &json!({"containers": [{"name": "x", "image": "y"}]})
        );
    }

    #[test]
    fn merge_and_json_patches() {
        let merged = apply(
            PatchKind::Merge,
            &deployment(),
            &json!({"spec": {"replicas": 5}}),
            "Deployment",
        )
        .unwrap();
        assert_eq!(merged["spec"]["replicas"], 5);
        let ops = json!([{"op": "replace", "path": "/spec/replicas", "value": 3}]);
        let patched = apply(PatchKind::Json, &deployment(), &ops, "Deployment").unwrap();
        assert_eq!(patched["spec"]["replicas"], 3);
        let bad = json!([{"op": "test", "path": "/spec/replicas", "value": 9}]);
        assert_eq!(
            apply(PatchKind::Json, &deployment(), &bad, "Deployment")
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            PatchKind::from_media_type("text/plain").unwrap_err().code,
            415
        );
    }
}
