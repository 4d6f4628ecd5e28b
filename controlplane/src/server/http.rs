//! HTTP plumbing shared by the handlers: the response body type, JSON / YAML encoding and
//! decoding by media type, query parameters, and bounded body reads.

use std::collections::HashMap;
use std::convert::Infallible;

use ::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use serde_json::Value;

use crate::api::ApiError;

/// Every response body: a whole buffer or a stream (watches).
pub type Body = BoxBody<Bytes, Infallible>;

/// Upstream's request body limit (3 MiB, `maxRequestBodyBytes`).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// A JSON response.
pub fn json(status: u16, value: &Value) -> Response<Body> {
    json_with_type(status, value, "application/json")
}

pub fn json_with_type(status: u16, value: &Value, content_type: &str) -> Response<Body> {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    let mut response = Response::new(full(body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/json")),
    );
    response
}

/// A plain-text response (health checks).
pub fn text(status: u16, body: impl Into<String>) -> Response<Body> {
    let mut response = Response::new(full(body.into()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The `Status` of an error, with `Retry-After` where it applies.
pub fn error(error: &ApiError) -> Response<Body> {
    let mut response = json(error.code, &error.to_status());
    if let Some(seconds) = error.details.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if error.code == 401 {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"kubernetes-master\""),
        );
    }
    response
}

/// Query parameters; the last of repeated keys wins, as Go's `url.Values.Get` takes the first
/// (clients do not repeat them, except lists such as exec's `command`: [`Query::all`]).
#[derive(Debug, Clone, Default)]
pub struct Query {
    last: HashMap<String, String>,
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(query: Option<&str>) -> Self {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .map(|(key, value)| (key.into_owned(), value.into_owned()))
            .collect();
        Self {
            last: pairs.iter().cloned().collect(),
            pairs,
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.last.get(key).map(String::as_str)
    }

    /// Every value of a repeated key, in order.
    pub fn all(&self, key: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(name, _)| name == key)
            .map(|(_, value)| value.clone())
            .collect()
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }

    pub fn int(&self, key: &str) -> Result<Option<i64>, ApiError> {
        self.get(key)
            .filter(|value| !value.is_empty())
            .map(|value| {
                value.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid value {value:?} for parameter {key}"))
                })
            })
            .transpose()
    }
}

/// The media type of a `Content-Type` header, lowercased, parameters dropped.
pub fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Reads the request body, refusing more than [`MAX_BODY`] bytes.
pub async fn read_body(body: Incoming) -> Result<Bytes, ApiError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::request_entity_too_large(MAX_BODY))
        }
        Err(error) => Err(ApiError::bad_request(format!(
            "cannot read the request body: {error}"
        ))),
    }
}

/// Decodes a JSON or YAML document into a JSON value.
pub fn decode(bytes: &[u8], media_type: &str) -> Result<Value, ApiError> {
    let value: Value = match media_type {
        "application/yaml"
        | "application/x-yaml"
        | "text/yaml"
        | "application/apply-patch+yaml" => serde_yaml_ng::from_slice(bytes)
            .map_err(|error| ApiError::bad_request(format!("error decoding YAML: {error}")))?,
        _ if media_type.ends_with("json") || media_type.is_empty() => serde_json::from_slice(bytes)
            .map_err(|error| ApiError::bad_request(format!("error decoding JSON: {error}")))?,
        "application/vnd.kubernetes.protobuf" => {
            return Err(ApiError::unsupported_media_type(
                "application/vnd.kubernetes.protobuf (not taken for this request; send JSON or YAML)",
            ));
        }
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_and_json_bodies() {
        let yaml = decode(b"kind: ConfigMap\ndata:\n  a: b\n", "application/yaml").unwrap();
        assert_eq!(yaml["data"]["a"], "b");
        let json = decode(br#"{"kind":"ConfigMap"}"#, "application/json").unwrap();
        assert_eq!(json["kind"], "ConfigMap");
        assert_eq!(
            decode(b"x", "application/vnd.kubernetes.protobuf")
                .unwrap_err()
                .code,
            415
        );
        assert_eq!(decode(b"{", "application/json").unwrap_err().code, 400);
    }

    #[test]
    fn query_values_are_decoded() {
        let query = Query::parse(Some("labelSelector=app%3Dweb&watch=true&limit=5"));
        assert_eq!(query.get("labelSelector"), Some("app=web"));
        assert!(query.flag("watch"));
        assert_eq!(query.int("limit").unwrap(), Some(5));
        assert!(Query::parse(Some("limit=x")).int("limit").is_err());
    }
}
