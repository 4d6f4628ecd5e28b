//! The node API served in-process on a free loopback port, from a hand-made pod table and log
//! directory, asked by curl over HTTPS: `/healthz`, `/pods`, `/containerLogs` (tail,
//! timestamps, previous, limit, follow across a rotation) and the 404s.

mod support;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus,
    Pod, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use keel_agent::cgroups::{CgroupManager, CgroupMode, Hierarchies};
use keel_agent::nodeapi::{NodeApi, NodeApiConfig, NodeApiServer, TlsFiles};
use keel_agent::pods::worker::Statuses;
use keel_agent::runtime::runc::Runc;
use support::curl;
use tokio::io::AsyncReadExt as _;

const UID: &str = "0f9c6a2e-uid";
const CURRENT: &str = "2020-01-02T10:00:00.1Z stdout F one\n\
                       2020-01-02T10:00:01.2Z stdout P tw\n\
                       2020-01-02T10:00:01.3Z stdout F o\n\
                       2020-01-02T10:00:02.4Z stderr F three\n";

/// A node API on a free loopback port; stops when dropped.
struct Node {
    address: SocketAddr,
    statuses: Statuses,
    log_dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Node {
    async fn start() -> Node {
        let dir = tempfile::Builder::new()
            .prefix("kt-nodeapi-")
            .tempdir()
            .unwrap();
        let log_dir = dir.path().join("pods");
        let statuses = Statuses::default();
        statuses
            .lock()
            .unwrap()
            .insert(UID.to_owned(), pod("web", UID, true));
        let api = NodeApi {
            statuses: statuses.clone(),
            pod_logs_dir: log_dir.clone(),
            node_name: "node1".to_owned(),
            // Not read here: /stats/summary and exec are covered by the static pod tests.
            cgroups: CgroupManager::new(
                Hierarchies {
                    mode: CgroupMode::Unified,
                    v1: Vec::new(),
                    unified: Some(dir.path().join("cgroup")),
                    named: Vec::new(),
                },
                "/",
            ),
            runc: Runc::new(Path::new("runc"), &dir.path().join("runc")),
            netns_dir: dir.path().join("netns"),
            require_client_certificate: false,
        };
        let mut config = NodeApiConfig::new(TlsFiles::SelfSigned {
            dir: dir.path().join("pki"),
        });
        config.bind = "127.0.0.1:0".parse().unwrap();
        config.node_addresses = vec!["127.0.0.1".parse().unwrap()];
        let server = NodeApiServer::bind(config, api).await.unwrap();
        let address = server.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Node {
            address,
            statuses,
            log_dir,
            stop: Some(stop),
            server,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.address)
    }

    async fn get(&self, path: &str) -> curl::Reply {
        curl::request(&self.url(path), &[]).await
    }

    /// The directory of container `container` of the test pod.
    fn container_dir(&self, container: &str) -> PathBuf {
        let dir = self
            .log_dir
            .join(format!("default_web_{UID}"))
            .join(container);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn set_running(&self, running: bool) {
        self.statuses
            .lock()
            .unwrap()
            .insert(UID.to_owned(), pod("web", UID, running));
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.server.abort();
    }
}

fn pod(name: &str, uid: &str, running: bool) -> Pod {
    let state = if running {
        ContainerState {
            running: Some(ContainerStateRunning::default()),
            ..Default::default()
        }
    } else {
        ContainerState {
            terminated: Some(ContainerStateTerminated::default()),
            ..Default::default()
        }
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("default".to_owned()),
            uid: Some(uid.to_owned()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".to_owned(),
                image: Some("busybox".to_owned()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".to_owned()),
            container_statuses: Some(vec![ContainerStatus {
                name: "app".to_owned(),
                state: Some(state),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

fn append(path: &Path, text: &str) {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_pods_and_not_found() {
    let node = Node::start().await;
    let health = node.get("/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));
    assert_eq!(health.http_version, "2", "curl negotiates HTTP/2 over ALPN");
    let http1 = curl::request(&node.url("/healthz"), &["--http1.1"]).await;
    assert_eq!((http1.status, http1.http_version.as_str()), (200, "1.1"));

    let pods = node.get("/pods").await;
    assert_eq!(pods.status, 200);
    let list: serde_json::Value = serde_json::from_str(&pods.body).unwrap();
    assert_eq!(list["kind"], "PodList");
    assert_eq!(list["apiVersion"], "v1");
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let item = &list["items"][0];
    assert_eq!(item["metadata"]["uid"], UID);
    assert_eq!(item["status"]["phase"], "Running");
    assert!(item["status"]["containerStatuses"][0]["state"]["running"].is_object());

    for (path, status, text) in [
        ("/nothing", 404, "404 page not found"),
        (
            "/containerLogs/default/nope/app",
            404,
            "pod \"nope\" not found",
        ),
        (
            "/containerLogs/other/web/app",
            404,
            "not found in namespace \"other\"",
        ),
        (
            "/containerLogs/default/web/nope",
            404,
            "container \"nope\" not found",
        ),
        ("/containerLogs/default/web/app", 400, "is waiting to start"),
        (
            "/containerLogs/default/web/app?tailLines=x",
            400,
            "invalid tailLines",
        ),
    ] {
        let reply = node.get(path).await;
        assert_eq!(reply.status, status, "{path}: {reply:?}");
        assert!(reply.body.contains(text), "{path}: {reply:?}");
    }
    let post = curl::request(&node.url("/pods"), &["-X", "POST"]).await;
    assert_eq!(post.status, 405, "{post:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_logs_tail_timestamps_previous() {
    let node = Node::start().await;
    let dir = node.container_dir("app");
    // Instance 0 and the previous one before it is missing: only instance 0 exists.
    append(
        &dir.join("0.log"),
        "2020-01-02T09:00:00Z stdout F first run\n",
    );
    let previous = node
        .get("/containerLogs/default/web/app?previous=true")
        .await;
    assert_eq!(previous.status, 400, "{previous:?}");
    assert_eq!(
        previous.body,
        "previous terminated container \"app\" in pod \"web\" not found\n"
    );

    // Instance 1 with a rotated part before its live file.
    append(
        &dir.join("1.log.20261125-095959.000000"),
        "2020-01-02T09:59:59Z stdout F rotated\n",
    );
    append(&dir.join("1.log"), CURRENT);
    let all = node.get("/containerLogs/default/web/app").await;
    assert_eq!(all.status, 200);
    assert_eq!(all.body, "rotated\none\ntwo\nthree\n");
    let tail = node.get("/containerLogs/default/web/app?tailLines=2").await;
    assert_eq!(tail.body, "two\nthree\n");
    let stamped = node
        .get("/containerLogs/default/web/app?tailLines=1&timestamps=true")
        .await;
    assert_eq!(stamped.body, "2020-01-02T10:00:02.4Z three\n");
    let previous = node
        .get("/containerLogs/default/web/app?previous=true")
        .await;
    assert_eq!(
        (previous.status, previous.body.as_str()),
        (200, "first run\n")
    );
    let limited = node
        .get("/containerLogs/default/web/app?limitBytes=10")
        .await;
    assert_eq!(limited.body, "rotated\non");
    // Every line is older than a minute.
    let since = node
        .get("/containerLogs/default/web/app?sinceSeconds=60")
        .await;
    assert_eq!((since.status, since.body.as_str()), (200, ""));
}

/// Reads `child`'s stdout into `seen` until it holds `expected`.
async fn read_until(stdout: &mut tokio::process::ChildStdout, seen: &mut String, expected: &str) {
    let wait = async {
        let mut buffer = [0; 4096];
        while !seen.contains(expected) {
            let n = stdout.read(&mut buffer).await.unwrap();
            assert!(n > 0, "the follow ended before {expected:?}: {seen:?}");
            seen.push_str(std::str::from_utf8(&buffer[..n]).unwrap());
        }
    };
    // A bound so a broken follow fails instead of hanging the suite.
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("no {expected:?} from the follow; got {seen:?}"));
}

/// Starts `curl -N` on the test container's logs with `query` and reads until `expected`.
async fn start_follow(
    node: &Node,
    query: &str,
    expected: &str,
) -> (tokio::process::Child, tokio::process::ChildStdout, String) {
    let url = node.url(&format!("/containerLogs/default/web/app?{query}"));
    let mut follow = curl::command(&url, &["-N"]).spawn().unwrap();
    let mut stdout = follow.stdout.take().unwrap();
    let mut seen = String::new();
    read_until(&mut stdout, &mut seen, expected).await;
    (follow, stdout, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_streams_across_a_rotation_until_the_container_stops() {
    let node = Node::start().await;
    let dir = node.container_dir("app");
    let live = dir.join("0.log");
    append(&live, CURRENT);
    let (mut follow, mut stdout, mut seen) =
        start_follow(&node, "follow=true&tailLines=1", "three\n").await;
    assert_eq!(seen, "three\n", "tailLines applies to what was there");

    append(&live, "2020-01-02T10:00:03Z stdout F four\n");
    read_until(&mut stdout, &mut seen, "four\n").await;
    // A line written in two parts arrives joined.
    append(&live, "2020-01-02T10:00:04Z stdout P fi\n");
    append(&live, "2020-01-02T10:00:04Z stdout F ve\n");
    read_until(&mut stdout, &mut seen, "five\n").await;
    // Rotated as the runtime does it: renamed, then a new live file.
    append(&live, "2020-01-02T10:00:05Z stdout F six\n");
    std::fs::rename(&live, dir.join("0.log.20261125-100005.000000")).unwrap();
    append(&live, "2020-01-02T10:00:06Z stdout F seven\n");
    read_until(&mut stdout, &mut seen, "seven\n").await;
    assert_eq!(seen, "three\nfour\nfive\nsix\nseven\n");

    // The container stops: the stream ends once the file has stopped growing.
    node.set_running(false);
    let mut rest = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(30), stdout.read_to_string(&mut rest));
    ended
        .await
        .expect("the follow ends after the container stopped")
        .unwrap();
    assert_eq!(rest, "");
    let status = follow.wait().await.unwrap();
    assert!(status.success(), "curl: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_ends_when_the_container_restarts_and_honours_limit_bytes() {
    let node = Node::start().await;
    let dir = node.container_dir("app");
    append(&dir.join("0.log"), CURRENT);
    let (mut follow, mut stdout, mut seen) = start_follow(&node, "follow=true", "three\n").await;
    // The container restarted: instance 1 runs, and the pod still runs a container "app".
    append(
        &dir.join("0.log"),
        "2020-01-02T10:00:05Z stdout F last words\n",
    );
    append(&dir.join("1.log"), "2020-01-02T10:00:06Z stdout F reborn\n");
    let ended = tokio::time::timeout(Duration::from_secs(30), stdout.read_to_string(&mut seen));
    ended.await.expect("the follow of instance 0 ends").unwrap();
    assert_eq!(seen, "one\ntwo\nthree\nlast words\n");
    assert!(follow.wait().await.unwrap().success());

    // limitBytes counts what was there and what followed.
    let (mut follow, mut stdout, mut seen) =
        start_follow(&node, "follow=true&limitBytes=10", "reborn\n").await;
    append(
        &dir.join("1.log"),
        "2020-01-02T10:00:07Z stdout F again and again\n",
    );
    let ended = tokio::time::timeout(Duration::from_secs(30), stdout.read_to_string(&mut seen));
    ended.await.expect("the follow ends at the limit").unwrap();
    assert_eq!(seen, "reborn\naga");
    assert!(follow.wait().await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_server_and_open_follows() {
    let mut node = Node::start().await;
    append(&node.container_dir("app").join("0.log"), CURRENT);
    let (mut follow, _stdout, _) = start_follow(&node, "follow=true", "three\n").await;

    node.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), &mut node.server)
        .await
        .expect("the server stops")
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), follow.wait())
        .await
        .expect("the follow's connection is closed")
        .unwrap();
    assert!(
        !status.success(),
        "the stream was cut, not finished: {status}"
    );
    assert!(
        std::net::TcpStream::connect(node.address).is_err(),
        "nothing listens after the shutdown"
    );
}
