//! Objects as the store sees them: JSON objects whose `metadata.resourceVersion` is etcd's mod
//! revision.
//!
//! The resourceVersion is never stored: it is stripped before every write (upstream's
//! `PrepareObjectForStorage`, which also drops `selfLink`) and set from the key's revision on
//! every object handed back (upstream's `versioner.UpdateObject`).

use serde_json::{Map, Value};

use super::StorageError;

/// Parses a resourceVersion as the API carries it: `""` is "unset", anything else must be a
/// non-negative integer (`"0"` included).
pub fn parse_resource_version(value: &str) -> Result<Option<i64>, StorageError> {
    if value.is_empty() {
        return Ok(None);
    }
    match value.parse::<i64>() {
        Ok(revision) if revision >= 0 => Ok(Some(revision)),
        _ => Err(StorageError::InvalidResourceVersion {
            value: value.to_owned(),
        }),
    }
}

/// The object's `metadata.resourceVersion`, if it carries a non-empty one.
pub fn resource_version(object: &Value) -> Result<Option<i64>, StorageError> {
    match object.pointer("/metadata/resourceVersion") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(value)) => parse_resource_version(value),
        Some(other) => Err(StorageError::InvalidResourceVersion {
            value: other.to_string(),
        }),
    }
}

/// The object's `metadata.uid`, if any.
pub fn uid(object: &Value) -> Option<&str> {
    object.pointer("/metadata/uid").and_then(Value::as_str)
}

/// Sets `metadata.resourceVersion` (creating `metadata` if needed) to `revision`.
pub fn set_resource_version(object: &mut Value, revision: i64) {
    if let Some(fields) = object.as_object_mut() {
        let metadata = fields
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if !metadata.is_object() {
            *metadata = Value::Object(Map::new());
        }
        if let Some(metadata) = metadata.as_object_mut() {
            metadata.insert(
                "resourceVersion".to_owned(),
                Value::String(revision.to_string()),
            );
        }
    }
}

/// Serializes `object` for etcd, without the fields that are never stored.
pub(crate) fn encode(key: &str, mut object: Value) -> Result<Vec<u8>, StorageError> {
    let Some(fields) = object.as_object_mut() else {
        return Err(StorageError::InvalidObject {
            key: key.to_owned(),
            reason: "object is not a JSON object".to_owned(),
        });
    };
    if let Some(metadata) = fields.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.remove("resourceVersion");
        metadata.remove("selfLink");
    }
    serde_json::to_vec(&object).map_err(|source| StorageError::InvalidObject {
        key: key.to_owned(),
        reason: source.to_string(),
    })
}

/// Parses stored bytes and stamps the revision they were read at.
pub(crate) fn decode(key: &[u8], data: &[u8], revision: i64) -> Result<Value, StorageError> {
    let mut object: Value =
        serde_json::from_slice(data).map_err(|source| StorageError::Decode {
            key: String::from_utf8_lossy(key).into_owned(),
            source,
        })?;
    if !object.is_object() {
        return Err(StorageError::InvalidObject {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: "stored value is not a JSON object".to_owned(),
        });
    }
    set_resource_version(&mut object, revision);
    Ok(object)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn encode_strips_resource_version_and_self_link() {
        let object = json!({
            "metadata": {"name": "a", "resourceVersion": "7", "selfLink": "/x"},
            "spec": {"x": 1}
        });
        let bytes = encode("/registry/pods/ns/a", object).unwrap();
        let stored: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(stored, json!({"metadata": {"name": "a"}, "spec": {"x": 1}}));
    }

    #[test]
    fn decode_sets_revision_as_string() {
        let object = decode(b"/k", br#"{"metadata":{"name":"a"}}"#, 42).unwrap();
        assert_eq!(object["metadata"]["resourceVersion"], "42");
        assert_eq!(resource_version(&object).unwrap(), Some(42));
    }

    #[test]
    fn non_objects_are_rejected() {
        assert!(matches!(
            encode("/k", json!([1, 2])),
            Err(StorageError::InvalidObject { .. })
        ));
        assert!(matches!(
            decode(b"/k", b"[1]", 1),
            Err(StorageError::InvalidObject { .. })
        ));
        assert!(matches!(
            decode(b"/k", b"{nope", 1),
            Err(StorageError::Decode { .. })
        ));
    }

    #[test]
    fn resource_versions_parse_like_the_api() {
        assert_eq!(parse_resource_version("").unwrap(), None);
        assert_eq!(parse_resource_version("0").unwrap(), Some(0));
        assert_eq!(parse_resource_version("15").unwrap(), Some(15));
        assert!(parse_resource_version("-1").is_err());
        assert!(parse_resource_version("abc").is_err());
        assert!(resource_version(&json!({"metadata": {"resourceVersion": 5}})).is_err());
        assert_eq!(resource_version(&json!({"metadata": {}})).unwrap(), None);
    }
}
