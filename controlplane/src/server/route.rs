//! Request paths, parsed as kube-apiserver's `RequestInfoFactory` does.

/// What a path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Version,
    /// `/healthz`, `/livez`, `/readyz` (and their `/...` sub-checks).
    Health(Health),
    /// `/api`
    CoreVersions,
    /// `/apis`
    Groups,
    /// `/apis/<group>`
    Group(String),
    /// `/api/v1`, `/apis/<group>/<version>`
    Resources {
        group: String,
        version: String,
    },
    /// `/openapi/v3`, `/openapi/v3/<path>`
    OpenApiV3(Option<String>),
    /// `/openapi/v2`
    OpenApiV2,
    Resource(ResourcePath),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthz,
    Livez,
    Readyz,
}

/// A resource request (`/api/v1/namespaces/default/pods/web/status`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
    /// The deprecated `/watch/` path form.
    pub watch: bool,
}

/// Parses a path; `None` when nothing is served there.
pub fn parse(path: &str) -> Option<Route> {
    let trimmed = path.trim_end_matches('/');
    let segments: Vec<&str> = trimmed.split('/').skip(1).collect();
    match segments.as_slice() {
        ["version"] => Some(Route::Version),
        ["healthz", ..] => Some(Route::Health(Health::Healthz)),
        ["livez", ..] => Some(Route::Health(Health::Livez)),
        ["readyz", ..] => Some(Route::Health(Health::Readyz)),
        ["api"] => Some(Route::CoreVersions),
        ["apis"] => Some(Route::Groups),
        ["apis", group] => Some(Route::Group((*group).to_owned())),
        ["openapi", "v2"] => Some(Route::OpenApiV2),
        ["openapi", "v3"] => Some(Route::OpenApiV3(None)),
        ["openapi", "v3", rest @ ..] => Some(Route::OpenApiV3(Some(rest.join("/")))),
        ["api", version] => Some(Route::Resources {
            group: String::new(),
            version: (*version).to_owned(),
        }),
        ["apis", group, version] => Some(Route::Resources {
            group: (*group).to_owned(),
            version: (*version).to_owned(),
        }),
        ["api", version, rest @ ..] => resource("", version, rest),
        ["apis", group, version, rest @ ..] => resource(group, version, rest),
        _ => None,
    }
}

fn resource(group: &str, version: &str, rest: &[&str]) -> Option<Route> {
    let (watch, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        _ => (false, rest),
    };
    let mut path = ResourcePath {
        group: group.to_owned(),
        version: version.to_owned(),
        watch,
        ..ResourcePath::default()
    };
    let owned = |segment: &&str| Some((*segment).to_owned());
    match rest {
        // `/namespaces/<ns>` and `/namespaces/<ns>/status|finalize` address the namespace
        // itself; `/namespaces/<ns>/<resource>...` a namespaced resource.
        ["namespaces"] => path.resource = "namespaces".into(),
        ["namespaces", name] => {
            path.resource = "namespaces".into();
            path.name = owned(name);
        }
        ["namespaces", name, sub @ ("status" | "finalize")] if group.is_empty() => {
            path.resource = "namespaces".into();
            path.name = owned(name);
            path.subresource = owned(sub);
        }
        ["namespaces", namespace, resource, tail @ ..] => {
            path.namespace = owned(namespace);
            path.resource = (*resource).to_owned();
            match tail {
                [] => {}
                [name] => path.name = owned(name),
                [name, sub] => {
                    path.name = owned(name);
                    path.subresource = owned(sub);
                }
                _ => return None,
            }
        }
        [resource] => path.resource = (*resource).to_owned(),
        [resource, name] => {
            path.resource = (*resource).to_owned();
            path.name = owned(name);
        }
        [resource, name, sub] => {
            path.resource = (*resource).to_owned();
            path.name = owned(name);
            path.subresource = owned(sub);
        }
        _ => return None,
    }
    if path.name.as_deref() == Some("") || path.namespace.as_deref() == Some("") {
        return None;
    }
    Some(Route::Resource(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource_path(path: &str) -> ResourcePath {
        match parse(path) {
            Some(Route::Resource(resource)) => resource,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn resource_paths() {
        let pod = resource_path("/api/v1/namespaces/default/pods/web/status");
        assert_eq!(pod.namespace.as_deref(), Some("default"));
        assert_eq!(pod.resource, "pods");
        assert_eq!(pod.name.as_deref(), Some("web"));
        assert_eq!(pod.subresource.as_deref(), Some("status"));
        let namespace = resource_path("/api/v1/namespaces/kube-system");
        assert_eq!(namespace.resource, "namespaces");
        assert_eq!(namespace.namespace, None);
        assert_eq!(namespace.name.as_deref(), Some("kube-system"));
        let all = resource_path("/apis/apps/v1/deployments");
        assert_eq!((all.group.as_str(), all.namespace), ("apps", None));
        let watch = resource_path("/api/v1/watch/namespaces/default/pods");
        assert!(watch.watch);
        assert_eq!(watch.resource, "pods");
        assert_eq!(
            parse("/apis/apps/v1"),
            Some(Route::Resources {
                group: "apps".into(),
                version: "v1".into()
            })
        );
        assert_eq!(parse("/readyz/etcd"), Some(Route::Health(Health::Readyz)));
        assert_eq!(parse("/nope"), None);
    }
}
