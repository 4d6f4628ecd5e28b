//! JSON lookups and the cells several resources share (age, workload columns, selectors).

use serde_json::{Value, json};

use super::duration::age;

pub(super) fn str_at<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or("")
}

pub(super) fn int_at(object: &Value, pointer: &str) -> i64 {
    object.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

pub(super) fn array_at<'a>(object: &'a Value, pointer: &str) -> &'a [Value] {
    object
        .pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

pub(super) fn none_if_empty(text: String) -> Value {
    if text.is_empty() {
        json!("<none>")
    } else {
        json!(text)
    }
}

/// The `Age` cell: time since `metadata.creationTimestamp`.
pub(super) fn created(object: &Value) -> Value {
    json!(age(str_at(object, "/metadata/creationTimestamp")))
}

/// The `Containers` and `Images` cells of a workload whose pod spec is at `pointer`.
fn workload_wide(object: &Value, pointer: &str) -> [Value; 2] {
    let containers = array_at(object, &format!("{pointer}/containers"));
    let names: Vec<&str> = containers.iter().map(|c| str_at(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| str_at(c, "/image")).collect();
    [json!(names.join(",")), json!(images.join(","))]
}

/// A `Selector` cell from the label selector at `pointer`.
fn selector_cell(object: &Value, pointer: &str) -> Value {
    none_if_empty(selector_text(
        object.pointer(pointer).unwrap_or(&Value::Null),
    ))
}

/// `app=web,tier in (a,b)` from a `LabelSelector`.
pub(super) fn selector_text(selector: &Value) -> String {
    let mut parts: Vec<String> = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    for expression in array_at(selector, "/matchExpressions") {
        let key = str_at(expression, "/key");
        let values: Vec<&str> = array_at(expression, "/values")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        parts.push(match str_at(expression, "/operator") {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_owned(),
            "DoesNotExist" => format!("!{key}"),
            other => format!("{key} {other}"),
        });
    }
    parts.join(",")
}

pub(super) fn map_text(map: Option<&Value>) -> String {
    map.and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// A workload's row: `leading` cells, then `Containers` and `Images` of the pod spec at
/// `template`, then the `Selector` at `selector` if the resource shows one.
pub(super) fn with_workload(
    object: &Value,
    leading: Vec<Value>,
    template: &str,
    selector: Option<&str>,
) -> Vec<Value> {
    let mut row = leading;
    row.extend(workload_wide(object, template));
    if let Some(selector) = selector {
        row.push(selector_cell(object, selector));
    }
    row
}

/// Addresses of `status.loadBalancer.ingress` (IP, else host name).
pub(super) fn lb_addresses(object: &Value) -> Vec<String> {
    array_at(object, "/status/loadBalancer/ingress")
        .iter()
        .map(|ingress| match str_at(ingress, "/ip") {
            "" => str_at(ingress, "/hostname").to_owned(),
            ip => ip.to_owned(),
        })
        .collect()
}
