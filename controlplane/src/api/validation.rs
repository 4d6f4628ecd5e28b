//! Validation as upstream's `Validate*` functions do it for the fields Keel acts on: names,
//! required fields, enumerations, selectors and immutable fields. Every problem becomes one
//! [`Cause`]; a non-empty list is answered with 422 `Invalid`.

use serde_json::Value;

use super::status::Cause;

const SUBDOMAIN_MESSAGE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MESSAGE: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_MESSAGE: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

fn is_label(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-')
}

pub fn is_subdomain(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_label)
}

fn is_dns1035(text: &str) -> bool {
    is_label(text) && text.starts_with(|c: char| c.is_ascii_lowercase())
}

/// A name check and the message upstream gives when it fails.
type NameRule = (fn(&str) -> bool, &'static str);

/// Which rule a kind's names follow.
fn name_rule(kind: &str) -> Option<NameRule> {
    match kind {
        "Namespace" => Some((is_label, LABEL_MESSAGE)),
        "Service" => Some((is_dns1035, DNS1035_MESSAGE)),
        // RBAC objects only need to be valid path segments.
        "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding" => None,
        _ => Some((is_subdomain, SUBDOMAIN_MESSAGE)),
    }
}

/// Validates a new or updated object of `kind`; `old` is the stored object on update.
pub fn validate(kind: &str, object: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if name.is_empty() {
        causes.push(Cause {
            reason: "FieldValueRequired",
            field: "metadata.name".into(),
            message: "Required value: name or generateName is required".into(),
        });
    } else if let Some((valid, message)) = name_rule(kind) {
        if !valid(name) {
            causes.push(Cause::invalid("metadata.name", &Value::from(name), message));
        }
    } else if name.contains('/') || name.contains('%') || name == "." || name == ".." {
        causes.push(Cause::invalid(
            "metadata.name",
            &Value::from(name),
            "may not contain '/' or '%' and may not be '.' or '..'",
        ));
    }
    let spec = object.get("spec").unwrap_or(&Value::Null);
    match kind {
        "Pod" => pod_spec(spec, "spec", &mut causes),
        "Service" => service_spec(spec, &mut causes),
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => {
            workload(kind, spec, &mut causes)
        }
        "Job" => {
            template_spec(spec, "spec.template", &mut causes);
            let restart = spec
                .pointer("/template/spec/restartPolicy")
                .cloned()
                .unwrap_or(Value::Null);
            if restart != "OnFailure" && restart != "Never" {
                causes.push(Cause::not_supported(
                    "spec.template.spec.restartPolicy",
                    &restart,
                    &["OnFailure", "Never"],
                ));
            }
            super::job::validate_selector(object, old, &mut causes);
        }
        "ConfigMap" | "Secret" => {
            for section in ["data", "binaryData", "stringData"] {
                if let Some(data) = object.get(section).and_then(Value::as_object) {
                    for key in data.keys() {
                        if !is_config_key(key) {
                            causes.push(Cause::invalid(
                                format!("{section}[{key}]"),
                                &Value::from(key.as_str()),
                                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                            ));
                        }
                    }
                }
            }
        }
        _ => {}
    }
    if let Some(old) = old {
        immutable(kind, object, old, &mut causes);
    }
    causes
}

fn is_config_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

fn pod_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    match spec.get("containers").and_then(Value::as_array) {
        Some(containers) if !containers.is_empty() => {
            let mut names = Vec::new();
            for (index, container) in containers.iter().enumerate() {
                let here = format!("{path}.containers[{index}]");
                container_fields(container, &here, &mut names, causes);
            }
            if let Some(init) = spec.get("initContainers").and_then(Value::as_array) {
                for (index, container) in init.iter().enumerate() {
                    let here = format!("{path}.initContainers[{index}]");
                    container_fields(container, &here, &mut names, causes);
                }
            }
        }
        _ => causes.push(Cause::required(format!("{path}.containers"))),
    }
    if let Some(policy) = spec.get("restartPolicy")
        && !["Always", "OnFailure", "Never"].contains(&policy.as_str().unwrap_or(""))
    {
        causes.push(Cause::not_supported(
            format!("{path}.restartPolicy"),
            policy,
            &["Always", "OnFailure", "Never"],
        ));
    }
}

fn container_fields(
    container: &Value,
    path: &str,
    names: &mut Vec<String>,
    causes: &mut Vec<Cause>,
) {
    let name = container.get("name").and_then(Value::as_str).unwrap_or("");
    if name.is_empty() {
        causes.push(Cause::required(format!("{path}.name")));
    } else if !is_label(name) {
        causes.push(Cause::invalid(
            format!("{path}.name"),
            &Value::from(name),
            LABEL_MESSAGE,
        ));
    } else if names.iter().any(|seen| seen == name) {
        causes.push(Cause::duplicate(format!("{path}.name"), &Value::from(name)));
    } else {
        names.push(name.to_owned());
    }
    if container
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim()
        .is_empty()
    {
        causes.push(Cause::required(format!("{path}.image")));
    }
    if let Some(ports) = container.get("ports").and_then(Value::as_array) {
        for (index, port) in ports.iter().enumerate() {
            let number = port
                .get("containerPort")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            if !(1..=65535).contains(&number) {
                causes.push(Cause::invalid(
                    format!("{path}.ports[{index}].containerPort"),
                    port.get("containerPort").unwrap_or(&Value::from(0)),
                    "must be between 1 and 65535, inclusive",
                ));
            }
        }
    }
}

fn template_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    match spec.pointer("/template/spec") {
        Some(pod) => pod_spec(pod, &format!("{path}.spec"), causes),
        None => causes.push(Cause::required(format!("{path}.spec.containers"))),
    }
}

fn workload(kind: &str, spec: &Value, causes: &mut Vec<Cause>) {
    let selector = spec.get("selector");
    let match_labels = selector
        .and_then(|selector| selector.get("matchLabels"))
        .and_then(Value::as_object);
    let has_expressions = selector
        .and_then(|selector| selector.get("matchExpressions"))
        .and_then(Value::as_array)
        .is_some_and(|expressions| !expressions.is_empty());
    if match_labels.is_none_or(|labels| labels.is_empty()) && !has_expressions {
        causes.push(Cause::required("spec.selector"));
    }
    if let Some(replicas) = spec.get("replicas")
        && replicas.as_i64().is_none_or(|count| count < 0)
    {
        causes.push(Cause::invalid(
            "spec.replicas",
            replicas,
            "must be greater than or equal to 0",
        ));
    }
    let labels = spec
        .pointer("/template/metadata/labels")
        .and_then(Value::as_object);
    if let Some(wanted) = match_labels {
        let matches = wanted
            .iter()
            .all(|(key, value)| labels.and_then(|labels| labels.get(key)) == Some(value));
        if !matches {
            causes.push(Cause::invalid(
                "spec.template.metadata.labels",
                &Value::Object(labels.cloned().unwrap_or_default()),
                "`selector` does not match template `labels`",
            ));
        }
    }
    template_spec(spec, "spec.template", causes);
    if kind != "Job"
        && let Some(policy) = spec.pointer("/template/spec/restartPolicy")
        && policy != "Always"
    {
        causes.push(Cause::not_supported(
            "spec.template.spec.restartPolicy",
            policy,
            &["Always"],
        ));
    }
}

fn service_spec(spec: &Value, causes: &mut Vec<Cause>) {
    let kind = spec
        .get("type")
        .cloned()
        .unwrap_or(Value::from("ClusterIP"));
    let types = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
    if !types.contains(&kind.as_str().unwrap_or("")) {
        causes.push(Cause::not_supported("spec.type", &kind, &types));
        return;
    }
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    let ports = spec.get("ports").and_then(Value::as_array);
    if kind != "ExternalName" && !headless && ports.is_none_or(|ports| ports.is_empty()) {
        causes.push(Cause::required("spec.ports"));
    }
    if kind == "ExternalName"
        && spec
            .get("externalName")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty()
    {
        causes.push(Cause::required("spec.externalName"));
    }
    let mut names = Vec::new();
    for (index, port) in ports.into_iter().flatten().enumerate() {
        let number = port.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&number) {
            causes.push(Cause::invalid(
                format!("spec.ports[{index}].port"),
                port.get("port").unwrap_or(&Value::from(0)),
                "must be between 1 and 65535, inclusive",
            ));
        }
        let name = port.get("name").and_then(Value::as_str).unwrap_or("");
        if ports.is_some_and(|ports| ports.len() > 1) && name.is_empty() {
            causes.push(Cause::required(format!("spec.ports[{index}].name")));
        }
        if !name.is_empty() && names.contains(&name) {
            causes.push(Cause::duplicate(
                format!("spec.ports[{index}].name"),
                &Value::from(name),
            ));
        }
        names.push(name);
        let protocol = port.get("protocol").cloned().unwrap_or(Value::from("TCP"));
        if !["TCP", "UDP", "SCTP"].contains(&protocol.as_str().unwrap_or("")) {
            causes.push(Cause::not_supported(
                format!("spec.ports[{index}].protocol"),
                &protocol,
                &["SCTP", "TCP", "UDP"],
            ));
        }
    }
    if let Some(affinity) = spec.get("sessionAffinity")
        && !["None", "ClientIP"].contains(&affinity.as_str().unwrap_or(""))
    {
        causes.push(Cause::not_supported(
            "spec.sessionAffinity",
            affinity,
            &["ClientIP", "None"],
        ));
    }
}

/// Fields that may not change once set.
fn immutable(kind: &str, new: &Value, old: &Value, causes: &mut Vec<Cause>) {
    let unchanged = |pointer: &str| new.pointer(pointer) == old.pointer(pointer);
    match kind {
        "Service" => {
            let old_ip = old
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("");
            let new_ip = new
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("");
            // Changing the type to ExternalName releases the address; otherwise it stays.
            let external =
                new.pointer("/spec/type").and_then(Value::as_str) == Some("ExternalName");
            if !old_ip.is_empty() && new_ip != old_ip && !external {
                causes.push(Cause::invalid(
                    "spec.clusterIPs[0]",
                    &Value::from(new_ip),
                    "may not change once set",
                ));
            }
        }
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job"
            if !unchanged("/spec/selector") =>
        {
            causes.push(Cause::invalid(
                "spec.selector",
                new.pointer("/spec/selector").unwrap_or(&Value::Null),
                "field is immutable",
            ));
        }
        "Pod" => {
            // Only images, activeDeadlineSeconds, tolerations (additions) and
            // terminationGracePeriodSeconds may change in a pod's spec.
            let strip = |object: &Value| {
                let mut spec = object.get("spec").cloned().unwrap_or(Value::Null);
                for list in ["containers", "initContainers", "ephemeralContainers"] {
                    if let Some(Value::Array(items)) = spec.get_mut(list) {
                        for item in items.iter_mut().filter_map(Value::as_object_mut) {
                            item.remove("image");
                        }
                    }
                }
                if let Some(spec) = spec.as_object_mut() {
                    for field in [
                        "activeDeadlineSeconds",
                        "tolerations",
                        "terminationGracePeriodSeconds",
                    ] {
                        spec.remove(field);
                    }
                }
                spec
            };
            if strip(new) != strip(old) {
                causes.push(Cause::forbidden(
                    "spec",
                    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
                ));
            }
        }
        "ConfigMap" | "Secret"
            if old.get("immutable") == Some(&Value::Bool(true))
                && (!unchanged("/data") || !unchanged("/binaryData")) =>
        {
            causes.push(Cause::forbidden(
                "data",
                "field is immutable when `immutable` is set",
            ));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn bad_pod_names_both_fields() {
        let causes = validate(
            "Pod",
            &json!({"metadata": {"name": "Bad_Name"}, "spec": {}}),
            None,
        );
        let fields: Vec<_> = causes.iter().map(|cause| cause.field.as_str()).collect();
        assert_eq!(fields, ["metadata.name", "spec.containers"]);
        assert_eq!(causes[0].reason, "FieldValueInvalid");
        assert_eq!(causes[1].reason, "FieldValueRequired");
    }

    #[test]
    fn deployments_need_matching_selectors() {
        let deployment = json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "other"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let causes = validate("Deployment", &deployment, None);
        assert_eq!(causes.len(), 1);
        assert_eq!(causes[0].field, "spec.template.metadata.labels");
    }

    #[test]
    fn cluster_ip_and_pod_spec_are_immutable() {
        let old = json!({"metadata": {"name": "web"}, "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}});
        let new = json!({"metadata": {"name": "web"}, "spec": {"clusterIP": "10.96.0.11", "ports": [{"port": 80}]}});
        assert_eq!(
            validate("Service", &new, Some(&old))[0].field,
            "spec.clusterIPs[0]"
        );
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "a"}]}});
        let image = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "b"}]}});
        assert!(validate("Pod", &image, Some(&pod)).is_empty());
        let renamed = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "d", "image": "a"}]}});
        assert_eq!(
            validate("Pod", &renamed, Some(&pod))[0].reason,
            "FieldValueForbidden"
        );
    }
}
