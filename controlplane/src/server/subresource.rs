//! Subresources with their own shapes: `pods/binding`, `*/scale` (an `autoscaling/v1`
//! `Scale`), `namespaces/finalize`; plus the pod QoS class the status starts with.

use ::http::{HeaderMap, Method, Response};
use serde_json::{Value, json};

use super::http::{self, Body};
use super::patch;
use super::rest::{Call, write};
use crate::api::{ApiError, Subresource, meta};

pub async fn handle(
    call: &Call<'_>,
    method: &Method,
    name: &str,
    subresource: Subresource,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    match (subresource, method) {
        (Subresource::Binding, &Method::POST) => {
            let binding = super::rest::decode_body(call, body, headers)?;
            bind(call, name, &binding).await
        }
        (Subresource::Scale, &Method::GET) => {
            let object = call.get_object(name).await?;
            Ok(http::json(200, &scale_of(&object)))
        }
        (Subresource::Scale, &Method::PUT) => {
            let scale = super::rest::decode_body(call, body, headers)?;
            let pinned = patch::pinned_version(&scale);
            let replicas = replicas_of(&scale)?;
            let (_, object) = write(call, name, None, pinned, |current| {
                let mut new = current.clone();
                new["spec"]["replicas"] = json!(replicas);
                Ok(new)
            })
            .await?;
            Ok(http::json(200, &scale_of(&object)))
        }
        (Subresource::Scale, &Method::PATCH) => {
            let kind = patch::PatchKind::from_media_type(&http::media_type(headers))?;
            let document = patch::parse(kind, body)?;
            let pinned = patch::pinned_version(&document);
            let (_, object) = write(call, name, None, pinned, |current| {
                let patched = patch::apply(kind, &scale_of(current), &document, "Scale")?;
                let replicas = replicas_of(&patched)?;
                let mut new = current.clone();
                new["spec"]["replicas"] = json!(replicas);
                Ok(new)
            })
            .await?;
            Ok(http::json(200, &scale_of(&object)))
        }
        (Subresource::Finalize, &Method::PUT) => {
            let namespace = super::rest::decode_body(call, body, headers)?;
            let finalizers = namespace
                .pointer("/spec/finalizers")
                .cloned()
                .unwrap_or_else(|| json!([]));
            let (code, object) = write(call, name, None, None, |current| {
                let mut new = current.clone();
                new["spec"]["finalizers"] = finalizers.clone();
                Ok(new)
            })
            .await?;
            if object.pointer("/metadata/deletionTimestamp").is_some()
                && finalizers.as_array().is_none_or(Vec::is_empty)
                && object
                    .pointer("/metadata/finalizers")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty)
            {
                let (_, deleted) =
                    super::rest::delete(call, name, &super::rest::DeleteOptions::default()).await?;
                return Ok(http::json(200, &deleted));
            }
            Ok(http::json(code, &object))
        }
        (_, method) => Err(ApiError::method_not_allowed(method.as_str())),
    }
}

/// Binds a pod to a node (`spec.nodeName`), once; sets `PodScheduled`.
async fn bind(call: &Call<'_>, name: &str, binding: &Value) -> Result<Response<Body>, ApiError> {
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if node.is_empty() {
        return Err(ApiError::invalid(
            "Binding",
            call.target(name),
            vec![crate::api::Cause::required("target.name")],
        ));
    }
    let wanted_uid = binding
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .map(str::to_owned);
    write(call, name, Some(Subresource::Binding), None, |current| {
        if let Some(uid) = &wanted_uid
            && current.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid.as_str())
        {
            return Err(ApiError::conflict(
                call.target(name),
                "the UID in the binding does not match the pod",
            ));
        }
        if current.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::conflict(
                call.target(name),
                "pod is being deleted, cannot be assigned to a host",
            ));
        }
        if let Some(existing) = current
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|existing| !existing.is_empty())
        {
            return Err(ApiError::conflict(
                call.target(name),
                format!("pod {name} is already assigned to node \"{existing}\""),
            ));
        }
        // One write sets the node and the `PodScheduled` condition, as upstream's
        // BindingREST does (one etcd transaction, one watch event per binding).
        let mut new = current.clone();
        new["spec"]["nodeName"] = json!(node);
        let mut conditions: Vec<Value> = current
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        conditions.retain(|condition| condition["type"] != "PodScheduled");
        conditions.push(json!({
            "type": "PodScheduled",
            "status": "True",
            "lastProbeTime": null,
            "lastTransitionTime": meta::now(),
        }));
        new["status"]["conditions"] = Value::Array(conditions);
        Ok(new)
    })
    .await?;
    Ok(http::json(
        201,
        &crate::api::status::success(&call.target(name), None),
    ))
}

fn replicas_of(scale: &Value) -> Result<i64, ApiError> {
    match scale.pointer("/spec/replicas") {
        None => Ok(0),
        Some(value) => value.as_i64().filter(|count| *count >= 0).ok_or_else(|| {
            ApiError::invalid(
                "Scale",
                Default::default(),
                vec![crate::api::Cause::invalid(
                    "spec.replicas",
                    value,
                    "must be greater than or equal to 0",
                )],
            )
        }),
    }
}

/// The `autoscaling/v1` `Scale` view of a workload.
pub fn scale_of(object: &Value) -> Value {
    let metadata = object.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let selector = object
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .map(|(key, value)| format!("{key}={}", value.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace"),
            "uid": metadata.get("uid"),
            "resourceVersion": metadata.get("resourceVersion"),
            "creationTimestamp": metadata.get("creationTimestamp"),
        },
        "spec": {"replicas": object.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {
            "replicas": object.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

/// `Guaranteed` when every container has cpu and memory limits equal to its requests,
/// `BestEffort` when none has any, `Burstable` otherwise (upstream's `GetPodQOS`).
pub fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["initContainers", "containers"]
        .iter()
        .filter_map(|list| spec.get(*list).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for container in &containers {
        let requests = container.pointer("/resources/requests");
        let limits = container.pointer("/resources/limits");
        for resource in ["cpu", "memory"] {
            let request = requests.and_then(|r| r.get(resource));
            let limit = limits.and_then(|l| l.get(resource));
            any |= request.is_some() || limit.is_some();
            // A request defaults to its limit.
            if limit.is_none() || request.is_some_and(|request| Some(request) != limit) {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed && !containers.is_empty()) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos_classes() {
        assert_eq!(
            qos_class(&json!({"containers": [{"name": "a"}]})),
            "BestEffort"
        );
        assert_eq!(
            qos_class(
                &json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]})
            ),
            "Guaranteed"
        );
        assert_eq!(
            qos_class(&json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]})),
            "Burstable"
        );
    }

    #[test]
    fn scale_view() {
        let deployment = json!({"metadata": {"name": "web", "resourceVersion": "7"}, "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}}, "status": {"replicas": 2}});
        let scale = scale_of(&deployment);
        assert_eq!(scale["spec"]["replicas"], 3);
        assert_eq!(scale["status"]["selector"], "app=web");
        assert_eq!(scale["metadata"]["resourceVersion"], "7");
    }
}
