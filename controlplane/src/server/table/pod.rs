//! A Pod's row: `Ready`, `Status` (upstream's `printPod` reasoning), restarts, IP, node.

use serde_json::{Value, json};

use super::lookup::{array_at, created, int_at, none_if_empty, str_at};

/// Pod `Status` as kubectl shows it (upstream's `printPod`).
pub(super) fn pod_cells(object: &Value) -> Vec<Value> {
    let containers = array_at(object, "/spec/containers");
    let statuses = array_at(object, "/status/containerStatuses");
    let init_total = array_at(object, "/spec/initContainers").len();
    let mut reason = str_at(object, "/status/phase").to_owned();
    if !str_at(object, "/status/reason").is_empty() {
        reason = str_at(object, "/status/reason").to_owned();
    }
    let mut restarts = 0;
    let mut initializing = false;
    for (index, status) in array_at(object, "/status/initContainerStatuses")
        .iter()
        .enumerate()
    {
        restarts += int_at(status, "/restartCount");
        let terminated = status.pointer("/state/terminated");
        if terminated.is_some_and(|t| int_at(t, "/exitCode") == 0) {
            continue;
        }
        initializing = true;
        reason = if let Some(terminated) = terminated {
            match str_at(terminated, "/reason") {
                "" => format!("Init:ExitCode:{}", int_at(terminated, "/exitCode")),
                why => format!("Init:{why}"),
            }
        } else {
            match str_at(status, "/state/waiting/reason") {
                "" | "PodInitializing" => format!("Init:{index}/{init_total}"),
                why => format!("Init:{why}"),
            }
        };
        break;
    }
    let mut ready = 0;
    if !initializing {
        restarts = 0;
        let mut has_running = false;
        for status in statuses.iter().rev() {
            restarts += int_at(status, "/restartCount");
            if let Some(why) = status
                .pointer("/state/waiting/reason")
                .and_then(Value::as_str)
                .filter(|why| !why.is_empty())
            {
                reason = why.to_owned();
            } else if let Some(terminated) = status.pointer("/state/terminated") {
                reason = match str_at(terminated, "/reason") {
                    "" if int_at(terminated, "/signal") != 0 => {
                        format!("Signal:{}", int_at(terminated, "/signal"))
                    }
                    "" => format!("ExitCode:{}", int_at(terminated, "/exitCode")),
                    why => why.to_owned(),
                };
            } else if status.pointer("/state/running").is_some()
                && status.get("ready") == Some(&json!(true))
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let conditions = array_at(object, "/status/conditions");
            reason = if conditions
                .iter()
                .any(|c| str_at(c, "/type") == "Ready" && str_at(c, "/status") == "True")
            {
                "Running".into()
            } else {
                "NotReady".into()
            };
        }
    }
    if object.pointer("/metadata/deletionTimestamp").is_some() {
        reason = if str_at(object, "/status/reason") == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    let gates = array_at(object, "/spec/readinessGates");
    let gates_text = if gates.is_empty() {
        "<none>".to_owned()
    } else {
        let conditions = array_at(object, "/status/conditions");
        let true_count = gates
            .iter()
            .filter(|gate| {
                conditions.iter().any(|c| {
                    str_at(c, "/type") == str_at(gate, "/conditionType")
                        && str_at(c, "/status") == "True"
                })
            })
            .count();
        format!("{true_count}/{}", gates.len())
    };
    vec![
        json!(str_at(object, "/metadata/name")),
        json!(format!("{ready}/{}", containers.len())),
        json!(reason),
        json!(restarts),
        created(object),
        none_if_empty(str_at(object, "/status/podIP").to_owned()),
        none_if_empty(str_at(object, "/spec/nodeName").to_owned()),
        none_if_empty(str_at(object, "/status/nominatedNodeName").to_owned()),
        json!(gates_text),
    ]
}
