//! `/portForward/<ns>/<pod>`: TCP connections to the pod's ports, as kubelet serves them.
//!
//! - SPDY/3.1 (`Upgrade: SPDY/3.1`, `X-Stream-Protocol-Version: portforward.k8s.io`): per
//!   forwarded connection the client opens an `error` and a `data` stream with the same
//!   `port` and `requestID` headers ([`session`]); what kubectl sends, directly or tunnelled
//!   in WebSocket through the API server.
//! - WebSocket (`v4.channel.k8s.io`, `?port=80&port=443`): per port a data channel (`2i`) and
//!   an error channel (`2i+1`), each starting with the port as 2 bytes little-endian
//!   ([`channels`]).
//!
//! Each connection goes to `localhost:<port>` inside the pod's network namespace (as the
//! container runtime's port-forward does), so servers bound to the pod's loopback are reached
//! too; a `hostNetwork` pod's is the agent's own.

mod channels;
mod session;
pub mod spdy;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use k8s_openapi::api::core::v1::Pod;
use tokio::net::TcpStream;

use super::NodeApi;
use super::routes::{Body, find, not_found, pod_not_found, text};

/// The SPDY subprotocol kubectl asks for.
pub const PROTOCOL: &str = "portforward.k8s.io";
/// How long a connection to the pod may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a pod's ports are.
#[derive(Debug, Clone)]
pub struct Target {
    /// The pod's network namespace; `None`: the agent's own (`hostNetwork`).
    pub netns: Option<PathBuf>,
    /// `<name>_<namespace>` and the UID, for messages.
    pub pod: String,
    pub uid: String,
}

impl Target {
    fn of(api: &NodeApi, pod: &Pod) -> Target {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|spec| spec.host_network)
            .unwrap_or(false);
        Target {
            netns: (!host_network).then(|| api.netns_dir.join(&uid)),
            pod: format!(
                "{}_{}",
                pod.metadata.name.as_deref().unwrap_or(""),
                pod.metadata.namespace.as_deref().unwrap_or("")
            ),
            uid,
        }
    }

    /// Connects to `localhost:port` in the pod's network namespace.
    pub async fn connect(&self, port: u16) -> Result<TcpStream, String> {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let Some(netns) = self.netns.clone() else {
            return tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
                .await
                .map_err(|_| format!("failed to connect to localhost:{port}: timed out"))?
                .map_err(|error| format!("failed to connect to localhost:{port}: {error}"));
        };
        let inside = netns.clone();
        let connected = tokio::task::spawn_blocking(move || {
            crate::sys::netns::run_in(&inside, || {
                std::net::TcpStream::connect_timeout(&address, CONNECT_TIMEOUT)
            })
        })
        .await
        .map_err(|error| error.to_string())?;
        let stream = connected
            .map_err(|error| error.to_string())
            .and_then(|result| result.map_err(|error| error.to_string()))
            .map_err(|error| {
                format!(
                    "failed to connect to localhost:{port} inside namespace {:?}: {error}",
                    netns.display().to_string()
                )
            })?;
        stream
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(stream))
            .map_err(|error| error.to_string())
    }

    /// kubelet's message for a failed forward.
    pub fn error_text(&self, port: u16, error: &str) -> String {
        format!(
            "error forwarding port {port} to pod {}, uid {}: {error}",
            self.pod, self.uid
        )
    }
}

fn header_tokens(request: &Request<Incoming>, name: &str) -> Vec<String> {
    request
        .headers()
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|token| token.trim().to_owned())
        .filter(|token| !token.is_empty())
        .collect()
}

fn switching(headers: &[(&str, &str)]) -> Response<Body> {
    let mut response = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
    for (name, value) in headers {
        response = response.header(*name, *value);
    }
    response
        .body(Full::new(Bytes::new()).boxed())
        .expect("a valid response")
}

/// Takes a port-forward upgrade, SPDY or WebSocket.
pub(super) fn upgrade(api: &NodeApi, mut request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ["portForward", namespace, name] = segments.as_slice() else {
        return not_found();
    };
    let Some(pod) = find(api, namespace, name) else {
        return pod_not_found(namespace, name);
    };
    let target = Target::of(api, &pod);
    let upgrade = header_tokens(&request, "upgrade")
        .join(",")
        .to_ascii_lowercase();
    if upgrade.contains("websocket") {
        return channels::upgrade(request, target);
    }
    if !upgrade.contains("spdy/3.1") {
        return text(StatusCode::BAD_REQUEST, "Upgrade request required\n");
    }
    // httpstream.Handshake: the client's protocols, if it names any, must include ours.
    let offered = header_tokens(&request, "x-stream-protocol-version");
    if !offered.is_empty() && !offered.iter().any(|protocol| protocol == PROTOCOL) {
        return text(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts [\"{PROTOCOL}\"]\n"
            ),
        );
    }
    let upgraded = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match upgraded.await {
            Ok(upgraded) => session::serve(upgraded, target).await,
            Err(error) => log::debug!("node api: port-forward upgrade failed: {error}"),
        }
    });
    switching(&[
        ("connection", "Upgrade"),
        ("upgrade", "SPDY/3.1"),
        ("x-stream-protocol-version", PROTOCOL),
    ])
}
