//! Service ClusterIP and NodePort allocation. Each address or port in use is one etcd key
//! (`/registry/allocations.keel.dev/clusterips/<ip>`, `.../nodeports/<port>`) created only if
//! absent, so two API servers can never hand out the same one (upstream's `IPAddress`
//! objects work the same way). Freed on delete and when an update drops them.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use serde_json::{Value, json};

use crate::api::{ApiError, Cause, Target};
use crate::storage::{Preconditions, Resource, StorageError, Store};

const GROUP: &str = "allocations.keel.dev";

/// An IPv4 CIDR such as `10.96.0.0/12`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (address, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not a CIDR (address/prefix)"))?;
        let address: Ipv4Addr = address
            .parse()
            .map_err(|_| format!("{address:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|prefix| (1..=30).contains(prefix))
            .ok_or_else(|| format!("prefix {prefix:?} must be between 1 and 30"))?;
        let mask = u32::MAX << (32 - prefix);
        Ok(Self {
            base: Ipv4Addr::from(u32::from(address) & mask),
            prefix,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl Cidr {
    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    fn contains(&self, address: Ipv4Addr) -> bool {
        let offset = u32::from(address).wrapping_sub(u32::from(self.base));
        offset < self.size()
    }

    /// The first usable address, which upstream gives the `kubernetes` Service.
    pub fn first(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.base) + 1)
    }

    /// Usable addresses exclude the network and broadcast addresses.
    fn usable(&self, address: Ipv4Addr) -> bool {
        let offset = u32::from(address) - u32::from(self.base);
        self.contains(address) && offset != 0 && offset != self.size() - 1
    }
}

/// The allocators of one API server.
#[derive(Debug, Clone)]
pub struct Allocator {
    pub service_cidr: Cidr,
    pub node_ports: RangeInclusive<u16>,
}

fn random_u32() -> u32 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

fn claim_key(kind: &str, name: &str) -> Result<crate::storage::ResourceKey, ApiError> {
    Resource::new(GROUP, kind)
        .and_then(|resource| resource.cluster_key(name))
        .map_err(|error| ApiError::internal(error.to_string()))
}

/// Tries to claim `name` for `owner`; `Ok(false)` if someone holds it.
async fn claim(store: &Store, kind: &str, name: &str, owner: &str) -> Result<bool, ApiError> {
    let key = claim_key(kind, name)?;
    let record = json!({"kind": "Allocation", "apiVersion": "v1", "metadata": {"name": name}, "owner": owner});
    match store.create(&key, record).await {
        Ok(_) => Ok(true),
        Err(StorageError::AlreadyExists { .. }) => Ok(false),
        Err(error) => Err(ApiError::from_storage(error, Target::default())),
    }
}

async fn free(store: &Store, kind: &str, name: &str) {
    if let Ok(key) = claim_key(kind, name) {
        match store.delete(&key, &Preconditions::default()).await {
            Ok(_) | Err(StorageError::NotFound { .. }) => {}
            Err(error) => log::warn!("cannot release {kind} {name}: {error}"),
        }
    }
}

fn cluster_ips(service: &Value) -> Vec<String> {
    let mut ips: Vec<String> = service
        .pointer("/spec/clusterIPs")
        .and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if let Some(ip) = service.pointer("/spec/clusterIP").and_then(Value::as_str)
        && !ips.iter().any(|known| known == ip)
    {
        ips.push(ip.to_owned());
    }
    ips.retain(|ip| !ip.is_empty() && ip != "None");
    ips
}

fn node_ports(service: &Value) -> Vec<u16> {
    service
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|port| port.get("nodePort").and_then(Value::as_u64))
        .filter_map(|port| u16::try_from(port).ok())
        .collect()
}

fn wants_node_ports(service: &Value) -> bool {
    match service.pointer("/spec/type").and_then(Value::as_str) {
        Some("NodePort") => true,
        Some("LoadBalancer") => service
            .pointer("/spec/allocateLoadBalancerNodePorts")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        _ => false,
    }
}

impl Allocator {
    /// Fills and claims a Service's ClusterIP and NodePorts (keeping those `old` had).
    pub async fn allocate(
        &self,
        store: &Store,
        service: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        let owner = format!(
            "{}/{}",
            service
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or(""),
            service
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
        );
        let target = Target::new(
            "",
            "services",
            service
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or(""),
        );
        let kind = service
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_owned();
        let mut claimed: Vec<(&str, String)> = Vec::new();
        let result = self
            .allocate_inner(store, service, old, &owner, &kind, &mut claimed)
            .await;
        if let Err(causes) = result {
            for (kind, name) in claimed {
                free(store, kind, &name).await;
            }
            return Err(match causes {
                Failure::Invalid(causes) => ApiError::invalid("Service", target, causes),
                Failure::Api(error) => error,
            });
        }
        Ok(())
    }

    async fn allocate_inner(
        &self,
        store: &Store,
        service: &mut Value,
        old: Option<&Value>,
        owner: &str,
        kind: &str,
        claimed: &mut Vec<(&'static str, String)>,
    ) -> Result<(), Failure> {
        let spec = &mut service["spec"];
        if kind == "ExternalName" {
            if let Some(spec) = spec.as_object_mut() {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
        } else {
            let old_ips = old.map(cluster_ips).unwrap_or_default();
            let requested = spec
                .get("clusterIP")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let ip = if requested == "None" {
                "None".to_owned()
            } else if let Some(existing) = old_ips
                .first()
                .filter(|_| requested.is_empty() || old_ips.contains(&requested))
            {
                existing.clone()
            } else if !requested.is_empty() {
                let address: Ipv4Addr = requested.parse().map_err(|_| {
                    Failure::Invalid(vec![Cause::invalid(
                        "spec.clusterIPs[0]",
                        &json!(requested),
                        "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                    )])
                })?;
                if !self.service_cidr.usable(address) {
                    return Err(Failure::Invalid(vec![Cause::invalid(
                        "spec.clusterIPs[0]",
                        &json!(requested),
                        format!(
                            "failed to allocate IP {requested}: the provided IP ({requested}) is not in the valid range. The range of valid IPs is {}",
                            self.service_cidr
                        ),
                    )]));
                }
                if !claim(store, "clusterips", &requested, owner)
                    .await
                    .map_err(Failure::Api)?
                {
                    return Err(Failure::Invalid(vec![Cause::invalid(
                        "spec.clusterIPs[0]",
                        &json!(requested),
                        format!(
                            "failed to allocate IP {requested}: provided IP is already allocated"
                        ),
                    )]));
                }
                claimed.push(("clusterips", requested.clone()));
                requested
            } else {
                let ip = self.random_ip(store, owner).await?;
                claimed.push(("clusterips", ip.clone()));
                ip
            };
            spec["clusterIP"] = json!(ip);
            spec["clusterIPs"] = json!([ip]);
            if ip != "None" || spec.get("ipFamilies").is_none() {
                spec["ipFamilies"] = json!(["IPv4"]);
            }
            if spec.get("ipFamilyPolicy").is_none_or(Value::is_null) {
                spec["ipFamilyPolicy"] = json!("SingleStack");
            }
        }
        let want_ports = wants_node_ports(service);
        let old_ports = old
            .map(|old| {
                old.pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        let old_numbers = old.map(node_ports).unwrap_or_default();
        let Some(ports) = service
            .pointer_mut("/spec/ports")
            .and_then(Value::as_array_mut)
        else {
            return Ok(());
        };
        for (index, port) in ports.iter_mut().enumerate() {
            if !want_ports {
                if let Some(port) = port.as_object_mut() {
                    port.remove("nodePort");
                }
                continue;
            }
            let requested = port.get("nodePort").and_then(Value::as_u64).unwrap_or(0);
            let field = format!("spec.ports[{index}].nodePort");
            let number = if requested == 0 {
                // Keep the port this service port had before, matched by port and protocol.
                let previous = old_ports.iter().find(|old| {
                    old.get("port") == port.get("port")
                        && old.get("protocol") == port.get("protocol")
                });
                match previous
                    .and_then(|old| old.get("nodePort"))
                    .and_then(Value::as_u64)
                {
                    Some(kept) => kept as u16,
                    None => {
                        let number = self.random_port(store, owner).await?;
                        claimed.push(("nodeports", number.to_string()));
                        number
                    }
                }
            } else if old_numbers.contains(&(requested as u16)) {
                requested as u16
            } else {
                let number = u16::try_from(requested).ok().filter(|number| self.node_ports.contains(number)).ok_or_else(|| {
                    Failure::Invalid(vec![Cause::invalid(&field, &json!(requested), format!("provided port is not in the valid range. The range of valid ports is {}-{}", self.node_ports.start(), self.node_ports.end()))])
                })?;
                if !claim(store, "nodeports", &number.to_string(), owner)
                    .await
                    .map_err(Failure::Api)?
                {
                    return Err(Failure::Invalid(vec![Cause::invalid(
                        &field,
                        &json!(requested),
                        "provided port is already allocated",
                    )]));
                }
                claimed.push(("nodeports", number.to_string()));
                number
            };
            port["nodePort"] = json!(number);
        }
        Ok(())
    }

    async fn random_ip(&self, store: &Store, owner: &str) -> Result<String, Failure> {
        let size = self.service_cidr.size();
        let start = random_u32() % size;
        for step in 0..size {
            let offset = (start + step) % size;
            let address = Ipv4Addr::from(u32::from(self.service_cidr.base) + offset);
            // The first address belongs to the `kubernetes` Service.
            if !self.service_cidr.usable(address) || address == self.service_cidr.first() {
                continue;
            }
            if claim(store, "clusterips", &address.to_string(), owner)
                .await
                .map_err(Failure::Api)?
            {
                return Ok(address.to_string());
            }
        }
        Err(Failure::Api(ApiError::internal(format!(
            "failed to allocate a serviceIP: range is full ({})",
            self.service_cidr
        ))))
    }

    async fn random_port(&self, store: &Store, owner: &str) -> Result<u16, Failure> {
        let first = u32::from(*self.node_ports.start());
        let size = u32::from(*self.node_ports.end()) - first + 1;
        let start = random_u32() % size;
        for step in 0..size {
            let number = (first + (start + step) % size) as u16;
            if claim(store, "nodeports", &number.to_string(), owner)
                .await
                .map_err(Failure::Api)?
            {
                return Ok(number);
            }
        }
        Err(Failure::Api(ApiError::internal(
            "failed to allocate a nodePort: range is full",
        )))
    }

    /// Claims a specific address for a system Service (`kubernetes`), idempotently.
    pub async fn reserve_ip(
        &self,
        store: &Store,
        address: Ipv4Addr,
        owner: &str,
    ) -> Result<(), ApiError> {
        claim(store, "clusterips", &address.to_string(), owner)
            .await
            .map(|_| ())
    }

    /// Frees what `released` holds and `kept` (its replacement, if any) does not.
    pub async fn release(&self, store: &Store, released: &Value, kept: Option<&Value>) {
        let kept_ips = kept.map(cluster_ips).unwrap_or_default();
        for ip in cluster_ips(released) {
            if !kept_ips.contains(&ip) {
                free(store, "clusterips", &ip).await;
            }
        }
        let kept_ports = kept.map(node_ports).unwrap_or_default();
        for port in node_ports(released) {
            if !kept_ports.contains(&port) {
                free(store, "nodeports", &port.to_string()).await;
            }
        }
    }
}

enum Failure {
    Invalid(Vec<Cause>),
    Api(ApiError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let cidr: Cidr = "10.96.0.0/12".parse().unwrap();
        assert_eq!(cidr.first(), Ipv4Addr::new(10, 96, 0, 1));
        assert!(cidr.usable(Ipv4Addr::new(10, 111, 255, 254)));
        assert!(!cidr.usable(Ipv4Addr::new(10, 111, 255, 255)));
        assert!(!cidr.usable(Ipv4Addr::new(10, 112, 0, 1)));
        assert!("10.96.0.0".parse::<Cidr>().is_err());
        assert!("10.96.0.0/40".parse::<Cidr>().is_err());
    }
}
