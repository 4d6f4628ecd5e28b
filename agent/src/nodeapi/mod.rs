//! kubelet's node API on port 10250 (HTTPS): `/healthz`, `/pods` (the PodList of what this
//! node runs, static pods included, with status) and `/containerLogs/<ns>/<pod>/<container>`
//! (`follow`, `tailLines`, `timestamps`, `previous`, `sinceSeconds`, `limitBytes`) and
//! `/stats/summary` (CPU and memory from cgroups), and `/exec` over WebSocket
//! (`v5.channel.k8s.io`, no TTY yet). Authentication is not checked yet: anyone who reaches
//! the port may read pods and logs (kubelet's webhook authn/authz comes with the cluster work).

pub mod cri;
pub mod exec;
pub mod stats;
pub mod tls;
pub mod websocket;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Pod;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::pods::worker::Statuses;
use cri::{LogOptions, instances, parse};

type Body = BoxBody<Bytes, Infallible>;

/// What the node API serves from.
#[derive(Debug, Clone)]
pub struct NodeApi {
    pub statuses: Statuses,
    pub pod_logs_dir: PathBuf,
    pub node_name: String,
    pub cgroups: crate::cgroups::CgroupManager,
    pub runc: crate::runtime::runc::Runc,
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.into())).boxed())
        .expect("a valid response")
}

impl NodeApi {
    /// Serves HTTPS on `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
        let acceptor = TlsAcceptor::from(tls);
        let api = Arc::new(self);
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let acceptor = acceptor.clone();
            let api = Arc::clone(&api);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    log::debug!("node API: TLS handshake with {peer} failed");
                    return;
                };
                let service = hyper::service::service_fn(move |request| {
                    let api = Arc::clone(&api);
                    async move { Ok::<_, Infallible>(api.handle(request).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await;
            });
        }
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        if request.uri().path().starts_with("/exec/") {
            return self.exec(request);
        }
        if request.method() != http::Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n");
        }
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or("").to_owned();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match segments.as_slice() {
            ["healthz"] => text(StatusCode::OK, "ok"),
            ["pods"] => self.pods(),
            ["stats", "summary"] => {
                let pods = self.all_pods();
                let summary = stats::summary(&self.cgroups, &self.node_name, &pods);
                Response::builder()
                    .header("content-type", "application/json")
                    .body(
                        Full::new(Bytes::from(serde_json::to_vec(&summary).expect("json"))).boxed(),
                    )
                    .expect("a valid response")
            }
            ["containerLogs", namespace, pod, container] => {
                self.container_logs(namespace, pod, container, &query).await
            }
            _ => text(
                StatusCode::NOT_FOUND,
                format!("404 page not found: {path}\n"),
            ),
        }
    }

    /// Upgrades to a WebSocket and runs the command in the container.
    fn exec(&self, mut request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path().to_owned();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let ["exec", namespace, name, container] = segments.as_slice() else {
            return text(
                StatusCode::NOT_FOUND,
                format!("404 page not found: {path}\n"),
            );
        };
        let options = exec::ExecOptions::from_query(request.uri().query().unwrap_or(""));
        if options.tty {
            return text(StatusCode::BAD_REQUEST, "tty is not supported yet\n");
        }
        if options.command.is_empty() {
            return text(
                StatusCode::BAD_REQUEST,
                "you must specify at least one command for the container\n",
            );
        }
        let headers = request.headers();
        let offered = headers
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(',')
            .map(|p| p.trim().to_owned())
            .collect::<Vec<_>>();
        let Some(protocol) = exec::PROTOCOLS
            .iter()
            .find(|p| offered.iter().any(|o| o == *p))
        else {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "a WebSocket upgrade with one of {:?} is required\n",
                    exec::PROTOCOLS
                ),
            );
        };
        let Some(key) = headers
            .get("sec-websocket-key")
            .and_then(|v| v.to_str().ok())
        else {
            return text(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
        };
        let accept = websocket::accept_key(key);
        let Some(pod) = self.find(namespace, name) else {
            return text(
                StatusCode::NOT_FOUND,
                format!("pod \"{name}\" not found in namespace \"{namespace}\" on this node\n"),
            );
        };
        let running = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .into_iter()
            .flatten()
            .find(|s| {
                s.name == *container && s.state.as_ref().is_some_and(|st| st.running.is_some())
            });
        let Some(id) = running
            .and_then(|s| s.container_id)
            .and_then(|id| id.rsplit("://").next().map(str::to_owned))
        else {
            return text(
                StatusCode::BAD_REQUEST,
                format!("container {container} is not running in pod {name}\n"),
            );
        };
        let upgrade = hyper::upgrade::on(&mut request);
        let runc = self.runc.clone();
        let v5 = *protocol == exec::PROTOCOLS[0];
        tokio::spawn(async move {
            match upgrade.await {
                Ok(upgraded) => exec::session(upgraded, runc, id, options, v5).await,
                Err(error) => log::debug!("node API: exec upgrade failed: {error}"),
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", accept)
            .header("sec-websocket-protocol", *protocol)
            .body(Full::new(Bytes::new()).boxed())
            .expect("a valid response")
    }

    /// Every pod this node runs, with its latest status.
    fn all_pods(&self) -> Vec<Pod> {
        self.statuses
            .lock()
            .expect("statuses lock")
            .values()
            .cloned()
            .collect()
    }

    fn pods(&self) -> Response<Body> {
        let items = self.all_pods();
        let list = serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items});
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(serde_json::to_vec(&list).expect("json"))).boxed())
            .expect("a valid response")
    }

    fn find(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.statuses
            .lock()
            .expect("statuses lock")
            .values()
            .find(|p| {
                p.metadata.namespace.as_deref() == Some(namespace)
                    && p.metadata.name.as_deref() == Some(name)
            })
            .cloned()
    }

    async fn container_logs(
        &self,
        namespace: &str,
        name: &str,
        container: &str,
        query: &str,
    ) -> Response<Body> {
        let options = match LogOptions::from_query(query) {
            Ok(options) => options,
            Err(message) => return text(StatusCode::BAD_REQUEST, message),
        };
        let Some(pod) = self.find(namespace, name) else {
            return text(
                StatusCode::NOT_FOUND,
                format!("pod \"{name}\" not found in namespace \"{namespace}\" on this node\n"),
            );
        };
        let spec = pod.spec.clone().unwrap_or_default();
        let known = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| c.name == container);
        if !known {
            return text(
                StatusCode::NOT_FOUND,
                format!("container \"{container}\" not found in pod \"{name}\"\n"),
            );
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let dir = self
            .pod_logs_dir
            .join(format!("{namespace}_{name}_{uid}"))
            .join(container);
        let found = instances(&dir);
        let pick = if options.previous {
            found.len().checked_sub(2)
        } else {
            found.len().checked_sub(1)
        };
        let Some(index) = pick else {
            return if options.previous {
                text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "previous terminated container \"{container}\" in pod \"{name}\" not found\n"
                    ),
                )
            } else {
                text(
                    StatusCode::BAD_REQUEST,
                    format!("container \"{container}\" in pod \"{name}\" is waiting to start\n"),
                )
            };
        };
        let files = found[index].1.clone();
        let mut text_bytes = Vec::new();
        for file in &files {
            text_bytes.extend(std::fs::read(file).unwrap_or_default());
        }
        let (lines, rest) = parse(&text_bytes);
        let first = options.render(&lines, jiff::Timestamp::now());
        if !options.follow || options.previous {
            return Response::builder()
                .header("content-type", "text/plain")
                .body(Full::new(Bytes::from(first)).boxed())
                .expect("a valid response");
        }
        // Follow: the live file from where the read stopped, until the container stops or the
        // pod goes.
        let live = files.last().cloned().expect("an instance has a file");
        let offset = std::fs::metadata(&live).map_or(0, |m| m.len()) - rest.len() as u64;
        let statuses = Arc::clone(&self.statuses);
        let (pod_uid, container) = (uid.clone(), container.to_owned());
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(16);
        tokio::spawn(async move {
            if sender
                .send(Ok(Frame::data(Bytes::from(first))))
                .await
                .is_err()
            {
                return;
            }
            let mut offset = offset;
            let mut idle = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let data = read_from(&live, offset);
                let (lines, rest) = parse(&data);
                offset += (data.len() - rest.len()) as u64;
                let mut out = Vec::new();
                for line in &lines {
                    options.render_line(line, &mut out);
                }
                if !out.is_empty() {
                    idle = 0;
                    if sender
                        .send(Ok(Frame::data(Bytes::from(out))))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                idle += 1;
                if idle >= 10 && !running(&statuses, &pod_uid, &container) {
                    return;
                }
            }
        });
        let stream = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|frame| (frame, receiver))
        });
        Response::builder()
            .header("content-type", "text/plain")
            .body(StreamBody::new(stream).boxed())
            .expect("a valid response")
    }
}

fn read_from(path: &std::path::Path, offset: u64) -> Vec<u8> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    if file.seek(SeekFrom::Start(offset)).is_err() {
        return Vec::new();
    }
    let mut data = Vec::new();
    let _ = file.read_to_end(&mut data);
    data
}

/// Whether the pod still runs `container`.
fn running(statuses: &Statuses, uid: &str, container: &str) -> bool {
    statuses
        .lock()
        .expect("statuses lock")
        .get(uid)
        .and_then(|pod| pod.status.as_ref()?.container_statuses.clone())
        .into_iter()
        .flatten()
        .any(|s| s.name == container && s.state.as_ref().is_some_and(|st| st.running.is_some()))
}
