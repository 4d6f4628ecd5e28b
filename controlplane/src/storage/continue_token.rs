//! The opaque `continue` token of paginated lists.
//!
//! Same wire format as kube-apiserver (`base64url(no padding)` of
//! `{"v":"meta.k8s.io/v1","rv":<revision>,"start":"<key suffix>"}`), so tokens stay valid
//! across servers of one cluster. `start` is the next key relative to the listed prefix, and
//! `rv` the revision the first page was read at; later pages read at that same revision. An
//! `rv` of `-1` means "continue at the latest revision" (handed out with an expired token).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::{KeyPrefix, StorageError};

const TOKEN_VERSION: &str = "meta.k8s.io/v1";

#[derive(Serialize, Deserialize)]
struct Token {
    #[serde(rename = "v")]
    version: String,
    #[serde(rename = "rv")]
    revision: i64,
    #[serde(rename = "start")]
    start: String,
}

/// Where a continued list resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Continuation {
    /// Full etcd key to start at (inclusive).
    pub start_key: String,
    /// Revision to read at; `None` for "latest".
    pub revision: Option<i64>,
}

/// Encodes a token resuming at `next_key` (a full key under `prefix`) at `revision`
/// (`-1` for latest).
pub(crate) fn encode(next_key: &str, prefix: &KeyPrefix, revision: i64) -> String {
    let start = next_key
        .strip_prefix(prefix.as_str())
        .unwrap_or(next_key)
        .to_owned();
    let token = Token {
        version: TOKEN_VERSION.to_owned(),
        revision,
        start,
    };
    // Serializing a struct of a string, an integer and a string cannot fail.
    let json = serde_json::to_vec(&token).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(json)
}

/// Decodes a token for a list of `prefix`, refusing tokens that would range outside it.
pub(crate) fn decode(token: &str, prefix: &KeyPrefix) -> Result<Continuation, StorageError> {
    let invalid = |reason: String| StorageError::InvalidContinue { reason };
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|error| invalid(format!("not base64: {error}")))?;
    let token: Token =
        serde_json::from_slice(&bytes).map_err(|error| invalid(format!("not a token: {error}")))?;
    if token.version != TOKEN_VERSION {
        return Err(invalid(format!(
            "server does not recognize encoded version {:?}",
            token.version
        )));
    }
    if token.revision == 0 {
        return Err(invalid(
            "incorrect encoded start resourceVersion".to_owned(),
        ));
    }
    if token.start.is_empty() {
        return Err(invalid("encoded start key empty".to_owned()));
    }
    // A start key with `.`/`..` segments or leading slashes could climb out of the prefix.
    let escapes = token.start.starts_with('/')
        || token
            .start
            .split('/')
            .any(|segment| segment == "." || segment == "..");
    if escapes {
        return Err(invalid(format!("start key {:?} is not clean", token.start)));
    }
    Ok(Continuation {
        start_key: format!("{}{}", prefix.as_str(), token.start),
        revision: (token.revision > 0).then_some(token.revision),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Resource;

    fn pods() -> KeyPrefix {
        Resource::core("pods").unwrap().prefix()
    }

    #[test]
    fn round_trip_keeps_key_and_revision() {
        let token = encode("/registry/pods/ns/web-3\0", &pods(), 17);
        let continuation = decode(&token, &pods()).unwrap();
        assert_eq!(continuation.start_key, "/registry/pods/ns/web-3\0");
        assert_eq!(continuation.revision, Some(17));
    }

    #[test]
    fn matches_upstream_wire_format() {
        let token = encode("/registry/pods/ns/a\0", &pods(), 5);
        let json = URL_SAFE_NO_PAD.decode(token).unwrap();
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"v":"meta.k8s.io/v1","rv":5,"start":"ns/a\u0000"}"#
        );
    }

    #[test]
    fn latest_revision_token() {
        let token = encode("/registry/pods/ns/a", &pods(), -1);
        assert_eq!(decode(&token, &pods()).unwrap().revision, None);
    }

    #[test]
    fn hostile_tokens_are_rejected() {
        let forge = |start: &str, rv: i64| {
            URL_SAFE_NO_PAD.encode(format!(
                r#"{{"v":"meta.k8s.io/v1","rv":{rv},"start":"{start}"}}"#
            ))
        };
        for token in [
            forge("../secrets/x", 3),
            forge("/etc", 3),
            forge("ns/../../x", 3),
            forge("", 3),
            forge("ns/a", 0),
            "%%%".to_owned(),
            URL_SAFE_NO_PAD.encode(r#"{"v":"v2","rv":1,"start":"a"}"#),
        ] {
            assert!(
                matches!(
                    decode(&token, &pods()),
                    Err(StorageError::InvalidContinue { .. })
                ),
                "accepted {token}"
            );
        }
    }
}
