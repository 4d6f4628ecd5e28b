//! The node API's listener: TLS (HTTP/2 and HTTP/1.1, upgrades for exec), one task per
//! connection, until the shutdown future completes.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::auth::ClientIdentity;
use super::tls::{self, TlsError, TlsFiles};
use super::{NodeApi, routes};

/// kubelet's port.
pub const DEFAULT_PORT: u16 = 10250;

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("node api certificate")]
    Tls(#[from] TlsError),
    #[error("cannot listen on {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Where and how the node API listens.
#[derive(Debug, Clone)]
pub struct NodeApiConfig {
    /// kubelet's `--address` and `--port`.
    pub bind: SocketAddr,
    /// `--tls-cert-file` and `--tls-private-key-file`, or a self-signed certificate kept under
    /// `<root-dir>/pki/` as kubelet makes one.
    pub tls: TlsFiles,
    /// The node's addresses, put in a self-signed certificate beside the node's name
    /// ([`NodeApi::node_name`]).
    pub node_addresses: Vec<IpAddr>,
    /// The CA client certificates must come from; `None`: no client authentication.
    pub client_ca: Option<tls::ClientCa>,
}

impl NodeApiConfig {
    /// Port 10250 on loopback, as the agent's `--address` defaults without a client CA:
    /// kubelet listens on every address, but without a CA
    /// [`authorize`](super::auth::authorize) checks no client and `/exec` runs commands in
    /// containers.
    pub fn new(tls: TlsFiles) -> NodeApiConfig {
        NodeApiConfig {
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_PORT),
            tls,
            node_addresses: Vec::new(),
            client_ca: None,
        }
    }
}

/// A bound node API, not serving yet: [`NodeApiServer::local_addr`] tells the port when the
/// configuration asked for port 0.
#[derive(Debug)]
pub struct NodeApiServer {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    api: Arc<NodeApi>,
}

impl NodeApiServer {
    /// Loads or makes the certificate and binds the listener.
    pub async fn bind(
        config: NodeApiConfig,
        mut api: NodeApi,
    ) -> Result<NodeApiServer, ServerError> {
        api.require_client_certificate |= config.client_ca.is_some();
        let tls = tls::server_config(
            &config.tls,
            &api.node_name,
            &config.node_addresses,
            config.client_ca.as_ref(),
        )?;
        let listener =
            TcpListener::bind(config.bind)
                .await
                .map_err(|source| ServerError::Bind {
                    address: config.bind,
                    source,
                })?;
        Ok(NodeApiServer {
            listener,
            tls,
            api: Arc::new(api),
        })
    }

    /// The address the listener got.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// Serves until `shutdown` completes, then closes the listener and drops every open
    /// connection (followed logs included).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        accept_loop(self.listener, self.tls, self.api, shutdown).await;
    }
}

/// Binds and serves until `shutdown` completes.
pub async fn serve(
    config: NodeApiConfig,
    api: NodeApi,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    NodeApiServer::bind(config, api).await?.run(shutdown).await;
    Ok(())
}

pub(super) async fn accept_loop(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    api: Arc<NodeApi>,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait for some to close.
                log::warn!("node api: cannot accept a connection: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let api = Arc::clone(&api);
        connections.spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    log::debug!("node api: tls handshake with {peer} failed: {error}");
                    return;
                }
                Err(_) => {
                    log::debug!("node api: tls handshake with {peer} timed out");
                    return;
                }
            };
            let client = Arc::new(ClientIdentity {
                address: peer,
                certificates: tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
                    .unwrap_or_default(),
            });
            let service = hyper::service::service_fn(move |request| {
                let api = Arc::clone(&api);
                let client = Arc::clone(&client);
                async move { Ok::<_, Infallible>(routes::handle(&api, &client, request).await) }
            });
            if let Err(error) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                log::debug!("node api: connection from {peer}: {error}");
            }
        });
    }
    // Dropping the set aborts the connections still open.
    connections.shutdown().await;
}
