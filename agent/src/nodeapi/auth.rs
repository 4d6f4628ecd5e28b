//! Who may use the node API. kubelet authenticates clients by their certificates
//! (`--client-ca-file`) and authorizes them with a SubjectAccessReview of `nodes/proxy`
//! (`nodes/log`, `nodes/stats`, ...). Keel's agent does the first and, for the second, lets in
//! the identities kube-apiserver and cluster admins have (their certificates' groups
//! `system:masters` / `kubeadm:cluster-admins`, or the user `kube-apiserver-kubelet-client`);
//! every other authenticated client is forbidden, with kubelet's message. Without a client
//! CA the node API authenticates nobody and lets everyone in (the agent then listens on
//! loopback only).

use std::net::SocketAddr;

use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer as _, X509Certificate};

/// The identities let in, by group.
const ADMIN_GROUPS: [&str; 2] = ["system:masters", "kubeadm:cluster-admins"];
/// ... and by user: kube-apiserver's kubelet client certificate.
const APISERVER_USER: &str = "kube-apiserver-kubelet-client";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("Unauthorized")]
    Unauthenticated,
    #[error("Forbidden ({0})")]
    Forbidden(String),
}

/// What is known about the client of a connection.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    pub address: SocketAddr,
    /// The certificate chain the client presented, leaf first, verified against the client
    /// CA by the TLS layer (none when the client sent none, or the server has no CA).
    pub certificates: Vec<CertificateDer<'static>>,
}

/// The user (CN) and groups (O) of a certificate.
fn subject(der: &[u8]) -> Option<(String, Vec<String>)> {
    let (_, certificate) = X509Certificate::from_der(der).ok()?;
    let subject = certificate.subject();
    let user = subject
        .iter_common_name()
        .next()
        .and_then(|name| name.as_str().ok())?
        .to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|organization| organization.as_str().ok().map(str::to_owned))
        .collect();
    Some((user, groups))
}

/// kubelet's verb for a method.
fn verb(method: &http::Method) -> &'static str {
    match *method {
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "get",
    }
}

/// kubelet's `nodes` subresource for a path.
fn subresource(path: &str) -> &'static str {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    match first {
        "stats" => "stats",
        "metrics" => "metrics",
        "logs" => "log",
        "spec" => "spec",
        "configz" => "configz",
        "healthz" => "healthz",
        _ => "proxy",
    }
}

/// Whether `client` may make a request with `method` to `path`. Every request goes through
/// here before it is routed; `require_certificate` says whether a client CA is configured.
pub fn authorize(
    client: &ClientIdentity,
    require_certificate: bool,
    method: &http::Method,
    path: &str,
) -> Result<(), AuthError> {
    if !require_certificate {
        log::trace!(
            "node api: {method} {path} from {}: allowed, no client CA",
            client.address
        );
        return Ok(());
    }
    let (user, groups) = client
        .certificates
        .first()
        .and_then(|leaf| subject(leaf))
        .ok_or(AuthError::Unauthenticated)?;
    if user == APISERVER_USER || groups.iter().any(|g| ADMIN_GROUPS.contains(&g.as_str())) {
        return Ok(());
    }
    Err(AuthError::Forbidden(format!(
        "user={user}, verb={}, resource=nodes, subresource(s)=[{}]",
        verb(method),
        subresource(path)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(user: &str, group: &str) -> ClientIdentity {
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, group);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, user);
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        ClientIdentity {
            address: "127.0.0.1:1".parse().unwrap(),
            certificates: vec![certificate.der().clone()],
        }
    }

    #[test]
    fn admins_and_the_api_server_get_in_others_are_forbidden() {
        let get = http::Method::GET;
        let anonymous = ClientIdentity {
            address: "127.0.0.1:1".parse().unwrap(),
            certificates: Vec::new(),
        };
        assert_eq!(authorize(&anonymous, false, &get, "/pods"), Ok(()));
        assert_eq!(
            authorize(&anonymous, true, &get, "/pods"),
            Err(AuthError::Unauthenticated)
        );
        let apiserver = client(APISERVER_USER, "kubeadm:cluster-admins");
        assert_eq!(authorize(&apiserver, true, &get, "/exec/a/b/c"), Ok(()));
        let admin = client("kubernetes-admin", "system:masters");
        assert_eq!(
            authorize(&admin, true, &get, "/containerLogs/a/b/c"),
            Ok(())
        );
        let node = client("system:node:node2", "system:nodes");
        let error = authorize(&node, true, &http::Method::POST, "/portForward/a/b").unwrap_err();
        assert_eq!(
            error.to_string(),
            "Forbidden (user=system:node:node2, verb=create, resource=nodes, subresource(s)=[proxy])"
        );
        assert!(
            authorize(&node, true, &get, "/stats/summary")
                .unwrap_err()
                .to_string()
                .contains("subresource(s)=[stats]")
        );
    }
}
