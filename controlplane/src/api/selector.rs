//! Label selectors and field selectors as upstream parses and applies them
//! (`k8s.io/apimachinery/pkg/labels`, `.../fields`), compiled into one storage
//! [`Predicate`].

use serde_json::Value;

use super::status::ApiError;
use crate::storage::Predicate;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelRequirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl LabelRequirement {
    fn matches(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        let get = |key: &str| {
            labels
                .and_then(|labels| labels.get(key))
                .and_then(Value::as_str)
        };
        match self {
            LabelRequirement::Exists(key) => get(key).is_some(),
            LabelRequirement::NotExists(key) => get(key).is_none(),
            LabelRequirement::Equals(key, value) => get(key) == Some(value.as_str()),
            LabelRequirement::NotEquals(key, value) => get(key) != Some(value.as_str()),
            LabelRequirement::In(key, values) => {
                get(key).is_some_and(|actual| values.iter().any(|value| value == actual))
            }
            LabelRequirement::NotIn(key, values) => {
                get(key).is_none_or(|actual| values.iter().all(|value| value != actual))
            }
        }
    }
}

/// The requirements of a `metav1.LabelSelector` object (`matchLabels` and `matchExpressions`,
/// as upstream's `LabelSelectorAsSelector`): `None` for a missing (null) selector, which
/// selects nothing; an empty one selects everything. An unknown operator selects nothing.
pub fn label_selector(selector: &Value) -> Option<Vec<LabelRequirement>> {
    if selector.is_null() {
        return None;
    }
    let mut requirements = Vec::new();
    for (key, value) in selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        requirements.push(LabelRequirement::Equals(
            key.clone(),
            value.as_str().unwrap_or_default().to_owned(),
        ));
    }
    for expression in selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = expression["key"].as_str().unwrap_or_default().to_owned();
        let values: Vec<String> = expression["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|value| value.as_str().map(str::to_owned))
            .collect();
        requirements.push(match expression["operator"].as_str() {
            Some("In") => LabelRequirement::In(key, values),
            Some("NotIn") => LabelRequirement::NotIn(key, values),
            Some("Exists") => LabelRequirement::Exists(key),
            Some("DoesNotExist") => LabelRequirement::NotExists(key),
            _ => return None,
        });
    }
    Some(requirements)
}

/// Whether `labels` (a `metadata.labels` object, or none) meet every requirement.
pub fn labels_match(
    requirements: &[LabelRequirement],
    labels: Option<&serde_json::Map<String, Value>>,
) -> bool {
    requirements
        .iter()
        .all(|requirement| requirement.matches(labels))
}

/// Parses a `labelSelector` query value.
pub fn parse_labels(text: &str) -> Result<Vec<LabelRequirement>, ApiError> {
    let error = |detail: &str| {
        ApiError::bad_request(format!(
            "unable to parse requirement: {detail} in label selector {text:?}"
        ))
    };
    let mut requirements = Vec::new();
    for term in split_top_level(text) {
        let term = term.trim();
        if term.is_empty() {
            continue;
        }
        let requirement = if let Some(key) = term.strip_prefix('!') {
            LabelRequirement::NotExists(label_key(key.trim()).map_err(|e| error(&e))?)
        } else if let Some((key, values)) = split_set(term, " notin ") {
            LabelRequirement::NotIn(
                label_key(key).map_err(|e| error(&e))?,
                set_values(values).map_err(|e| error(&e))?,
            )
        } else if let Some((key, values)) = split_set(term, " in ") {
            LabelRequirement::In(
                label_key(key).map_err(|e| error(&e))?,
                set_values(values).map_err(|e| error(&e))?,
            )
        } else if let Some((key, value)) = term.split_once("!=") {
            LabelRequirement::NotEquals(
                label_key(key.trim()).map_err(|e| error(&e))?,
                label_value(value.trim()).map_err(|e| error(&e))?,
            )
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            LabelRequirement::Equals(
                label_key(key.trim()).map_err(|e| error(&e))?,
                label_value(value.trim()).map_err(|e| error(&e))?,
            )
        } else {
            LabelRequirement::Exists(label_key(term).map_err(|e| error(&e))?)
        };
        requirements.push(requirement);
    }
    Ok(requirements)
}

/// Splits at commas outside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (position, character) in text.char_indices() {
        match character {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..position]);
                start = position + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn split_set<'a>(term: &'a str, operator: &str) -> Option<(&'a str, &'a str)> {
    let (key, rest) = term.split_once(operator)?;
    Some((key.trim(), rest.trim()))
}

fn set_values(text: &str) -> Result<Vec<String>, String> {
    let inner = text
        .strip_prefix('(')
        .and_then(|rest| rest.strip_suffix(')'))
        .ok_or_else(|| format!("found '{text}', expected: '(' ... ')'"))?;
    inner
        .split(',')
        .map(|value| label_value(value.trim()))
        .collect()
}

fn label_key(key: &str) -> Result<String, String> {
    let name = key.rsplit('/').next().unwrap_or(key);
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(key.to_owned())
    } else {
        Err(format!("invalid label key \"{key}\""))
    }
}

fn label_value(value: &str) -> Result<String, String> {
    let valid = value.is_empty()
        || (value.len() <= 63
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()));
    if valid {
        Ok(value.to_owned())
    } else {
        Err(format!("invalid label value: \"{value}\""))
    }
}

/// One requirement of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    pub field: String,
    pub value: String,
    pub equal: bool,
}

/// Parses a `fieldSelector` for a resource of `kind`, refusing fields upstream does not index.
pub fn parse_fields(text: &str, kind: &str) -> Result<Vec<FieldRequirement>, ApiError> {
    let mut requirements = Vec::new();
    for term in text.split(',') {
        let term = term.trim();
        if term.is_empty() {
            continue;
        }
        let (field, value, equal) = if let Some((field, value)) = term.split_once("!=") {
            (field, value, false)
        } else if let Some((field, value)) = term.split_once("==").or_else(|| term.split_once('='))
        {
            (field, value, true)
        } else {
            return Err(ApiError::bad_request(format!(
                "invalid selector: '{text}'; can't understand '{term}'"
            )));
        };
        let field = field.trim();
        if !supported_field(kind, field) {
            return Err(ApiError::bad_request(format!(
                "field label not supported: {field}"
            )));
        }
        requirements.push(FieldRequirement {
            field: field.to_owned(),
            value: value.trim().to_owned(),
            equal,
        });
    }
    Ok(requirements)
}

/// Fields upstream's `GetAttrs` / field label conversion functions accept, per kind.
fn supported_field(kind: &str, field: &str) -> bool {
    if field == "metadata.name" || field == "metadata.namespace" {
        return true;
    }
    let extra: &[&str] = match kind {
        "Pod" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        "Secret" => &["type"],
        "Node" => &["spec.unschedulable"],
        "Namespace" => &["status.phase"],
        "ReplicaSet" => &["status.replicas"],
        "Job" => &["status.successful"],
        _ => &[],
    };
    extra.contains(&field)
}

/// The value of a selectable field as upstream compares it: a string, `""` when absent,
/// booleans and numbers in their text form. `source` of an event is `source.component`.
pub fn field_value(object: &Value, field: &str) -> String {
    let path = if field == "source" {
        "source.component"
    } else {
        field
    };
    let mut current = object;
    for segment in path.split('.') {
        match current.get(segment) {
            Some(next) => current = next,
            None => {
                return if field == "spec.hostNetwork" || field == "spec.unschedulable" {
                    "false".into()
                } else {
                    String::new()
                };
            }
        }
    }
    match current {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Compiles both selectors into one predicate (`everything` when both are empty).
pub fn predicate(labels: Vec<LabelRequirement>, fields: Vec<FieldRequirement>) -> Predicate {
    if labels.is_empty() && fields.is_empty() {
        return Predicate::everything();
    }
    Predicate::new(move |object| {
        let object_labels = object
            .get("metadata")
            .and_then(|metadata| metadata.get("labels"))
            .and_then(Value::as_object);
        labels
            .iter()
            .all(|requirement| requirement.matches(object_labels))
            && fields.iter().all(|requirement| {
                (field_value(object, &requirement.field) == requirement.value) == requirement.equal
            })
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "default", "labels": labels}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})
    }

    #[test]
    fn every_label_operator() {
        let object = pod(json!({"app": "web", "tier": "front"}));
        let check =
            |selector: &str| predicate(parse_labels(selector).unwrap(), vec![]).matches(&object);
        assert!(check("app=web"));
        assert!(check("app==web,tier"));
        assert!(!check("app!=web"));
        assert!(check("missing!=x"));
        assert!(check("tier in (back, front)"));
        assert!(!check("tier notin (front)"));
        assert!(check("missing notin (front)"));
        assert!(check("!missing"));
        assert!(!check("!app"));
        assert!(check("example.com/missing notin (a,b),app in (web)"));
    }

    #[test]
    fn bad_label_selectors_are_refused() {
        assert!(parse_labels("app in web").is_err());
        assert!(parse_labels("-bad=x").is_err());
        assert_eq!(parse_labels("app=web").unwrap().len(), 1);
    }

    #[test]
    fn field_selectors_per_kind() {
        let object = pod(json!({}));
        let check = |selector: &str| {
            predicate(vec![], parse_fields(selector, "Pod").unwrap()).matches(&object)
        };
        assert!(check("spec.nodeName=n1,status.phase=Running"));
        assert!(check("metadata.name!=other"));
        assert!(!check("spec.nodeName="));
        let error = parse_fields("spec.bogus=1", "Pod").unwrap_err();
        assert_eq!(error.message, "field label not supported: spec.bogus");
        assert!(parse_fields("spec.nodeName=x", "ConfigMap").is_err());
        assert!(parse_fields("involvedObject.name=web", "Event").is_ok());
    }
}
