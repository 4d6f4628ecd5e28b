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

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

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
    let memberships = Arc::new(Memberships::default());

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
        let (services, memberships) = (services.clone(), memberships.clone());
        reflector::reflector(
            pods_writer,
            watcher(Api::<Pod>::all(client.clone()), config.clone()),
        )
        .default_backoff()
        .map_ok(move |event| match event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                memberships.update(&services, &pod)
            }
            watcher::Event::Delete(pod) => memberships.forget(&pod),
            watcher::Event::Init | watcher::Event::InitDone => Vec::new(),
        })
    };
    let slice_triggers = watcher(Api::<EndpointSlice>::all(client.clone()), slices_config)
        .default_backoff()
        .touched_objects()
        .map_ok(|slice| slice_service(&slice).into_iter().collect());
    let node_triggers = {
        let (services, pods, memberships) = (services.clone(), pods.clone(), memberships.clone());
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
                .flat_map(|pod| memberships.update(&services, pod))
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

/// Which Services each pod was last seen to belong to, so a pod whose labels changed also
/// triggers the Services it left (upstream's `getPodServiceMemberships` of old and new pod).
#[derive(Default)]
struct Memberships {
    by_pod: Mutex<BTreeMap<PodKey, HashSet<ObjectRef<Service>>>>,
}

/// A pod's namespace and name.
type PodKey = (String, String);

impl Memberships {
    /// The Services `pod` belongs to now and belonged to before; remembers the former.
    fn update(&self, services: &Store<Service>, pod: &Pod) -> Vec<ObjectRef<Service>> {
        let namespace = pod.namespace().unwrap_or_default();
        let now: HashSet<ObjectRef<Service>> = services
            .state()
            .iter()
            .filter(|service| service.namespace().as_deref() == Some(namespace.as_str()))
            .filter(|service| sync::selects(service, pod))
            .map(|service| ObjectRef::from_obj(service.as_ref()))
            .collect();
        let key = (namespace, pod.name_any());
        let mut by_pod = self
            .by_pod
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let before = by_pod.insert(key, now.clone()).unwrap_or_default();
        now.union(&before).cloned().collect()
    }

    /// The Services a deleted pod belonged to; forgets it.
    fn forget(&self, pod: &Pod) -> Vec<ObjectRef<Service>> {
        let key = (pod.namespace().unwrap_or_default(), pod.name_any());
        let mut by_pod = self
            .by_pod
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        by_pod
            .remove(&key)
            .unwrap_or_default()
            .into_iter()
            .collect()
    }
}
