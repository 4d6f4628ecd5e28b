//! The node API's serving certificate: the files given (`--tls-cert-file`,
//! `--tls-private-key-file`), or, as kubelet does without them, a self-signed one for the node's
//! name and addresses kept under `<root-dir>/pki/`. With a client CA, clients' certificates are
//! asked for and verified against it (a client may still send none: it then gets 401).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(String),
}

/// The CA that signs the certificates of the node API's clients.
#[derive(Debug, Clone)]
pub struct ClientCa {
    /// Its certificates, DER.
    pub certificates: Vec<Vec<u8>>,
    /// Where it came from (`--client-ca-file`, or the kubeconfig), for errors.
    pub source: PathBuf,
}

impl ClientCa {
    /// The CA certificates in a PEM file (kubelet's `--client-ca-file`).
    pub fn from_pem_file(path: &Path) -> Result<ClientCa, TlsError> {
        let text = std::fs::read(path).map_err(|source| TlsError::Io {
            path: path.to_owned(),
            source,
        })?;
        let certificates = rustls_pemfile::certs(&mut text.as_slice())
            .map(|certificate| certificate.map(|c| c.to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Invalid {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        Ok(ClientCa {
            certificates,
            source: path.to_owned(),
        })
    }
}

/// Where the certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsFiles {
    Given { cert: PathBuf, key: PathBuf },
    SelfSigned { dir: PathBuf },
}

/// The rustls server configuration (HTTP/2 and HTTP/1.1); `client_ca` is the CA client
/// certificates are verified against.
pub fn server_config(
    files: &TlsFiles,
    node_name: &str,
    addresses: &[IpAddr],
    client_ca: Option<&ClientCa>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (cert_path, key_path) = match files {
        TlsFiles::Given { cert, key } => (cert.clone(), key.clone()),
        TlsFiles::SelfSigned { dir } => {
            let cert = dir.join("kubelet.crt");
            let key = dir.join("kubelet.key");
            if !cert.exists() || !key.exists() {
                generate(dir, &cert, &key, node_name, addresses)?;
            }
            (cert, key)
        }
    };
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Io {
            path: path.to_owned(),
            source,
        })
    };
    let invalid = |path: &Path, message: String| TlsError::Invalid {
        path: path.to_owned(),
        message,
    };
    let certs: Vec<_> = rustls_pemfile::certs(&mut read(&cert_path)?.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(&cert_path, e.to_string()))?;
    let key = rustls_pemfile::private_key(&mut read(&key_path)?.as_slice())
        .map_err(|e| invalid(&key_path, e.to_string()))?
        .ok_or_else(|| invalid(&key_path, "no private key in it".to_owned()))?;
    // An explicit provider: no process-wide default needs to be installed first.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&cert_path, e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in &ca.certificates {
                roots
                    .add(rustls::pki_types::CertificateDer::from(certificate.clone()))
                    .map_err(|e| invalid(&ca.source, e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(invalid(&ca.source, "no certificate in it".to_owned()));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| invalid(&ca.source, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| invalid(&cert_path, e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn generate(
    dir: &Path,
    cert: &Path,
    key: &Path,
    node_name: &str,
    addresses: &[IpAddr],
) -> Result<(), TlsError> {
    let mut names = vec![node_name.to_owned()];
    names.extend(addresses.iter().map(ToString::to_string));
    let certified =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let write = |path: &Path, text: String| {
        std::fs::write(path, text).map_err(|source| TlsError::Io {
            path: path.to_owned(),
            source,
        })
    };
    write(cert, certified.cert.pem())?;
    write(key, certified.signing_key.serialize_pem())
}
