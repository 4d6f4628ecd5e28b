//! A container's environment from its pod: `envFrom` sources first, then `env` entries in
//! order, each `$(VAR)`-expanded against those before it, with `valueFrom` resolved from the
//! pod (`fieldRef`, the downward API's fields) and from the ConfigMaps and Secrets it refers to
//! (`configMapKeyRef`, `secretKeyRef`; see [`super::refs`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::runtime::bundle::expand;

use super::refs::PodRefs;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("container {container}: env {name}: unsupported fieldRef fieldPath `{path}`")]
    FieldPath {
        container: String,
        name: String,
        path: String,
    },
    #[error("container {container}: env {name}: resourceFieldRef is not supported yet")]
    ResourceField { container: String, name: String },
    #[error("{message}")]
    Ref { message: String },
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

/// One key of a ConfigMap's or Secret's data; `None` when it may be missing (`optional`).
fn key_value(
    data: Result<BTreeMap<String, Vec<u8>>, String>,
    key: &str,
    optional: Option<bool>,
    kind: &str,
    pod: &Pod,
    name: &str,
) -> Result<Option<String>, EnvError> {
    let optional = optional == Some(true);
    match data {
        Ok(data) => match data.get(key) {
            Some(value) => Ok(Some(String::from_utf8_lossy(value).into_owned())),
            None if optional => Ok(None),
            None => Err(EnvError::Ref {
                message: format!(
                    "couldn't find key {key} in {kind} {}/{name}",
                    pod.metadata.namespace.as_deref().unwrap_or("default")
                ),
            }),
        },
        Err(_) if optional => Ok(None),
        Err(message) => Err(EnvError::Ref { message }),
    }
}

/// The container's `env`, resolved.
pub fn container_env(
    pod: &Pod,
    container: &Container,
    pod_ip: Option<&str>,
    host_ip: Option<&str>,
    refs: &PodRefs,
) -> Result<Vec<(String, String)>, EnvError> {
    let mut resolved: Vec<(String, String)> = Vec::new();
    let mut known: BTreeMap<String, String> = BTreeMap::new();
    let set = |resolved: &mut Vec<(String, String)>, name: &str, value: String| match resolved
        .iter_mut()
        .find(|(n, _)| n == name)
    {
        Some(entry) => entry.1 = value,
        None => resolved.push((name.to_owned(), value)),
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or("");
        let (data, optional) = if let Some(cm) = &from.config_map_ref {
            (refs.config_map(&cm.name), cm.optional == Some(true))
        } else if let Some(secret) = &from.secret_ref {
            (refs.secret(&secret.name), secret.optional == Some(true))
        } else {
            continue;
        };
        match data {
            Ok(data) => {
                for (key, value) in data {
                    let name = format!("{prefix}{key}");
                    let value = String::from_utf8_lossy(&value).into_owned();
                    known.insert(name.clone(), value.clone());
                    set(&mut resolved, &name, value);
                }
            }
            Err(_) if optional => {}
            Err(message) => return Err(EnvError::Ref { message }),
        }
    }
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
                } else if let Some(key) = &from.config_map_key_ref {
                    let data = refs.config_map(&key.name);
                    match key_value(data, &key.key, key.optional, "ConfigMap", pod, &key.name)? {
                        Some(value) => value,
                        None => continue,
                    }
                } else if let Some(key) = &from.secret_key_ref {
                    let data = refs.secret(&key.name);
                    match key_value(data, &key.key, key.optional, "Secret", pod, &key.name)? {
                        Some(value) => value,
                        None => continue,
                    }
                } else {
                    return Err(EnvError::ResourceField {
                        container: container.name.clone(),
                        name: var.name.clone(),
                    });
                }
            }
            (Some(value), None) => expand(value, &known),
            (None, None) => String::new(),
        };
        known.insert(var.name.clone(), value.clone());
        set(&mut resolved, &var.name, value);
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
        let env = container_env(
            &pod,
            container,
            Some("198.18.0.9"),
            None,
            &PodRefs::default(),
        )
        .unwrap();
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

#[cfg(test)]
mod ref_tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    #[test]
    fn config_map_keys_env_from_and_upstream_errors() {
        let pod: Pod = serde_yaml_ng::from_str(
            "metadata: {name: p, namespace: ns}\n\
             spec:\n  containers:\n  - name: c\n    envFrom: [{configMapRef: {name: cfg}, prefix: CFG_}]\n    env:\n\
             \x20   - {name: MODE, valueFrom: {configMapKeyRef: {name: cfg, key: mode}}}\n\
             \x20   - {name: OPT, valueFrom: {configMapKeyRef: {name: nope, key: x, optional: true}}}\n",
        )
        .unwrap();
        let cm: ConfigMap =
            serde_yaml_ng::from_str("metadata: {name: cfg}\ndata: {mode: fast}").unwrap();
        let refs = PodRefs {
            fetched: true,
            config_maps: BTreeMap::from([("cfg".to_owned(), Some(cm)), ("nope".to_owned(), None)]),
            ..PodRefs::default()
        };
        let container = &pod.spec.as_ref().unwrap().containers[0];
        let env = container_env(&pod, container, None, None, &refs).unwrap();
        assert_eq!(
            env,
            [
                ("CFG_mode".to_owned(), "fast".to_owned()),
                ("MODE".to_owned(), "fast".to_owned())
            ]
        );

        let missing = PodRefs {
            fetched: true,
            ..PodRefs::default()
        };
        let error = container_env(&pod, container, None, None, &missing).unwrap_err();
        assert_eq!(error.to_string(), "configmap \"cfg\" not found");
        let error = container_env(&pod, container, None, None, &PodRefs::default()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "configmap \"cfg\": static pods cannot refer to API objects"
        );
    }
}
