//! Row values per resource (upstream's `printX` functions).

use serde_json::{Value, json};

use super::duration::{age, human_duration};
use super::lookup::{
    array_at, created, int_at, lb_addresses, map_text, none_if_empty, selector_text, str_at,
    with_workload,
};
use super::network::{abbreviate, access_modes, service_cells};
use super::pod::pod_cells;
use crate::api::ResourceInfo;

pub(super) fn cells(info: &ResourceInfo, object: &Value) -> Vec<Value> {
    let name = json!(str_at(object, "/metadata/name"));
    match (info.group, info.plural) {
        ("", "pods") => pod_cells(object),
        ("apps", "deployments") => with_workload(
            object,
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
            ],
            "/spec/template/spec",
            Some("/spec/selector"),
        ),
        ("apps", "replicasets") => with_workload(
            object,
            vec![
                name,
                json!(int_at(object, "/spec/replicas")),
                json!(int_at(object, "/status/replicas")),
                json!(int_at(object, "/status/readyReplicas")),
                created(object),
            ],
            "/spec/template/spec",
            Some("/spec/selector"),
        ),
        ("apps", "statefulsets") => with_workload(
            object,
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    int_at(object, "/status/readyReplicas"),
                    int_at(object, "/spec/replicas")
                )),
                created(object),
            ],
            "/spec/template/spec",
            None,
        ),
        ("apps", "daemonsets") => with_workload(
            object,
            vec![
                name,
                json!(int_at(object, "/status/desiredNumberScheduled")),
                json!(int_at(object, "/status/currentNumberScheduled")),
                json!(int_at(object, "/status/numberReady")),
                json!(int_at(object, "/status/updatedNumberScheduled")),
                json!(int_at(object, "/status/numberAvailable")),
                none_if_empty(map_text(object.pointer("/spec/template/spec/nodeSelector"))),
                created(object),
            ],
            "/spec/template/spec",
            Some("/spec/selector"),
        ),
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
            with_workload(
                object,
                vec![
                    name,
                    json!(status),
                    json!(completions),
                    json!(duration),
                    created(object),
                ],
                "/spec/template/spec",
                Some("/spec/selector"),
            )
        }
        ("batch", "cronjobs") => {
            let last = str_at(object, "/status/lastScheduleTime");
            let leading = vec![
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
            ];
            with_workload(
                object,
                leading,
                "/spec/jobTemplate/spec/template/spec",
                Some("/spec/jobTemplate/spec/selector"),
            )
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
            let addresses: Vec<String> = lb_addresses(object);
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
