//! Reading what an agent pinned: the Service maps' ids and entries, and its links' ids.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapInfo};
use aya::programs::links::{FdLink, PinnedLink};
use keel_ebpf_common::map;
use keel_ebpf_common::service::{Backend, BackendSlotKey, ServiceKey, ServiceValue};

/// A pinned hash map's id and its entries.
fn pinned_entries<K: aya::Pod, V: aya::Pod>(root: &Path, name: &str) -> (u32, Vec<(K, V)>) {
    let path = root.join("maps").join(name);
    let id = MapInfo::from_pin(&path).expect("pinned map").id();
    let map = Map::HashMap(MapData::from_pin(&path).expect("pinned map"));
    let hash: BpfHashMap<_, K, V> = BpfHashMap::try_from(&map).expect("a hash map");
    let entries = hash.iter().map(|entry| entry.expect("entry")).collect();
    (id, entries)
}

/// A pinned hash map's id and its entries as sorted `key=value` lines.
fn pinned_lines<K: aya::Pod + std::fmt::Debug, V: aya::Pod + std::fmt::Debug>(
    root: &Path,
    name: &str,
) -> (u32, Vec<String>) {
    let (id, entries) = pinned_entries::<K, V>(root, name);
    let mut lines: Vec<String> = entries
        .iter()
        .map(|(key, value)| format!("{key:?}={value:?}"))
        .collect();
    lines.sort();
    (id, lines)
}

/// The ids and entries of `SERVICES`, `BACKEND_SLOTS` and `BACKENDS` pinned under `root`.
pub fn service_maps(root: &Path) -> Vec<(u32, Vec<String>)> {
    vec![
        pinned_lines::<ServiceKey, ServiceValue>(root, map::SERVICES),
        pinned_lines::<BackendSlotKey, u32>(root, map::BACKEND_SLOTS),
        pinned_lines::<u32, Backend>(root, map::BACKENDS),
    ]
}

/// The frontends in `SERVICES` pinned under `root`, sorted.
pub fn frontends(root: &Path) -> Vec<SocketAddrV4> {
    let (_, entries) = pinned_entries::<ServiceKey, ServiceValue>(root, map::SERVICES);
    let mut frontends: Vec<SocketAddrV4> = entries
        .iter()
        .map(|(key, _)| {
            SocketAddrV4::new(
                Ipv4Addr::from(key.address.to_ne_bytes()),
                u16::from_be(key.port),
            )
        })
        .collect();
    frontends.sort();
    frontends
}

/// Each pinned link under `root/links`: (file name, link id, program id).
pub fn links(root: &Path) -> Vec<(String, u32, u32)> {
    let mut links: Vec<(String, u32, u32)> = std::fs::read_dir(root.join("links"))
        .expect("links dir")
        .flatten()
        .map(|entry| {
            let pinned = PinnedLink::from_pin(entry.path()).expect("a pinned link");
            let info = FdLink::from(pinned).info().expect("link info");
            (
                entry.file_name().to_string_lossy().into_owned(),
                info.id(),
                info.program_id(),
            )
        })
        .collect();
    links.sort();
    links
}
