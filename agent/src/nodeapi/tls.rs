//! The node API's serving certificate: the files given (`--tls-cert-file`,
//! `--tls-private-key-file`), or, as kubelet does without them, a self-signed one for the node's
//! name and addresses kept under `<root-dir>/pki/`.

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

/// Where the certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsFiles {
    Given { cert: PathBuf, key: PathBuf },
    SelfSigned { dir: PathBuf },
}

/// The rustls server configuration (HTTP/2 and HTTP/1.1).
pub fn server_config(
    files: &TlsFiles,
    node_name: &str,
    addresses: &[IpAddr],
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
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(&cert_path, e.to_string()))?
        .with_no_client_auth()
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
