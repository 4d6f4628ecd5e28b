//! Routes to the other nodes' pods: for every other node, `<its pod CIDR> via <its
//! InternalIP>` in the main table (flannel's host-gw, Cilium's auto-direct-node-routes), so
//! pod-to-pod traffic between nodes is plain routed IP, never NAT: the receiving pod sees the
//! sender's own address. The nodes must share a link (the gateway must be on-link).
//!
//! Every route this module writes carries [`ROUTE_PROTOCOL`], and it only ever lists, replaces
//! or deletes routes with that protocol: a route of the same destination that someone else
//! made (another protocol) is left alone and reported. [`converge`] makes the kernel's set
//! equal to the desired one, so a restarted agent removes the routes of nodes deleted while it
//! was away.

use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use super::ipam::Ipv4Cidr;
use super::network::{NetworkError, ip_batch};

/// The route protocol (`rtm_protocol`) of Keel's routes: `ip route show proto 75`. Unused
/// by the daemons iproute2 knows (`/etc/iproute2/rt_protos`); above `RTPROT_STATIC`, as the
/// kernel asks of routing daemons.
pub const ROUTE_PROTOCOL: u8 = 75;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("cannot run `ip` to list the routes")]
    Spawn(#[source] io::Error),
    #[error("`ip route show` failed: {0}")]
    List(String),
    #[error("cannot read the output of `ip -json route show`")]
    Parse(#[source] serde_json::Error),
    #[error("{failed} of {total} node routes could not be written: {errors}")]
    Partial {
        failed: usize,
        total: usize,
        errors: String,
    },
}

/// One node's pod CIDR, and the node address it is reached through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeRoute {
    pub destination: Ipv4Cidr,
    pub gateway: Ipv4Addr,
}

/// The desired routes, by destination.
pub type DesiredRoutes = BTreeMap<String, NodeRoute>;

/// What [`converge`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Converged {
    pub added: usize,
    pub removed: usize,
    /// Destinations skipped because a route of another protocol holds them.
    pub foreign: Vec<String>,
}

/// A route of the main table as `ip -json route show` prints it.
#[derive(Debug, serde::Deserialize)]
struct ShownRoute {
    dst: String,
    gateway: Option<String>,
    protocol: Option<String>,
}

/// A route's destination as `ip` prints it: a host route has no prefix.
fn destination_key(dst: &str) -> String {
    if dst.contains('/') || dst == "default" {
        dst.to_owned()
    } else {
        format!("{dst}/32")
    }
}

/// The IPv4 routes of the main table.
fn main_table() -> Result<Vec<ShownRoute>, RouteError> {
    let output = Command::new("ip")
        .args(["-4", "-json", "route", "show", "table", "main"])
        .stdin(Stdio::null())
        .output()
        .map_err(RouteError::Spawn)?;
    if !output.status.success() {
        return Err(RouteError::List(
            String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        ));
    }
    parse_routes(&output.stdout)
}

fn parse_routes(json: &[u8]) -> Result<Vec<ShownRoute>, RouteError> {
    // `ip -json` prints nothing at all for an empty table.
    if json.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    serde_json::from_slice(json).map_err(RouteError::Parse)
}

/// The changes that turn `installed` (our routes: destination -> gateway) into `desired`,
/// given the destinations other protocols hold: (routes to write, routes to delete, foreign
/// destinations skipped).
fn plan(
    desired: &DesiredRoutes,
    installed: &BTreeMap<String, String>,
    foreign: &[String],
) -> (Vec<NodeRoute>, Vec<(String, String)>, Vec<String>) {
    let mut write = Vec::new();
    let mut skipped = Vec::new();
    for (destination, route) in desired {
        if installed.get(destination) == Some(&route.gateway.to_string()) {
            continue;
        }
        if foreign.contains(destination) {
            skipped.push(destination.clone());
            continue;
        }
        write.push(*route);
    }
    let delete = installed
        .iter()
        .filter(|(destination, _)| !desired.contains_key(*destination))
        .map(|(destination, gateway)| (destination.clone(), gateway.clone()))
        .collect();
    (write, delete, skipped)
}

/// Makes Keel's routes in the main table of the calling thread's network namespace exactly
/// `desired`: writes missing or changed ones, deletes those no longer wanted. Routes of other
/// protocols are never touched.
pub fn converge(desired: &DesiredRoutes) -> Result<Converged, RouteError> {
    let shown = main_table()?;
    let ours = ROUTE_PROTOCOL.to_string();
    let mut installed = BTreeMap::new();
    let mut foreign = Vec::new();
    for route in shown {
        let destination = destination_key(&route.dst);
        if route.protocol.as_deref() == Some(ours.as_str()) {
            installed.insert(destination, route.gateway.unwrap_or_default());
        } else {
            foreign.push(destination);
        }
    }
    let (write, delete, skipped) = plan(desired, &installed, &foreign);
    let mut commands: Vec<String> = delete
        .iter()
        .map(|(destination, gateway)| {
            let via = if gateway.is_empty() {
                String::new()
            } else {
                format!(" via {gateway}")
            };
            format!("route del {destination}{via} proto {ROUTE_PROTOCOL}\n")
        })
        .collect();
    commands.extend(write.iter().map(|route| {
        format!(
            "route replace {} via {} proto {ROUTE_PROTOCOL}\n",
            route.destination, route.gateway
        )
    }));
    let converged = Converged {
        added: write.len(),
        removed: delete.len(),
        foreign: skipped,
    };
    if commands.is_empty() || ip_batch("write the node routes", &commands.concat()).is_ok() {
        return Ok(converged);
    }
    // Something failed (`ip -batch` stops there): each change on its own, to do all that can
    // be done and say which failed.
    let errors: Vec<String> = commands
        .iter()
        .filter_map(|command| {
            ip_batch(command.trim(), command)
                .err()
                .map(|e| e.to_string())
        })
        .collect();
    if errors.is_empty() {
        Ok(converged)
    } else {
        Err(RouteError::Partial {
            failed: errors.len(),
            total: commands.len(),
            errors: errors.join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(destination: &str, gateway: [u8; 4]) -> (String, NodeRoute) {
        (
            destination.to_owned(),
            NodeRoute {
                destination: Ipv4Cidr::parse(destination).unwrap(),
                gateway: Ipv4Addr::from(gateway),
            },
        )
    }

    #[test]
    fn routes_print_as_ip_shows_them() {
        let shown = parse_routes(
            br#"[{"dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]},
                 {"dst":"10.244.1.0/24","gateway":"198.18.0.3","dev":"eth0","protocol":"75","flags":[]},
                 {"dst":"10.244.0.7","dev":"kp0123","scope":"link","flags":[]}]"#,
        )
        .unwrap();
        assert_eq!(shown.len(), 3);
        assert_eq!(shown[1].protocol.as_deref(), Some("75"));
        assert_eq!(destination_key(&shown[2].dst), "10.244.0.7/32");
        assert_eq!(destination_key(&shown[1].dst), "10.244.1.0/24");
        assert!(parse_routes(b"\n").unwrap().is_empty());
    }

    #[test]
    fn plans_only_the_differences_and_leaves_foreign_routes_alone() {
        let desired = DesiredRoutes::from([
            route("10.244.1.0/24", [198, 18, 0, 3]),
            route("10.244.2.0/24", [198, 18, 0, 4]),
            route("10.244.3.0/24", [198, 18, 0, 5]),
            route("10.244.4.0/24", [198, 18, 0, 6]),
        ]);
        let installed = BTreeMap::from([
            // Unchanged.
            ("10.244.1.0/24".to_owned(), "198.18.0.3".to_owned()),
            // The node got a new address.
            ("10.244.2.0/24".to_owned(), "198.18.0.9".to_owned()),
            // A deleted node.
            ("10.244.9.0/24".to_owned(), "198.18.0.10".to_owned()),
        ]);
        let foreign = vec!["10.244.4.0/24".to_owned()];
        let (write, delete, skipped) = plan(&desired, &installed, &foreign);
        let written: Vec<String> = write.iter().map(|r| r.destination.to_string()).collect();
        assert_eq!(written, ["10.244.2.0/24", "10.244.3.0/24"]);
        assert_eq!(
            delete,
            [("10.244.9.0/24".to_owned(), "198.18.0.10".to_owned())]
        );
        assert_eq!(skipped, ["10.244.4.0/24"]);
    }
}
