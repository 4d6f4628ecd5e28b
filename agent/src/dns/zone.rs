//! The cluster domain's records, built from Services and EndpointSlices, and the answers to
//! queries in it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::services::desired::SliceIndex;

/// kubelet's and CoreDNS's default cluster domain.
pub const DEFAULT_DOMAIN: &str = "cluster.local";

/// CoreDNS's `kubernetes` plugin's default TTL.
const TTL: u32 = 5;

/// The records of the cluster domain.
#[derive(Debug, Clone)]
pub struct Zone {
    domain: Name,
    a: BTreeMap<Name, Vec<Ipv4Addr>>,
    srv: BTreeMap<Name, Vec<SRV>>,
    cname: BTreeMap<Name, Name>,
    /// Every name that exists, and the names between them and the domain (empty
    /// non-terminals): these answer NODATA, not NXDOMAIN, for a type they lack.
    names: BTreeSet<Name>,
}

fn name(text: &str) -> Option<Name> {
    Name::from_ascii(text).ok().map(|mut name| {
        name.set_fqdn(true);
        name.to_lowercase()
    })
}

impl Zone {
    /// The records of `services` and `slices` under `domain` (e.g. `cluster.local`).
    pub fn build(domain: &str, services: &[Service], slices: &[EndpointSlice]) -> Zone {
        let mut zone = Zone {
            domain: name(domain).unwrap_or_else(|| name(DEFAULT_DOMAIN).expect("valid")),
            a: BTreeMap::new(),
            srv: BTreeMap::new(),
            cname: BTreeMap::new(),
            names: BTreeSet::new(),
        };
        let index = SliceIndex::new(slices);
        for service in services {
            zone.add_service(service, &index);
        }
        let domain = zone.domain.clone();
        for extra in ["svc", "pod"] {
            if let Some(name) = name(&format!("{extra}.{domain}")) {
                zone.names.insert(name);
            }
        }
        let existing: Vec<Name> = zone
            .a
            .keys()
            .chain(zone.srv.keys())
            .chain(zone.cname.keys())
            .cloned()
            .collect();
        for mut name in existing {
            while domain.zone_of(&name) {
                zone.names.insert(name.clone());
                if name == domain {
                    break;
                }
                name = name.base_name();
            }
        }
        zone.names.insert(domain);
        zone
    }

    fn add_service(&mut self, service: &Service, slices: &SliceIndex<'_>) {
        let (Some(svc), Some(ns)) = (
            service.metadata.name.as_deref(),
            service.metadata.namespace.as_deref(),
        ) else {
            return;
        };
        let Some(base) = name(&format!("{svc}.{ns}.svc.{}", self.domain)) else {
            return;
        };
        let spec = service.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            if let Some(target) = spec.external_name.as_deref().and_then(name) {
                self.cname.insert(base, target);
            }
            return;
        }
        let cluster_ip = spec.cluster_ip.as_deref().unwrap_or("");
        if cluster_ip != "None" {
            let Ok(ip) = cluster_ip.parse::<Ipv4Addr>() else {
                return;
            };
            self.a.insert(base.clone(), vec![ip]);
            for port in spec.ports.iter().flatten() {
                let protocol = port.protocol.as_deref().unwrap_or("TCP");
                if let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty())
                    && let Some(srv_name) = srv_name(port_name, protocol, &base)
                    && let Ok(number) = u16::try_from(port.port)
                {
                    self.srv.entry(srv_name).or_default().push(SRV::new(
                        0,
                        100,
                        number,
                        base.clone(),
                    ));
                }
            }
            return;
        }
        // Headless: the ready endpoints of the Service's slices.
        let mut addresses = Vec::new();
        for slice in slices.of(ns, svc) {
            for endpoint in &slice.endpoints {
                let ready = endpoint
                    .conditions
                    .as_ref()
                    .and_then(|c| c.ready)
                    .unwrap_or(true);
                if !ready {
                    continue;
                }
                for ip in endpoint
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse::<Ipv4Addr>().ok())
                {
                    addresses.push(ip);
                    let host = endpoint
                        .hostname
                        .clone()
                        .unwrap_or_else(|| ip.to_string().replace('.', "-"));
                    let Some(host_name) = name(&format!("{host}.{base}")) else {
                        continue;
                    };
                    self.a.entry(host_name.clone()).or_default().push(ip);
                    for port in slice.ports.iter().flatten() {
                        let protocol = port.protocol.as_deref().unwrap_or("TCP");
                        if let (Some(port_name), Some(number)) = (
                            port.name.as_deref().filter(|n| !n.is_empty()),
                            port.port.and_then(|p| u16::try_from(p).ok()),
                        ) && let Some(srv_name) = srv_name(port_name, protocol, &base)
                        {
                            self.srv.entry(srv_name).or_default().push(SRV::new(
                                0,
                                100,
                                number,
                                host_name.clone(),
                            ));
                        }
                    }
                }
            }
        }
        addresses.sort();
        addresses.dedup();
        self.a.insert(base, addresses);
    }

    /// Whether `name` is in the cluster domain (answered here, not forwarded).
    pub fn contains(&self, name: &Name) -> bool {
        self.domain.zone_of(&name.to_lowercase())
    }

    /// The answer to `request`, whose (first) question is in the cluster domain.
    pub fn answer(&self, request: &Message) -> Message {
        let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.metadata.authoritative = true;
        let Some(query) = request.queries.first() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return response;
        };
        response.add_query(query.clone());
        let asked = query.name().to_lowercase();
        let qtype = query.query_type();
        let mut answers: Vec<Record> = Vec::new();
        if let Some(target) = self.cname.get(&asked) {
            // An ExternalName: the CNAME, whatever the type asked (the client follows it).
            answers.push(Record::from_rdata(
                query.name().clone(),
                TTL,
                RData::CNAME(CNAME(target.clone())),
            ));
        } else {
            if matches!(qtype, RecordType::A | RecordType::ANY) {
                let addresses = self
                    .a
                    .get(&asked)
                    .cloned()
                    .or_else(|| self.pod_address(&asked).map(|ip| vec![ip]))
                    .unwrap_or_default();
                answers.extend(
                    addresses
                        .into_iter()
                        .map(|ip| Record::from_rdata(query.name().clone(), TTL, RData::A(A(ip)))),
                );
            }
            if matches!(qtype, RecordType::SRV | RecordType::ANY) {
                for srv in self.srv.get(&asked).into_iter().flatten() {
                    answers.push(Record::from_rdata(
                        query.name().clone(),
                        TTL,
                        RData::SRV(srv.clone()),
                    ));
                }
            }
        }
        let exists = !answers.is_empty()
            || self.names.contains(&asked)
            || self.pod_address(&asked).is_some();
        if answers.is_empty() {
            response.metadata.response_code = if exists {
                ResponseCode::NoError
            } else {
                ResponseCode::NXDomain
            };
            response.add_authority(self.soa());
        } else {
            response.add_answers(answers);
        }
        response
    }

    /// The address a `<a-b-c-d>.<ns>.pod.<domain>` name spells.
    fn pod_address(&self, asked: &Name) -> Option<Ipv4Addr> {
        let labels: Vec<String> = asked
            .iter()
            .map(|label| String::from_utf8_lossy(label).into_owned())
            .collect();
        let domain_labels = usize::from(self.domain.num_labels());
        if labels.len() != domain_labels + 3 || labels[2] != "pod" {
            return None;
        }
        labels[0].replace('-', ".").parse().ok()
    }

    /// The zone's SOA, for the authority section of negative answers (CoreDNS's values).
    fn soa(&self) -> Record {
        let mname = name(&format!("ns.dns.{}", self.domain)).expect("valid");
        let rname = name(&format!("hostmaster.{}", self.domain)).expect("valid");
        Record::from_rdata(
            self.domain.clone(),
            TTL,
            RData::SOA(SOA::new(mname, rname, 1, 7200, 1800, 86400, TTL)),
        )
    }
}

/// `_<port>._<proto>.<base>`.
fn srv_name(port: &str, protocol: &str, base: &Name) -> Option<Name> {
    name(&format!(
        "_{port}._{}.{base}",
        protocol.to_ascii_lowercase()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use serde_json::json;

    fn zone() -> Zone {
        let services: Vec<Service> = serde_json::from_value(json!([
            {"metadata": {"name": "web", "namespace": "default"},
             "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}},
            {"metadata": {"name": "db", "namespace": "data"},
             "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}},
            {"metadata": {"name": "ext", "namespace": "default"},
             "spec": {"type": "ExternalName", "externalName": "example.org"}},
        ]))
        .unwrap();
        let slices: Vec<EndpointSlice> = serde_json::from_value(json!([
            {"metadata": {"name": "db-1", "namespace": "data",
                          "labels": {"kubernetes.io/service-name": "db"}},
             "addressType": "IPv4",
             "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
             "endpoints": [
                {"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.2.6"], "conditions": {"ready": true}},
                {"addresses": ["10.244.2.7"], "conditions": {"ready": false}}]}
        ]))
        .unwrap();
        Zone::build("cluster.local", &services, &slices)
    }

    fn ask(zone: &Zone, qname: &str, qtype: RecordType) -> Message {
        let mut request = Message::query();
        request.add_query(Query::query(Name::from_ascii(qname).unwrap(), qtype));
        zone.answer(&request)
    }

    fn rdata(message: &Message) -> Vec<String> {
        message.answers.iter().map(|r| r.data.to_string()).collect()
    }

    #[test]
    fn services_headless_endpoints_srv_pods_and_external_names() {
        let zone = zone();
        let web = ask(&zone, "web.default.svc.cluster.local.", RecordType::A);
        assert_eq!(rdata(&web), ["10.96.0.10"]);
        assert!(web.metadata.authoritative);
        let srv = ask(
            &zone,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(rdata(&srv), ["0 100 80 web.default.svc.cluster.local."]);
        let db = ask(&zone, "db.data.svc.cluster.local.", RecordType::A);
        assert_eq!(
            rdata(&db),
            ["10.244.1.5", "10.244.2.6"],
            "ready endpoints only"
        );
        let db0 = ask(&zone, "db-0.db.data.svc.cluster.local.", RecordType::A);
        assert_eq!(rdata(&db0), ["10.244.1.5"]);
        let dashed = ask(
            &zone,
            "10-244-2-6.db.data.svc.cluster.local.",
            RecordType::A,
        );
        assert_eq!(rdata(&dashed), ["10.244.2.6"]);
        let pg = ask(
            &zone,
            "_pg._tcp.db.data.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(pg.answers.len(), 2);
        let pod = ask(
            &zone,
            "10-244-3-9.default.pod.cluster.local.",
            RecordType::A,
        );
        assert_eq!(rdata(&pod), ["10.244.3.9"]);
        let ext = ask(&zone, "ext.default.svc.cluster.local.", RecordType::A);
        assert_eq!(rdata(&ext), ["example.org."]);
    }

    #[test]
    fn unknown_names_are_nxdomain_and_known_ones_without_the_type_nodata() {
        let zone = zone();
        let missing = ask(&zone, "nope.default.svc.cluster.local.", RecordType::A);
        assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(missing.authorities[0].record_type(), RecordType::SOA);
        let nodata = ask(&zone, "web.default.svc.cluster.local.", RecordType::AAAA);
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        let namespace = ask(&zone, "default.svc.cluster.local.", RecordType::A);
        assert_eq!(namespace.metadata.response_code, ResponseCode::NoError);
        // Case does not matter.
        let upper = ask(&zone, "WEB.Default.SVC.cluster.local.", RecordType::A);
        assert_eq!(rdata(&upper), ["10.96.0.10"]);
        assert!(zone.contains(&Name::from_ascii("x.cluster.local.").unwrap()));
        assert!(!zone.contains(&Name::from_ascii("example.org.").unwrap()));
    }
}
