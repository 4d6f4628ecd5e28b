//! A stand-in for kubelet in control-plane tests: it marks pods Running and Ready through
//! `pods/status` (optionally binding them first to a Node it registered, through
//! `pods/binding`), and for bound pods being deleted does kubelet's final delete (grace 0).
//! Either on request ([`mark_ready`]) or for every pod of a namespace as it appears
//! ([`FakeKubelet::start`]). It runs nothing: the pods are API objects only.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};
use serde_json::json;

/// A kube client with the test API server's admin kubeconfig.
pub async fn client(kubeconfig: &std::path::Path) -> anyhow::Result<Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Registers a Ready Node called `name` (no agent behind it).
pub async fn create_node(client: &Client, name: &str) -> anyhow::Result<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
    }))?;
    let node = nodes
        .create(&PostParams::default(), &node)
        .await
        .with_context(|| format!("creating node {name}"))?;
    let now = jiff::Timestamp::now().to_string();
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
                "lastHeartbeatTime": now, "lastTransitionTime": now,
            }]}})),
        )
        .await
        .with_context(|| format!("marking node {name} ready"))?;
    Ok(node)
}

/// Binds `pod` to `node` through `pods/binding`, as the scheduler does.
pub async fn bind(client: &Client, pod: &Pod, node: &str) -> anyhow::Result<()> {
    let namespace = pod.namespace().unwrap_or_default();
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some(pod.name_any()),
            namespace: Some(namespace.clone()),
            ..ObjectMeta::default()
        },
        target: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.into()),
            ..ObjectReference::default()
        },
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let _: serde_json::Value = pods
        .create_subresource("binding", &pod.name_any(), &PostParams::default(), &binding)
        .await
        .with_context(|| format!("binding pod {} to {node}", pod.name_any()))?;
    Ok(())
}

/// Marks a pod Running with every condition kubelet sets for a ready pod, its containers
/// running and ready.
pub async fn mark_ready(client: &Client, namespace: &str, name: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = pods.get(name).await?;
    let now = jiff::Timestamp::now().to_string();
    let containers: Vec<serde_json::Value> = pod
        .spec
        .as_ref()
        .map(|spec| spec.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|container| {
            json!({
                "name": container.name,
                "image": container.image,
                "imageID": "",
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            })
        })
        .collect();
    let condition = |type_: &str| json!({"type": type_, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    let status = json!({"status": {
        "phase": "Running",
        "conditions": [
            condition("PodReadyToStartContainers"),
            condition("Initialized"),
            condition("Ready"),
            condition("ContainersReady"),
            condition("PodScheduled"),
        ],
        "podIP": "198.18.0.10",
        "startTime": now,
        "containerStatuses": containers,
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .with_context(|| format!("marking pod {namespace}/{name} ready"))?;
    Ok(())
}

/// Marks every pod of one namespace ready as it appears, until dropped. It runs on its own
/// thread with its own runtime and client, so a test may block (on kubectl, say) meanwhile.
#[derive(Debug)]
pub struct FakeKubelet {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    paused: Arc<AtomicBool>,
}

impl FakeKubelet {
    /// Starts watching `namespace` with the credentials in `kubeconfig`. With `node`, pods
    /// are bound to it first (the Node must exist, see [`create_node`]) and bound pods being
    /// deleted are finally deleted.
    pub fn start(kubeconfig: &std::path::Path, namespace: &str, node: Option<&str>) -> Self {
        let paused = Arc::new(AtomicBool::new(false));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let kubeconfig = kubeconfig.to_owned();
        let namespace = namespace.to_owned();
        let node = node.map(str::to_owned);
        let flag = paused.clone();
        let thread = std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("fake kubelet: no runtime: {error}");
                    return;
                }
            };
            runtime.block_on(async move {
                let client = match client(&kubeconfig).await {
                    Ok(client) => client,
                    Err(error) => {
                        eprintln!("fake kubelet: no client: {error:#}");
                        return;
                    }
                };
                tokio::select! {
                    () = run(client, namespace, node, flag) => {}
                    _ = stopped => {}
                }
            });
        });
        Self {
            stop: Some(stop),
            thread: Some(thread),
            paused,
        }
    }

    /// Stops marking new pods ready (they stay Pending) until [`Self::resume`].
    pub fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
    }

    /// Marks pods ready again, those that appeared while paused included (on their next
    /// change or at the watch's next relist).
    pub fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn run(client: Client, namespace: String, node: Option<String>, paused: Arc<AtomicBool>) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let mut done: HashSet<String> = HashSet::new();
    let mut events = watcher(pods.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(event) = events.next().await {
        let Ok(pod) = event else { continue };
        let name = pod.name_any();
        let bound = pod
            .spec
            .as_ref()
            .and_then(|spec| spec.node_name.as_deref())
            .is_some_and(|node| !node.is_empty());
        if pod.metadata.deletion_timestamp.is_some() {
            if bound {
                // kubelet's last step once the containers stopped.
                let _ = pods
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await;
            }
            continue;
        }
        if paused.load(Ordering::SeqCst) || is_ready(&pod) {
            continue;
        }
        let uid = pod.uid().unwrap_or_default();
        if done.contains(&uid) {
            continue;
        }
        if let Some(node) = &node
            && !bound
            && let Err(error) = bind(&client, &pod, node).await
        {
            eprintln!("fake kubelet: {error:#}");
            continue;
        }
        match mark_ready(&client, &namespace, &name).await {
            Ok(()) => {
                done.insert(uid);
            }
            Err(error) => eprintln!("fake kubelet: {error:#}"),
        }
    }
}

/// Whether the pod's Ready condition is true.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|status| status.conditions.as_deref())
        .unwrap_or_default()
        .iter()
        .any(|condition| condition.type_ == "Ready" && condition.status == "True")
}
