//! `httpGet` probes as kubelet's `DoHTTPProbe`: a GET with kubelet's headers, success for
//! 200 <= status < 400. Redirects follow Go's client under kubelet's policy: to the same host
//! name, up to 10; a redirect to another host is not followed and its 3xx ends the probe as a
//! [`ProbeResult::Warning`] (`Probe terminated redirects`), which counts as a success.
//! HTTPS does not verify the server's certificate, as kubelet does not. The response body is
//! read up to 10 KiB and only quoted in that warning. The wire format is in [`super::wire`].

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::error::ProbeError;
use super::outcome::ProbeResult;
use super::tcp::dial;
use super::wire::{self, Response, Url};

/// Most redirects Go's client follows.
const MAX_REDIRECTS: usize = 10;
/// The `User-Agent` kubelet sends: `kube-probe/<major>.<minor>` of the API the agent serves.
pub const USER_AGENT: &str = "kube-probe/1.33";

/// One `httpGet` probe, resolved against its pod and container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGet {
    /// `http` or `https`.
    pub scheme: String,
    pub host: String,
    pub port: u16,
    /// As in the spec: may carry a query; empty means `/`.
    pub path: String,
    /// `httpHeaders`, in order.
    pub headers: Vec<(String, String)>,
}

/// Runs the probe within `timeout` (the whole exchange, redirects included, as Go's
/// `Client.Timeout`).
pub async fn probe_http(get: &HttpGet, timeout: Duration) -> ProbeResult {
    let first = Url {
        scheme: get.scheme.to_ascii_lowercase(),
        host: get.host.clone(),
        port: get.port,
        path: get.path.clone(),
    };
    let deadline = Instant::now() + timeout;
    let mut url = first.clone();
    let mut redirects = 0;
    loop {
        let response = match tokio::time::timeout_at(deadline, fetch(&url, &first, get)).await {
            Ok(Ok(response)) => response,
            Ok(Err(text)) => return ProbeResult::Failure(format!("Get \"{url}\": {text}")),
            Err(_elapsed) => {
                return ProbeResult::Failure(format!(
                    "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while \
                     awaiting headers)"
                ));
            }
        };
        let next = response
            .redirect_location()
            .and_then(|location| Some((location, url.join(location)?)));
        match next {
            Some((location, next)) if next.host == first.host => {
                if redirects == MAX_REDIRECTS {
                    // Go names the `Location` as written in this error.
                    return ProbeResult::Failure(format!(
                        "Get \"{location}\": stopped after {MAX_REDIRECTS} redirects"
                    ));
                }
                redirects += 1;
                url = next;
            }
            _ => return verdict(&response),
        }
    }
}

/// kubelet's reading of the final response.
fn verdict(response: &Response) -> ProbeResult {
    match response.status {
        200..=299 => ProbeResult::Success,
        300..=399 => ProbeResult::Warning(format!(
            "Probe terminated redirects, Response body: {}",
            String::from_utf8_lossy(&response.body)
        )),
        code => ProbeResult::Failure(format!("HTTP probe failed with statuscode: {code}")),
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One request on a new connection (kubelet disables keep-alive).
async fn fetch(url: &Url, first: &Url, get: &HttpGet) -> Result<Response, String> {
    let tcp = dial(&url.host, url.port).await?;
    let mut stream: Box<dyn Stream> = match url.scheme.as_str() {
        "http" => Box::new(tcp),
        "https" => Box::new(tls_connect(&url.host, tcp).await?),
        other => {
            return Err(ProbeError::UnsupportedScheme {
                scheme: other.to_owned(),
            }
            .to_string());
        }
    };
    // The spec's headers go along to the same host, as Go's client does on redirects.
    let headers = if url.host == first.host {
        get.headers.as_slice()
    } else {
        &[]
    };
    let request = wire::request(url, headers, USER_AGENT);
    wire::exchange(&mut stream, request.as_bytes()).await
}

/// A TLS client session that accepts any certificate (kubelet's `InsecureSkipVerify`).
async fn tls_connect(
    host: &str,
    tcp: tokio::net::TcpStream,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| {
            ProbeError::Tls {
                host: host.to_owned(),
                message: error.to_string(),
            }
            .to_string()
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|error| {
        ProbeError::Tls {
            host: host.to_owned(),
            message: error.to_string(),
        }
        .to_string()
    })?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|error| super::tcp::go_error_text(&error))
}

/// Accepts every server certificate but still checks the handshake signatures, so the
/// session is at least with whoever holds the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
