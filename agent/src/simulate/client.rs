//! The simulator's API client: kube's middleware (base URI, auth, headers) over one hyper
//! client that negotiates HTTP/2 with ALPN, so thousands of simulated nodes share a few
//! multiplexed connections instead of one HTTP/1.1 connection per request in flight (kube's
//! default client speaks HTTP/1.1 only).

use std::path::Path;

use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt as _;
use tower::ServiceBuilder;

use super::SimulateError;

/// A client for the cluster `kubeconfig` names, speaking HTTP/2 when the server offers it.
pub async fn http2_client(kubeconfig: &Path) -> Result<kube::Client, SimulateError> {
    let bad = |source: Box<dyn std::error::Error + Send + Sync>| SimulateError::Kubeconfig {
        path: kubeconfig.to_owned(),
        source,
    };
    let file = kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| bad(e.into()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .map_err(|e| bad(e.into()))?;
    let tls = config.rustls_client_config().map_err(|e| bad(e.into()))?;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    let hyper_client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, kube::client::Body>(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().map_err(|e| bad(e.into()))?)
        .layer(config.extra_headers_layer().map_err(|e| bad(e.into()))?)
        .map_err(tower::BoxError::from)
        .service(hyper_client);
    Ok(kube::Client::new(service, config.default_namespace))
}
