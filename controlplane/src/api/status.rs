//! [`ApiError`]: every failure of an API request, rendered as the `Status` object
//! kube-apiserver would send (same `code`, `reason`, `message` wording and `details`), since
//! clients act on them: kubectl prints the message, kube-rs and client-go branch on `reason`.

use serde_json::{Value, json};

use crate::storage::StorageError;

/// One field-level problem of an `Invalid` object (`StatusCause`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueNotSupported`, ...
    pub reason: &'static str,
    /// The JSON path of the field, as upstream prints it (`spec.containers[0].image`).
    pub field: String,
    /// Upstream's wording, without the field prefix.
    pub message: String,
}

impl Cause {
    pub fn required(field: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueRequired",
            field: field.into(),
            message: "Required value".into(),
        }
    }

    pub fn invalid(field: impl Into<String>, value: &Value, detail: impl AsRef<str>) -> Self {
        Self {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {}: {}", value_text(value), detail.as_ref()),
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueForbidden",
            field: field.into(),
            message: format!("Forbidden: {}", detail.into()),
        }
    }

    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let list = supported
            .iter()
            .map(|value| format!("\"{value}\""))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {}: supported values: {list}",
                value_text(value)
            ),
        }
    }

    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        Self {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: {}", value_text(value)),
        }
    }

    /// `field: message`, as upstream joins them in `Status.message`.
    pub fn to_text(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

/// How upstream prints a value in a field error: strings quoted, the rest as JSON.
fn value_text(value: &Value) -> String {
    match value {
        Value::String(text) => format!("{text:?}"),
        other => other.to_string(),
    }
}

/// What the object in a `Status.details` is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// The resource, `pods` (upstream puts the resource, not the kind, in `details.kind`).
    pub resource: String,
    pub group: String,
    pub name: String,
}

impl Target {
    pub fn new(group: &str, resource: &str, name: &str) -> Self {
        Self {
            resource: resource.to_owned(),
            group: group.to_owned(),
            name: name.to_owned(),
        }
    }

    /// `pods "web"` or `deployments.apps "web"`, as upstream's messages name an object.
    fn qualified(&self) -> String {
        let resource = if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        };
        if self.name.is_empty() {
            resource
        } else {
            format!("{resource} \"{}\"", self.name)
        }
    }
}

/// An API request that failed: HTTP code, `reason`, message and details of the `Status`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    /// Boxed: errors travel in `Result`s on every request path.
    pub details: Box<Details>,
}

/// What `Status.details` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Details {
    pub target: Option<Target>,
    /// Kind for `Invalid` details (`details.kind` is the kind there, e.g. `Pod`).
    pub kind: Option<String>,
    pub causes: Vec<Cause>,
    /// Seconds a client should wait before retrying (`details.retryAfterSeconds`).
    pub retry_after: Option<u32>,
}

impl ApiError {
    fn plain(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: Box::default(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::plain(400, "BadRequest", message)
    }

    pub fn unauthorized() -> Self {
        Self::plain(401, "Unauthorized", "Unauthorized")
    }

    pub fn not_found(target: Target) -> Self {
        let mut error = Self::plain(404, "NotFound", format!("{} not found", target.qualified()));
        error.details.target = Some(target);
        error
    }

    /// A path this server has no handler for (upstream's plain 404 `the server could not find
    /// the requested resource`).
    pub fn no_route() -> Self {
        Self::plain(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub fn already_exists(target: Target) -> Self {
        let mut error = Self::plain(
            409,
            "AlreadyExists",
            format!("{} already exists", target.qualified()),
        );
        error.details.target = Some(target);
        error
    }

    pub fn conflict(target: Target, detail: impl AsRef<str>) -> Self {
        let mut error = Self::plain(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {}: {}",
                target.qualified(),
                detail.as_ref()
            ),
        );
        error.details.target = Some(target);
        error
    }

    /// `Kind "name" is invalid: [cause, cause]` (422).
    pub fn invalid(kind: &str, target: Target, causes: Vec<Cause>) -> Self {
        let list = causes.iter().map(Cause::to_text).collect::<Vec<_>>();
        let joined = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        let mut error = Self::plain(
            422,
            "Invalid",
            format!("{kind} {:?} is invalid: {joined}", target.name),
        );
        error.details.kind = Some(kind.to_owned());
        error.details.target = Some(target);
        error.details.causes = causes;
        error
    }

    pub fn forbidden(target: Target, detail: impl AsRef<str>) -> Self {
        let mut error = Self::plain(
            403,
            "Forbidden",
            format!("{} is forbidden: {}", target.qualified(), detail.as_ref()),
        );
        error.details.target = Some(target);
        error
    }

    pub fn method_not_allowed(method: &str) -> Self {
        Self::plain(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::plain(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (got {content_type:?})"
            ),
        )
    }

    pub fn not_acceptable(accept: &str) -> Self {
        Self::plain(
            406,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: application/json, application/yaml, application/json;as=Table;v=v1;g=meta.k8s.io (got {accept:?})"
            ),
        )
    }

    pub fn request_entity_too_large(limit: usize) -> Self {
        Self::plain(
            413,
            "RequestEntityTooLarge",
            format!("the request body is larger than {limit} bytes"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::plain(500, "InternalError", message)
    }

    pub fn service_unavailable(message: impl Into<String>) -> Self {
        let mut error = Self::plain(503, "ServiceUnavailable", message);
        error.details.retry_after = Some(1);
        error
    }

    /// The storage error for a request about `target`, with upstream's wording.
    pub fn from_storage(error: StorageError, target: Target) -> Self {
        match &error {
            StorageError::NotFound { .. } => Self::not_found(target),
            StorageError::AlreadyExists { .. } => Self::already_exists(target),
            StorageError::Conflict { .. } => Self::conflict(
                target,
                "the object has been modified; please apply your changes to the latest version and try again",
            ),
            StorageError::PreconditionFailed {
                field,
                expected,
                actual,
                ..
            } => Self::conflict(
                target,
                format!(
                    "Precondition failed: {field} in precondition: {expected}, {field} in object meta: {actual}"
                ),
            ),
            _ => {
                let status = error.api_status();
                let mut mapped = Self::plain(status.code, status.reason, error.to_string());
                if status.code == 503 || status.code == 504 {
                    mapped.details.retry_after = Some(1);
                }
                mapped
            }
        }
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        let mut details = serde_json::Map::new();
        if let Some(target) = &self.details.target {
            if !target.name.is_empty() {
                details.insert("name".into(), json!(target.name));
            }
            if !target.group.is_empty() {
                details.insert("group".into(), json!(target.group));
            }
            let kind = self
                .details
                .kind
                .clone()
                .unwrap_or_else(|| target.resource.clone());
            if !kind.is_empty() {
                details.insert("kind".into(), json!(kind));
            }
        }
        if !self.details.causes.is_empty() {
            let causes = self
                .details
                .causes
                .iter()
                .map(|cause| {
                    json!({"reason": cause.reason, "message": cause.message, "field": cause.field})
                })
                .collect::<Vec<_>>();
            details.insert("causes".into(), Value::Array(causes));
        }
        if let Some(seconds) = self.details.retry_after {
            details.insert("retryAfterSeconds".into(), json!(seconds));
        }
        if !details.is_empty() {
            status["details"] = Value::Object(details);
        }
        status
    }
}

/// A `Status` of success (what a delete without a returned object answers).
pub fn success(target: &Target, uid: Option<&str>) -> Value {
    let mut details = json!({"name": target.name, "kind": target.resource});
    if !target.group.is_empty() {
        details["group"] = json!(target.group);
    }
    if let Some(uid) = uid {
        details["uid"] = json!(uid);
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_names_every_field_as_upstream() {
        let error = ApiError::invalid(
            "Pod",
            Target::new("", "pods", "Bad_Name"),
            vec![
                Cause::invalid(
                    "metadata.name",
                    &json!("Bad_Name"),
                    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters",
                ),
                Cause::required("spec.containers"),
            ],
        );
        assert_eq!(error.code, 422);
        assert!(error.message.starts_with(
            "Pod \"Bad_Name\" is invalid: [metadata.name: Invalid value: \"Bad_Name\": "
        ));
        assert!(
            error
                .message
                .ends_with(", spec.containers: Required value]")
        );
        let status = error.to_status();
        assert_eq!(status["details"]["kind"], "Pod");
        assert_eq!(status["details"]["causes"][1]["field"], "spec.containers");
    }

    #[test]
    fn not_found_qualifies_grouped_resources() {
        let error = ApiError::not_found(Target::new("apps", "deployments", "web"));
        assert_eq!(error.message, "deployments.apps \"web\" not found");
        assert_eq!(error.to_status()["details"]["kind"], "deployments");
    }
}
