//! Taking over the Service maps an agent before this one left pinned: the bookkeeping
//! (frontend -> service id, backend address -> id and users, slots) is rebuilt from what the
//! maps hold, so [`Dataplane::apply`] rewrites only what differs from the desired state and
//! leaves every unchanged entry (and the traffic through it) alone.
//!
//! What a killed agent may have left half-written is repaired here: a frontend whose slots or
//! backends are missing is removed (the next `apply` writes it afresh), and slots or backends
//! that no frontend reaches are deleted.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use keel_ebpf_common::map;
use keel_ebpf_common::service::{
    AffinityKey, AffinityValue, Backend, BackendSlotKey, PROTO_TCP, PROTO_UDP,
    SERVICE_F_DROP_WHEN_EMPTY, SERVICE_F_EXTERNAL, SERVICE_F_LOCAL_ONLY, ServiceKey, ServiceValue,
};

use super::object::DataplaneError;
use super::services::{Dataplane, Frontend, Programmed, Protocol, map_error};

/// What [`Dataplane::adopt_services`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Adopted {
    /// Frontends taken over.
    pub services: usize,
    /// Backends taken over.
    pub backends: usize,
    /// Frontends removed because their entries were incomplete.
    pub broken: usize,
    /// Slots and backends removed because no frontend reached them.
    pub orphans: usize,
}

impl Frontend {
    /// The frontend a `SERVICES` key stands for; `None` for a protocol Keel does not write.
    fn from_key(key: &ServiceKey) -> Option<Frontend> {
        let protocol = match key.protocol {
            PROTO_TCP => Protocol::Tcp,
            PROTO_UDP => Protocol::Udp,
            _ => return None,
        };
        Some(Frontend {
            address: Ipv4Addr::from(key.address.to_ne_bytes()),
            port: u16::from_be(key.port),
            protocol,
        })
    }
}

impl Dataplane {
    /// Rebuilds the Service bookkeeping from the maps (see the module doc).
    pub(super) fn adopt_services(&mut self) -> Result<Adopted, DataplaneError> {
        let services: Vec<(ServiceKey, ServiceValue)> = self
            .map::<ServiceKey, ServiceValue>(map::SERVICES)?
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|source| map_error(map::SERVICES, source))?;
        let slots: HashMap<BackendSlotKey, u32> = self
            .map::<BackendSlotKey, u32>(map::BACKEND_SLOTS)?
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|source| map_error(map::BACKEND_SLOTS, source))?;
        let backend_entries: Vec<(u32, Backend)> = self
            .map::<u32, Backend>(map::BACKENDS)?
            .iter()
            .collect::<Result<_, _>>()
            .map_err(|source| map_error(map::BACKENDS, source))?;

        // One id per address: a second id for an address (never written by one agent) makes
        // the frontends using it broken.
        let mut backend_ids: HashMap<SocketAddrV4, u32> = HashMap::new();
        let mut addresses: HashMap<u32, SocketAddrV4> = HashMap::new();
        for (id, backend) in &backend_entries {
            let address = SocketAddrV4::new(
                Ipv4Addr::from(backend.address.to_ne_bytes()),
                u16::from_be(backend.port),
            );
            if backend_ids.insert(address, *id).is_none() {
                addresses.insert(*id, address);
            }
        }

        let mut adopted = Adopted::default();
        let mut seen_ids = HashSet::new();
        for (key, value) in &services {
            let programmed = Frontend::from_key(key)
                .filter(|_| seen_ids.insert(value.id))
                .and_then(|frontend| Some((frontend, read_slots(value, &slots, &addresses)?)));
            match programmed {
                Some((frontend, (backends, slot_ids))) => {
                    let affinity = (value.affinity_timeout > 0)
                        .then(|| Duration::from_secs(u64::from(value.affinity_timeout)));
                    self.services.insert(
                        frontend,
                        Programmed {
                            id: value.id,
                            backends,
                            affinity,
                            // The flags say; a map written before they existed: only
                            // frontends reached from outside get a table, and with `random`
                            // one without a table is rewritten once by the first apply.
                            external: value.maglev_size > 0
                                || value.flags & SERVICE_F_EXTERNAL != 0,
                            local_only: value.flags & SERVICE_F_LOCAL_ONLY != 0,
                            drop_when_empty: value.flags & SERVICE_F_DROP_WHEN_EMPTY != 0,
                            maglev_size: value.maglev_size,
                            slots: slot_ids,
                        },
                    );
                }
                None => {
                    self.delete::<_, ServiceValue>(map::SERVICES, key)?;
                    adopted.broken += 1;
                }
            }
        }

        let mut users: HashMap<u32, usize> = HashMap::new();
        let mut reachable = HashSet::new();
        for programmed in self.services.values() {
            for (index, backend_id) in programmed.slots.iter().enumerate() {
                *users.entry(*backend_id).or_default() += 1;
                reachable.insert(BackendSlotKey {
                    service_id: programmed.id,
                    slot: index as u32 + 1,
                });
            }
        }
        for key in slots.keys().filter(|key| !reachable.contains(key)) {
            self.delete::<_, u32>(map::BACKEND_SLOTS, key)?;
            adopted.orphans += 1;
        }
        for (id, _) in backend_entries
            .iter()
            .filter(|(id, _)| !users.contains_key(id))
        {
            self.delete::<_, Backend>(map::BACKENDS, id)?;
            adopted.orphans += 1;
        }
        for (id, count) in &users {
            let address = addresses[id];
            self.backends.insert(address, (*id, *count));
            self.backend_addresses.insert(*id, address);
        }

        // Affinity entries of frontends gone: their ids may be handed out again.
        let kept: BTreeSet<u32> = self.services.values().map(|p| p.id).collect();
        let stale: Vec<AffinityKey> = self
            .map::<AffinityKey, AffinityValue>(map::AFFINITY)?
            .keys()
            .filter_map(Result::ok)
            .filter(|key| !kept.contains(&key.service_id))
            .collect();
        for key in &stale {
            self.delete::<_, AffinityValue>(map::AFFINITY, key)?;
        }

        // Maglev tables: kept for services that point at one, removed for ids no service uses.
        let with_table: BTreeSet<u32> = self
            .services
            .values()
            .filter(|p| p.maglev_size > 0)
            .map(|p| p.id)
            .collect();
        adopted.orphans += self.adopt_maglev_tables(&with_table)?;

        let max_service = services
            .iter()
            .map(|(_, v)| v.id)
            .chain(slots.keys().map(|k| k.service_id));
        self.next_service_id = max_service.max().unwrap_or(0).saturating_add(1).max(1);
        let max_backend = backend_entries.iter().map(|(id, _)| *id);
        self.next_backend_id = max_backend.max().unwrap_or(0).saturating_add(1).max(1);
        adopted.services = self.services.len();
        adopted.backends = self.backends.len();
        Ok(adopted)
    }

    /// Deletes `key` from the hash map `name`; gone already is fine.
    fn delete<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
        key: &K,
    ) -> Result<(), DataplaneError> {
        match self.map::<K, V>(name)?.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(map_error(name, source)),
        }
    }
}

/// The backends of a frontend in slot order and their ids; `None` if a slot or a backend is
/// missing.
fn read_slots(
    value: &ServiceValue,
    slots: &HashMap<BackendSlotKey, u32>,
    addresses: &HashMap<u32, SocketAddrV4>,
) -> Option<(Vec<SocketAddrV4>, Vec<u32>)> {
    let mut backends = Vec::with_capacity(value.count as usize);
    let mut ids = Vec::with_capacity(value.count as usize);
    for slot in 1..=value.count {
        let id = *slots.get(&BackendSlotKey {
            service_id: value.id,
            slot,
        })?;
        backends.push(*addresses.get(&id)?);
        ids.push(id);
    }
    Some((backends, ids))
}
