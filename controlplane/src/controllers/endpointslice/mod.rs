//! The EndpointSlice controller, as upstream's: for every Service with a selector it keeps
//! `discovery.k8s.io/v1` EndpointSlices (at most `--max-endpoints-per-slice` endpoints each,
//! one group per distinct set of resolved ports) listing the pods the selector matches.
//! Slices carry `endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io` and
//! a controller reference to the Service; slices managed by anyone else (the API server's
//! `default/kubernetes` slice) are never touched. When a Service goes, the garbage collector
//! removes its slices through that reference.
//!
//! It also keeps the legacy v1 Endpoints object of each such Service (upstream's endpoints
//! controller), named as the Service, deleted with it.
//!
//! * [`desired`]: pods to endpoints and ports.
//! * [`endpoints`]: pods to the subsets of a v1 Endpoints object.
//! * [`plan`]: existing slices plus desired endpoints to creates, updates and deletes.
//! * [`sync`]: the reconcile of one Service, against the API.

pub mod desired;
pub mod endpoints;
pub mod plan;
pub mod sync;

use std::collections::HashSet;
use std::sync::Arc;

use futures::{Stream, StreamExt as _, TryStreamExt as _, stream};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::controller::{self, Action};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, predicates, watcher};
use kube::{Client, ResourceExt as _};

/// The value of `endpointslice.kubernetes.io/managed-by` on the slices this controller owns.
pub const MANAGER: &str = "endpointslice-controller.k8s.io";

/// The controller's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Most endpoints in one slice (upstream's `--max-endpoints-per-slice`, default 100).
    pub max_endpoints_per_slice: usize,
}

/// The caches a reconcile reads (pods and nodes; slices are read live, see [`sync`]).
pub(crate) struct Context {
    pub client: Client,
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    pub settings: Settings,
}

/// Runs the controller until its watches end (they do not, short of a panic).
pub async fn run(client: Client, settings: Settings) {
    let (services, services_writer) = reflector::store::<Service>();
    let (pods, pods_writer) = reflector::store::<Pod>();
    let (nodes, nodes_writer) = reflector::store::<Node>();
    let config = watcher::Config::default();
    let slices_config =
        watcher::Config::default().labels(&format!("{}={MANAGER}", desired::MANAGED_BY_LABEL));
    let (slices, slices_writer) = reflector::store::<EndpointSlice>();
    let memberships = Memberships {
        services: services.clone(),
        slices,
    };

    let service_triggers = {
        let client = client.clone();
        reflector::reflector(
            services_writer,
            watcher(Api::<Service>::all(client.clone()), config.clone()),
        )
        .default_backoff()
        .map_ok(move |event| match event {
            watcher::Event::Apply(service) | watcher::Event::InitApply(service) => {
                vec![ObjectRef::from_obj(&service)]
            }
            // Slices go with their owner; the Endpoints object has none, as upstream's.
            watcher::Event::Delete(service) => {
                tokio::spawn(sync::delete_endpoints(client.clone(), service));
                Vec::new()
            }
            watcher::Event::Init | watcher::Event::InitDone => Vec::new(),
        })
    };
    let pod_triggers = {
        let memberships = memberships.clone();
        reflector::reflector(
            pods_writer,
            watcher(Api::<Pod>::all(client.clone()), config.clone()),
        )
        .default_backoff()
        .touched_objects()
        .map_ok(move |pod| memberships.of(&pod))
    };
    let slice_triggers = reflector::reflector(
        slices_writer,
        watcher(Api::<EndpointSlice>::all(client.clone()), slices_config),
    )
    .default_backoff()
    .touched_objects()
    .map_ok(|slice| slice_service(&slice).into_iter().collect());
    let node_triggers = {
        let pods = pods.clone();
        reflector::reflector(
            nodes_writer,
            watcher(Api::<Node>::all(client.clone()), config),
        )
        .default_backoff()
        .touched_objects()
        // Only a node's labels (its zone) matter to endpoints.
        .predicate_filter(predicates::labels, Default::default())
        .map_ok(move |node| {
            let name = node.name_any();
            pods.state()
                .iter()
                .filter(|pod| {
                    pod.spec.as_ref().and_then(|spec| spec.node_name.as_deref())
                        == Some(name.as_str())
                })
                .flat_map(|pod| memberships.of(pod))
                .collect()
        })
    };
    let triggers = stream::select_all([
        service_triggers.boxed(),
        pod_triggers.boxed(),
        slice_triggers.boxed(),
        node_triggers.boxed(),
    ]);
    let queue = flatten(triggers);
    let context = Arc::new(Context {
        client,
        pods: pods.clone(),
        nodes,
        settings,
    });
    let results = controller::applier(
        |service, context| Box::pin(sync::reconcile(service, context)),
        error_policy,
        context,
        services,
        queue,
        controller::Config::default(),
    );
    super::drive("endpointslice controller", results).await;
}

/// Watch errors are logged (the watchers retry with backoff); the rest become single requests.
fn flatten(
    triggers: impl Stream<Item = Result<Vec<ObjectRef<Service>>, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<ObjectRef<Service>, watcher::Error>> + Send + 'static {
    triggers
        .filter_map(|result| async move {
            match result {
                Ok(services) => Some(stream::iter(services.into_iter().map(Ok))),
                Err(error) => {
                    log::warn!("endpointslice controller: watch: {}", super::chain(&error));
                    None
                }
            }
        })
        .flatten()
}

fn error_policy(_: Arc<Service>, error: &sync::Error, _: Arc<Context>) -> Action {
    log::warn!("endpointslice controller: {}", super::chain(error));
    Action::requeue(std::time::Duration::from_secs(5))
}

/// The Service a managed slice belongs to.
fn slice_service(slice: &EndpointSlice) -> Option<ObjectRef<Service>> {
    let name = slice.labels().get(desired::SERVICE_NAME_LABEL)?;
    Some(ObjectRef::new(name).within(&slice.namespace()?))
}

/// The Services a pod event concerns (upstream's `getPodServiceMemberships` of the old and
/// the new pod): those whose selector matches it now, and those whose slices list it, which
/// covers a pod relabelled out of a selector and a deleted pod without remembering pods.
#[derive(Clone)]
struct Memberships {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
}

impl Memberships {
    fn of(&self, pod: &Pod) -> Vec<ObjectRef<Service>> {
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let in_namespace = |object_namespace: Option<String>| {
            object_namespace.as_deref() == Some(namespace.as_str())
        };
        let selected = self
            .services
            .state()
            .into_iter()
            .filter(|service| in_namespace(service.namespace()) && sync::selects(service, pod))
            .map(|service| ObjectRef::from_obj(service.as_ref()));
        let listed = self
            .slices
            .state()
            .into_iter()
            .filter(|slice| in_namespace(slice.namespace()))
            .filter(|slice| {
                slice.endpoints.iter().any(|endpoint| {
                    endpoint
                        .target_ref
                        .as_ref()
                        .and_then(|target| target.name.as_deref())
                        == Some(name.as_str())
                })
            })
            .filter_map(|slice| slice_service(&slice));
        let unique: HashSet<ObjectRef<Service>> = selected.chain(listed).collect();
        unique.into_iter().collect()
    }
}
