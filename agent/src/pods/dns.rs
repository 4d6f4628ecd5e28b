//! A pod's `/etc/resolv.conf`, as kubelet writes it (pkg/kubelet/network/dns): by
//! `dnsPolicy`, with `dnsConfig` merged in.
//!
//! - `ClusterFirst` (the default): the cluster DNS, the search path `<ns>.svc.<domain>
//!   svc.<domain> <domain>` then the host's, `options ndots:5`; a `hostNetwork` pod gets the
//!   host's file instead, and so does every pod when the node has no cluster DNS;
//! - `ClusterFirstWithHostNet`: `ClusterFirst`, `hostNetwork` or not;
//! - `Default`: the host's nameservers, search path and options;
//! - `None`: only what `dnsConfig` says.
//!
//! `dnsConfig` adds nameservers and search domains (duplicates dropped) and options (a later
//! value of the same option wins). At most 3 nameservers and 32 search domains are kept, as
//! kubelet does.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;

/// The node's cluster DNS (`--cluster-dns`, `--cluster-domain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDns {
    pub address: Ipv4Addr,
    pub domain: String,
}

const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

/// The lines of a resolv.conf that matter here.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Resolv {
    nameservers: Vec<String>,
    searches: Vec<String>,
    /// `name` or `name:value`, in order.
    options: Vec<String>,
}

fn parse(text: &str) -> Resolv {
    let mut resolv = Resolv::default();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => resolv.nameservers.extend(words.next().map(str::to_owned)),
            Some("search" | "domain") => resolv.searches = words.map(str::to_owned).collect(),
            Some("options") => resolv.options.extend(words.map(str::to_owned)),
            _ => {}
        }
    }
    resolv
}

fn push_unique(list: &mut Vec<String>, items: impl IntoIterator<Item = String>) {
    for item in items {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

/// The pod's resolv.conf text; `host` is the node's own resolv.conf.
pub fn resolv_conf(pod: &Pod, cluster: Option<&ClusterDns>, host: &str) -> Result<String, String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let host_network = spec.host_network == Some(true);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut resolv = match (policy, cluster) {
        ("None", _) => Resolv::default(),
        ("Default", _) => parse(host),
        ("ClusterFirst", _) if host_network => parse(host),
        ("ClusterFirst" | "ClusterFirstWithHostNet", None) => parse(host),
        ("ClusterFirst" | "ClusterFirstWithHostNet", Some(cluster)) => {
            let host = parse(host);
            let domain = &cluster.domain;
            let mut searches = vec![
                format!("{namespace}.svc.{domain}"),
                format!("svc.{domain}"),
                domain.clone(),
            ];
            push_unique(&mut searches, host.searches);
            Resolv {
                nameservers: vec![cluster.address.to_string()],
                searches,
                options: vec!["ndots:5".to_owned()],
            }
        }
        (other, _) => {
            return Err(format!(
                "spec.dnsPolicy: Unsupported value: \"{other}\": supported values: \"ClusterFirst\", \
                 \"ClusterFirstWithHostNet\", \"Default\", \"None\""
            ));
        }
    };
    if let Some(config) = &spec.dns_config {
        push_unique(
            &mut resolv.nameservers,
            config.nameservers.clone().unwrap_or_default(),
        );
        push_unique(
            &mut resolv.searches,
            config.searches.clone().unwrap_or_default(),
        );
        for option in config.options.iter().flatten() {
            let Some(name) = option.name.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            resolv
                .options
                .retain(|existing| existing.split(':').next() != Some(name));
            resolv.options.push(match &option.value {
                Some(value) => format!("{name}:{value}"),
                None => name.to_owned(),
            });
        }
    }
    if policy == "None" && resolv.nameservers.is_empty() {
        return Err(
            "spec.dnsConfig: Required value: must provide `dnsConfig` when `dnsPolicy` is None"
                .to_owned(),
        );
    }
    resolv.nameservers.truncate(MAX_NAMESERVERS);
    resolv.searches.truncate(MAX_SEARCHES);
    let mut text = String::new();
    for nameserver in &resolv.nameservers {
        text.push_str(&format!("nameserver {nameserver}\n"));
    }
    if !resolv.searches.is_empty() {
        text.push_str(&format!("search {}\n", resolv.searches.join(" ")));
    }
    if !resolv.options.is_empty() {
        text.push_str(&format!("options {}\n", resolv.options.join(" ")));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOST: &str = "search corp.example\nnameserver 192.0.2.53\noptions edns0\n";

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": spec}),
        )
        .unwrap()
    }

    fn cluster() -> ClusterDns {
        ClusterDns {
            address: Ipv4Addr::new(169, 254, 20, 10),
            domain: "cluster.local".to_owned(),
        }
    }

    #[test]
    fn cluster_first_points_at_the_cluster_dns_with_upstreams_search_path() {
        let text = resolv_conf(&pod(json!({})), Some(&cluster()), HOST).unwrap();
        assert_eq!(
            text,
            "nameserver 169.254.20.10\n\
             search shop.svc.cluster.local svc.cluster.local cluster.local corp.example\n\
             options ndots:5\n"
        );
    }

    #[test]
    fn host_network_default_and_no_cluster_dns_take_the_hosts_file() {
        let host_net = pod(json!({"hostNetwork": true}));
        let expected = "nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n";
        assert_eq!(
            resolv_conf(&host_net, Some(&cluster()), HOST).unwrap(),
            expected
        );
        let with_host_net =
            pod(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}));
        assert!(
            resolv_conf(&with_host_net, Some(&cluster()), HOST)
                .unwrap()
                .starts_with("nameserver 169.254.20.10\n")
        );
        let default = pod(json!({"dnsPolicy": "Default"}));
        assert_eq!(
            resolv_conf(&default, Some(&cluster()), HOST).unwrap(),
            expected
        );
        assert_eq!(resolv_conf(&pod(json!({})), None, HOST).unwrap(), expected);
    }

    #[test]
    fn dns_config_merges_and_none_takes_only_it() {
        let merged = pod(json!({"dnsConfig": {
            "nameservers": ["192.0.2.1", "169.254.20.10"],
            "searches": ["extra.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}));
        assert_eq!(
            resolv_conf(&merged, Some(&cluster()), HOST).unwrap(),
            "nameserver 169.254.20.10\nnameserver 192.0.2.1\n\
             search shop.svc.cluster.local svc.cluster.local cluster.local corp.example extra.example\n\
             options ndots:2 edns0\n"
        );
        let none = pod(json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["192.0.2.9"]}}));
        assert_eq!(
            resolv_conf(&none, Some(&cluster()), HOST).unwrap(),
            "nameserver 192.0.2.9\n"
        );
        let empty = pod(json!({"dnsPolicy": "None"}));
        assert!(
            resolv_conf(&empty, Some(&cluster()), HOST)
                .unwrap_err()
                .contains("dnsConfig")
        );
        let bad = pod(json!({"dnsPolicy": "Sometimes"}));
        assert!(
            resolv_conf(&bad, None, HOST)
                .unwrap_err()
                .contains("\"Sometimes\"")
        );
    }
}
