//! Service load-balancing state in the kernel: frontends, their backends, and the socket-level
//! programs that translate between them.
//!
//! Writes follow one order so a concurrent lookup never sees half a backend set: backends
//! first, then new slots, then the service's Maglev table (a complete new one swapped in),
//! then the service's slot count, and only then removal of slots past the new count, of a
//! table no longer wanted, and of backends no service uses any more.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use aya::Ebpf;
use aya::maps::{HashMap as BpfHashMap, MapData};
use aya::programs::links::FdLink;
use keel_ebpf_common::map;
use keel_ebpf_common::service::{
    AffinityKey, AffinityValue, Backend, BackendSlotKey, PROTO_TCP, PROTO_UDP,
    SERVICE_F_DROP_WHEN_EMPTY, SERVICE_F_EXTERNAL, SERVICE_F_LOCAL_ONLY, ServiceKey, ServiceValue,
};

use super::maglev::LoadBalancing;
use super::maglev::tables::MaglevTables;
use super::object::DataplaneError;
use super::pins::PinRoot;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// Where a Service is reached: an address, a port and a protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

impl Frontend {
    pub(super) fn key(self) -> ServiceKey {
        ServiceKey {
            address: u32::from_ne_bytes(self.address.octets()),
            port: self.port.to_be(),
            protocol: match self.protocol {
                Protocol::Tcp => PROTO_TCP,
                Protocol::Udp => PROTO_UDP,
            },
            pad: 0,
        }
    }
}

/// What a frontend should lead to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Backends {
    /// Sorted, without duplicates.
    pub addresses: Vec<SocketAddrV4>,
    /// `sessionAffinity: ClientIP` with this timeout.
    pub affinity: Option<Duration>,
    /// Reached from outside the cluster (NodePort, externalIP, LoadBalancer IP): new flows on
    /// the TC path pick their backend from a Maglev table under `LbAlgorithm::Maglev`.
    pub external: bool,
    /// Without backends, the TC path drops new flows (`no_local_backend`) instead of refusing
    /// them: a `Local` traffic policy with endpoints only on other nodes.
    pub drop_when_empty: bool,
    /// `externalTrafficPolicy: Local` on an external frontend: the addresses are this node's
    /// backends only; flows keep their client address (no SNAT) and without a backend here
    /// are dropped.
    pub local_only: bool,
}

/// What the agent wrote for one frontend.
#[derive(Debug)]
pub(super) struct Programmed {
    pub(super) id: u32,
    pub(super) backends: Vec<SocketAddrV4>,
    pub(super) affinity: Option<Duration>,
    pub(super) external: bool,
    pub(super) drop_when_empty: bool,
    pub(super) local_only: bool,
    /// Entries of the Maglev table, 0 without one.
    pub(super) maglev_size: u32,
    /// Backend ids, slot `n` at index `n - 1`.
    pub(super) slots: Vec<u32>,
}

/// The agent's one eBPF dataplane: the loaded object (every program, and one set of maps that
/// counters, Services and conntrack share), its pins in bpffs when it has them (see
/// [`pins`](super::pins)), and what the agent has written into the Service maps.
#[derive(Debug)]
pub struct Dataplane {
    pub(super) ebpf: Ebpf,
    /// `None`: nothing pinned, everything goes with this value (tests).
    pub(super) pins: Option<PinRoot>,
    /// Links of an unpinned dataplane, detached when it is dropped.
    pub(super) held_links: Vec<FdLink>,
    pub(super) services: HashMap<Frontend, Programmed>,
    /// Backend address -> (id, number of slots using it).
    pub(super) backends: HashMap<SocketAddrV4, (u32, usize)>,
    /// Backend id -> address, the reverse of `backends`.
    pub(super) backend_addresses: HashMap<u32, SocketAddrV4>,
    pub(super) maglev: MaglevTables,
    pub(super) next_service_id: u32,
    pub(super) next_backend_id: u32,
}

/// `ServiceValue::flags` for `desired`.
fn service_flags(desired: &Backends) -> u32 {
    let mut flags = 0;
    if desired.external {
        flags |= SERVICE_F_EXTERNAL;
    }
    if desired.external && desired.local_only {
        flags |= SERVICE_F_LOCAL_ONLY;
    }
    if desired.drop_when_empty {
        flags |= SERVICE_F_DROP_WHEN_EMPTY;
    }
    flags
}

impl Dataplane {
    /// Sets the backends of `frontend`, creating it if needed. No backends: connections to
    /// it are refused at once.
    pub fn upsert(
        &mut self,
        frontend: Frontend,
        backends: &[SocketAddrV4],
    ) -> Result<(), DataplaneError> {
        self.upsert_with_affinity(frontend, backends, None)
    }

    /// As [`upsert`](Self::upsert), with `sessionAffinity: ClientIP` for `affinity` (the
    /// timeout): a client goes back to its previous backend while less than the timeout has
    /// passed since its last connection.
    pub fn upsert_with_affinity(
        &mut self,
        frontend: Frontend,
        backends: &[SocketAddrV4],
        affinity: Option<Duration>,
    ) -> Result<(), DataplaneError> {
        let desired = Backends {
            addresses: backends.to_vec(),
            affinity,
            external: false,
            drop_when_empty: false,
            local_only: false,
        };
        self.upsert_backends(frontend, &desired)
    }

    /// Sets what `frontend` leads to, creating it if needed: the general form of
    /// [`upsert`](Self::upsert), for frontends reached from outside too.
    pub fn upsert_backends(
        &mut self,
        frontend: Frontend,
        desired: &Backends,
    ) -> Result<(), DataplaneError> {
        let (backends, affinity) = (desired.addresses.as_slice(), desired.affinity);
        let slots: Vec<u32> = backends
            .iter()
            .map(|backend| self.acquire_backend(*backend))
            .collect::<Result<_, _>>()?;
        let id = match self.services.get(&frontend) {
            Some(programmed) => programmed.id,
            None => {
                let id = self.next_service_id;
                self.next_service_id += 1;
                id
            }
        };
        let mut slot_map = self.map::<BackendSlotKey, u32>(map::BACKEND_SLOTS)?;
        for (index, backend_id) in slots.iter().enumerate() {
            let key = BackendSlotKey {
                service_id: id,
                slot: index as u32 + 1,
            };
            slot_map
                .insert(key, backend_id, 0)
                .map_err(|source| map_error(map::BACKEND_SLOTS, source))?;
        }
        let maglev_size = if self.maglev.wanted(desired.external, slots.len()) {
            let table: Vec<(SocketAddrV4, u32)> = backends
                .iter()
                .copied()
                .zip(slots.iter().copied())
                .collect();
            self.write_maglev_table(id, &table)?
        } else {
            0
        };
        let affinity_timeout = affinity.map_or(0, |timeout| {
            u32::try_from(timeout.as_secs().max(1)).unwrap_or(u32::MAX)
        });
        let value = ServiceValue {
            id,
            count: slots.len() as u32,
            affinity_timeout,
            maglev_size,
            flags: service_flags(desired),
            pad: 0,
        };
        self.map::<ServiceKey, ServiceValue>(map::SERVICES)?
            .insert(frontend.key(), value, 0)
            .map_err(|source| map_error(map::SERVICES, source))?;
        if maglev_size == 0 {
            self.remove_maglev_table(id)?;
        }
        let programmed = Programmed {
            id,
            backends: backends.to_vec(),
            affinity,
            external: desired.external,
            drop_when_empty: desired.drop_when_empty,
            local_only: desired.local_only,
            maglev_size,
            slots,
        };
        let kept = programmed.slots.clone();
        let previous = self.services.insert(frontend, programmed);
        if let Some(previous) = previous {
            let gone: Vec<SocketAddrV4> = previous
                .backends
                .iter()
                .filter(|b| !backends.contains(b))
                .copied()
                .collect();
            // Both walk a whole map: only when a backend actually left.
            if !gone.is_empty() {
                self.forget_udp_flows(frontend, &gone)?;
                if previous.affinity.is_some() {
                    self.forget_affinity(id, &kept)?;
                }
            }
            self.retire(id, backends.len() as u32 + 1, &previous.slots)?;
        }
        Ok(())
    }

    /// Converges to `desired`: frontends whose backends changed are rewritten, new ones
    /// added, and ones no longer desired removed; the rest are not touched. Returns how many
    /// frontends changed.
    pub fn apply(
        &mut self,
        desired: &BTreeMap<Frontend, Backends>,
    ) -> Result<usize, DataplaneError> {
        let gone: Vec<Frontend> = self
            .services
            .keys()
            .filter(|frontend| !desired.contains_key(frontend))
            .copied()
            .collect();
        let mut changed = gone.len();
        for frontend in gone {
            self.remove(frontend)?;
        }
        for (frontend, backends) in desired {
            if self.services.get(frontend).is_none_or(|programmed| {
                programmed.backends != backends.addresses
                    || programmed.affinity != backends.affinity
                    || programmed.external != backends.external
                    || programmed.drop_when_empty != backends.drop_when_empty
                    || programmed.local_only != backends.local_only
            }) {
                self.upsert_backends(*frontend, backends)?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Removes `frontend`; unknown frontends are fine.
    pub fn remove(&mut self, frontend: Frontend) -> Result<(), DataplaneError> {
        let Some(programmed) = self.services.remove(&frontend) else {
            return Ok(());
        };
        match self
            .map::<ServiceKey, ServiceValue>(map::SERVICES)?
            .remove(&frontend.key())
        {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(source) => return Err(map_error(map::SERVICES, source)),
        }
        self.remove_maglev_table(programmed.id)?;
        if programmed.affinity.is_some() {
            self.forget_affinity(programmed.id, &[])?;
        }
        self.forget_udp_flows(frontend, &programmed.backends)?;
        self.retire(programmed.id, 1, &programmed.slots)
    }

    /// Sets how new flows to frontends reached from outside pick their backend; frontends
    /// already programmed are rewritten under the new choice.
    pub fn set_load_balancing(&mut self, config: LoadBalancing) -> Result<(), DataplaneError> {
        if self.maglev.config == config {
            return Ok(());
        }
        self.maglev.config = config;
        let programmed: Vec<(Frontend, Backends)> = self
            .services
            .iter()
            .map(|(frontend, programmed)| {
                let backends = Backends {
                    addresses: programmed.backends.clone(),
                    affinity: programmed.affinity,
                    external: programmed.external,
                    drop_when_empty: programmed.drop_when_empty,
                    local_only: programmed.local_only,
                };
                (*frontend, backends)
            })
            .collect();
        for (frontend, backends) in programmed {
            self.upsert_backends(frontend, &backends)?;
        }
        Ok(())
    }

    /// Deletes the affinity entries of service `id` that point at a backend not in `kept`.
    fn forget_affinity(&mut self, id: u32, kept: &[u32]) -> Result<(), DataplaneError> {
        let mut affinity = self.map::<AffinityKey, AffinityValue>(map::AFFINITY)?;
        let stale: Vec<AffinityKey> = affinity
            .iter()
            .filter_map(Result::ok)
            .filter(|(key, value)| key.service_id == id && !kept.contains(&value.backend_id))
            .map(|(key, _)| key)
            .collect();
        for key in stale {
            match affinity.remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => return Err(map_error(map::AFFINITY, source)),
            }
        }
        Ok(())
    }

    /// Deletes slots from `first_gone` on and releases the backends of all `old_slots`.
    fn retire(
        &mut self,
        id: u32,
        first_gone: u32,
        old_slots: &[u32],
    ) -> Result<(), DataplaneError> {
        let mut slot_map = self.map::<BackendSlotKey, u32>(map::BACKEND_SLOTS)?;
        for slot in first_gone..=old_slots.len() as u32 {
            match slot_map.remove(&BackendSlotKey {
                service_id: id,
                slot,
            }) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => return Err(map_error(map::BACKEND_SLOTS, source)),
            }
        }
        for backend_id in old_slots {
            self.release_backend(*backend_id)?;
        }
        Ok(())
    }

    fn acquire_backend(&mut self, backend: SocketAddrV4) -> Result<u32, DataplaneError> {
        if let Some((id, users)) = self.backends.get_mut(&backend) {
            *users += 1;
            return Ok(*id);
        }
        let id = self.next_backend_id;
        self.next_backend_id += 1;
        let value = Backend {
            address: u32::from_ne_bytes(backend.ip().octets()),
            port: backend.port().to_be(),
            pad: [0; 2],
        };
        self.map::<u32, Backend>(map::BACKENDS)?
            .insert(id, value, 0)
            .map_err(|source| map_error(map::BACKENDS, source))?;
        self.backends.insert(backend, (id, 1));
        self.backend_addresses.insert(id, backend);
        Ok(id)
    }

    fn release_backend(&mut self, id: u32) -> Result<(), DataplaneError> {
        let Some(address) = self.backend_addresses.get(&id).copied() else {
            return Ok(());
        };
        let Some((_, users)) = self.backends.get_mut(&address) else {
            return Ok(());
        };
        *users -= 1;
        if *users == 0 {
            self.backends.remove(&address);
            self.backend_addresses.remove(&id);
            match self.map::<u32, Backend>(map::BACKENDS)?.remove(&id) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => return Err(map_error(map::BACKENDS, source)),
            }
        }
        Ok(())
    }

    /// The cgroup2 mount point in a `/proc/self/mountinfo` text: where socket load-balancing
    /// attaches by default (`/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on
    /// hybrid ones).
    pub fn cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
        mountinfo.lines().find_map(|line| {
            let (mount, source) = line.split_once(" - ")?;
            let mount_point = mount.split_whitespace().nth(4)?;
            (source.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
    }

    pub(super) fn map<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<BpfHashMap<&mut MapData, K, V>, DataplaneError> {
        let raw = self
            .ebpf
            .map_mut(name)
            .ok_or(DataplaneError::MissingMap { map: name })?;
        BpfHashMap::try_from(raw).map_err(|source| map_error(name, source))
    }
}

pub(super) fn map_error(map: &'static str, source: aya::maps::MapError) -> DataplaneError {
    DataplaneError::Map { map, source }
}

#[cfg(test)]
mod tests {
    use super::Dataplane;

    #[test]
    fn cgroup2_root_is_found_on_hybrid_and_unified_hosts() {
        let hybrid = "35 25 0:30 / /sys/fs/cgroup/memory rw,relatime shared:14 - cgroup cgroup rw,memory\n\
                      36 25 0:31 / /sys/fs/cgroup/unified rw,relatime shared:15 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            Dataplane::cgroup2_root(hybrid).unwrap().to_str(),
            Some("/sys/fs/cgroup/unified")
        );
        let unified =
            "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            Dataplane::cgroup2_root(unified).unwrap().to_str(),
            Some("/sys/fs/cgroup")
        );
        assert_eq!(
            Dataplane::cgroup2_root("22 1 0:21 / /proc rw - proc proc rw\n"),
            None
        );
    }
}
