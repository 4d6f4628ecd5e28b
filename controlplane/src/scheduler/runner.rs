//! The running scheduler: watches (nodes; pods not finished, as upstream's field selector
//! `status.phase!=Succeeded,status.phase!=Failed`; namespaces; the selectors of Services,
//! ReplicaSets and StatefulSets for default spreading) keep the cache and the queue current, and one loop takes pods from the queue, decides under the cache lock,
//! assumes the pod on its node and hands the binding to its own task, so the next pod is
//! decided while the binding is written. The only writes are bindings, events and the
//! `PodScheduled` condition of pods that fit nowhere.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::Semaphore;

use super::SCHEDULER_NAMES;
use super::algorithm::{self, FitError, Picker};
use super::cache::{Cache, PodInfo};
use super::events::Recorder;
use super::queue::Queue;

/// Field selector of the pod watch: finished pods hold no resources.
const UNFINISHED_PODS: &str = "status.phase!=Succeeded,status.phase!=Failed";

struct Shared {
    client: Client,
    cache: Mutex<Cache>,
    queue: Queue,
    events: Recorder,
}

impl Shared {
    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Runs the scheduler on `client` until the task is dropped (the watches retry forever).
pub async fn run(client: Client) {
    let shared = Arc::new(Shared {
        events: Recorder::new(client.clone()),
        client: client.clone(),
        cache: Mutex::new(Cache::default()),
        queue: Queue::default(),
    });
    // The loop starts once every watch has listed, so the first decisions see the cluster.
    let synced = Arc::new(Semaphore::new(0));
    let nodes = watch(
        Api::<Node>::all(client.clone()),
        watcher::Config::default(),
        {
            let shared = shared.clone();
            let synced = synced.clone();
            let mut seen = HashSet::new();
            move |event| on_node(&shared, &synced, &mut seen, event)
        },
    );
    let pods = watch(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields(UNFINISHED_PODS),
        {
            let shared = shared.clone();
            let synced = synced.clone();
            let mut seen = HashSet::new();
            move |event| on_pod(&shared, &synced, &mut seen, event)
        },
    );
    let namespaces = watch(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
        {
            let shared = shared.clone();
            move |event| on_namespace(&shared, event)
        },
    );
    // Selectors for the default spreading of pods without constraints of their own.
    let services = watch(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        {
            let shared = shared.clone();
            move |event| {
                on_selector(&shared, event, |cache, service: &Service, gone| {
                    let selector = service.spec.as_ref().and_then(|spec| spec.selector.clone());
                    let meta = &service.metadata;
                    cache.set_service(
                        meta.namespace.as_deref().unwrap_or_default(),
                        meta.name.as_deref().unwrap_or_default(),
                        if gone { None } else { selector },
                    );
                });
            }
        },
    );
    let replica_sets = watch(
        Api::<ReplicaSet>::all(client.clone()),
        watcher::Config::default(),
        {
            let shared = shared.clone();
            move |event| {
                on_selector(&shared, event, |cache, set: &ReplicaSet, gone| {
                    let selector = set.spec.as_ref().map(|spec| spec.selector.clone());
                    set_controller(cache, "ReplicaSet", &set.metadata, selector, gone);
                });
            }
        },
    );
    let stateful_sets = watch(
        Api::<StatefulSet>::all(client),
        watcher::Config::default(),
        {
            let shared = shared.clone();
            move |event| {
                on_selector(&shared, event, |cache, set: &StatefulSet, gone| {
                    let selector = set.spec.as_ref().map(|spec| spec.selector.clone());
                    set_controller(cache, "StatefulSet", &set.metadata, selector, gone);
                });
            }
        },
    );
    let schedule = async {
        if synced.acquire_many(2).await.is_err() {
            return;
        }
        log::info!("scheduler: nodes and pods listed, scheduling");
        let mut picker = Picker::new(
            u64::from(std::process::id()) << 32
                | u64::from(Timestamp::now().subsec_nanosecond().unsigned_abs()),
        );
        loop {
            let pod = shared.queue.pop().await;
            schedule_one(&shared, &mut picker, pod);
        }
    };
    tokio::join!(
        nodes,
        pods,
        namespaces,
        services,
        replica_sets,
        stateful_sets,
        schedule
    );
}

async fn watch<K>(api: Api<K>, config: watcher::Config, mut handle: impl FnMut(Event<K>))
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => handle(event),
            Err(error) => log::warn!("scheduler: watch: {error}"),
        }
    }
}

fn uid_of<K: Resource>(object: &K) -> String {
    object.meta().uid.clone().unwrap_or_default()
}

fn on_node(shared: &Shared, synced: &Semaphore, seen: &mut HashSet<String>, event: Event<Node>) {
    match event {
        Event::Init => seen.clear(),
        Event::InitApply(node) => {
            seen.insert(node.metadata.name.clone().unwrap_or_default());
            shared.cache().set_node(node);
        }
        Event::InitDone => {
            shared.cache().retain_nodes(|name| seen.contains(name));
            seen.clear();
            synced.add_permits(1);
            shared.queue.move_all_unschedulable();
        }
        Event::Apply(node) => {
            let helps = {
                let mut cache = shared.cache();
                let name = node.metadata.name.clone().unwrap_or_default();
                let helps = cache
                    .node(&name)
                    .and_then(|info| info.node.as_deref())
                    .is_none_or(|old| scheduling_relevant_change(old, &node));
                cache.set_node(node);
                helps
            };
            if helps {
                shared.queue.move_all_unschedulable();
            }
        }
        Event::Delete(node) => shared
            .cache()
            .remove_node(node.metadata.name.as_deref().unwrap_or_default()),
    }
}

/// Upstream moves unschedulable pods on a node update only if what filters read changed:
/// allocatable, labels, taints, `unschedulable` (not heartbeats).
fn scheduling_relevant_change(old: &Node, new: &Node) -> bool {
    let allocatable = |node: &Node| {
        node.status
            .as_ref()
            .and_then(|status| status.allocatable.clone())
    };
    let spec = |node: &Node| {
        node.spec
            .as_ref()
            .map(|spec| (spec.taints.clone(), spec.unschedulable))
    };
    allocatable(old) != allocatable(new)
        || old.metadata.labels != new.metadata.labels
        || spec(old) != spec(new)
}

fn responsible(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let name = spec
        .scheduler_name
        .as_deref()
        .unwrap_or("default-scheduler");
    SCHEDULER_NAMES.contains(&name)
        && pod.metadata.deletion_timestamp.is_none()
        && spec.scheduling_gates.as_ref().is_none_or(Vec::is_empty)
}

fn on_pod(shared: &Shared, synced: &Semaphore, seen: &mut HashSet<String>, event: Event<Pod>) {
    match event {
        Event::Init => seen.clear(),
        Event::InitApply(pod) => {
            seen.insert(uid_of(&pod));
            apply_pod(shared, pod);
        }
        Event::InitDone => {
            shared.cache().retain_bound_pods(|uid| seen.contains(uid));
            shared.queue.retain(|uid| seen.contains(uid));
            seen.clear();
            synced.add_permits(1);
        }
        Event::Apply(pod) => apply_pod(shared, pod),
        Event::Delete(pod) => {
            let uid = uid_of(&pod);
            shared.queue.remove(&uid);
            let freed = {
                let mut cache = shared.cache();
                let placed = cache.is_placed(&uid);
                cache.remove_pod(&uid);
                placed
            };
            if freed {
                shared.queue.move_all_unschedulable();
            }
        }
    }
}

fn apply_pod(shared: &Shared, pod: Pod) {
    let uid = uid_of(&pod);
    let bound = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.node_name.as_deref())
        .is_some_and(|node| !node.is_empty());
    if bound {
        shared.queue.remove(&uid);
        shared.cache().set_bound_pod(Arc::new(pod));
    } else if responsible(&pod) {
        // An assumed pod's binding is on its way; a failed binding queues it again.
        if !shared.cache().is_assumed(&uid) {
            shared.queue.add_or_update(Arc::new(pod));
        }
    } else {
        shared.queue.remove(&uid);
    }
}

fn on_namespace(shared: &Shared, event: Event<Namespace>) {
    match event {
        Event::Init | Event::InitDone => {}
        Event::InitApply(namespace) | Event::Apply(namespace) => {
            let name = namespace.metadata.name.clone().unwrap_or_default();
            let labels = namespace.metadata.labels.unwrap_or_default();
            shared.cache().set_namespace(name, labels);
        }
        Event::Delete(namespace) => shared
            .cache()
            .remove_namespace(namespace.metadata.name.as_deref().unwrap_or_default()),
    }
}

fn on_selector<K>(shared: &Shared, event: Event<K>, record: impl Fn(&mut Cache, &K, bool)) {
    match event {
        Event::Init | Event::InitDone => {}
        Event::InitApply(object) | Event::Apply(object) => {
            record(&mut shared.cache(), &object, false)
        }
        Event::Delete(object) => record(&mut shared.cache(), &object, true),
    }
}

fn set_controller(
    cache: &mut Cache,
    kind: &str,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    gone: bool,
) {
    cache.set_controller(
        kind,
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
        if gone { None } else { selector },
    );
}

fn schedule_one(shared: &Arc<Shared>, picker: &mut Picker, pod: Arc<Pod>) {
    let uid = uid_of(&*pod);
    let Some(spec) = pod.spec.as_ref() else {
        shared.queue.remove(&uid);
        return;
    };
    let info = PodInfo::new(pod.clone());
    let decision = {
        let mut cache = shared.cache();
        if cache.is_placed(&uid) {
            None
        } else {
            let decision = algorithm::schedule(&cache, &info, spec, picker);
            if let Ok(node) = &decision {
                cache.assume(&info, node);
            }
            Some(decision)
        }
    };
    match decision {
        None => shared.queue.remove(&uid),
        Some(Ok(node)) => {
            shared.queue.binding(&uid);
            tokio::spawn(bind(shared.clone(), pod, node));
        }
        Some(Err(FitError(message))) => {
            log::info!(
                "scheduler: {}/{} is unschedulable: {message}",
                info.namespace,
                info.name
            );
            shared.queue.unschedulable(&uid);
            tokio::spawn(report_failure(
                shared.clone(),
                pod,
                "Unschedulable",
                message,
            ));
        }
    }
}

async fn bind(shared: Arc<Shared>, pod: Arc<Pod>, node: String) {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = uid_of(&*pod);
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": namespace, "uid": uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &namespace);
    let result: Result<serde_json::Value, kube::Error> = api
        .create_subresource("binding", &name, &PostParams::default(), &binding)
        .await;
    match result {
        Ok(_) => {
            log::info!("scheduler: bound {namespace}/{name} to {node}");
            let note = format!("Successfully assigned {namespace}/{name} to {node}");
            if let Err(error) = shared
                .events
                .publish(&pod, "Normal", "Scheduled", &note)
                .await
            {
                log::warn!("scheduler: event for {namespace}/{name}: {error}");
            }
        }
        Err(error) => {
            shared.cache().forget(&uid);
            if let kube::Error::Api(status) = &error
                && (status.code == 404 || status.code == 409)
            {
                // Deleted, or bound by someone else: the watch will tell.
                log::info!(
                    "scheduler: binding {namespace}/{name} to {node}: {}",
                    status.message
                );
                shared.queue.move_all_unschedulable();
                return;
            }
            let error = match &error {
                kube::Error::Api(status) => status.message.clone(),
                other => other.to_string(),
            };
            log::warn!("scheduler: binding {namespace}/{name} to {node}: {error}");
            shared.queue.retry(pod.clone());
            let message = format!("running Bind plugin \"DefaultBinder\": {error}");
            report_failure(shared, pod, "SchedulerError", message).await;
        }
    }
}

/// The `FailedScheduling` event and the pod's `PodScheduled` condition.
async fn report_failure(shared: Arc<Shared>, pod: Arc<Pod>, reason: &str, message: String) {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    if let Err(error) = shared
        .events
        .publish(&pod, "Warning", "FailedScheduling", &message)
        .await
    {
        log::warn!("scheduler: event for {namespace}/{name}: {error}");
    }
    let current = pod
        .status
        .as_ref()
        .and_then(|status| status.conditions.as_ref())
        .and_then(|conditions| conditions.iter().find(|c| c.type_ == "PodScheduled"));
    let unchanged = current.is_some_and(|condition| {
        condition.status == "False"
            && condition.reason.as_deref() == Some(reason)
            && condition.message.as_deref() == Some(message.as_str())
    });
    if unchanged {
        return;
    }
    let transition = match current {
        Some(condition) if condition.status == "False" => condition
            .last_transition_time
            .as_ref()
            .map(|time| time.0.to_string()),
        _ => None,
    }
    .unwrap_or_else(|| {
        Timestamp::now()
            .round(k8s_openapi::jiff::Unit::Second)
            .map(|t| t.to_string())
            .unwrap_or_default()
    });
    let patch = json!({"status": {"conditions": [{
        "type": "PodScheduled",
        "status": "False",
        "reason": reason,
        "message": message,
        "lastProbeTime": null,
        "lastTransitionTime": transition,
    }]}});
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &namespace);
    let params = PatchParams::default();
    if let Err(error) = api
        .patch_status(&name, &params, &Patch::Strategic(&patch))
        .await
    {
        log::warn!("scheduler: condition of {namespace}/{name}: {error}");
    }
}
