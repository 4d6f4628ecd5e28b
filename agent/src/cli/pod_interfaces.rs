//! TC load-balancing on the pods' node-side interfaces, for what socket-level load-balancing
//! does not see (processes outside `--socket-lb-cgroup`; a pod hairpinning to itself through
//! its own Service): `tc_lb_*` follow the pods' `kp*` veths as they come and go.

use std::collections::BTreeMap;

use keel_agent::dataplane::Dataplane;
use keel_agent::sandbox::network;

/// The pods' interfaces that have the load balancer, by ifindex.
#[derive(Debug, Default)]
pub struct PodInterfaces {
    attached: BTreeMap<u32, String>,
}

impl PodInterfaces {
    /// Attaches to the pod interfaces that appeared since the last call and forgets the pins
    /// of those that went (the kernel detached their programs with them).
    pub fn sync(&mut self, dataplane: &mut Dataplane) {
        let present = match network::host_interfaces() {
            Ok(present) => present,
            Err(error) => {
                log::warn!("cannot list the pods' interfaces: {error}");
                return;
            }
        };
        for (name, ifindex) in &present {
            if self.attached.contains_key(ifindex) {
                continue;
            }
            match dataplane.attach_tc(name) {
                Ok(()) => {
                    log::debug!("load-balancing Service traffic from pod interface {name}");
                    self.attached.insert(*ifindex, name.clone());
                }
                // A pod's veth may go between listing and attaching: the next call sees.
                Err(error) => {
                    log::warn!("cannot attach Service load-balancing to {name}: {error:#}")
                }
            }
        }
        let gone: Vec<u32> = self
            .attached
            .keys()
            .copied()
            .filter(|ifindex| !present.iter().any(|(_, present)| present == ifindex))
            .collect();
        for ifindex in gone {
            let name = self.attached.remove(&ifindex).unwrap_or_default();
            if let Err(error) = dataplane.release_tc(ifindex) {
                log::warn!("cannot remove the pins of {name} (gone): {error:#}");
            }
        }
    }
}
