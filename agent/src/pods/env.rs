//! A container's environment from its pod: `env` entries in order, each `$(VAR)`-expanded
//! against those before it, with `valueFrom.fieldRef` resolved from the pod (the downward API's
//! fields). `configMapKeyRef` / `secretKeyRef` need the API and are reported as unsupported
//! until the agent has a client.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::runtime::bundle::expand;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("container {container}: env {name}: unsupported fieldRef fieldPath `{path}`")]
    FieldPath {
        container: String,
        name: String,
        path: String,
    },
    #[error(
        "container {container}: env {name}: {what} needs the API server, which this agent has no connection to"
    )]
    NeedsApi {
        container: String,
        name: String,
        what: &'static str,
    },
}

/// The value of a downward-API field path of `pod` (`metadata.name`, `status.podIP`,
/// `metadata.labels['app']`, ...).
pub fn field_value(
    pod: &Pod,
    pod_ip: Option<&str>,
    host_ip: Option<&str>,
    path: &str,
) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| -> Option<Option<String>> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(
            map.and_then(|m| m.get(key))
                .cloned()
                .or(Some(String::new())),
        )
    };
    if let Some(value) = keyed("metadata.labels['", meta.labels.as_ref()) {
        return value;
    }
    if let Some(value) = keyed("metadata.annotations['", meta.annotations.as_ref()) {
        return value;
    }
    match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => Some(
            spec.and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".to_owned()),
        ),
        "status.podIP" | "status.podIPs" => Some(pod_ip.unwrap_or_default().to_owned()),
        "status.hostIP" | "status.hostIPs" => Some(host_ip.unwrap_or_default().to_owned()),
        _ => None,
    }
}

/// The container's `env`, resolved.
pub fn container_env(
    pod: &Pod,
    container: &Container,
    pod_ip: Option<&str>,
    host_ip: Option<&str>,
) -> Result<Vec<(String, String)>, EnvError> {
    let mut resolved: Vec<(String, String)> = Vec::new();
    let mut known: BTreeMap<String, String> = BTreeMap::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                if let Some(field) = &from.field_ref {
                    field_value(pod, pod_ip, host_ip, &field.field_path).ok_or_else(|| {
                        EnvError::FieldPath {
                            container: container.name.clone(),
                            name: var.name.clone(),
                            path: field.field_path.clone(),
                        }
                    })?
                } else {
                    let what = if from.config_map_key_ref.is_some() {
                        "configMapKeyRef"
                    } else if from.secret_key_ref.is_some() {
                        "secretKeyRef"
                    } else {
                        "resourceFieldRef"
                    };
                    return Err(EnvError::NeedsApi {
                        container: container.name.clone(),
                        name: var.name.clone(),
                        what,
                    });
                }
            }
            (Some(value), None) => expand(value, &known),
            (None, None) => String::new(),
        };
        known.insert(var.name.clone(), value.clone());
        match resolved.iter_mut().find(|(name, _)| *name == var.name) {
            Some(entry) => entry.1 = value,
            None => resolved.push((var.name.clone(), value)),
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_field_refs_and_expansion() {
        let pod: Pod = serde_yaml_ng::from_str(
            "metadata: {name: p, namespace: ns, labels: {app: web}}\n\
             spec:\n  nodeName: n1\n  containers:\n  - name: c\n    env:\n\
             \x20   - {name: A, value: one}\n\
             \x20   - {name: B, value: '$(A)-two'}\n\
             \x20   - {name: POD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}\n\
             \x20   - {name: IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}\n\
             \x20   - {name: APP, valueFrom: {fieldRef: {fieldPath: \"metadata.labels['app']\"}}}\n",
        )
        .unwrap();
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let env = container_env(&pod, container, Some("198.18.0.9"), None).unwrap();
        let pairs: Vec<(&str, &str)> = env.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("A", "one"),
                ("B", "one-two"),
                ("POD", "p"),
                ("IP", "198.18.0.9"),
                ("APP", "web")
            ]
        );
    }
}
