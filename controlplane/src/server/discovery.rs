//! Discovery documents, from the catalog: the legacy form (`APIVersions`, `APIGroupList`,
//! `APIGroup`, `APIResourceList`) and the aggregated form (`apidiscovery.k8s.io/v2`
//! `APIGroupDiscoveryList`) that kubectl 1.32 and kube-rs ask for first.

use serde_json::{Value, json};

use crate::api::catalog::VERBS;
use crate::api::{Catalog, ResourceInfo};

/// The media type of the aggregated form, as clients name it in `Accept`.
pub const AGGREGATED_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether an `Accept` header asks for the aggregated v2 form.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let params: Vec<&str> = range.split(';').map(str::trim).collect();
        params.contains(&"g=apidiscovery.k8s.io")
            && params.contains(&"v=v2")
            && params.contains(&"as=APIGroupDiscoveryList")
    })
}

/// `/api`
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_versions(catalog: &Catalog) -> Vec<(String, Vec<String>)> {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for (group, version) in catalog.group_versions() {
        if group.is_empty() {
            continue;
        }
        match groups.iter_mut().find(|(name, _)| name == group) {
            Some((_, versions)) => versions.push(version.to_owned()),
            None => groups.push((group.to_owned(), vec![version.to_owned()])),
        }
    }
    groups
}

fn group_document(group: &str, versions: &[String]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|version| json!({"groupVersion": format!("{group}/{version}"), "version": version}))
        .collect();
    json!({
        "name": group,
        "versions": versions,
        "preferredVersion": versions[0],
    })
}

/// `/apis`
pub fn groups(catalog: &Catalog) -> Value {
    let groups: Vec<Value> = group_versions(catalog)
        .iter()
        .map(|(group, versions)| group_document(group, versions))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`, if served.
pub fn group(catalog: &Catalog, name: &str) -> Option<Value> {
    group_versions(catalog)
        .iter()
        .find(|(group, _)| group == name)
        .map(|(group, versions)| {
            let mut document = group_document(group, versions);
            document["kind"] = json!("APIGroup");
            document["apiVersion"] = json!("v1");
            document
        })
}

/// `/api/v1`, `/apis/<group>/<version>`, if served.
pub fn resources(catalog: &Catalog, group: &str, version: &str) -> Option<Value> {
    let infos: Vec<&ResourceInfo> = catalog.in_group_version(group, version).collect();
    if infos.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for info in infos {
        let mut resource = json!({
            "name": info.plural,
            "singularName": info.singular,
            "namespaced": info.namespaced,
            "kind": info.kind,
            "verbs": VERBS,
        });
        if !info.short_names.is_empty() {
            resource["shortNames"] = json!(info.short_names);
        }
        if !info.categories.is_empty() {
            resource["categories"] = json!(info.categories);
        }
        resources.push(resource);
        for subresource in info.subresources {
            let mut entry = json!({
                "name": format!("{}/{}", info.plural, subresource.name()),
                "singularName": "",
                "namespaced": info.namespaced,
                "kind": info.kind,
                "verbs": subresource.verbs(),
            });
            if let Some((group, version, kind)) = subresource.kind() {
                entry["kind"] = json!(kind);
                if !group.is_empty() {
                    entry["group"] = json!(group);
                }
                entry["version"] = json!(version);
            }
            resources.push(entry);
        }
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

fn aggregated_resource(info: &ResourceInfo) -> Value {
    let mut resource = json!({
        "resource": info.plural,
        "responseKind": {"group": info.group, "version": info.version, "kind": info.kind},
        "scope": if info.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": info.singular,
        "verbs": VERBS,
    });
    if !info.short_names.is_empty() {
        resource["shortNames"] = json!(info.short_names);
    }
    if !info.categories.is_empty() {
        resource["categories"] = json!(info.categories);
    }
    if !info.subresources.is_empty() {
        let subresources: Vec<Value> = info
            .subresources
            .iter()
            .map(|subresource| {
                let (group, version, kind) =
                    subresource
                        .kind()
                        .unwrap_or((info.group, info.version, info.kind));
                json!({
                    "subresource": subresource.name(),
                    "responseKind": {"group": group, "version": version, "kind": kind},
                    "verbs": subresource.verbs(),
                })
            })
            .collect();
        resource["subresources"] = Value::Array(subresources);
    }
    resource
}

/// The aggregated document for `/api` (`core == true`) or `/apis`.
pub fn aggregated(catalog: &Catalog, core: bool) -> Value {
    let mut items = Vec::new();
    let mut groups: Vec<&str> = Vec::new();
    for (group, _) in catalog.group_versions() {
        if group.is_empty() == core && !groups.contains(&group) {
            groups.push(group);
        }
    }
    for group in groups {
        let versions: Vec<Value> = catalog
            .group_versions()
            .into_iter()
            .filter(|(name, _)| *name == group)
            .map(|(_, version)| {
                let resources: Vec<Value> = catalog
                    .in_group_version(group, version)
                    .map(aggregated_resource)
                    .collect();
                json!({"version": version, "resources": resources, "freshness": "Current"})
            })
            .collect();
        let metadata = if group.is_empty() {
            json!({"creationTimestamp": null})
        } else {
            json!({"name": group, "creationTimestamp": null})
        };
        items.push(json!({"metadata": metadata, "versions": versions}));
    }
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated("application/json, */*"));
    }

    #[test]
    fn documents_carry_short_names_and_subresources() {
        let catalog = Catalog::builtin();
        let core = resources(&catalog, "", "v1").unwrap();
        let pods = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|resource| resource["name"] == "pods")
            .unwrap();
        assert_eq!(pods["shortNames"][0], "po");
        assert_eq!(pods["categories"][0], "all");
        assert!(
            core["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["name"] == "pods/binding")
        );
        let exec = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "pods/exec")
            .unwrap();
        assert_eq!(exec["verbs"], json!(["create", "get"]));
        assert_eq!(exec["kind"], "PodExecOptions");
        let log = core["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "pods/log")
            .unwrap();
        assert_eq!(
            (&log["verbs"], &log["kind"]),
            (&json!(["get"]), &json!("Pod"))
        );
        let apps = aggregated(&catalog, false);
        let apps = apps["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["metadata"]["name"] == "apps")
            .unwrap();
        let deployments = &apps["versions"][0]["resources"][0];
        assert_eq!(deployments["resource"], "deployments");
        assert_eq!(
            deployments["subresources"][1]["responseKind"]["kind"],
            "Scale"
        );
        assert_eq!(groups(&catalog)["groups"][0]["name"], "apps");
        assert!(group(&catalog, "batch").is_some());
    }
}
