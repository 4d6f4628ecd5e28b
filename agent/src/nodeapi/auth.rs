//! Who may use the node API. kubelet authenticates clients by their certificates
//! (`--client-ca-file`) or bearer tokens (TokenReview) and authorizes them with
//! SubjectAccessReview against `nodes/proxy`, `nodes/log`, `nodes/stats`. That comes with the
//! cluster work; until then [`authorize`] is the one place that decides, and it lets every TLS
//! client in (which is why the agent listens on loopback by default).

use std::net::SocketAddr;

use rustls::pki_types::CertificateDer;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("unauthorized")]
    Unauthenticated,
    #[error("forbidden: {0}")]
    Forbidden(String),
}

/// What is known about the client of a connection.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub address: SocketAddr,
    /// The certificate chain the client presented, leaf first (none while the server does not
    /// ask for one).
    pub certificates: Vec<CertificateDer<'static>>,
}

/// Whether `client` may make a request with `method` to `path`. Every request goes through
/// here before it is routed.
pub fn authorize(
    client: &ClientIdentity,
    method: &http::Method,
    path: &str,
) -> Result<(), AuthError> {
    log::trace!(
        "node api: {method} {path} from {} ({} client certificates): allowed, no authn/authz yet",
        client.address,
        client.certificates.len()
    );
    Ok(())
}
