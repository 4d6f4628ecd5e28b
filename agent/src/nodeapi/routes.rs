//! Which handler serves a request: the paths kubelet serves, 404 for others, 405 for a method
//! a known path does not take.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::Incoming;
use k8s_openapi::api::core::v1::Pod;

use super::auth::{self, AuthError, ClientIdentity};
use super::{NodeApi, attach, exec, logs, portforward, stats};

pub(super) type Body = BoxBody<Bytes, Infallible>;

pub(super) fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.into())).boxed())
        .expect("a valid response")
}

fn json(value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).expect("pods and stats serialize to json");
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("a valid response")
}

/// go's `http.NotFound` text, which kubelet answers with.
pub(super) fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "404 page not found\n")
}

pub(super) async fn handle(
    api: &NodeApi,
    client: &ClientIdentity,
    request: Request<Incoming>,
) -> Response<Body> {
    let path = request.uri().path().to_owned();
    match auth::authorize(
        client,
        api.require_client_certificate,
        request.method(),
        &path,
    ) {
        Ok(()) => {}
        Err(error @ AuthError::Unauthenticated) => {
            return text(StatusCode::UNAUTHORIZED, format!("{error}\n"));
        }
        Err(error @ AuthError::Forbidden(_)) => {
            return text(StatusCode::FORBIDDEN, format!("{error}\n"));
        }
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["exec", _, _, _] => exec::upgrade(api, request),
        ["attach", _, _, _] => attach::upgrade(api, request),
        ["portForward", _, _] => portforward::upgrade(api, request),
        ["healthz"] | ["pods"] | ["stats", "summary"] | ["containerLogs", _, _, _]
            if request.method() != Method::GET =>
        {
            text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{} is not allowed on {path}\n", request.method()),
            )
        }
        ["healthz"] => text(StatusCode::OK, "ok"),
        ["pods"] => json(&pod_list(api)),
        ["stats", "summary"] => {
            let pods: Vec<Pod> = snapshot(api);
            json(&stats::summary(&api.cgroups, &api.node_name, &pods))
        }
        ["containerLogs", namespace, pod, container] => {
            let query = request.uri().query().unwrap_or("");
            logs::container_logs(api, namespace, pod, container, query).await
        }
        _ => not_found(),
    }
}

fn snapshot(api: &NodeApi) -> Vec<Pod> {
    api.statuses
        .lock()
        .expect("statuses lock")
        .values()
        .cloned()
        .collect()
}

/// The `v1` `PodList` of every pod the node runs, with status.
fn pod_list(api: &NodeApi) -> serde_json::Value {
    serde_json::json!({
        "kind": "PodList",
        "apiVersion": "v1",
        "metadata": {},
        "items": snapshot(api),
    })
}

/// The pod named `namespace`/`name` on this node.
pub(super) fn find(api: &NodeApi, namespace: &str, name: &str) -> Option<Pod> {
    api.statuses
        .lock()
        .expect("statuses lock")
        .values()
        .find(|p| {
            p.metadata.namespace.as_deref() == Some(namespace)
                && p.metadata.name.as_deref() == Some(name)
        })
        .cloned()
}

pub(super) fn pod_not_found(namespace: &str, name: &str) -> Response<Body> {
    text(
        StatusCode::NOT_FOUND,
        format!("pod \"{name}\" not found in namespace \"{namespace}\" on this node\n"),
    )
}
