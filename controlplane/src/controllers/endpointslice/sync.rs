//! The reconcile of one Service (upstream's `syncService` and the reconciler's `Reconcile` /
//! `finalize`): pods from the cache, the Service's managed slices listed live (a consistent
//! list, so a slice written by the previous pass is never missed and duplicated), then the
//! planned creates, updates and deletes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource as _, ResourceExt as _};

use super::plan::{self, EndpointKey, EndpointSet, Input};
use super::{Context, MANAGER, desired, endpoints};

/// Why a pass over a Service did not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{verb} endpointslices of service {namespace}/{service} failed")]
    Slices {
        verb: &'static str,
        namespace: String,
        service: String,
        #[source]
        source: kube::Error,
    },
    #[error("{verb} endpoints {namespace}/{service} failed")]
    Endpoints {
        verb: &'static str,
        namespace: String,
        service: String,
        #[source]
        source: kube::Error,
    },
}

/// Whether `service` has a selector and it matches `pod`'s labels.
pub fn selects(service: &Service, pod: &Pod) -> bool {
    let Some(selector) = selector(service) else {
        return false;
    };
    let labels = pod.labels();
    selector
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}

/// The Service's selector; `None` for Services without one (their endpoints are written by
/// someone else) and for `ExternalName` Services.
fn selector(service: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector
        .as_ref()
        .filter(|selector| !selector.is_empty())
}

/// Converges the slices of one Service.
pub(crate) async fn reconcile(
    service: Arc<Service>,
    context: Arc<Context>,
) -> Result<Action, Error> {
    if selector(&service).is_none() {
        return Ok(Action::await_change());
    }
    let (Some(namespace), name) = (service.namespace(), service.name_any()) else {
        return Ok(Action::await_change());
    };
    // Reconciles read the pod and node caches: wait until they hold a full listing.
    let _ = futures::join!(
        context.pods.wait_until_ready(),
        context.nodes.wait_until_ready()
    );
    let failed = |verb, source| Error::Slices {
        verb,
        namespace: namespace.clone(),
        service: name.clone(),
        source,
    };
    let slices_api: Api<EndpointSlice> = Api::namespaced(context.client.clone(), &namespace);
    let listed = slices_api
        .list(&ListParams::default().labels(&format!(
            "{}={name},{}={MANAGER}",
            desired::SERVICE_NAME_LABEL,
            desired::MANAGED_BY_LABEL
        )))
        .await
        .map_err(|source| failed("list", source))?;
    let existing: Vec<EndpointSlice> = listed
        .items
        .into_iter()
        .filter(|slice| slice.metadata.deletion_timestamp.is_none())
        .collect();

    let mut pods: Vec<Arc<Pod>> = context
        .pods
        .state()
        .into_iter()
        .filter(|pod| pod.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|pod| selects(&service, pod) && desired::pod_has_endpoint(pod))
        .collect();
    pods.sort_by_key(|pod| pod.name_any());
    let address_types = desired::address_types(&service);
    let mut plans = Vec::new();
    let mut missing_nodes = false;
    for address_type in &address_types {
        let mut wanted = plan::Desired::new();
        for pod in &pods {
            let node_name = pod.spec.as_ref().and_then(|spec| spec.node_name.as_deref());
            let node = match node_name.filter(|name| !name.is_empty()) {
                Some(node_name) => match context.nodes.get(&ObjectRef::<Node>::new(node_name)) {
                    Some(node) => Some(node),
                    None => {
                        // As upstream: leave the pod out until its Node exists, and look again.
                        missing_nodes = true;
                        continue;
                    }
                },
                None => None,
            };
            let endpoint = desired::pod_endpoint(pod, node.as_deref(), &service, address_type);
            if endpoint.addresses.is_empty() {
                continue;
            }
            let ports = desired::endpoint_ports(&service, pod);
            let entry = wanted
                .entry(plan::ports_key(&ports))
                .or_insert_with(|| (ports, EndpointSet::new()));
            entry.1.insert(EndpointKey::of(&endpoint), endpoint);
        }
        let mine: Vec<EndpointSlice> = existing
            .iter()
            .filter(|slice| slice.address_type == *address_type)
            .cloned()
            .collect();
        let input = Input {
            service: &service,
            address_type,
            manager: MANAGER,
            max_per_slice: context.settings.max_endpoints_per_slice.max(1),
        };
        plans.push(input.plan(wanted, mine));
    }
    // Slices of an address type the Service no longer has.
    let stale: Vec<EndpointSlice> = existing
        .into_iter()
        .filter(|slice| !address_types.contains(&slice.address_type.as_str()))
        .collect();

    let deleting = service.meta().deletion_timestamp.is_some();
    for plan in plans {
        // A Service being deleted gets no new slices: the garbage collector is removing them.
        if !deleting {
            for slice in &plan.create {
                slices_api
                    .create(&PostParams::default(), slice)
                    .await
                    .map_err(|source| failed("create", source))?;
            }
        }
        for slice in &plan.update {
            let slice_name = slice.name_any();
            match slices_api
                .replace(&slice_name, &PostParams::default(), slice)
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.is_not_found() => {}
                Err(source) => return Err(failed("update", source)),
            }
        }
        for slice in &plan.delete {
            delete(&slices_api, slice)
                .await
                .map_err(|source| failed("delete", source))?;
        }
    }
    for slice in &stale {
        delete(&slices_api, slice)
            .await
            .map_err(|source| failed("delete", source))?;
    }
    let pods: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
    sync_endpoints(&service, &pods, &context.client)
        .await
        .map_err(|(verb, source)| Error::Endpoints {
            verb,
            namespace: namespace.clone(),
            service: name.clone(),
            source,
        })?;
    if missing_nodes {
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    Ok(Action::await_change())
}

async fn delete(api: &Api<EndpointSlice>, slice: &EndpointSlice) -> Result<(), kube::Error> {
    match api
        .delete(&slice.name_any(), &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(error) => Err(error),
    }
}

/// Converges the Service's v1 Endpoints object (upstream's endpoints controller).
async fn sync_endpoints(
    service: &Service,
    pods: &[&Pod],
    client: &kube::Client,
) -> Result<(), (&'static str, kube::Error)> {
    let name = service.name_any();
    let api: Api<Endpoints> =
        Api::namespaced(client.clone(), &service.namespace().unwrap_or_default());
    let (subsets, truncated) = endpoints::subsets(service, pods);
    let labels = endpoints::labels(service);
    let current = api.get_opt(&name).await.map_err(|error| ("get", error))?;
    let mut wanted = current.clone().unwrap_or_default();
    let mut annotations = wanted.metadata.annotations.take().unwrap_or_default();
    if truncated {
        annotations.insert(endpoints::OVER_CAPACITY.to_owned(), "truncated".to_owned());
    } else {
        annotations.remove(endpoints::OVER_CAPACITY);
    }
    wanted.metadata.name = Some(name.clone());
    wanted.metadata.annotations = (!annotations.is_empty()).then_some(annotations);
    wanted.metadata.labels = Some(labels);
    wanted.subsets = Some(subsets);
    let Some(current) = current else {
        api.create(&PostParams::default(), &wanted)
            .await
            .map_err(|error| ("create", error))?;
        return Ok(());
    };
    let same = current.subsets.clone().unwrap_or_default()
        == wanted.subsets.clone().unwrap_or_default()
        && current.metadata.labels.clone().unwrap_or_default()
            == wanted.metadata.labels.clone().unwrap_or_default()
        && current.metadata.annotations == wanted.metadata.annotations;
    if !same {
        api.replace(&name, &PostParams::default(), &wanted)
            .await
            .map_err(|error| ("update", error))?;
    }
    Ok(())
}

/// Deletes the v1 Endpoints object of a deleted Service.
pub(crate) async fn delete_endpoints(client: kube::Client, service: Service) {
    let Some(namespace) = service.namespace() else {
        return;
    };
    let api: Api<Endpoints> = Api::namespaced(client, &namespace);
    match api
        .delete(&service.name_any(), &DeleteParams::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_not_found() => {}
        Err(error) => log::warn!(
            "endpoints controller: deleting endpoints {namespace}/{}: {}",
            service.name_any(),
            super::super::chain(&error)
        ),
    }
}
