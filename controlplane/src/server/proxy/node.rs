//! Reaching a node agent: its address and port from the Node object, and HTTPS with the API
//! server's kubelet client certificate, the agent's serving certificate taken unverified (as
//! kube-apiserver without `--kubelet-certificate-authority`).

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ::http::{Method, Request, Response, header};
use bytes::Bytes;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::api::ApiError;
use crate::pki::CertifiedKey;
use crate::server::ApiServer;
use crate::server::http::Body;

/// kubelet's port, when a Node does not name one (`--kubelet-port`).
pub const DEFAULT_PORT: u16 = 10250;
/// How long dialling a node may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// The address types tried, in order (kubeadm's `--kubelet-preferred-address-types`).
const ADDRESS_TYPES: [&str; 3] = ["InternalIP", "ExternalIP", "Hostname"];

/// Where a node agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// The agent's endpoint from a Node object.
    pub fn of(node: &Value) -> Option<Endpoint> {
        let addresses = node.pointer("/status/addresses")?.as_array()?;
        let host = ADDRESS_TYPES.iter().find_map(|wanted| {
            addresses
                .iter()
                .find(|address| address["type"] == *wanted)
                .and_then(|address| address["address"].as_str())
                .filter(|address| !address.is_empty())
        })?;
        let port = node
            .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
            .and_then(Value::as_u64)
            .and_then(|port| u16::try_from(port).ok())
            .filter(|port| *port != 0)
            .unwrap_or(DEFAULT_PORT);
        Some(Endpoint {
            host: host.to_owned(),
            port,
        })
    }

    /// `host:port`, IPv6 addresses bracketed.
    pub fn authority(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(address)) => format!("[{address}]:{}", self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }

    /// `https://host:port/path`, as errors name it.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.authority())
    }

    /// A request for `path` (with its query) on this node.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        body: Body,
    ) -> Result<Request<Body>, ApiError> {
        Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.authority())
            .body(body)
            .map_err(|error| ApiError::internal(format!("bad node request {path}: {error}")))
    }
}

/// The TLS client configuration for node agents, from the kubelet client certificate.
pub fn client_config(certificate: &CertifiedKey) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = rustls_pemfile::certs(&mut certificate.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("kubelet client certificate: {error}"))?;
    let key = rustls_pemfile::private_key(&mut certificate.key_pem.as_bytes())
        .map_err(|error| format!("kubelet client key: {error}"))?
        .ok_or("kubelet client key: no key in its PEM")?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(UnverifiedServer(provider)))
        .with_client_auth_cert(chain, key)
        .map_err(|error| format!("kubelet client certificate: {error}"))?;
    // Upgrades (exec, port-forward) need HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Takes any server certificate whose handshake signature is valid.
#[derive(Debug)]
struct UnverifiedServer(Arc<CryptoProvider>);

impl ServerCertVerifier for UnverifiedServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Sends one request to the node over a new HTTP/1.1 connection (upgrades allowed) and
/// returns its response head and body.
pub async fn send(
    server: &ApiServer,
    endpoint: &Endpoint,
    request: Request<Body>,
) -> Result<Response<Incoming>, ApiError> {
    let method = request.method().as_str().to_owned();
    let path = request.uri().to_string();
    let failed = |detail: String| {
        ApiError::internal(format!(
            "{} \"{}\": {detail}",
            title_case(&method),
            endpoint.url(&path)
        ))
    };
    let config = server
        .kubelet_client
        .clone()
        .ok_or_else(|| failed("no kubelet client certificate configured".into()))?;
    let authority = endpoint.authority();
    let tcp = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(&authority))
        .await
        .map_err(|_| failed(format!("dial tcp {authority}: i/o timeout")))?
        .map_err(|error| failed(format!("dial tcp {authority}: {error}")))?;
    let _ = tcp.set_nodelay(true);
    let name = match endpoint.host.parse::<IpAddr>() {
        Ok(address) => ServerName::IpAddress(address.into()),
        Err(_) => ServerName::try_from(endpoint.host.clone())
            .map_err(|error| failed(format!("bad node name: {error}")))?,
    };
    let tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|error| failed(format!("tls: {error}")))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|error| failed(error.to_string()))?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            log::debug!("node connection ended: {error}");
        }
    });
    sender
        .send_request(request)
        .await
        .map_err(|error| failed(error.to_string()))
}

/// `GET` -> `Get`, as Go's HTTP client names the method in its errors.
fn title_case(method: &str) -> String {
    let lower = method.to_ascii_lowercase();
    let mut characters = lower.chars();
    characters
        .next()
        .map(|first| first.to_ascii_uppercase().to_string() + characters.as_str())
        .unwrap_or_default()
}

/// A node's response body as this server's body type; it ends early if the node's does.
pub fn relay_body(mut body: Incoming) -> Body {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        loop {
            // A client gone while the node says nothing (an idle `logs -f`) ends the relay
            // too, closing the node connection.
            let frame = tokio::select! {
                () = sender.closed() => break,
                frame = body.frame() => frame,
            };
            let Some(Ok(frame)) = frame else { break };
            if let Ok(data) = frame.into_data()
                && sender.send(data).await.is_err()
            {
                break;
            }
        }
    });
    let stream = futures::stream::poll_fn(move |context| {
        receiver
            .poll_recv(context)
            .map(|data| data.map(|data| Ok::<_, Infallible>(Frame::data(data))))
    });
    StreamBody::new(stream).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_endpoint_is_the_internal_ip_and_the_daemon_port() {
        let node = json!({"status": {
            "addresses": [{"type": "Hostname", "address": "node1"}, {"type": "InternalIP", "address": "198.18.63.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10260}},
        }});
        assert_eq!(
            Endpoint::of(&node),
            Some(Endpoint {
                host: "198.18.63.1".into(),
                port: 10260
            })
        );
        let bare = json!({"status": {"addresses": [{"type": "Hostname", "address": "node1"}]}});
        assert_eq!(Endpoint::of(&bare).unwrap().authority(), "node1:10250");
        let v6 = json!({"status": {"addresses": [{"type": "InternalIP", "address": "fd00::1"}]}});
        assert_eq!(Endpoint::of(&v6).unwrap().authority(), "[fd00::1]:10250");
        assert_eq!(Endpoint::of(&json!({"status": {}})), None);
        assert_eq!(title_case("GET"), "Get");
    }
}
