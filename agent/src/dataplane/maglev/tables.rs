//! Maglev tables in the kernel: one inner array of backend ids per service in `MAGLEV`,
//! keyed by the service id.
//!
//! A new table is a new inner array, filled completely before one `MAGLEV` update points the
//! service at it: a packet looks the table up once and reads either the whole old table or
//! the whole new one; the kernel frees the old array when the last reader is done.
//!
//! Which frontends get a table (Cilium's choice): those reached from outside the cluster
//! (NodePort, externalIP, LoadBalancer IP) under `--lb-algorithm maglev`, the default. Their
//! flows may arrive at any node (ECMP, a changed route, a failed node), and every node must
//! send a flow to the same backend. ClusterIP frontends keep a slot at random: they are
//! translated at the client's own socket, where nothing else sees the flow. A table costs
//! `4 * M` bytes (64 KiB at the default `M`), so 10,000 ClusterIP-only Services cost nothing
//! extra, and a node with many external frontends can lower `--maglev-table-size`.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddrV4;
use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::{Array, HashOfMaps, MapData, MapError};
use aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_ARRAY;
use keel_ebpf_common::maglev::{TABLE_FLAGS, TableSlot, table_slots};
use keel_ebpf_common::map;

use super::table::{TableBackend, TableSize, lookup_table};
use crate::dataplane::object::DataplaneError;
use crate::dataplane::services::{Dataplane, Frontend, map_error};

/// How a new flow to a frontend reached from outside picks its backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LbAlgorithm {
    /// A slot at random (kube-proxy's behaviour).
    Random,
    /// The Maglev table: the same backend for the same flow on every node.
    #[default]
    Maglev,
}

/// The load-balancing choices of a [`Dataplane`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadBalancing {
    pub algorithm: LbAlgorithm,
    pub table_size: TableSize,
}

/// The Maglev tables this agent wrote.
#[derive(Debug, Default)]
pub(in crate::dataplane) struct MaglevTables {
    pub(in crate::dataplane) config: LoadBalancing,
    /// Service ids that have a table in `MAGLEV`.
    services: HashSet<u32>,
}

impl MaglevTables {
    /// Whether a frontend reached from outside (`external`) with backends gets a table.
    pub(in crate::dataplane) fn wanted(&self, external: bool, backends: usize) -> bool {
        self.config.algorithm == LbAlgorithm::Maglev && external && backends > 0
    }
}

impl Dataplane {
    /// Writes a new Maglev table for service `id` over `backends` (address and backend id,
    /// an address listed twice weighs twice) and points `MAGLEV` at it. Returns the table
    /// size to store in the service's `maglev_size`.
    pub(in crate::dataplane) fn write_maglev_table(
        &mut self,
        id: u32,
        backends: &[(SocketAddrV4, u32)],
    ) -> Result<u32, DataplaneError> {
        let size = self.maglev.config.table_size;
        let mut weights = BTreeMap::<SocketAddrV4, (u32, u32)>::new();
        for (address, backend_id) in backends {
            weights.entry(*address).or_insert((*backend_id, 0)).1 += 1;
        }
        let named: Vec<TableBackend> = weights
            .keys()
            .map(|address| TableBackend {
                name: address.to_string(),
                weight: weights[address].1,
            })
            .collect();
        let ids: Vec<u32> = weights.values().map(|(id, _)| *id).collect();
        let entries: Vec<u32> = lookup_table(&named, size)
            .iter()
            .map(|&backend| ids[backend as usize])
            .collect();
        let inner = new_table(&entries)?;
        self.maglev_map()?
            .insert(id, &inner, 0)
            .map_err(|source| map_error(map::MAGLEV, source))?;
        self.maglev.services.insert(id);
        Ok(size.get())
    }

    /// After a restart: takes over the pinned tables of the services in `kept` and removes
    /// every other table; how many were removed.
    pub(in crate::dataplane) fn adopt_maglev_tables(
        &mut self,
        kept: &std::collections::BTreeSet<u32>,
    ) -> Result<usize, DataplaneError> {
        let ids: Vec<u32> = self.maglev_map()?.keys().filter_map(Result::ok).collect();
        let mut removed = 0;
        for id in ids {
            if kept.contains(&id) {
                self.maglev.services.insert(id);
            } else {
                match self.maglev_map()?.remove(&id) {
                    Ok(()) | Err(MapError::KeyNotFound) => removed += 1,
                    Err(source) => return Err(map_error(map::MAGLEV, source)),
                }
            }
        }
        Ok(removed)
    }

    /// Removes the Maglev table of service `id`, if it has one.
    pub(in crate::dataplane) fn remove_maglev_table(
        &mut self,
        id: u32,
    ) -> Result<(), DataplaneError> {
        if !self.maglev.services.remove(&id) {
            return Ok(());
        }
        match self.maglev_map()?.remove(&id) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(map_error(map::MAGLEV, source)),
        }
    }

    /// The backends of `frontend`'s Maglev table in the kernel, entry by entry (for tests
    /// and diagnostics); `None` if it has no table.
    pub fn maglev_table(
        &self,
        frontend: Frontend,
    ) -> Result<Option<Vec<SocketAddrV4>>, DataplaneError> {
        let Some((id, size)) = self
            .services
            .get(&frontend)
            .map(|programmed| (programmed.id, programmed.maglev_size))
        else {
            return Ok(None);
        };
        let raw = self
            .ebpf
            .map(map::MAGLEV)
            .ok_or(DataplaneError::MissingMap { map: map::MAGLEV })?;
        let outer: HashOfMaps<&MapData, u32, Array<MapData, TableSlot>> =
            HashOfMaps::try_from(raw).map_err(|source| map_error(map::MAGLEV, source))?;
        let inner = match outer.get(&id, 0) {
            Ok(inner) => inner,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(source) => return Err(map_error(map::MAGLEV, source)),
        };
        let mut table = Vec::with_capacity(size as usize);
        for entry in 0..size {
            let slot = inner
                .get(&(entry / 2), 0)
                .map_err(|source| map_error(map::MAGLEV, source))?;
            let backend_id = slot[(entry % 2) as usize];
            // Every entry names a backend the agent holds while the table exists.
            let address =
                self.backend_addresses
                    .get(&backend_id)
                    .copied()
                    .ok_or(DataplaneError::Map {
                        map: map::MAGLEV,
                        source: MapError::KeyNotFound,
                    })?;
            table.push(address);
        }
        Ok(Some(table))
    }

    fn maglev_map(&mut self) -> Result<HashOfMaps<&mut MapData, u32, MapData>, DataplaneError> {
        let raw = self
            .ebpf
            .map_mut(map::MAGLEV)
            .ok_or(DataplaneError::MissingMap { map: map::MAGLEV })?;
        HashOfMaps::try_from(raw).map_err(|source| map_error(map::MAGLEV, source))
    }
}

/// A new inner table holding `entries`, not yet referenced by `MAGLEV`. The array is created
/// mmapable and filled through one shared mapping: a table of 16381 entries is one copy, not
/// 8191 `bpf(BPF_MAP_UPDATE_ELEM)` calls.
fn new_table(entries: &[u32]) -> Result<MapData, DataplaneError> {
    let map_error = |source| map_error(map::MAGLEV, source);
    let slots: Vec<TableSlot> = entries
        .chunks(2)
        .map(|pair| [pair[0], pair.get(1).copied().unwrap_or(0)])
        .collect();
    let size = u32::try_from(entries.len()).unwrap_or(u32::MAX);
    let definition = aya_obj::Map::new_from_params(
        BPF_MAP_TYPE_ARRAY as u32,
        size_of::<u32>() as u32,
        size_of::<TableSlot>() as u32,
        table_slots(size),
        TABLE_FLAGS,
    );
    let table = MapData::create(definition, "keel_maglev", None).map_err(map_error)?;
    let bytes = std::mem::size_of_val(slots.as_slice());
    let fd = table.fd().as_fd().as_raw_fd();
    // SAFETY: a fresh shared mapping of the array's values: an mmapable array maps them from
    // offset 0, each in an 8-byte slot (a `TableSlot` exactly), `bytes` long in all.
    let mapping = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if mapping == libc::MAP_FAILED {
        return Err(map_error(
            MapError::IoError(std::io::Error::last_os_error()),
        ));
    }
    // SAFETY: `mapping` is `bytes` long and writable, and `slots` does not overlap it; the
    // mapping is removed right after, and the map (held by `table`) outlives it.
    unsafe {
        std::ptr::copy_nonoverlapping(slots.as_ptr(), mapping.cast::<TableSlot>(), slots.len());
        libc::munmap(mapping, bytes);
    }
    Ok(table)
}
