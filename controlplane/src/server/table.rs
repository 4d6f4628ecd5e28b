//! Server-side printing: `Accept: application/json;as=Table;v=v1;g=meta.k8s.io` answers with a
//! `meta.k8s.io/v1` `Table` whose columns are the ones kube-apiserver's printers produce
//! (`pkg/printers/internalversion`), so `kubectl get` reads as it does upstream. Columns with
//! `priority: 1` are the `-o wide` ones. Resources without a printer get upstream's default
//! `Name` / `Created At` table.

use serde_json::{Value, json};

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

struct Column {
    name: &'static str,
    kind: &'static str,
    priority: u8,
    format: &'static str,
}

const fn column(name: &'static str) -> Column {
    Column {
        name,
        kind: "string",
        priority: 0,
        format: "",
    }
}

const fn wide(name: &'static str) -> Column {
    Column {
        name,
        kind: "string",
        priority: 1,
        format: "",
    }
}

const fn integer(name: &'static str) -> Column {
    Column {
        name,
        kind: "integer",
        priority: 0,
        format: "",
    }
}

const NAME: Column = Column {
    name: "Name",
    kind: "string",
    priority: 0,
    format: "name",
};

fn columns(info: &ResourceInfo) -> Vec<Column> {
    match (info.group, info.plural) {
        ("", "pods") => vec![
            NAME,
            column("Ready"),
            column("Status"),
            column("Restarts"),
            column("Age"),
            wide("IP"),
            wide("Node"),
            wide("Nominated Node"),
            wide("Readiness Gates"),
        ],
        ("apps", "deployments") => vec![
            NAME,
            column("Ready"),
            integer("Up-to-date"),
            integer("Available"),
            column("Age"),
            wide("Containers"),
            wide("Images"),
            wide("Selector"),
        ],
        ("apps", "replicasets") => vec![
            NAME,
            integer("Desired"),
            integer("Current"),
            integer("Ready"),
            column("Age"),
            wide("Containers"),
            wide("Images"),
            wide("Selector"),
        ],
        ("apps", "statefulsets") => vec![
            NAME,
            column("Ready"),
            column("Age"),
            wide("Containers"),
            wide("Images"),
        ],
        ("apps", "daemonsets") => vec![
            NAME,
            integer("Desired"),
            integer("Current"),
            integer("Ready"),
            integer("Up-to-date"),
            integer("Available"),
            column("Node Selector"),
            column("Age"),
            wide("Containers"),
            wide("Images"),
            wide("Selector"),
        ],
        ("", "services") => vec![
            NAME,
            column("Type"),
            column("Cluster-IP"),
            column("External-IP"),
            column("Port(s)"),
            column("Age"),
            wide("Selector"),
        ],
        ("", "nodes") => vec![
            NAME,
            column("Status"),
            column("Roles"),
            column("Age"),
            column("Version"),
            wide("Internal-IP"),
            wide("External-IP"),
            wide("OS-Image"),
            wide("Kernel-Version"),
            wide("Container-Runtime"),
        ],
        ("", "endpoints") => vec![NAME, column("Endpoints"), column("Age")],
        ("discovery.k8s.io", "endpointslices") => vec![
            NAME,
            column("AddressType"),
            column("Ports"),
            column("Endpoints"),
            column("Age"),
        ],
        ("", "namespaces") => vec![NAME, column("Status"), column("Age")],
        ("", "configmaps") => vec![NAME, integer("Data"), column("Age")],
        ("", "secrets") => vec![NAME, column("Type"), integer("Data"), column("Age")],
        ("", "serviceaccounts") => vec![NAME, integer("Secrets"), column("Age")],
        ("", "events") => vec![
            column("Last Seen"),
            column("Type"),
            column("Reason"),
            column("Object"),
            wide("Subobject"),
            wide("Source"),
            column("Message"),
            wide("First Seen"),
            wide("Count"),
            wide("Name"),
        ],
        ("batch", "jobs") => vec![
            NAME,
            column("Status"),
            column("Completions"),
            column("Duration"),
            column("Age"),
            wide("Containers"),
            wide("Images"),
            wide("Selector"),
        ],
        ("batch", "cronjobs") => vec![
            NAME,
            column("Schedule"),
            column("Timezone"),
            column("Suspend"),
            integer("Active"),
            column("Last Schedule"),
            column("Age"),
            wide("Containers"),
            wide("Images"),
            wide("Selector"),
        ],
        ("coordination.k8s.io", "leases") => vec![NAME, column("Holder"), column("Age")],
        ("networking.k8s.io", "ingresses") => vec![
            NAME,
            column("Class"),
            column("Hosts"),
            column("Address"),
            column("Ports"),
            column("Age"),
        ],
        ("networking.k8s.io", "ingressclasses") => vec![
            NAME,
            column("Controller"),
            column("Parameters"),
            column("Age"),
        ],
        ("networking.k8s.io", "networkpolicies") => {
            vec![NAME, column("Pod-Selector"), column("Age")]
        }
        ("", "persistentvolumes") => vec![
            NAME,
            column("Capacity"),
            column("Access Modes"),
            column("Reclaim Policy"),
            column("Status"),
            column("Claim"),
            column("StorageClass"),
            column("VolumeAttributesClass"),
            column("Reason"),
            column("Age"),
            wide("VolumeMode"),
        ],
        ("", "persistentvolumeclaims") => vec![
            NAME,
            column("Status"),
            column("Volume"),
            column("Capacity"),
            column("Access Modes"),
            column("StorageClass"),
            column("VolumeAttributesClass"),
            column("Age"),
            wide("VolumeMode"),
        ],
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => vec![
            NAME,
            column("Role"),
            column("Age"),
            wide("Users"),
            wide("Groups"),
            wide("ServiceAccounts"),
        ],
        _ => vec![
            NAME,
            Column {
                name: "Created At",
                kind: "date",
                priority: 0,
                format: "",
            },
        ],
    }
}

fn str_at<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn int_at(object: &Value, pointer: &str) -> i64 {
    object.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn array_at<'a>(object: &'a Value, pointer: &str) -> &'a [Value] {
    object
        .pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn none_if_empty(text: String) -> Value {
    if text.is_empty() {
        json!("<none>")
    } else {
        json!(text)
    }
}

/// Upstream's `duration.HumanDuration` of the time since `timestamp`.
pub fn age(timestamp: &str) -> String {
    let Ok(then) = timestamp.parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let seconds = jiff::Timestamp::now().as_second() - then.as_second();
    human_duration(seconds)
}

pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    let minutes = seconds / 60;
    let hours = minutes / 60;
    if seconds < 120 {
        format!("{seconds}s")
    } else if minutes < 10 {
        if seconds % 60 == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{}s", seconds % 60)
        }
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        if minutes % 60 == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{}m", minutes % 60)
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        if hours % 24 == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{}h", hours / 24, hours % 24)
        }
    } else if hours < 24 * 365 * 2 {
        format!("{}d", hours / 24)
    } else if hours < 24 * 365 * 8 {
        let days = hours / 24;
        if days % 365 == 0 {
            format!("{}y", days / 365)
        } else {
            format!("{}y{}d", days / 365, days % 365)
        }
    } else {
        format!("{}y", hours / 24 / 365)
    }
}

fn created(object: &Value) -> Value {
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
fn selector_text(selector: &Value) -> String {
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

fn map_text(map: Option<&Value>) -> String {
    map.and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn cells(info: &ResourceInfo, object: &Value) -> Vec<Value> {
    let name = json!(str_at(object, "/metadata/name"));
    match (info.group, info.plural) {
        ("", "pods") => pod_cells(object),
        ("apps", "deployments") => {
            let wide = workload_wide(object, "/spec/template/spec");
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    int_at(object, "/status/readyReplicas"),
                    int_at(object, "/spec/replicas")
                )),
                json!(int_at(object, "/status/updatedReplicas")),
                json!(int_at(object, "/status/availableReplicas")),
                created(object),
            ]
            .into_iter()
            .chain(wide)
            .chain([selector_cell(object, "/spec/selector")])
            .collect()
        }
        ("apps", "replicasets") => {
            let wide = workload_wide(object, "/spec/template/spec");
            vec![
                name,
                json!(int_at(object, "/spec/replicas")),
                json!(int_at(object, "/status/replicas")),
                json!(int_at(object, "/status/readyReplicas")),
                created(object),
            ]
            .into_iter()
            .chain(wide)
            .chain([selector_cell(object, "/spec/selector")])
            .collect()
        }
        ("apps", "statefulsets") => {
            let wide = workload_wide(object, "/spec/template/spec");
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    int_at(object, "/status/readyReplicas"),
                    int_at(object, "/spec/replicas")
                )),
                created(object),
            ]
            .into_iter()
            .chain(wide)
            .collect()
        }
        ("apps", "daemonsets") => {
            let wide = workload_wide(object, "/spec/template/spec");
            vec![
                name,
                json!(int_at(object, "/status/desiredNumberScheduled")),
                json!(int_at(object, "/status/currentNumberScheduled")),
                json!(int_at(object, "/status/numberReady")),
                json!(int_at(object, "/status/updatedNumberScheduled")),
                json!(int_at(object, "/status/numberAvailable")),
                none_if_empty(map_text(object.pointer("/spec/template/spec/nodeSelector"))),
                created(object),
            ]
            .into_iter()
            .chain(wide)
            .chain([selector_cell(object, "/spec/selector")])
            .collect()
        }
        ("", "services") => service_cells(object),
        ("", "nodes") => {
            let ready = array_at(object, "/status/conditions")
                .iter()
                .find(|c| str_at(c, "/type") == "Ready");
            let mut status = match ready.map(|c| str_at(c, "/status")) {
                Some("True") => "Ready".to_owned(),
                Some(_) => "NotReady".to_owned(),
                None => "Unknown".to_owned(),
            };
            if object.pointer("/spec/unschedulable") == Some(&json!(true)) {
                status.push_str(",SchedulingDisabled");
            }
            let mut roles: Vec<String> = object
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .map(|labels| {
                    labels
                        .keys()
                        .filter_map(|key| {
                            key.strip_prefix("node-role.kubernetes.io/")
                                .map(str::to_owned)
                        })
                        .filter(|role| !role.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            roles.sort();
            let address = |kind: &str| {
                array_at(object, "/status/addresses")
                    .iter()
                    .find(|a| str_at(a, "/type") == kind)
                    .map(|a| str_at(a, "/address").to_owned())
                    .unwrap_or_default()
            };
            vec![
                name,
                json!(status),
                none_if_empty(roles.join(",")),
                created(object),
                json!(str_at(object, "/status/nodeInfo/kubeletVersion")),
                none_if_empty(address("InternalIP")),
                none_if_empty(address("ExternalIP")),
                json!(str_at(object, "/status/nodeInfo/osImage")),
                json!(str_at(object, "/status/nodeInfo/kernelVersion")),
                json!(str_at(object, "/status/nodeInfo/containerRuntimeVersion")),
            ]
        }
        ("", "endpoints") => {
            let mut endpoints = Vec::new();
            for subset in array_at(object, "/subsets") {
                for address in array_at(subset, "/addresses") {
                    let ports = array_at(subset, "/ports");
                    if ports.is_empty() {
                        endpoints.push(str_at(address, "/ip").to_owned());
                    }
                    for port in ports {
                        endpoints.push(format!(
                            "{}:{}",
                            str_at(address, "/ip"),
                            int_at(port, "/port")
                        ));
                    }
                }
            }
            vec![name, none_if_empty(abbreviate(&endpoints)), created(object)]
        }
        ("discovery.k8s.io", "endpointslices") => {
            let ports: Vec<String> = array_at(object, "/ports")
                .iter()
                .map(|p| int_at(p, "/port").to_string())
                .collect();
            let addresses: Vec<String> = array_at(object, "/endpoints")
                .iter()
                .flat_map(|e| {
                    array_at(e, "/addresses")
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                })
                .collect();
            vec![
                name,
                json!(str_at(object, "/addressType")),
                if ports.is_empty() {
                    json!("<unset>")
                } else {
                    json!(ports.join(","))
                },
                none_if_empty(abbreviate(&addresses)),
                created(object),
            ]
        }
        ("", "namespaces") => vec![
            name,
            json!(str_at(object, "/status/phase")),
            created(object),
        ],
        ("", "configmaps") => {
            let count = ["/data", "/binaryData"]
                .iter()
                .filter_map(|p| object.pointer(p).and_then(Value::as_object))
                .map(|m| m.len())
                .sum::<usize>();
            vec![name, json!(count), created(object)]
        }
        ("", "secrets") => vec![
            name,
            json!(str_at(object, "/type")),
            json!(
                object
                    .pointer("/data")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len())
            ),
            created(object),
        ],
        ("", "serviceaccounts") => vec![
            name,
            json!(array_at(object, "/secrets").len()),
            created(object),
        ],
        ("", "events") => {
            let last = [
                str_at(object, "/lastTimestamp"),
                str_at(object, "/eventTime"),
                str_at(object, "/metadata/creationTimestamp"),
            ]
            .into_iter()
            .find(|t| !t.is_empty())
            .unwrap_or("");
            let first = [
                str_at(object, "/firstTimestamp"),
                str_at(object, "/eventTime"),
            ]
            .into_iter()
            .find(|t| !t.is_empty())
            .unwrap_or(last);
            let involved = format!(
                "{}/{}",
                str_at(object, "/involvedObject/kind").to_ascii_lowercase(),
                str_at(object, "/involvedObject/name")
            );
            let source = [
                str_at(object, "/source/component"),
                str_at(object, "/reportingComponent"),
            ]
            .into_iter()
            .find(|t| !t.is_empty())
            .unwrap_or("");
            vec![
                json!(age(last)),
                json!(str_at(object, "/type")),
                json!(str_at(object, "/reason")),
                json!(involved),
                json!(str_at(object, "/involvedObject/fieldPath")),
                json!(source),
                json!(str_at(object, "/message").trim()),
                json!(age(first)),
                json!(int_at(object, "/count").max(1)),
                name,
            ]
        }
        ("batch", "jobs") => {
            let conditions = array_at(object, "/status/conditions");
            let has = |kind: &str| {
                conditions
                    .iter()
                    .any(|c| str_at(c, "/type") == kind && str_at(c, "/status") == "True")
            };
            let status = if has("Complete") {
                "Complete"
            } else if has("Failed") {
                "Failed"
            } else if has("Suspended") {
                "Suspended"
            } else if has("FailureTarget") {
                "FailureTarget"
            } else if object.pointer("/metadata/deletionTimestamp").is_some() {
                "Terminating"
            } else {
                "Running"
            };
            let completions = match object.pointer("/spec/completions").and_then(Value::as_i64) {
                Some(wanted) => format!("{}/{wanted}", int_at(object, "/status/succeeded")),
                None => format!(
                    "{}/1 of {}",
                    int_at(object, "/status/succeeded"),
                    int_at(object, "/spec/parallelism").max(1)
                ),
            };
            let duration = match (
                str_at(object, "/status/startTime").parse::<jiff::Timestamp>(),
                str_at(object, "/status/completionTime").parse::<jiff::Timestamp>(),
            ) {
                (Ok(start), Ok(end)) => human_duration(end.as_second() - start.as_second()),
                (Ok(start), Err(_)) => {
                    human_duration(jiff::Timestamp::now().as_second() - start.as_second())
                }
                _ => String::new(),
            };
            let wide = workload_wide(object, "/spec/template/spec");
            vec![
                name,
                json!(status),
                json!(completions),
                json!(duration),
                created(object),
            ]
            .into_iter()
            .chain(wide)
            .chain([selector_cell(object, "/spec/selector")])
            .collect()
        }
        ("batch", "cronjobs") => {
            let wide = workload_wide(object, "/spec/jobTemplate/spec/template/spec");
            let last = str_at(object, "/status/lastScheduleTime");
            vec![
                name,
                json!(str_at(object, "/spec/schedule")),
                none_if_empty(str_at(object, "/spec/timeZone").to_owned()),
                json!(if object.pointer("/spec/suspend") == Some(&json!(true)) {
                    "True"
                } else {
                    "False"
                }),
                json!(array_at(object, "/status/active").len()),
                if last.is_empty() {
                    json!("<none>")
                } else {
                    json!(age(last))
                },
                created(object),
            ]
            .into_iter()
            .chain(wide)
            .chain([selector_cell(object, "/spec/jobTemplate/spec/selector")])
            .collect()
        }
        ("coordination.k8s.io", "leases") => vec![
            name,
            json!(str_at(object, "/spec/holderIdentity")),
            created(object),
        ],
        ("networking.k8s.io", "ingresses") => {
            let hosts: Vec<&str> = array_at(object, "/spec/rules")
                .iter()
                .map(|r| str_at(r, "/host"))
                .filter(|h| !h.is_empty())
                .collect();
            let addresses: Vec<String> = array_at(object, "/status/loadBalancer/ingress")
                .iter()
                .map(|i| {
                    if str_at(i, "/ip").is_empty() {
                        str_at(i, "/hostname").to_owned()
                    } else {
                        str_at(i, "/ip").to_owned()
                    }
                })
                .collect();
            let ports = if array_at(object, "/spec/tls").is_empty() {
                "80"
            } else {
                "80, 443"
            };
            vec![
                name,
                none_if_empty(str_at(object, "/spec/ingressClassName").to_owned()),
                json!(if hosts.is_empty() {
                    "*".to_owned()
                } else {
                    hosts.join(",")
                }),
                json!(addresses.join(",")),
                json!(ports),
                created(object),
            ]
        }
        ("networking.k8s.io", "ingressclasses") => vec![
            name,
            json!(str_at(object, "/spec/controller")),
            none_if_empty(str_at(object, "/spec/parameters/name").to_owned()),
            created(object),
        ],
        ("networking.k8s.io", "networkpolicies") => vec![
            name,
            json!(
                match selector_text(object.pointer("/spec/podSelector").unwrap_or(&Value::Null)) {
                    text if text.is_empty() => "<none>".to_owned(),
                    text => text,
                }
            ),
            created(object),
        ],
        ("", "persistentvolumes") => vec![
            name,
            json!(str_at(object, "/spec/capacity/storage")),
            json!(access_modes(object)),
            json!(str_at(object, "/spec/persistentVolumeReclaimPolicy")),
            json!(str_at(object, "/status/phase")),
            json!(match str_at(object, "/spec/claimRef/name") {
                "" => String::new(),
                claim => format!("{}/{claim}", str_at(object, "/spec/claimRef/namespace")),
            }),
            json!(str_at(object, "/spec/storageClassName")),
            none_if_empty(str_at(object, "/spec/volumeAttributesClassName").to_owned()),
            json!(str_at(object, "/status/reason")),
            created(object),
            json!(str_at(object, "/spec/volumeMode")),
        ],
        ("", "persistentvolumeclaims") => vec![
            name,
            json!(str_at(object, "/status/phase")),
            json!(str_at(object, "/spec/volumeName")),
            json!(str_at(object, "/status/capacity/storage")),
            json!(access_modes(object)),
            json!(str_at(object, "/spec/storageClassName")),
            none_if_empty(str_at(object, "/spec/volumeAttributesClassName").to_owned()),
            created(object),
            json!(str_at(object, "/spec/volumeMode")),
        ],
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => {
            let subjects = |kind: &str| {
                array_at(object, "/subjects")
                    .iter()
                    .filter(|s| str_at(s, "/kind") == kind)
                    .map(|s| {
                        if kind == "ServiceAccount" {
                            format!("{}/{}", str_at(s, "/namespace"), str_at(s, "/name"))
                        } else {
                            str_at(s, "/name").to_owned()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    str_at(object, "/roleRef/kind"),
                    str_at(object, "/roleRef/name")
                )),
                created(object),
                json!(subjects("User")),
                json!(subjects("Group")),
                json!(subjects("ServiceAccount")),
            ]
        }
        _ => vec![name, json!(str_at(object, "/metadata/creationTimestamp"))],
    }
}

fn access_modes(object: &Value) -> String {
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
fn abbreviate(entries: &[String]) -> String {
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

fn service_cells(object: &Value) -> Vec<Value> {
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
            external.extend(
                array_at(object, "/status/loadBalancer/ingress")
                    .iter()
                    .map(|i| {
                        if str_at(i, "/ip").is_empty() {
                            str_at(i, "/hostname").to_owned()
                        } else {
                            str_at(i, "/ip").to_owned()
                        }
                    }),
            );
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

/// Pod `Status` as kubectl shows it (upstream's `printPod`).
fn pod_cells(object: &Value) -> Vec<Value> {
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

    #[test]
    fn human_durations_as_upstream() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 120), "3h2m");
        assert_eq!(human_duration(10 * 3600), "10h");
        assert_eq!(human_duration(3 * 86400 + 3600), "3d1h");
        assert_eq!(human_duration(30 * 86400), "30d");
        assert_eq!(human_duration(3 * 365 * 86400 + 86400), "3y1d");
    }

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
