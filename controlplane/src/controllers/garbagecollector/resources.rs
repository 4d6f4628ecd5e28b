//! The resources the API serves, from aggregated discovery (upstream's REST mapper): which
//! ones the garbage collector watches, and how to reach an owner named by `apiVersion` and
//! `kind`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::Client;
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope, verbs};

/// Resources the garbage collector leaves alone, as upstream's default: events.
const IGNORED: [(&str, &str); 2] = [("", "events"), ("events.k8s.io", "events")];

/// How often an unknown kind may trigger a new discovery.
const REDISCOVER_AFTER: Duration = Duration::from_secs(5);

/// Why a resource could not be found.
#[derive(Debug, thiserror::Error)]
pub enum ResourcesError {
    #[error("discovering the API's resources failed")]
    Discovery(#[source] kube::Error),
    #[error("the API serves no kind {kind} in {api_version}")]
    Unknown { api_version: String, kind: String },
}

/// The latest discovery.
pub(crate) struct Resources {
    client: Client,
    latest: Mutex<Option<(Instant, std::sync::Arc<Discovery>)>>,
}

impl Resources {
    /// No discovery yet.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            latest: Mutex::new(None),
        }
    }

    fn latest(&self) -> Option<(Instant, std::sync::Arc<Discovery>)> {
        self.latest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Runs discovery again and returns the resources to watch: every resource with the
    /// verbs list, watch and delete, in its group's preferred version, except events.
    pub async fn refresh(&self) -> Result<Vec<ApiResource>, ResourcesError> {
        let discovery = Discovery::new(self.client.clone())
            .run_aggregated()
            .await
            .map_err(ResourcesError::Discovery)?;
        let deletable = discovery
            .groups()
            .flat_map(|group| group.recommended_resources())
            .filter(|(resource, capabilities)| {
                [verbs::LIST, verbs::WATCH, verbs::DELETE]
                    .iter()
                    .all(|verb| capabilities.supports_operation(verb))
                    && !IGNORED.contains(&(resource.group.as_str(), resource.plural.as_str()))
            })
            .map(|(resource, _)| resource)
            .collect();
        *self
            .latest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some((Instant::now(), std::sync::Arc::new(discovery)));
        Ok(deletable)
    }

    /// The resource of `kind` in `api_version` and whether it is namespaced; discovers again
    /// (at most every few seconds) when the kind is unknown.
    pub async fn resolve(
        &self,
        api_version: &str,
        kind: &str,
    ) -> Result<(ApiResource, bool), ResourcesError> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let found = |discovery: &Discovery| {
            discovery.resolve_gvk(&gvk).map(
                |(resource, capabilities): (ApiResource, ApiCapabilities)| {
                    (resource, capabilities.scope == Scope::Namespaced)
                },
            )
        };
        let latest = self.latest();
        if let Some((_, discovery)) = &latest
            && let Some(resolved) = found(discovery)
        {
            return Ok(resolved);
        }
        if latest.is_none_or(|(when, _)| when.elapsed() >= REDISCOVER_AFTER) {
            self.refresh().await?;
            if let Some((_, discovery)) = self.latest()
                && let Some(resolved) = found(&discovery)
            {
                return Ok(resolved);
            }
        }
        Err(ResourcesError::Unknown {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
        })
    }
}
