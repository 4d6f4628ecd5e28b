//! The `meta.k8s.io/v1` Table document and the negotiation that asks for it.

use serde_json::{Value, json};

use super::cells::cells;
use super::columns::columns;
use crate::api::ResourceInfo;

/// The media type of a Table response.
pub const TABLE_TYPE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

/// Whether an `Accept` header asks for a Table (kubectl lists JSON after it as a fallback).
pub fn wanted(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| {
        let params: Vec<&str> = first.split(';').map(str::trim).collect();
        params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")
    })
}

/// What a row carries besides its cells (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn parse(value: Option<&str>) -> Self {
        match value {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

fn row(info: &ResourceInfo, object: &Value, include: Include) -> Value {
    let mut row = json!({"cells": cells(info, object)});
    match include {
        Include::None => {}
        Include::Metadata => {
            row["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": object.get("metadata").cloned().unwrap_or_else(|| json!({})),
            });
        }
        Include::Object => row["object"] = object.clone(),
    }
    row
}

/// A Table of `objects`; `headers` false leaves the column definitions out (watch events
/// after the first).
pub fn table(
    info: &ResourceInfo,
    objects: &[Value],
    list_metadata: Value,
    include: Include,
    headers: bool,
) -> Value {
    let definitions: Vec<Value> = if headers {
        columns(info)
            .iter()
            .map(|column| json!({"name": column.name, "type": column.kind, "format": column.format, "description": "", "priority": column.priority}))
            .collect()
    } else {
        Vec::new()
    };
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_metadata,
        "columnDefinitions": definitions,
        "rows": objects.iter().map(|object| row(info, object, include)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Catalog;
    use serde_json::json;

    #[test]
    fn pod_rows() {
        let catalog = Catalog::builtin();
        let pods = catalog.get("", "v1", "pods").unwrap();
        let pod = json!({"metadata": {"name": "web", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Running", "podIP": "10.244.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 1, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let table = table(pods, &[pod], json!({}), Include::Metadata, true);
        let cells = &table["rows"][0]["cells"];
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], 3);
        assert_eq!(cells[5], "10.244.0.5");
        assert_eq!(table["columnDefinitions"][5]["priority"], 1);
        assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn service_rows() {
        let catalog = Catalog::builtin();
        let services = catalog.get("", "v1", "services").unwrap();
        let service = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.7", "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}], "selector": {"app": "web"}}});
        let cells =
            table(services, &[service], json!({}), Include::None, true)["rows"][0]["cells"].clone();
        assert_eq!(cells[1], "NodePort");
        assert_eq!(cells[3], "<none>");
        assert_eq!(cells[4], "80:30080/TCP");
        assert_eq!(cells[6], "app=web");
    }

    #[test]
    fn accept_headers() {
        assert!(wanted(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wanted("application/json"));
    }
}
