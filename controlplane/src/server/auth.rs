//! Authentication: x509 client certificates signed by the cluster CA (CN = user, O = groups)
//! and bearer tokens from a static token file (`--token-auth-file`, upstream's CSV format:
//! `token,user,uid,"group1,group2"`). A request with neither is unauthenticated.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use x509_parser::prelude::{FromDer as _, X509Certificate};

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    fn new(user: String, mut groups: Vec<String>) -> Self {
        groups.push("system:authenticated".into());
        Self { user, groups }
    }
}

/// The identity in a verified client certificate.
pub fn from_certificate(der: &[u8]) -> Option<Identity> {
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
    Some(Identity::new(user, groups))
}

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read token file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token file {path}, line {line}: {reason}")]
    Invalid {
        path: PathBuf,
        line: usize,
        reason: &'static str,
    },
}

/// Static bearer tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens(HashMap<String, Identity>);

impl Tokens {
    pub fn load(path: &Path) -> Result<Self, TokenFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut tokens = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let invalid = |reason| TokenFileError::Invalid {
                path: path.to_owned(),
                line: index + 1,
                reason,
            };
            let fields = split_csv(line);
            if fields.len() < 3 {
                return Err(invalid("expected token,user,uid[,\"group,...\"]"));
            }
            if fields[0].is_empty() || fields[1].is_empty() {
                return Err(invalid("token and user may not be empty"));
            }
            let groups = fields
                .get(3)
                .map(|groups| {
                    groups
                        .split(',')
                        .map(str::trim)
                        .filter(|group| !group.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            tokens.insert(fields[0].clone(), Identity::new(fields[1].clone(), groups));
        }
        Ok(Self(tokens))
    }

    /// The identity of an `Authorization` header value, if it holds a known bearer token.
    pub fn authenticate(&self, authorization: &str) -> Option<Identity> {
        let token = authorization
            .strip_prefix("Bearer ")
            .or_else(|| authorization.strip_prefix("bearer "))?
            .trim();
        self.0.get(token).cloned()
    }
}

/// Splits one CSV line (double quotes group commas).
fn split_csv(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut quoted = false;
    for character in line.chars() {
        match character {
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(String::new()),
            other => fields.last_mut().expect("never empty").push(other),
        }
    }
    fields
        .into_iter()
        .map(|field| field.trim().to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_lines() {
        let dir = tempfile::Builder::new()
            .prefix("keel-tokens-")
            .tempdir()
            .unwrap();
        let path = dir.path().join("tokens.csv");
        std::fs::write(
            &path,
            "# comment\nsecret1,alice,1,\"dev,ops\"\nsecret2,bob,2\n",
        )
        .unwrap();
        let tokens = Tokens::load(&path).unwrap();
        let alice = tokens.authenticate("Bearer secret1").unwrap();
        assert_eq!(alice.user, "alice");
        assert_eq!(alice.groups, ["dev", "ops", "system:authenticated"]);
        assert!(tokens.authenticate("Bearer nope").is_none());
        std::fs::write(&path, "onlytoken\n").unwrap();
        let error = Tokens::load(&path).unwrap_err().to_string();
        assert!(error.contains("line 1"), "{error}");
    }

    #[test]
    fn certificate_subject_names_user_and_groups() {
        let dir = tempfile::Builder::new()
            .prefix("keel-auth-")
            .tempdir()
            .unwrap();
        let pki = crate::pki::Pki::ensure(dir.path(), &[], "https://127.0.0.1:6443").unwrap();
        let client = pki.issue_client("jane", Some("devs")).unwrap();
        let der = rustls_pemfile::certs(&mut client.cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let identity = from_certificate(&der).unwrap();
        assert_eq!(identity.user, "jane");
        assert_eq!(identity.groups, ["devs", "system:authenticated"]);
    }
}
