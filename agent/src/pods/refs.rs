//! The API objects a pod refers to (ConfigMaps and Secrets of its volumes, env, envFrom and
//! imagePullSecrets), fetched before its containers start, and lookups in them with upstream's
//! error wording. Static pods have none (kubelet refuses such references in static pods too).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};

/// What was fetched; `None`: the object does not exist.
#[derive(Debug, Clone, Default)]
pub struct PodRefs {
    /// Whether an API server was asked at all (static pods: no).
    pub fetched: bool,
    pub config_maps: BTreeMap<String, Option<ConfigMap>>,
    pub secrets: BTreeMap<String, Option<Secret>>,
}

/// The names of the ConfigMaps and Secrets `pod` refers to.
pub fn referenced(pod: &Pod) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut config_maps = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    let Some(spec) = &pod.spec else {
        return (config_maps, secrets);
    };
    for volume in spec.volumes.iter().flatten() {
        if let Some(cm) = &volume.config_map {
            config_maps.insert(cm.name.clone());
        }
        if let Some(secret) = volume.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.insert(secret);
        }
        for source in volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
        {
            if let Some(cm) = &source.config_map {
                config_maps.insert(cm.name.clone());
            }
            if let Some(secret) = &source.secret {
                secrets.insert(secret.name.clone());
            }
        }
    }
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers);
    for container in containers {
        for var in container.env.iter().flatten() {
            let Some(from) = &var.value_from else {
                continue;
            };
            if let Some(key) = &from.config_map_key_ref {
                config_maps.insert(key.name.clone());
            }
            if let Some(key) = &from.secret_key_ref {
                secrets.insert(key.name.clone());
            }
        }
        for from in container.env_from.iter().flatten() {
            if let Some(cm) = &from.config_map_ref {
                config_maps.insert(cm.name.clone());
            }
            if let Some(secret) = &from.secret_ref {
                secrets.insert(secret.name.clone());
            }
        }
    }
    for secret in spec.image_pull_secrets.iter().flatten() {
        secrets.insert(secret.name.clone());
    }
    (config_maps, secrets)
}

impl PodRefs {
    fn missing_api(kind: &str, name: &str) -> String {
        format!("{kind} \"{name}\": static pods cannot refer to API objects")
    }

    /// A ConfigMap's data (string and binary keys), or upstream's error.
    pub fn config_map(&self, name: &str) -> Result<BTreeMap<String, Vec<u8>>, String> {
        if !self.fetched {
            return Err(Self::missing_api("configmap", name));
        }
        match self.config_maps.get(name) {
            Some(Some(cm)) => {
                let mut data: BTreeMap<String, Vec<u8>> = cm
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                    .collect();
                data.extend(
                    cm.binary_data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.0.clone())),
                );
                Ok(data)
            }
            _ => Err(format!("configmap \"{name}\" not found")),
        }
    }

    /// A Secret's data, or upstream's error.
    pub fn secret(&self, name: &str) -> Result<BTreeMap<String, Vec<u8>>, String> {
        if !self.fetched {
            return Err(Self::missing_api("secret", name));
        }
        match self.secrets.get(name) {
            Some(Some(secret)) => {
                let mut data: BTreeMap<String, Vec<u8>> = secret
                    .data
                    .iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), v.0.clone()))
                    .collect();
                data.extend(
                    secret
                        .string_data
                        .iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.clone().into_bytes())),
                );
                Ok(data)
            }
            _ => Err(format!("secret \"{name}\" not found")),
        }
    }
}
