//! `metadata` as the API server owns it: what create fills in (uid, creationTimestamp,
//! generateName, generation) and what updates may not change, plus the spec / status split
//! of resources that have a status subresource (upstream's `PrepareForCreate` /
//! `PrepareForUpdate` of the registry strategies, in one generic form).

use serde_json::{Map, Value, json};

use super::catalog::{ResourceInfo, Subresource};

/// `metav1.Time` text for now: RFC 3339, seconds, UTC.
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// `metadata` of an object, created empty if missing or not an object.
pub fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    object["metadata"]
        .as_object_mut()
        .expect("metadata was just made an object")
}

pub fn name(object: &Value) -> &str {
    object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub fn namespace(object: &Value) -> &str {
    object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Characters upstream's `generateName` suffix uses (no vowels, no look-alikes).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// `prefix` + 5 random characters, as `names.SimpleNameGenerator`.
pub fn generate_name(prefix: &str) -> String {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let prefix = &prefix[..prefix.len().min(253 - 5)];
    let mut name = prefix.to_owned();
    for byte in &bytes[..5] {
        name.push(SUFFIX_ALPHABET[usize::from(*byte) % SUFFIX_ALPHABET.len()] as char);
    }
    name
}

/// Fills the system fields of a new object and resets what clients may not set.
pub fn prepare_create(info: &ResourceInfo, object: &mut Value) {
    let metadata = metadata_mut(object);
    if metadata
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
        && let Some(prefix) = metadata.get("generateName").and_then(Value::as_str)
    {
        let generated = generate_name(prefix);
        metadata.insert("name".into(), json!(generated));
    }
    metadata.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
    metadata.insert("creationTimestamp".into(), json!(now()));
    for field in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
        "generation",
    ] {
        metadata.remove(field);
    }
    if info.tracks_generation {
        metadata.insert("generation".into(), json!(1));
    }
    // Nodes keep the status they are created with (upstream's nodeStrategy.PrepareForCreate
    // leaves it alone: a kubelet registers its Node with capacity and conditions).
    let node = info.group.is_empty() && info.plural == "nodes";
    if info.has(Subresource::Status)
        && !node
        && let Some(object) = object.as_object_mut()
    {
        object.remove("status");
    }
}

/// Carries the fields an update may not change from `old` into `new`: uid, creation time,
/// deletion fields, generation (bumped here when the spec changed), and, for a resource with
/// a status subresource, the status (main endpoint) or everything but the status (`/status`).
pub fn prepare_update(
    info: &ResourceInfo,
    new: &mut Value,
    old: &Value,
    subresource: Option<Subresource>,
) {
    if subresource == Some(Subresource::Status) {
        let status = new.get("status").cloned();
        let mut merged = old.clone();
        match status {
            Some(status) => merged["status"] = status,
            None => {
                if let Some(object) = merged.as_object_mut() {
                    object.remove("status");
                }
            }
        }
        // Status updates may not touch metadata other than the resourceVersion precondition
        // (upstream's ResetObjectMetaForStatus keeps labels, annotations, finalizers, owners).
        if let Some(version) = new.pointer("/metadata/resourceVersion").cloned() {
            metadata_mut(&mut merged).insert("resourceVersion".into(), version);
        }
        *new = merged;
        return;
    }
    let old_metadata = old.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let metadata = metadata_mut(new);
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        match old_metadata.get(field) {
            Some(value) => metadata.insert(field.into(), value.clone()),
            None => metadata.remove(field),
        };
    }
    // A binding writes the PodScheduled condition with the node; other writes keep the status.
    if info.has(Subresource::Status) && subresource != Some(Subresource::Binding) {
        match old.get("status") {
            Some(status) => new["status"] = status.clone(),
            None => {
                if let Some(object) = new.as_object_mut() {
                    object.remove("status");
                }
            }
        }
    }
    if info.tracks_generation && spec_changed(new, old) {
        let generation = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        metadata_mut(new).insert("generation".into(), json!(generation + 1));
    }
}

/// Whether anything besides `metadata` and `status` differs.
fn spec_changed(new: &Value, old: &Value) -> bool {
    let strip = |object: &Value| {
        let mut rest = object.as_object().cloned().unwrap_or_default();
        rest.remove("metadata");
        rest.remove("status");
        rest
    };
    strip(new) != strip(old)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::catalog::Catalog;

    #[test]
    fn create_fills_system_fields_and_generated_names() {
        let catalog = Catalog::builtin();
        let deployments = catalog.get("apps", "v1", "deployments").unwrap();
        let mut object = json!({"metadata": {"generateName": "web-", "resourceVersion": "5"}, "status": {"replicas": 3}});
        prepare_create(deployments, &mut object);
        let name = name(&object).to_owned();
        assert!(name.starts_with("web-") && name.len() == 9, "{name}");
        assert_eq!(object["metadata"]["generation"], 1);
        assert!(object["metadata"].get("resourceVersion").is_none());
        assert!(object.get("status").is_none());
        assert!(
            object["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap()
                .ends_with('Z')
        );
    }

    #[test]
    fn generation_moves_with_the_spec_only() {
        let catalog = Catalog::builtin();
        let deployments = catalog.get("apps", "v1", "deployments").unwrap();
        let old = json!({"metadata": {"name": "web", "uid": "u1", "generation": 1}, "spec": {"replicas": 1}, "status": {"replicas": 1}});
        let mut labels_only = json!({"metadata": {"name": "web", "labels": {"a": "b"}}, "spec": {"replicas": 1}, "status": {}});
        prepare_update(deployments, &mut labels_only, &old, None);
        assert_eq!(labels_only["metadata"]["generation"], 1);
        assert_eq!(labels_only["metadata"]["uid"], "u1");
        assert_eq!(
            labels_only["status"]["replicas"], 1,
            "status kept from the stored object"
        );
        let mut scaled = json!({"metadata": {"name": "web"}, "spec": {"replicas": 5}});
        prepare_update(deployments, &mut scaled, &old, None);
        assert_eq!(scaled["metadata"]["generation"], 2);
        let mut status = json!({"metadata": {"name": "web"}, "spec": {"replicas": 9}, "status": {"replicas": 4}});
        prepare_update(deployments, &mut status, &old, Some(Subresource::Status));
        assert_eq!(
            status["spec"]["replicas"], 1,
            "status updates ignore the spec"
        );
        assert_eq!(status["status"]["replicas"], 4);
        assert_eq!(status["metadata"]["generation"], 1);
    }
}
