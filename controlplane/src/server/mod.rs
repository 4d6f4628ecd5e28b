//! The HTTPS server: TLS with optional client certificates, authentication, routing to
//! discovery, health and the REST handlers.
//!
//! * [`http`]: bodies, media types, query parameters. [`route`]: path parsing.
//! * [`rest`], [`watch`], [`patch`], [`subresource`]: the resource handlers.
//! * [`discovery`]: `/api`, `/apis`, legacy and aggregated. [`auth`], [`tls`]: identity.
//! * [`proxy`]: `pods/log`, `exec`, `attach`, `portforward`, proxied to the pod's node agent.
//! * [`allocator`]: ClusterIPs and NodePorts. [`system`]: system namespaces and the
//!   `default/kubernetes` Service.

pub mod allocator;
pub mod auth;
pub mod discovery;
pub mod http;
pub mod patch;
pub mod proxy;
pub mod rest;
pub mod route;
pub mod subresource;
mod system;
pub mod table;
pub mod tls;
pub mod watch;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ::http::{Method, Request, Response, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use self::allocator::Allocator;
use self::auth::{Identity, Tokens};
use self::http::{Body, Query};
use self::route::{Health, Route};
use crate::api::openapi::OpenApi;
use crate::api::{ApiError, Catalog, ResourceInfo};
use crate::storage::{CacheConfig, Resource, Store, WatchCache};

/// The Kubernetes version this server implements (`/version`).
pub const KUBERNETES_VERSION: (&str, &str) = ("1", "33");

/// The API server's state, shared by every connection.
#[derive(Debug)]
pub struct ApiServer {
    pub store: Store,
    pub catalog: Catalog,
    caches: HashMap<(String, String), WatchCache>,
    tokens: Tokens,
    pub allocator: Allocator,
    /// `host:port` clients reach this server at.
    pub server_address: String,
    pub advertise_address: IpAddr,
    pub secure_port: u16,
    pub openapi: OpenApi,
    /// TLS towards node agents, with the kubelet client certificate (`pods/log`, `exec`, ...).
    pub kubelet_client: Option<Arc<rustls::ClientConfig>>,
}

impl ApiServer {
    /// Builds the server over a connected store; starts one watch cache per resource.
    pub fn new(
        store: Store,
        tokens: Tokens,
        allocator: Allocator,
        advertise_address: IpAddr,
        secure_port: u16,
    ) -> Self {
        let catalog = Catalog::builtin();
        let openapi = OpenApi::build(&catalog);
        let mut caches = HashMap::new();
        for info in catalog.resources() {
            if let Ok(resource) = Resource::new(info.group, info.plural) {
                caches.insert(
                    (info.group.to_owned(), info.plural.to_owned()),
                    WatchCache::start(store.clone(), resource.prefix(), CacheConfig::default()),
                );
            }
        }
        Self {
            store,
            catalog,
            caches,
            tokens,
            allocator,
            server_address: SocketAddr::new(advertise_address, secure_port).to_string(),
            advertise_address,
            secure_port,
            openapi,
            kubelet_client: None,
        }
    }

    /// Sets the TLS configuration node agents are reached with.
    pub fn with_kubelet_client(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.kubelet_client = Some(config);
        self
    }

    pub fn cache(&self, info: &ResourceInfo) -> Result<&WatchCache, ApiError> {
        self.caches
            .get(&(info.group.to_owned(), info.plural.to_owned()))
            .ok_or_else(|| ApiError::internal(format!("no watch cache for {}", info.plural)))
    }

    /// Claims the ClusterIP and NodePorts of a Service being written.
    pub async fn allocate(
        &self,
        info: &ResourceInfo,
        object: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        if info.group.is_empty() && info.kind == "Service" {
            self.allocator.allocate(&self.store, object, old).await?;
        }
        Ok(())
    }

    /// Frees what `released` held and `kept` does not.
    pub async fn release(&self, info: &ResourceInfo, released: &Value, kept: Option<&Value>) {
        if info.group.is_empty() && info.kind == "Service" {
            self.allocator.release(&self.store, released, kept).await;
        }
    }

    /// Whether etcd answers and every watch cache has loaded.
    async fn ready(&self) -> Result<(), String> {
        match tokio::time::timeout(Duration::from_secs(2), self.store.current_revision()).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(format!("etcd: {error}")),
            Err(_) => return Err("etcd: no answer within 2s".into()),
        }
        match self
            .caches
            .values()
            .find(|cache| cache.resource_version().is_none())
        {
            Some(cache) => Err(format!("watch cache {} is loading", cache.prefix())),
            None => Ok(()),
        }
    }

    /// Serves HTTPS on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
        let acceptor = TlsAcceptor::from(tls);
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    log::warn!("accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Watch events are small writes that must leave at once: no Nagle delay.
            if let Err(error) = stream.set_nodelay(true) {
                log::debug!("cannot set TCP_NODELAY for {peer}: {error}");
            }
            let acceptor = acceptor.clone();
            let server = self.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(stream).await {
                    Ok(tls) => tls,
                    Err(error) => {
                        log::debug!("TLS handshake with {peer} failed: {error}");
                        return;
                    }
                };
                let identity = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|certificate| auth::from_certificate(certificate));
                let service = hyper::service::service_fn(move |request| {
                    let server = server.clone();
                    let identity = identity.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(server.dispatch(identity, request).await)
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(error) = builder
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await
                {
                    log::debug!("connection from {peer} ended: {error}");
                }
            });
        }
    }

    /// Answers one request.
    pub async fn dispatch(
        self: &Arc<Self>,
        certificate: Option<Identity>,
        request: Request<Incoming>,
    ) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let identity = certificate.or_else(|| {
            parts
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| self.tokens.authenticate(value))
        });
        let route = route::parse(parts.uri.path());
        let public = matches!(route, Some(Route::Health(_) | Route::Version));
        if identity.is_none() && !public {
            return http::error(&ApiError::unauthorized());
        }
        if let Some(Route::Resource(path)) = &route
            && proxy::is_proxied(path)
        {
            let method = parts.method.clone();
            let uri = parts.uri.clone();
            let response = proxy::handle(self, path, Request::from_parts(parts, body))
                .await
                .unwrap_or_else(|error| http::error(&error));
            log::debug!(
                "{} {method} {uri} -> {}",
                identity
                    .as_ref()
                    .map_or("system:anonymous", |identity| identity.user.as_str()),
                response.status()
            );
            return response;
        }
        let query = Query::parse(parts.uri.query());
        let accept = parts
            .headers
            .get(header::ACCEPT)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let result = match route {
            None => Err(ApiError::no_route()),
            Some(Route::Health(kind)) => Ok(self.health(kind, &query).await),
            Some(Route::Version) => Ok(http::json(200, &version())),
            Some(route) if parts.method != Method::GET && !matches!(route, Route::Resource(_)) => {
                Err(ApiError::method_not_allowed(parts.method.as_str()))
            }
            Some(Route::CoreVersions) if discovery::wants_aggregated(&accept) => {
                Ok(http::json_with_type(
                    200,
                    &discovery::aggregated(&self.catalog, true),
                    discovery::AGGREGATED_TYPE,
                ))
            }
            Some(Route::CoreVersions) => Ok(http::json(
                200,
                &discovery::core_versions(&self.server_address),
            )),
            Some(Route::Groups) if discovery::wants_aggregated(&accept) => {
                Ok(http::json_with_type(
                    200,
                    &discovery::aggregated(&self.catalog, false),
                    discovery::AGGREGATED_TYPE,
                ))
            }
            Some(Route::Groups) => Ok(http::json(200, &discovery::groups(&self.catalog))),
            Some(Route::Group(group)) => discovery::group(&self.catalog, &group)
                .map(|document| http::json(200, &document))
                .ok_or_else(ApiError::no_route),
            Some(Route::Resources { group, version }) => {
                discovery::resources(&self.catalog, &group, &version)
                    .map(|document| http::json(200, &document))
                    .ok_or_else(ApiError::no_route)
            }
            Some(Route::OpenApiV3(None)) => Ok(http::json(200, &self.openapi.root())),
            Some(Route::OpenApiV3(Some(path))) => match self.openapi.document(&path) {
                Some((document, digest)) => {
                    let mut response = http::json(200, document);
                    let immutable = query.get("hash") == Some(digest);
                    let cache = if immutable {
                        "public, immutable"
                    } else {
                        "no-cache, private"
                    };
                    response.headers_mut().insert(
                        header::CACHE_CONTROL,
                        ::http::HeaderValue::from_static(cache),
                    );
                    response.headers_mut().insert(
                        header::ETAG,
                        ::http::HeaderValue::from_str(&format!("\"{digest}\""))
                            .unwrap_or(::http::HeaderValue::from_static("\"\"")),
                    );
                    Ok(response)
                }
                None => Err(ApiError::no_route()),
            },
            Some(Route::OpenApiV2) => Err(ApiError::no_route()),
            Some(Route::Resource(path)) => {
                match self.catalog.get(&path.group, &path.version, &path.resource) {
                    None => Err(ApiError::no_route()),
                    Some(info) => {
                        let info = info.clone();
                        let body = matches!(
                            parts.method,
                            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
                        )
                        .then_some(body);
                        rest::handle(
                            self,
                            &info,
                            path,
                            &parts.method,
                            query,
                            &parts.headers,
                            body,
                        )
                        .await
                    }
                }
            }
        };
        let response = result.unwrap_or_else(|error| http::error(&error));
        log::debug!(
            "{} {} {} -> {}",
            identity
                .as_ref()
                .map_or("system:anonymous", |identity| identity.user.as_str()),
            parts.method,
            parts.uri,
            response.status()
        );
        response
    }

    async fn health(&self, kind: Health, query: &Query) -> Response<Body> {
        let check = match kind {
            Health::Livez => Ok(()),
            Health::Readyz | Health::Healthz => self.ready().await,
        };
        let name = match kind {
            Health::Healthz => "healthz",
            Health::Livez => "livez",
            Health::Readyz => "readyz",
        };
        match check {
            Ok(()) if query.get("verbose").is_some() => http::text(
                200,
                format!("[+]ping ok\n[+]etcd ok\n{name} check passed\n"),
            ),
            Ok(()) => http::text(200, "ok"),
            Err(reason) => {
                log::info!("{name} failing: {reason}");
                http::text(
                    500,
                    format!("[+]ping ok\n[-]etcd failed: {reason}\n{name} check failed\n"),
                )
            }
        }
    }
}

/// `/version`.
fn version() -> Value {
    let (major, minor) = KUBERNETES_VERSION;
    json!({
        "major": major,
        "minor": minor,
        "gitVersion": format!("v{major}.{minor}.0+keel-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("linux/{}", std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64")),
    })
}
