//! Workload controllers (ReplicaSet, Deployment) against a real etcd and the real
//! `keel-controlplane all`, driven by kubectl and kube-rs, with a fake kubelet marking pods
//! ready (there is no node agent in these tests).

#[path = "../support/etcd.rs"]
mod etcd;
#[path = "../support/kubelet.rs"]
mod kubelet;
#[path = "../support/apiserver.rs"]
mod server;

mod deployment;
mod replicaset;

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::Client;
use kube::api::{Api, ListParams};

pub use server::TestApiServer;

/// How long a controller gets to converge before a test gives up.
pub const CONVERGE: Duration = Duration::from_secs(60);

/// A control plane with one namespace for the test and a client of it.
pub struct Cluster {
    pub server: TestApiServer,
    pub client: Client,
    pub namespace: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("server", &self.server)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    pub async fn start(namespace: &str) -> anyhow::Result<Self> {
        let server = TestApiServer::start().await?;
        let client = kubelet::client(&server.kubeconfig()).await?;
        server.ok(&["create", "namespace", namespace]);
        Ok(Self {
            server,
            client,
            namespace: namespace.to_owned(),
        })
    }

    /// kubectl in the test's namespace, which must succeed; returns its stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.namespace.as_str()];
        all.extend_from_slice(args);
        self.server.ok(&all)
    }

    /// `kubectl rollout status` of `target`, which must succeed within `timeout`; on failure
    /// the panic shows the control plane's log.
    pub fn rollout_status(&self, target: &str, timeout: &str) {
        let timeout = format!("--timeout={timeout}");
        let args = [
            "-n",
            self.namespace.as_str(),
            "rollout",
            "status",
            target,
            &timeout,
        ];
        let output = self.server.kubectl(&args);
        assert!(
            output.status.success(),
            "kubectl {args:?} failed:\n{}{}\nobjects:\n{}\ncontrol plane log:\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(
                &self
                    .server
                    .kubectl(&[
                        "-n",
                        self.namespace.as_str(),
                        "get",
                        "deploy,rs,pods",
                        "-o",
                        "yaml"
                    ])
                    .stdout
            ),
            tail(&self.server.log(), 80)
        );
    }

    pub fn kubectl_with_input(&self, args: &[&str], input: &str) -> String {
        let mut all = vec!["-n", self.namespace.as_str()];
        all.extend_from_slice(args);
        self.server.ok_with_input(&all, input)
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The messages of the namespace's events with `reason`, oldest first.
    pub async fn event_messages(&self, reason: &str) -> anyhow::Result<Vec<String>> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        let mut list = events.list(&ListParams::default()).await?.items;
        list.sort_by(|a, b| a.first_timestamp.cmp(&b.first_timestamp));
        Ok(list
            .into_iter()
            .filter(|event| event.reason.as_deref() == Some(reason))
            .filter_map(|event| event.message)
            .collect())
    }

    /// Waits until `check` returns `Some`, polling; panics with `what` and the control
    /// plane's log after [`CONVERGE`].
    pub async fn until<T, F, Fut>(&self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<Option<T>>>,
    {
        let deadline = Instant::now() + CONVERGE;
        let mut last_error = None;
        loop {
            match check().await {
                Ok(Some(value)) => return value,
                Ok(None) => {}
                Err(error) => last_error = Some(error),
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} (last error: {last_error:?}); control plane log:\n{}",
                tail(&self.server.log(), 60)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Pods that count: not being deleted.
pub fn live(pods: &[Pod]) -> Vec<&Pod> {
    pods.iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .collect()
}
