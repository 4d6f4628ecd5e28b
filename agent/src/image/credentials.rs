//! Registry credentials: [`RegistryCredentials`] and reading them from a pod's
//! `imagePullSecrets` (`kubernetes.io/dockerconfigjson` or legacy `kubernetes.io/dockercfg`).

use base64::Engine as _;
use serde_json::Value;

use super::ImageError;

/// How to authenticate to a registry for one pull.
#[derive(Clone, PartialEq, Eq)]
pub enum RegistryCredentials {
    Anonymous,
    Basic { username: String, password: String },
}

impl std::fmt::Debug for RegistryCredentials {
    // Keeps passwords out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryCredentials::Anonymous => f.write_str("Anonymous"),
            RegistryCredentials::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
        }
    }
}

impl RegistryCredentials {
    pub(crate) fn to_registry_auth(&self) -> oci_client::secrets::RegistryAuth {
        match self {
            RegistryCredentials::Anonymous => oci_client::secrets::RegistryAuth::Anonymous,
            RegistryCredentials::Basic { username, password } => {
                oci_client::secrets::RegistryAuth::Basic(username.clone(), password.clone())
            }
        }
    }
}

/// Credentials for `registry_host` ("host:port" or "host") from the bytes of a secret's
/// `.dockerconfigjson` (`{"auths": {...}}`) or legacy `.dockercfg` (the `auths` map alone).
/// Keys may be URLs (`https://index.docker.io/v1/`); an entry holds `auth` (base64
/// `user:pass`) or `username` and `password`. `None` when no entry names the host.
pub fn credentials_from_docker_config(
    json: &[u8],
    registry_host: &str,
) -> Result<Option<RegistryCredentials>, ImageError> {
    let bad = |reason: String| ImageError::DockerConfig { reason };
    let document: Value =
        serde_json::from_slice(json).map_err(|error| bad(format!("not json: {error}")))?;
    let auths = match document.get("auths") {
        Some(auths) => auths,
        None => &document,
    };
    let auths = auths
        .as_object()
        .ok_or_else(|| bad("auths is not an object".to_owned()))?;
    let wanted = canonical_host(registry_host);
    let Some((key, entry)) = auths.iter().find(|(key, _)| canonical_host(key) == wanted) else {
        return Ok(None);
    };
    let field = |name: &str| {
        entry
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    if let Some(auth) = field("auth") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| bad(format!("the auth of {key} is not base64")))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| bad(format!("the auth of {key} is not utf-8")))?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| bad(format!("the auth of {key} is not user:password")))?;
        return Ok(Some(RegistryCredentials::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        }));
    }
    match (field("username"), field("password")) {
        (Some(username), Some(password)) => Ok(Some(RegistryCredentials::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        })),
        _ => Err(bad(format!(
            "the entry for {key} has neither auth nor username and password"
        ))),
    }
}

/// `https://index.docker.io/v1/` -> `docker.io`, `http://host:5000/x` -> `host:5000`.
fn canonical_host(key: &str) -> String {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme
        .split('/')
        .next()
        .unwrap_or_default()
        .to_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(username: &str, password: &str) -> Option<RegistryCredentials> {
        Some(RegistryCredentials::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        })
    }

    #[test]
    fn dockerconfigjson_auth_field() {
        // "alice:pa:ss" in base64: passwords may contain colons.
        let json = br#"{"auths":{"127.0.0.1:5000":{"auth":"YWxpY2U6cGE6c3M="}}}"#;
        assert_eq!(
            credentials_from_docker_config(json, "127.0.0.1:5000").unwrap(),
            basic("alice", "pa:ss")
        );
        assert_eq!(
            credentials_from_docker_config(json, "127.0.0.1:5001").unwrap(),
            None
        );
    }

    #[test]
    fn username_and_password_fields_and_url_keys() {
        let json =
            br#"{"auths":{"https://index.docker.io/v1/":{"username":"bob","password":"pw"}}}"#;
        assert_eq!(
            credentials_from_docker_config(json, "docker.io").unwrap(),
            basic("bob", "pw")
        );
    }

    #[test]
    fn legacy_dockercfg() {
        let json = br#"{"http://registry.example:5000/v1/":{"auth":"dTpw","email":"u@example"}}"#;
        assert_eq!(
            credentials_from_docker_config(json, "registry.example:5000").unwrap(),
            basic("u", "p")
        );
    }

    #[test]
    fn malformed_configs_are_errors() {
        assert!(credentials_from_docker_config(b"nope", "x").is_err());
        let json = br#"{"auths":{"x":{"auth":"!!!"}}}"#;
        let error = credentials_from_docker_config(json, "x").unwrap_err();
        assert_eq!(
            error.to_string(),
            "docker config: the auth of x is not base64"
        );
        let json = br#"{"auths":{"x":{"email":"e"}}}"#;
        assert!(credentials_from_docker_config(json, "x").is_err());
    }

    #[test]
    fn debug_hides_the_password() {
        let shown = format!("{:?}", basic("u", "hunter2").unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
