//! kubelet's node API (HTTPS, port 10250): what a node tells about itself and its pods.
//!
//! - `GET /healthz`: `ok`;
//! - `GET /pods`: the `v1` `PodList` of what this node runs, static pods included, with status;
//! - `GET /containerLogs/<ns>/<pod>/<container>` with `follow`, `tailLines`, `timestamps`,
//!   `previous`, `sinceSeconds`, `limitBytes` ([`logs`], [`cri`], [`follow`]);
//! - `GET /stats/summary`: CPU and memory from cgroups ([`stats`]);
//! - `/exec/<ns>/<pod>/<container>` over WebSocket (`v5.channel.k8s.io`, with or without a TTY; [`exec`]);
//! - `/attach/<ns>/<pod>/<container>` over WebSocket: the container's output from now on
//!   (no stdin, no TTY; [`attach`]);
//! - `/portForward/<ns>/<pod>` over SPDY/3.1 or WebSocket `v4.channel.k8s.io` ([`portforward`]);
//! - anything else: 404.
//!
//! [`server`] owns the listener (TLS from [`tls`], HTTP/1.1 and HTTP/2) and shutdown; [`routes`]
//! picks the handler after [`auth::authorize`]: with a client CA (`--client-ca-file`, or the
//! kubeconfig's CA) only clients with a certificate from it, in an admin group, get in;
//! without one every client does (and the agent listens on loopback only).

pub mod attach;
pub mod auth;
pub mod cri;
pub mod exec;
pub mod follow;
mod logs;
pub mod portforward;
pub mod pty;
mod routes;
pub mod server;
pub mod stats;
pub mod tls;
pub mod websocket;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::pods::worker::Statuses;

pub use server::{DEFAULT_PORT, NodeApiConfig, NodeApiServer, ServerError, serve};
pub use tls::TlsFiles;

/// What the node API serves from.
#[derive(Debug, Clone)]
pub struct NodeApi {
    /// The node's pods by UID, with their status.
    pub statuses: Statuses,
    /// kubelet's `--pod-logs-dir`: `<ns>_<pod>_<uid>/<container>/<n>.log`.
    pub pod_logs_dir: PathBuf,
    pub node_name: String,
    pub cgroups: crate::cgroups::CgroupManager,
    pub runc: crate::runtime::runc::Runc,
    /// Where the pods' network namespaces are bound (`<root-dir>/netns/<uid>`).
    pub netns_dir: PathBuf,
    /// Whether clients must present a certificate from the client CA (the TLS configuration
    /// verifies the certificates presented).
    pub require_client_certificate: bool,
}

impl NodeApi {
    /// Serves HTTPS on a bound `listener` until the task is dropped; [`serve`] and
    /// [`NodeApiServer`] also bind, make the certificate and stop on a shutdown future.
    pub async fn serve(self, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
        server::accept_loop(listener, tls, Arc::new(self), std::future::pending()).await;
    }
}
