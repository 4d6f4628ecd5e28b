//! The rustls server configuration: the serving certificate, client certificates verified
//! against the cluster CA but optional (a request without one may still carry a bearer
//! token; one with neither gets 401), and ALPN for HTTP/2 and HTTP/1.1.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;

use crate::pki::Pki;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot parse {what} PEM")]
    Pem {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no {what} in its PEM file")]
    Missing { what: &'static str },
    #[error("cannot build the TLS configuration")]
    Rustls(#[from] rustls::Error),
    #[error("cannot build the client certificate verifier: {0}")]
    Verifier(String),
}

/// The server's TLS configuration from the cluster's certificates.
pub fn server_config(pki: &Pki) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for certificate in rustls_pemfile::certs(&mut pki.ca.cert_pem.as_bytes()) {
        let certificate = certificate.map_err(|source| TlsError::Pem { what: "CA", source })?;
        roots.add(certificate)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|error| TlsError::Verifier(error.to_string()))?;
    let chain = rustls_pemfile::certs(&mut pki.serving.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what: "serving certificate",
            source,
        })?;
    let key = rustls_pemfile::private_key(&mut pki.serving.key_pem.as_bytes())
        .map_err(|source| TlsError::Pem {
            what: "serving key",
            source,
        })?
        .ok_or(TlsError::Missing {
            what: "serving key",
        })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
