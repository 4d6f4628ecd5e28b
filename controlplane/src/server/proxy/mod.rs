//! The pod subresources a node serves: `pods/log`, `pods/exec`, `pods/attach` and
//! `pods/portforward`, proxied to the pod's node agent as kube-apiserver does to kubelets.
//!
//! The pod names its node (`spec.nodeName`); the Node names the agent's address (InternalIP
//! first, kubeadm's `--kubelet-preferred-address-types`) and port
//! (`status.daemonEndpoints.kubeletEndpoint.Port`, 10250 when unset). The API server dials it
//! with its kubelet client certificate ([`node`]) and does not verify the agent's serving
//! certificate (kube-apiserver without `--kubelet-certificate-authority`).
//!
//! * [`log`]: `PodLogOptions` from the query, validated, and the log streamed back;
//! * [`upgrade`]: exec, attach and port-forward as upgraded connections, raw (WebSocket or
//!   SPDY end to end), or SPDY tunnelled in WebSocket for kubectl's port-forward.

pub mod log;
pub mod node;
pub mod upgrade;
pub mod websocket;

use ::http::{Method, Request, Response};
use hyper::body::Incoming;
use serde_json::Value;

use super::ApiServer;
use super::http::{Body, Query};
use super::route::ResourcePath;
use crate::api::{ApiError, Target};
use crate::storage::Resource;

/// Whether a request is for a node-proxied pod subresource.
pub fn is_proxied(path: &ResourcePath) -> bool {
    path.group.is_empty()
        && path.version == "v1"
        && path.resource == "pods"
        && path.namespace.is_some()
        && path.name.is_some()
        && matches!(
            path.subresource.as_deref(),
            Some("log" | "exec" | "attach" | "portforward")
        )
}

/// Serves one proxied subresource request.
pub async fn handle(
    server: &ApiServer,
    path: &ResourcePath,
    request: Request<Incoming>,
) -> Result<Response<Body>, ApiError> {
    let (Some(namespace), Some(name), Some(subresource)) = (
        path.namespace.as_deref(),
        path.name.as_deref(),
        path.subresource.as_deref(),
    ) else {
        return Err(ApiError::no_route());
    };
    let query = Query::parse(request.uri().query());
    let method = request.method().clone();
    let allowed = match subresource {
        "log" => method == Method::GET,
        _ => method == Method::GET || method == Method::POST,
    };
    if !allowed {
        return Err(ApiError::method_not_allowed(method.as_str()));
    }
    match subresource {
        "log" => {
            let options = log::LogOptions::from_query(&query, name)?;
            let pod = get(server, "pods", Some(namespace), name).await?;
            let container = container_of(&pod, name, options.container.as_deref())?;
            // Not scheduled yet: upstream answers with an empty log.
            let Some(node_name) = node_of(&pod) else {
                return Ok(log::empty());
            };
            let endpoint = endpoint(server, node_name).await?;
            let path = format!(
                "/containerLogs/{namespace}/{name}/{container}?{}",
                options.node_query()
            );
            log::stream(server, &endpoint, &path, name).await
        }
        "exec" | "attach" => {
            let options = StreamOptions::from_query(&query)?;
            let pod = get(server, "pods", Some(namespace), name).await?;
            let container = container_of(&pod, name, options.container.as_deref())?;
            let node_name = node_of(&pod).ok_or_else(|| no_host(name))?;
            let endpoint = endpoint(server, node_name).await?;
            let path = format!(
                "/{subresource}/{namespace}/{name}/{container}?{}",
                options.node_query(subresource == "exec")
            );
            upgrade::proxy(server, &endpoint, &path, request).await
        }
        _ => {
            let ports = ports_of(&query)?;
            let pod = get(server, "pods", Some(namespace), name).await?;
            let node_name = node_of(&pod).ok_or_else(|| no_host(name))?;
            let endpoint = endpoint(server, node_name).await?;
            let mut path = format!("/portForward/{namespace}/{name}");
            if !ports.is_empty() {
                let mut encoder = form_urlencoded::Serializer::new(String::new());
                for port in &ports {
                    encoder.append_pair("port", &port.to_string());
                }
                path = format!("{path}?{}", encoder.finish());
            }
            if upgrade::is_spdy_tunnel(request.headers()) {
                upgrade::tunnel(server, &endpoint, &path, request).await
            } else {
                upgrade::proxy(server, &endpoint, &path, request).await
            }
        }
    }
}

fn no_host(name: &str) -> ApiError {
    ApiError::bad_request(format!("pod {name} does not have a host assigned"))
}

async fn get(
    server: &ApiServer,
    plural: &str,
    namespace: Option<&str>,
    name: &str,
) -> Result<Value, ApiError> {
    let resource = Resource::new("", plural).map_err(|e| ApiError::internal(e.to_string()))?;
    let key = match namespace {
        Some(namespace) => resource.namespaced_key(namespace, name),
        None => resource.cluster_key(name),
    }
    .map_err(|error| ApiError::bad_request(error.to_string()))?;
    server
        .store
        .get(&key)
        .await
        .map_err(|error| ApiError::from_storage(error, Target::new("", plural, name)))
}

fn node_of(pod: &Value) -> Option<&str> {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|node| !node.is_empty())
}

async fn endpoint(server: &ApiServer, node_name: &str) -> Result<node::Endpoint, ApiError> {
    let node = get(server, "nodes", None, node_name).await?;
    node::Endpoint::of(&node).ok_or_else(|| {
        ApiError::bad_request(format!("node {node_name} has no address to reach it at"))
    })
}

/// The container a request is about: the one named (which must be in the pod), or the pod's
/// only container (upstream's `ValidateContainer`).
pub fn container_of(pod: &Value, name: &str, wanted: Option<&str>) -> Result<String, ApiError> {
    let names = |list: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|container| container["name"].as_str().map(str::to_owned))
            .collect()
    };
    let containers = names("containers");
    let mut all = names("initContainers");
    all.extend(containers.iter().cloned());
    all.extend(names("ephemeralContainers"));
    match wanted.filter(|wanted| !wanted.is_empty()) {
        Some(wanted) if all.iter().any(|name| name == wanted) => Ok(wanted.to_owned()),
        Some(wanted) => Err(ApiError::bad_request(format!(
            "container {wanted} is not valid for pod {name}"
        ))),
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None if containers.is_empty() => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}"
        ))),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            all.join(" ")
        ))),
    }
}

/// A boolean query parameter as Go's `strconv.ParseBool` reads it.
pub fn parse_bool(query: &Query, key: &str) -> Result<bool, ApiError> {
    match query.get(key) {
        None | Some("") => Ok(false),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(other) => Err(ApiError::bad_request(format!(
            "invalid value {other:?} for parameter {key}: not a boolean"
        ))),
    }
}

/// `PodExecOptions` / `PodAttachOptions` from the query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptions {
    pub container: Option<String>,
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl StreamOptions {
    pub fn from_query(query: &Query) -> Result<Self, ApiError> {
        Ok(Self {
            container: query.get("container").map(str::to_owned),
            command: query.all("command"),
            stdin: parse_bool(query, "stdin")?,
            stdout: parse_bool(query, "stdout")?,
            stderr: parse_bool(query, "stderr")?,
            tty: parse_bool(query, "tty")?,
        })
    }

    /// The node's query (kubelet's names: `input`, `output`, `error`, `tty`, `command`).
    pub fn node_query(&self, with_command: bool) -> String {
        let mut encoder = form_urlencoded::Serializer::new(String::new());
        for (flag, key) in [
            (self.stdin, "input"),
            (self.stdout, "output"),
            (self.stderr, "error"),
            (self.tty, "tty"),
        ] {
            if flag {
                encoder.append_pair(key, "1");
            }
        }
        if with_command {
            for word in &self.command {
                encoder.append_pair("command", word);
            }
        }
        encoder.finish()
    }
}

/// `PodPortForwardOptions.ports`: each a port number 1-65535.
pub fn ports_of(query: &Query) -> Result<Vec<u16>, ApiError> {
    query
        .all("ports")
        .iter()
        .flat_map(|value| value.split(','))
        .filter(|value| !value.is_empty())
        .map(|value| {
            value
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|port| *port > 0)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "invalid value {value:?} for parameter ports: must be a port number between 1 and 65535"
                    ))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_container_is_the_named_one_or_the_only_one() {
        let one = json!({"spec": {"containers": [{"name": "c"}]}});
        assert_eq!(container_of(&one, "web", None).unwrap(), "c");
        assert_eq!(container_of(&one, "web", Some("c")).unwrap(), "c");
        let error = container_of(&one, "web", Some("x")).unwrap_err();
        assert_eq!(
            (error.code, error.message.as_str()),
            (400, "container x is not valid for pod web")
        );
        let two = json!({"spec": {"initContainers": [{"name": "init"}], "containers": [{"name": "a"}, {"name": "b"}]}});
        let error = container_of(&two, "web", None).unwrap_err();
        assert_eq!(error.code, 400);
        assert_eq!(
            error.message,
            "a container name must be specified for pod web, choose one of: [init a b]"
        );
        assert_eq!(container_of(&two, "web", Some("init")).unwrap(), "init");
    }

    #[test]
    fn exec_options_become_kubelets_query() {
        let query = Query::parse(Some(
            "command=sh&command=-c&command=exit+3&container=c&stdin=true&stdout=1&stderr=true",
        ));
        let options = StreamOptions::from_query(&query).unwrap();
        assert_eq!(options.command, ["sh", "-c", "exit 3"]);
        assert_eq!(options.container.as_deref(), Some("c"));
        assert_eq!(
            options.node_query(true),
            "input=1&output=1&error=1&command=sh&command=-c&command=exit+3"
        );
        assert_eq!(options.node_query(false), "input=1&output=1&error=1");
        assert!(StreamOptions::from_query(&Query::parse(Some("stdin=maybe"))).is_err());
    }

    #[test]
    fn ports_are_numbers_in_range() {
        assert_eq!(
            ports_of(&Query::parse(Some("ports=80&ports=443"))).unwrap(),
            [80, 443]
        );
        assert_eq!(
            ports_of(&Query::parse(Some("ports=80,8080"))).unwrap(),
            [80, 8080]
        );
        assert!(ports_of(&Query::parse(Some("ports=0"))).is_err());
        assert!(ports_of(&Query::parse(Some("ports=http"))).is_err());
        assert!(ports_of(&Query::parse(None)).unwrap().is_empty());
    }
}
