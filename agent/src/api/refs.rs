//! Fetches the ConfigMaps and Secrets a pod refers to ([`crate::pods::refs`]).

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::Api;

use crate::pods::refs::{PodRefs, referenced};

pub async fn fetch(client: &kube::Client, pod: &Pod) -> Result<PodRefs, kube::Error> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let (config_maps, secrets) = referenced(pod);
    let mut refs = PodRefs {
        fetched: true,
        ..PodRefs::default()
    };
    let config_map_api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    for name in config_maps {
        let found = config_map_api.get_opt(&name).await?;
        refs.config_maps.insert(name, found);
    }
    let secret_api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for name in secrets {
        let found = secret_api.get_opt(&name).await?;
        refs.secrets.insert(name, found);
    }
    Ok(refs)
}
