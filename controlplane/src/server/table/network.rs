//! Cells of Services and the small formatting rules they and volumes share.

use serde_json::{Value, json};

use super::lookup::{array_at, created, int_at, lb_addresses, map_text, none_if_empty, str_at};

pub(super) fn access_modes(object: &Value) -> String {
    array_at(object, "/spec/accessModes")
        .iter()
        .filter_map(Value::as_str)
        .map(|mode| match mode {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// At most three entries, then `+ N more...`, as upstream's `formatEndpoints`.
pub(super) fn abbreviate(entries: &[String]) -> String {
    let mut text = entries
        .iter()
        .take(3)
        .cloned()
        .collect::<Vec<_>>()
        .join(",");
    if entries.len() > 3 {
        text.push_str(&format!(" + {} more...", entries.len() - 3));
    }
    text
}

pub(super) fn service_cells(object: &Value) -> Vec<Value> {
    let kind = str_at(object, "/spec/type");
    let kind = if kind.is_empty() { "ClusterIP" } else { kind };
    let mut external: Vec<String> = array_at(object, "/spec/externalIPs")
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    let external = match kind {
        "ExternalName" => str_at(object, "/spec/externalName").to_owned(),
        "LoadBalancer" => {
            external.extend(lb_addresses(object));
            if external.is_empty() {
                "<pending>".to_owned()
            } else {
                external.join(",")
            }
        }
        _ if external.is_empty() => "<none>".to_owned(),
        _ => external.join(","),
    };
    let ports: Vec<String> = array_at(object, "/spec/ports")
        .iter()
        .map(|port| {
            let protocol = str_at(port, "/protocol");
            let protocol = if protocol.is_empty() { "TCP" } else { protocol };
            match port.get("nodePort").and_then(Value::as_i64) {
                Some(node) if node != 0 => format!("{}:{node}/{protocol}", int_at(port, "/port")),
                _ => format!("{}/{protocol}", int_at(port, "/port")),
            }
        })
        .collect();
    let cluster_ip = match str_at(object, "/spec/clusterIP") {
        "" => "<none>",
        ip => ip,
    };
    vec![
        json!(str_at(object, "/metadata/name")),
        json!(kind),
        json!(cluster_ip),
        json!(external),
        none_if_empty(ports.join(",")),
        created(object),
        none_if_empty(map_text(object.pointer("/spec/selector"))),
    ]
}
