//! The cluster's certificates: a CA made on first start, the API server's serving certificate
//! and the admin's client certificate signed by it, and `admin.kubeconfig`.
//!
//! Layout under `--data-dir` (kubeadm's names, so operators find their way):
//!
//! | file | what |
//! | --- | --- |
//! | `pki/ca.crt`, `pki/ca.key` | the cluster CA (ECDSA P-256, 10 years); clients and the server trust it |
//! | `pki/apiserver.crt`, `pki/apiserver.key` | serving certificate, re-issued at every start for the current SANs |
//! | `pki/admin.crt`, `pki/admin.key` | client certificate `CN=kubernetes-admin, O=system:masters` |
//! | `pki/apiserver-kubelet-client.crt`, `.key` | the API server's client certificate towards node agents (`pods/log`, `exec`, `portforward`): `CN=kube-apiserver-kubelet-client, O=kubeadm:cluster-admins` |
//! | `admin.kubeconfig` | kubeconfig for the admin, certificates embedded |
//!
//! Keys are written mode 0600, through a temporary file and a rename, so a crash never leaves a
//! half-written key under its final name.

use std::fs;
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Days a CA certificate is valid.
const CA_DAYS: i64 = 3650;
/// Days a leaf certificate is valid (kubeadm's one year).
const LEAF_DAYS: i64 = 365;

/// The user and group of the admin client certificate, as kubeadm makes it.
pub const ADMIN_USER: &str = "kubernetes-admin";
pub const ADMIN_GROUP: &str = "system:masters";
/// The user and group of the API server's client certificate towards node agents, as kubeadm
/// makes it (`--kubelet-client-certificate`).
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";
pub const KUBELET_CLIENT_GROUP: &str = "kubeadm:cluster-admins";

/// Errors of reading or creating the cluster's certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a usable {what}: {reason}")]
    Invalid {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("cannot issue the {what} certificate")]
    Issue {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
}

/// PEM text of a certificate and its key.
#[derive(Debug, Clone)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The certificates the API server needs, loaded or created under a data dir.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca: CertifiedKey,
    pub serving: CertifiedKey,
    pub admin: CertifiedKey,
    /// The API server's client certificate for the node agents' API.
    pub kubelet_client: CertifiedKey,
}

impl Pki {
    /// Loads the CA from `data_dir/pki` (creating it on first start), issues a serving
    /// certificate for `hosts` (IP addresses or DNS names), makes the admin certificate if it
    /// is missing, and writes `data_dir/admin.kubeconfig` for `server_url`.
    pub fn ensure(data_dir: &Path, hosts: &[String], server_url: &str) -> Result<Self, PkiError> {
        let dir = data_dir.join("pki");
        fs::create_dir_all(&dir).map_err(|source| PkiError::Write {
            path: dir.clone(),
            source,
        })?;
        let ca = load_or_create(&dir, "ca", issue_ca)?;
        let ca_key = parse_key(&dir.join("ca.key"), &ca.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, &ca_key).map_err(|source| {
            PkiError::Invalid {
                path: dir.join("ca.crt"),
                what: "CA certificate",
                reason: source.to_string(),
            }
        })?;
        let serving = issue_serving(hosts, &issuer)?;
        write_pair(&dir, "apiserver", &serving)?;
        let admin = load_or_create(&dir, "admin", || {
            issue_client(ADMIN_USER, &[ADMIN_GROUP], &issuer)
        })?;
        let kubelet_client = load_or_create(&dir, "apiserver-kubelet-client", || {
            issue_client(KUBELET_CLIENT_USER, &[KUBELET_CLIENT_GROUP], &issuer)
        })?;
        let pki = Pki {
            dir,
            ca,
            serving,
            admin,
            kubelet_client,
        };
        let kubeconfig = kubeconfig(server_url, &pki.ca.cert_pem, ADMIN_USER, &pki.admin);
        write_file(
            &data_dir.join("admin.kubeconfig"),
            kubeconfig.as_bytes(),
            0o600,
        )?;
        Ok(pki)
    }

    /// Issues a client certificate for `user` in `group` (`O=`), signed by the cluster CA (for
    /// agents, controllers and tests). One group per certificate: the certificate library
    /// writes one value per subject attribute; users in several groups use tokens.
    pub fn issue_client(&self, user: &str, group: Option<&str>) -> Result<CertifiedKey, PkiError> {
        let path = self.dir.join("ca.key");
        let ca_key = parse_key(&path, &self.ca.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca.cert_pem, &ca_key).map_err(|source| {
            PkiError::Invalid {
                path: self.dir.join("ca.crt"),
                what: "CA certificate",
                reason: source.to_string(),
            }
        })?;
        issue_client(user, group.as_slice(), &issuer)
    }

    /// Issues a client certificate for `user` (in `group`) and writes a kubeconfig with it to
    /// `path` (mode 0600); returns the kubeconfig's text.
    pub fn write_client_kubeconfig(
        &self,
        path: &Path,
        server_url: &str,
        user: &str,
        group: Option<&str>,
    ) -> Result<String, PkiError> {
        let client = self.issue_client(user, group)?;
        let text = kubeconfig(server_url, &self.ca.cert_pem, user, &client);
        write_file(path, text.as_bytes(), 0o600)?;
        Ok(text)
    }
}

/// A kubeconfig with one cluster, user and context, certificates embedded.
pub fn kubeconfig(server_url: &str, ca_pem: &str, user: &str, client: &CertifiedKey) -> String {
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: keel\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {ca}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: {user}@keel\n  context:\n    cluster: keel\n    user: {user}\ncurrent-context: {user}@keel\npreferences: {{}}\n",
        ca = b64(ca_pem),
        cert = b64(&client.cert_pem),
        key = b64(&client.key_pem),
    )
}

fn load_or_create(
    dir: &Path,
    name: &str,
    create: impl FnOnce() -> Result<CertifiedKey, PkiError>,
) -> Result<CertifiedKey, PkiError> {
    let cert_path = dir.join(format!("{name}.crt"));
    let key_path = dir.join(format!("{name}.key"));
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let pair = CertifiedKey {
                cert_pem: read(&cert_path)?,
                key_pem: read(&key_path)?,
            };
            parse_key(&key_path, &pair.key_pem)?;
            Ok(pair)
        }
        (false, false) => {
            let pair = create()?;
            write_pair(dir, name, &pair)?;
            Ok(pair)
        }
        (cert, _) => Err(PkiError::Invalid {
            path: if cert { key_path } else { cert_path },
            what: "file",
            reason: format!("missing while its {name} partner exists; restore it or remove both"),
        }),
    }
}

fn issue_ca() -> Result<CertifiedKey, PkiError> {
    let issue = |source| PkiError::Issue { what: "CA", source };
    let key = KeyPair::generate().map_err(issue)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name("kubernetes", &[]);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_DAYS);
    let cert = params.self_signed(&key).map_err(issue)?;
    Ok(CertifiedKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn issue_serving(
    hosts: &[String],
    issuer: &Issuer<'_, &KeyPair>,
) -> Result<CertifiedKey, PkiError> {
    let issue = |source| PkiError::Issue {
        what: "API server",
        source,
    };
    let key = KeyPair::generate().map_err(issue)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name("kube-apiserver", &[]);
    for host in hosts {
        let san = match host.parse::<IpAddr>() {
            Ok(address) => SanType::IpAddress(address),
            Err(_) => SanType::DnsName(host.clone().try_into().map_err(issue)?),
        };
        if !params.subject_alt_names.contains(&san) {
            params.subject_alt_names.push(san);
        }
    }
    sign_leaf(params, key, ExtendedKeyUsagePurpose::ServerAuth, issuer).map_err(issue)
}

fn issue_client(
    user: &str,
    groups: &[&str],
    issuer: &Issuer<'_, &KeyPair>,
) -> Result<CertifiedKey, PkiError> {
    let issue = |source| PkiError::Issue {
        what: "client",
        source,
    };
    let key = KeyPair::generate().map_err(issue)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(user, groups);
    sign_leaf(params, key, ExtendedKeyUsagePurpose::ClientAuth, issuer).map_err(issue)
}

/// Signs a leaf certificate (server or client) for `key`, valid for `LEAF_DAYS`.
fn sign_leaf(
    mut params: CertificateParams,
    key: KeyPair,
    purpose: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, &KeyPair>,
) -> Result<CertifiedKey, rcgen::Error> {
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![purpose];
    set_validity(&mut params, LEAF_DAYS);
    let cert = params.signed_by(&key, issuer)?;
    Ok(CertifiedKey {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn name(common_name: &str, organizations: &[&str]) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    for organization in organizations {
        name.push(DnType::OrganizationName, *organization);
    }
    name.push(DnType::CommonName, common_name);
    name
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = rcgen::date_time_ymd(1970, 1, 1)
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
    // Backdated an hour for clocks that disagree a little, as kubeadm does.
    params.not_before = now - std::time::Duration::from_secs(3600);
    params.not_after = now + std::time::Duration::from_secs(days as u64 * 86_400);
}

fn parse_key(path: &Path, pem: &str) -> Result<KeyPair, PkiError> {
    KeyPair::from_pem(pem).map_err(|source| PkiError::Invalid {
        path: path.to_owned(),
        what: "private key",
        reason: source.to_string(),
    })
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Read {
        path: path.to_owned(),
        source,
    })
}

fn write_pair(dir: &Path, name: &str, pair: &CertifiedKey) -> Result<(), PkiError> {
    write_file(
        &dir.join(format!("{name}.key")),
        pair.key_pem.as_bytes(),
        0o600,
    )?;
    write_file(
        &dir.join(format!("{name}.crt")),
        pair.cert_pem.as_bytes(),
        0o644,
    )
}

/// Writes `contents` to `path` through a temporary file in the same directory and a rename.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let error = |source| PkiError::Write {
        path: path.to_owned(),
        source,
    };
    let temporary = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .map_err(error)?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(error)?;
    file.write_all(contents).map_err(error)?;
    file.sync_all().map_err(error)?;
    fs::rename(&temporary, path).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_start_creates_and_second_start_keeps_the_ca() {
        let dir = tempfile::Builder::new()
            .prefix("keel-pki-")
            .tempdir()
            .unwrap();
        let hosts = ["127.0.0.1".to_owned(), "localhost".to_owned()];
        let first = Pki::ensure(dir.path(), &hosts, "https://127.0.0.1:6443").unwrap();
        let second = Pki::ensure(dir.path(), &hosts, "https://127.0.0.1:6443").unwrap();
        assert_eq!(first.ca.cert_pem, second.ca.cert_pem);
        assert_eq!(first.admin.cert_pem, second.admin.cert_pem);
        assert_eq!(
            first.kubelet_client.cert_pem,
            second.kubelet_client.cert_pem
        );
        let mode = fs::metadata(dir.path().join("pki/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let kubeconfig = fs::read_to_string(dir.path().join("admin.kubeconfig")).unwrap();
        assert!(kubeconfig.contains("server: https://127.0.0.1:6443"));
    }

    #[test]
    fn a_lone_key_is_refused_with_its_path() {
        let dir = tempfile::Builder::new()
            .prefix("keel-pki-")
            .tempdir()
            .unwrap();
        fs::create_dir_all(dir.path().join("pki")).unwrap();
        fs::write(dir.path().join("pki/ca.key"), "x").unwrap();
        let error = Pki::ensure(dir.path(), &[], "https://127.0.0.1:6443").unwrap_err();
        assert!(error.to_string().contains("pki/ca.crt"), "{error}");
    }
}
