//! The resources this API server serves: for each, what discovery advertises (group, version,
//! kind, plural and singular names, scope, verbs, short names, categories, subresources) and
//! how the generic REST handlers treat it (status subresource, `metadata.generation`).
//!
//! Names and scopes come from the `k8s-openapi` types themselves, so they cannot drift from the
//! upstream definitions; short names and categories are upstream's.

use std::collections::BTreeMap;

use k8s_openapi::api::{apps, batch, coordination, core, discovery, networking, rbac};
use k8s_openapi::{ClusterResourceScope, ListableResource, NamespaceResourceScope, Resource};

/// A subresource of a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// `/status`: get, update, patch of `.status` only.
    Status,
    /// `/scale`: an `autoscaling/v1` `Scale` view of `spec.replicas`.
    Scale,
    /// `pods/binding`: create a `Binding` that sets `spec.nodeName`.
    Binding,
    /// `namespaces/finalize`: update of `spec.finalizers`.
    Finalize,
    /// `pods/log`: the container's log, streamed from its node.
    Log,
    /// `pods/exec`: a command in a container, an upgraded stream proxied to its node.
    Exec,
    /// `pods/attach`: the container's main process's streams, proxied to its node.
    Attach,
    /// `pods/portforward`: TCP streams to the pod's ports, proxied to its node.
    PortForward,
}

impl Subresource {
    pub fn name(self) -> &'static str {
        match self {
            Subresource::Status => "status",
            Subresource::Scale => "scale",
            Subresource::Binding => "binding",
            Subresource::Finalize => "finalize",
            Subresource::Log => "log",
            Subresource::Exec => "exec",
            Subresource::Attach => "attach",
            Subresource::PortForward => "portforward",
        }
    }

    pub fn verbs(self) -> &'static [&'static str] {
        match self {
            Subresource::Status | Subresource::Scale => &["get", "patch", "update"],
            Subresource::Binding => &["create"],
            Subresource::Finalize => &["update"],
            Subresource::Log => &["get"],
            Subresource::Exec | Subresource::Attach | Subresource::PortForward => {
                &["create", "get"]
            }
        }
    }

    /// The kind a subresource's requests and responses carry, when it is not the resource's.
    pub fn kind(self) -> Option<(&'static str, &'static str, &'static str)> {
        match self {
            Subresource::Scale => Some(("autoscaling", "v1", "Scale")),
            Subresource::Binding => Some(("", "v1", "Binding")),
            Subresource::Exec => Some(("", "v1", "PodExecOptions")),
            Subresource::Attach => Some(("", "v1", "PodAttachOptions")),
            Subresource::PortForward => Some(("", "v1", "PodPortForwardOptions")),
            Subresource::Status | Subresource::Finalize | Subresource::Log => None,
        }
    }
}

/// Verbs of every resource's main endpoint.
pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// One served resource.
#[derive(Debug, Clone)]
pub struct ResourceInfo {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub list_kind: &'static str,
    /// URL segment and etcd key segment, `deployments`.
    pub plural: &'static str,
    /// Lowercase kind, `deployment`.
    pub singular: String,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub subresources: &'static [Subresource],
    /// Whether `metadata.generation` starts at 1 and is bumped by spec changes (upstream's
    /// strategies for workloads, policies and ingresses).
    pub tracks_generation: bool,
    /// Adds the kind's JSON schema (and everything it refers to) to a generator and returns
    /// the reference to it: the OpenAPI documents and field validation come from here.
    pub schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
    /// The kind's schema name in the OpenAPI documents (`io.k8s.api.core.v1.Pod`).
    pub schema_name: String,
}

impl ResourceInfo {
    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn has(&self, subresource: Subresource) -> bool {
        self.subresources.contains(&subresource)
    }

    pub fn subresource(&self, name: &str) -> Option<Subresource> {
        self.subresources
            .iter()
            .copied()
            .find(|subresource| subresource.name() == name)
    }
}

/// Whether a `k8s-openapi` scope type is namespaced.
pub trait Scope {
    const NAMESPACED: bool;
}

impl Scope for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}

impl Scope for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

struct Extra {
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: &'static [Subresource],
    tracks_generation: bool,
}

const PLAIN: Extra = Extra {
    short_names: &[],
    categories: &[],
    subresources: &[],
    tracks_generation: false,
};

fn info<T>(extra: Extra) -> ResourceInfo
where
    T: Resource + ListableResource + schemars::JsonSchema,
    T::Scope: Scope,
{
    ResourceInfo {
        group: T::GROUP,
        version: T::VERSION,
        kind: T::KIND,
        list_kind: T::LIST_KIND,
        plural: T::URL_PATH_SEGMENT,
        singular: T::KIND.to_ascii_lowercase(),
        namespaced: <T::Scope as Scope>::NAMESPACED,
        short_names: extra.short_names,
        categories: extra.categories,
        subresources: extra.subresources,
        tracks_generation: extra.tracks_generation,
        schema: |generator| generator.subschema_for::<T>(),
        schema_name: T::schema_name().into_owned(),
    }
}

use Subresource::{Attach, Binding, Exec, Finalize, Log, PortForward, Scale, Status};

const ALL: &[&str] = &["all"];

/// Every resource this server serves, in discovery order.
pub fn builtin() -> Vec<ResourceInfo> {
    let short = |names: &'static [&'static str]| Extra {
        short_names: names,
        ..PLAIN
    };
    let workload = |names: &'static [&'static str], subresources: &'static [Subresource]| Extra {
        short_names: names,
        categories: ALL,
        subresources,
        tracks_generation: true,
    };
    vec![
        info::<core::v1::Namespace>(Extra {
            short_names: &["ns"],
            subresources: &[Status, Finalize],
            ..PLAIN
        }),
        info::<core::v1::Pod>(Extra {
            short_names: &["po"],
            categories: ALL,
            subresources: &[Attach, Binding, Exec, Log, PortForward, Status],
            tracks_generation: false,
        }),
        info::<core::v1::Service>(Extra {
            short_names: &["svc"],
            categories: ALL,
            subresources: &[Status],
            tracks_generation: false,
        }),
        info::<core::v1::Endpoints>(short(&["ep"])),
        info::<core::v1::ConfigMap>(short(&["cm"])),
        info::<core::v1::Secret>(PLAIN),
        info::<core::v1::Node>(Extra {
            short_names: &["no"],
            subresources: &[Status],
            ..PLAIN
        }),
        info::<core::v1::Event>(short(&["ev"])),
        info::<core::v1::ServiceAccount>(short(&["sa"])),
        info::<core::v1::PersistentVolume>(Extra {
            short_names: &["pv"],
            subresources: &[Status],
            ..PLAIN
        }),
        info::<core::v1::PersistentVolumeClaim>(Extra {
            short_names: &["pvc"],
            subresources: &[Status],
            ..PLAIN
        }),
        info::<apps::v1::Deployment>(workload(&["deploy"], &[Status, Scale])),
        info::<apps::v1::ReplicaSet>(workload(&["rs"], &[Status, Scale])),
        info::<apps::v1::StatefulSet>(workload(&["sts"], &[Status, Scale])),
        info::<apps::v1::DaemonSet>(workload(&["ds"], &[Status])),
        info::<apps::v1::ControllerRevision>(PLAIN),
        info::<batch::v1::Job>(workload(&[], &[Status])),
        info::<batch::v1::CronJob>(workload(&["cj"], &[Status])),
        info::<discovery::v1::EndpointSlice>(PLAIN),
        info::<networking::v1::NetworkPolicy>(Extra {
            short_names: &["netpol"],
            tracks_generation: true,
            ..PLAIN
        }),
        info::<networking::v1::Ingress>(Extra {
            short_names: &["ing"],
            subresources: &[Status],
            tracks_generation: true,
            ..PLAIN
        }),
        info::<networking::v1::IngressClass>(PLAIN),
        info::<coordination::v1::Lease>(PLAIN),
        info::<rbac::v1::Role>(PLAIN),
        info::<rbac::v1::RoleBinding>(PLAIN),
        info::<rbac::v1::ClusterRole>(PLAIN),
        info::<rbac::v1::ClusterRoleBinding>(PLAIN),
    ]
}

/// The served resources, looked up by group, version and plural.
#[derive(Debug, Clone)]
pub struct Catalog {
    resources: Vec<ResourceInfo>,
    index: BTreeMap<(String, String, String), usize>,
}

impl Catalog {
    pub fn new(resources: Vec<ResourceInfo>) -> Self {
        let index = resources
            .iter()
            .enumerate()
            .map(|(position, info)| {
                (
                    (
                        info.group.to_owned(),
                        info.version.to_owned(),
                        info.plural.to_owned(),
                    ),
                    position,
                )
            })
            .collect();
        Self { resources, index }
    }

    pub fn builtin() -> Self {
        Self::new(builtin())
    }

    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceInfo> {
        self.index
            .get(&(group.to_owned(), version.to_owned(), plural.to_owned()))
            .map(|&position| &self.resources[position])
    }

    pub fn resources(&self) -> &[ResourceInfo] {
        &self.resources
    }

    /// Group versions in discovery order: the core `v1` first, then groups as listed.
    pub fn group_versions(&self) -> Vec<(&'static str, &'static str)> {
        let mut seen = Vec::new();
        for info in &self.resources {
            if !seen.contains(&(info.group, info.version)) {
                seen.push((info.group, info.version));
            }
        }
        seen
    }

    pub fn in_group_version<'a>(
        &'a self,
        group: &'a str,
        version: &'a str,
    ) -> impl Iterator<Item = &'a ResourceInfo> + 'a {
        self.resources
            .iter()
            .filter(move |info| info.group == group && info.version == version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_scopes_come_from_the_types() {
        let catalog = Catalog::builtin();
        let deployments = catalog.get("apps", "v1", "deployments").unwrap();
        assert_eq!(deployments.kind, "Deployment");
        assert_eq!(deployments.list_kind, "DeploymentList");
        assert!(deployments.namespaced);
        assert!(deployments.has(Subresource::Scale));
        let nodes = catalog.get("", "v1", "nodes").unwrap();
        assert!(!nodes.namespaced);
        assert_eq!(nodes.singular, "node");
        assert_eq!(
            catalog
                .get("rbac.authorization.k8s.io", "v1", "clusterroles")
                .unwrap()
                .kind,
            "ClusterRole"
        );
        assert_eq!(catalog.group_versions()[0], ("", "v1"));
    }
}
