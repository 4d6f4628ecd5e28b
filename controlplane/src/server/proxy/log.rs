//! `pods/log`: `PodLogOptions` from the query, validated as upstream's
//! `ValidatePodLogOptions`, then the node's `/containerLogs` streamed back; the node's errors
//! become `Status` errors as upstream's `GenericHttpResponseChecker` makes them.

use ::http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use serde_json::json;

use super::node::{self, Endpoint};
use super::parse_bool;
use crate::api::{ApiError, Cause, Target};
use crate::server::ApiServer;
use crate::server::http::{self, Body, Query};

/// The most of a node's error body that is read.
const MAX_ERROR_BODY: usize = 4096;

/// `PodLogOptions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub container: Option<String>,
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<i64>,
    pub since_seconds: Option<i64>,
    /// RFC 3339, as given.
    pub since_time: Option<String>,
    pub limit_bytes: Option<i64>,
}

impl LogOptions {
    /// Parses and validates the query of a `pods/log` request for pod `name`.
    pub fn from_query(query: &Query, name: &str) -> Result<Self, ApiError> {
        // Accepted and ignored: the node's certificate is never verified.
        parse_bool(query, "insecureSkipTLSVerifyBackend")?;
        let since_time = match query.get("sinceTime").filter(|t| !t.is_empty()) {
            Some(text) => {
                text.parse::<jiff::Timestamp>().map_err(|_| {
                    ApiError::bad_request(format!(
                        "invalid value {text:?} for parameter sinceTime: not an RFC 3339 time"
                    ))
                })?;
                Some(text.to_owned())
            }
            None => None,
        };
        let options = Self {
            container: query
                .get("container")
                .filter(|c| !c.is_empty())
                .map(str::to_owned),
            follow: parse_bool(query, "follow")?,
            previous: parse_bool(query, "previous")?,
            timestamps: parse_bool(query, "timestamps")?,
            tail_lines: query.int("tailLines")?,
            since_seconds: query.int("sinceSeconds")?,
            since_time,
            limit_bytes: query.int("limitBytes")?,
        };
        let mut causes = Vec::new();
        if let Some(lines) = options.tail_lines.filter(|lines| *lines < 0) {
            causes.push(Cause::invalid(
                "tailLines",
                &json!(lines),
                "must be greater than or equal to 0",
            ));
        }
        if let Some(limit) = options.limit_bytes.filter(|limit| *limit < 1) {
            causes.push(Cause::invalid(
                "limitBytes",
                &json!(limit),
                "must be greater than 0",
            ));
        }
        match (options.since_seconds, &options.since_time) {
            (Some(_), Some(_)) => causes.push(Cause::forbidden(
                "",
                "at most one of `sinceTime` or `sinceSeconds` may be specified",
            )),
            (Some(seconds), None) if seconds < 1 => causes.push(Cause::invalid(
                "sinceSeconds",
                &json!(seconds),
                "must be greater than 0",
            )),
            _ => {}
        }
        if !causes.is_empty() {
            return Err(ApiError::invalid(
                "PodLogOptions",
                Target::new("", "", name),
                causes,
            ));
        }
        Ok(options)
    }

    /// The node's `/containerLogs` query.
    pub fn node_query(&self) -> String {
        let mut encoder = form_urlencoded::Serializer::new(String::new());
        for (flag, key) in [
            (self.follow, "follow"),
            (self.previous, "previous"),
            (self.timestamps, "timestamps"),
        ] {
            if flag {
                encoder.append_pair(key, "true");
            }
        }
        for (value, key) in [
            (self.tail_lines, "tailLines"),
            (self.since_seconds, "sinceSeconds"),
            (self.limit_bytes, "limitBytes"),
        ] {
            if let Some(value) = value {
                encoder.append_pair(key, &value.to_string());
            }
        }
        if let Some(time) = &self.since_time {
            encoder.append_pair("sinceTime", time);
        }
        encoder.finish()
    }
}

/// The log of a pod no node runs yet: empty.
pub fn empty() -> Response<Body> {
    plain(http::full(Vec::new()))
}

fn plain(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// Fetches `path` from the node and streams its body back.
pub async fn stream(
    server: &ApiServer,
    endpoint: &Endpoint,
    path: &str,
    pod: &str,
) -> Result<Response<Body>, ApiError> {
    let request = endpoint.request(Method::GET, path, http::full(Vec::new()))?;
    let response = node::send(server, endpoint, request).await?;
    let status = response.status();
    if !status.is_success() {
        let body = read_limited(response.into_body()).await;
        return Err(node_error(status, body.trim_end(), pod));
    }
    Ok(plain(node::relay_body(response.into_body())))
}

async fn read_limited(mut body: hyper::body::Incoming) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < MAX_ERROR_BODY {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    bytes.extend_from_slice(data);
                }
            }
            _ => break,
        }
    }
    bytes.truncate(MAX_ERROR_BODY);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A node's error answer as upstream's `GenericHttpResponseChecker` reports it.
pub fn node_error(status: StatusCode, body: &str, pod: &str) -> ApiError {
    match status.as_u16() {
        400 => ApiError::bad_request(body),
        500 => ApiError::internal(body),
        404 => {
            let mut error = ApiError::not_found(Target::new("", "pods/log", pod));
            error.message = body.to_owned();
            error
        }
        code => {
            let mut error = ApiError::internal(body);
            error.code = code;
            error
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<LogOptions, ApiError> {
        LogOptions::from_query(&Query::parse(Some(query)), "web")
    }

    #[test]
    fn options_pass_to_the_node() {
        let options = parse(
            "container=c&follow=true&tailLines=5&timestamps=1&limitBytes=100&insecureSkipTLSVerifyBackend=true",
        )
        .unwrap();
        assert_eq!(options.container.as_deref(), Some("c"));
        assert_eq!(
            options.node_query(),
            "follow=true&timestamps=true&tailLines=5&limitBytes=100"
        );
        let since = parse("sinceTime=2026-11-25T09:00:00Z&previous=true").unwrap();
        assert_eq!(
            since.node_query(),
            "previous=true&sinceTime=2026-11-25T09%3A00%3A00Z"
        );
        assert_eq!(parse("").unwrap(), LogOptions::default());
    }

    #[test]
    fn bad_options_are_refused_as_upstream() {
        let error = parse("tailLines=-1").unwrap_err();
        assert_eq!((error.code, error.reason), (422, "Invalid"));
        assert_eq!(
            error.message,
            "PodLogOptions \"web\" is invalid: tailLines: Invalid value: -1: must be greater than or equal to 0"
        );
        assert_eq!(parse("limitBytes=0").unwrap_err().code, 422);
        assert_eq!(parse("sinceSeconds=0").unwrap_err().code, 422);
        let both = parse("sinceSeconds=5&sinceTime=2026-11-25T09:00:00Z").unwrap_err();
        assert!(
            both.message
                .contains("at most one of `sinceTime` or `sinceSeconds` may be specified"),
            "{}",
            both.message
        );
        assert_eq!(parse("tailLines=x").unwrap_err().code, 400);
        assert_eq!(parse("follow=maybe").unwrap_err().code, 400);
        assert_eq!(parse("sinceTime=yesterday").unwrap_err().code, 400);
    }

    #[test]
    fn node_errors_keep_their_text() {
        let waiting = node_error(
            StatusCode::BAD_REQUEST,
            "container \"c\" in pod \"web\" is waiting to start: ContainerCreating",
            "web",
        );
        assert_eq!((waiting.code, waiting.reason), (400, "BadRequest"));
        assert_eq!(
            waiting.message,
            "container \"c\" in pod \"web\" is waiting to start: ContainerCreating"
        );
        assert_eq!(
            node_error(StatusCode::NOT_FOUND, "gone", "web").reason,
            "NotFound"
        );
    }
}
