//! The pinned dataplane as a library, on a bpffs of the test's own: reopening takes over the
//! maps and changes nothing, one agent per root, a map whose definition changed is replaced,
//! half-written Service maps are repaired, and links to targets no longer configured are
//! detached. Needs root.

mod support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use aya::maps::{HashMap as BpfHashMap, Map, MapData, MapInfo};
use keel_agent::dataplane::{
    Backends, Dataplane, DataplaneError, Frontend, MapSizes, Protocol, XdpAttachMode, load_object,
};
use keel_ebpf_common::map;
use keel_ebpf_common::service::{BackendSlotKey, ServiceKey, ServiceValue};
use keel_testhost::{TestBpffs, TestCgroup, require_root};
use support::pinned;

fn frontend(last: u8) -> Frontend {
    Frontend {
        address: Ipv4Addr::new(10, 96, 7, last),
        port: 80,
        protocol: Protocol::Tcp,
    }
}

fn backends(hosts: &[u8], affinity: Option<Duration>) -> Backends {
    Backends {
        addresses: hosts
            .iter()
            .map(|host| SocketAddrV4::new(Ipv4Addr::new(198, 18, 9, *host), 8080))
            .collect(),
        affinity,
        external: false,
        drop_when_empty: false,
        local_only: false,
    }
}

fn bpffs() -> (TestBpffs, std::path::PathBuf) {
    require_root();
    let bpffs = TestBpffs::new().unwrap();
    let root = bpffs.path().join("keel");
    (bpffs, root)
}

/// A pinned hash map under `root`, for writing entries an agent would not.
fn pinned_map<K: aya::Pod, V: aya::Pod>(root: &Path, name: &str) -> BpfHashMap<MapData, K, V> {
    let data = MapData::from_pin(root.join("maps").join(name)).unwrap();
    BpfHashMap::try_from(Map::HashMap(data)).unwrap()
}

#[test]
fn reopening_takes_over_the_maps_and_rewrites_only_what_changed() {
    let (_bpffs, root) = bpffs();
    let desired = BTreeMap::from([
        (frontend(1), backends(&[1, 2, 3], None)),
        (
            frontend(2),
            backends(&[2, 4], Some(Duration::from_secs(600))),
        ),
        (frontend(3), backends(&[], None)),
    ]);
    let mut dataplane = Dataplane::open(&root).unwrap();
    assert_eq!(dataplane.apply(&desired).unwrap(), 3);
    drop(dataplane);
    let before = pinned::service_maps(&root);

    let mut dataplane = Dataplane::open(&root).unwrap();
    assert_eq!(dataplane.apply(&desired).unwrap(), 0);
    assert_eq!(pinned::service_maps(&root), before);

    // From there, changes converge as from a dataplane that wrote them itself.
    let mut changed = desired.clone();
    changed.remove(&frontend(3));
    changed.insert(frontend(1), backends(&[3, 5], None));
    changed.insert(frontend(4), backends(&[1], None));
    assert_eq!(dataplane.apply(&changed).unwrap(), 3);
    drop(dataplane);
    let mut fresh_root = root.clone();
    fresh_root.set_file_name("fresh");
    let mut fresh = Dataplane::open(&fresh_root).unwrap();
    fresh.apply(&changed).unwrap();
    drop(fresh);
    let entries = |maps: Vec<(u32, Vec<String>)>| -> Vec<usize> {
        maps.into_iter().map(|(_, entries)| entries.len()).collect()
    };
    assert_eq!(
        entries(pinned::service_maps(&root)),
        entries(pinned::service_maps(&fresh_root))
    );
    assert_eq!(
        pinned::frontends(&root),
        [1, 2, 4].map(|n| SocketAddrV4::new(frontend(n).address, 80))
    );
}

#[test]
fn a_second_dataplane_on_the_same_root_is_refused() {
    let (_bpffs, root) = bpffs();
    let _first = Dataplane::open(&root).unwrap();
    let second = Dataplane::open(&root).unwrap_err();
    assert!(matches!(second, DataplaneError::InUse { .. }), "{second}");
    assert!(second.to_string().contains("another agent"), "{second}");
}

#[test]
fn a_pinned_map_whose_definition_changed_is_replaced() {
    let (_bpffs, root) = bpffs();
    std::fs::create_dir_all(root.join("maps")).unwrap();
    // BACKENDS (u32 -> 8 bytes) pinned where SERVICES (8 -> 24 bytes) belongs: an older
    // contract, say.
    let stale = load_object().unwrap();
    let stale_path = root.join("maps").join(map::SERVICES);
    stale.map(map::BACKENDS).unwrap().pin(&stale_path).unwrap();
    let stale_id = MapInfo::from_pin(&stale_path).unwrap().id();

    let mut dataplane = Dataplane::open(&root).unwrap();
    let info = MapInfo::from_pin(&stale_path).unwrap();
    assert_ne!(info.id(), stale_id);
    assert_eq!(
        (info.key_size(), info.value_size()),
        (8, std::mem::size_of::<ServiceValue>() as u32)
    );
    let desired = BTreeMap::from([(frontend(1), backends(&[1], None))]);
    assert_eq!(dataplane.apply(&desired).unwrap(), 1);
    assert_eq!(
        pinned::frontends(&root),
        [SocketAddrV4::new(frontend(1).address, 80)]
    );
}

#[test]
fn half_written_service_maps_are_repaired_on_open() {
    let (_bpffs, root) = bpffs();
    let desired = BTreeMap::from([
        (frontend(1), backends(&[1, 2], None)),
        (frontend(2), backends(&[3], None)),
    ]);
    let mut dataplane = Dataplane::open(&root).unwrap();
    dataplane.apply(&desired).unwrap();
    drop(dataplane);
    let before = pinned::service_maps(&root);

    // What a killed agent might leave: frontend 2 lost a slot, a slot and a backend nothing
    // reaches.
    let mut services = pinned_map::<ServiceKey, ServiceValue>(&root, map::SERVICES);
    let (key2, value2) = services
        .iter()
        .map(Result::unwrap)
        .find(|(key, _)| key.address == u32::from_ne_bytes(frontend(2).address.octets()))
        .unwrap();
    services
        .insert(key2, ServiceValue { count: 2, ..value2 }, 0)
        .unwrap();
    let mut slots = pinned_map::<BackendSlotKey, u32>(&root, map::BACKEND_SLOTS);
    slots
        .insert(
            BackendSlotKey {
                service_id: 999,
                slot: 1,
            },
            1,
            0,
        )
        .unwrap();
    let mut backend_map =
        pinned_map::<u32, keel_ebpf_common::service::Backend>(&root, map::BACKENDS);
    backend_map
        .insert(
            777,
            keel_ebpf_common::service::Backend {
                address: 1,
                port: 1,
                pad: [0; 2],
            },
            0,
        )
        .unwrap();

    let mut dataplane = Dataplane::open(&root).unwrap();
    // Frontend 2 was dropped for rewriting, the unreachable entries are gone, frontend 1 is
    // untouched.
    assert_eq!(
        pinned::frontends(&root),
        [SocketAddrV4::new(frontend(1).address, 80)]
    );
    assert_eq!(dataplane.apply(&desired).unwrap(), 1);
    let after = pinned::service_maps(&root);
    for ((_, old), (_, new)) in before.iter().zip(&after) {
        assert_eq!(old.len(), new.len(), "{before:?}\n{after:?}");
    }
    assert!(
        !after[1]
            .1
            .iter()
            .any(|line| line.contains("service_id: 999"))
    );
    assert!(!after[2].1.iter().any(|line| line.starts_with("777=")));
}

#[test]
fn links_to_targets_no_longer_configured_are_detached() {
    let (_bpffs, root) = bpffs();
    let (old, new) = (TestCgroup::new().unwrap(), TestCgroup::new().unwrap());
    let mut dataplane = Dataplane::open(&root).unwrap();
    dataplane.attach_cgroup(old.path()).unwrap();
    dataplane.prune_stale_links().unwrap();
    drop(dataplane);
    let inode = |cgroup: &TestCgroup| {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(cgroup.path()).unwrap().ino()
    };
    let names = |root: &Path| -> Vec<String> {
        pinned::links(root)
            .into_iter()
            .map(|(name, _, _)| name)
            .collect()
    };
    let expected = |cgroup: &TestCgroup| -> Vec<String> {
        let mut names: Vec<String> = [
            "sock_connect4",
            "sock_getpeername4",
            "sock_recvmsg4",
            "sock_sendmsg4",
        ]
        .iter()
        .map(|program| format!("{program}@cg{}", inode(cgroup)))
        .collect();
        names.sort();
        names
    };
    assert_eq!(names(&root), expected(&old));

    let mut dataplane = Dataplane::open(&root).unwrap();
    dataplane.attach_cgroup(new.path()).unwrap();
    dataplane.prune_stale_links().unwrap();
    assert_eq!(names(&root), expected(&new));
}

#[test]
fn a_restarted_agent_keeps_the_maglev_tables_and_a_removed_frontend_takes_its_table() {
    let (_bpffs, root) = bpffs();
    let external = |hosts: &[u8]| Backends {
        external: true,
        ..backends(hosts, None)
    };
    let desired = BTreeMap::from([
        (frontend(1), external(&[1, 2, 3])),
        (frontend(2), external(&[4, 5])),
        (frontend(3), backends(&[6], None)),
    ]);
    let mut dataplane = Dataplane::open(&root).unwrap();
    assert_eq!(dataplane.apply(&desired).unwrap(), 3);
    let table = dataplane.maglev_table(frontend(1)).unwrap().unwrap();
    assert_eq!(dataplane.maglev_table(frontend(3)).unwrap(), None);
    drop(dataplane);

    // Same desired state after a restart: nothing rewritten, the pinned table is the one
    // the service uses.
    let mut dataplane = Dataplane::open(&root).unwrap();
    assert_eq!(dataplane.maglev_table(frontend(1)).unwrap().unwrap(), table);
    assert_eq!(dataplane.apply(&desired).unwrap(), 0);
    // A frontend removed after the restart takes its table with it.
    let mut changed = desired.clone();
    changed.remove(&frontend(2));
    assert_eq!(dataplane.apply(&changed).unwrap(), 1);
    assert_eq!(dataplane.maglev_table(frontend(2)).unwrap(), None);
    let outer: aya::maps::HashOfMaps<MapData, u32, MapData> = aya::maps::HashOfMaps::try_from(
        aya::maps::Map::HashOfMaps(MapData::from_pin(root.join("maps").join(map::MAGLEV)).unwrap()),
    )
    .unwrap();
    assert_eq!(
        outer.keys().filter_map(Result::ok).count(),
        1,
        "one table left"
    );
}

#[test]
fn the_conntrack_map_takes_its_size_from_the_flag_and_a_new_size_replaces_it() {
    let (_bpffs, root) = bpffs();
    let ct = root.join("maps").join(keel_ebpf_common::map::CT4);
    let sized = |conntrack| {
        Dataplane::open_sized(&root, MapSizes { conntrack }).unwrap();
        aya::maps::MapInfo::from_pin(&ct).unwrap().max_entries()
    };
    assert_eq!(sized(4096), 4096);
    let pinned_id = aya::maps::MapInfo::from_pin(&ct).unwrap().id();
    // The same size again: the pinned map (and its flows) is kept.
    assert_eq!(sized(4096), 4096);
    assert_eq!(aya::maps::MapInfo::from_pin(&ct).unwrap().id(), pinned_id);
    // Another size: a new map.
    assert_eq!(sized(8192), 8192);
    assert_ne!(aya::maps::MapInfo::from_pin(&ct).unwrap().id(), pinned_id);
    assert_eq!(
        sized(MapSizes::default().conntrack),
        keel_ebpf_common::conntrack::CT4_MAX_ENTRIES
    );
}

/// An interface runs one XDP program: the agent switching `--bpf-lb-acceleration` on puts
/// `xdp_lb` in the place of `xdp_stats` (and back), detaching the other's pinned link.
#[test]
fn xdp_lb_and_xdp_stats_take_each_others_place_on_an_interface() {
    let (_bpffs, root) = bpffs();
    let mut net = keel_testhost::TestNet::new("xdpswap").unwrap();
    let (a, b) = (net.add_host("a").unwrap(), net.add_host("b").unwrap());
    let link = net
        .connect(&a, &b, keel_testhost::LinkOptions::default())
        .unwrap();
    let interface = link.a.interface.clone();
    let attached = |program: &str| {
        let links: Vec<String> = pinned::links(&root)
            .into_iter()
            .map(|(name, _, _)| name)
            .collect();
        assert_eq!(links, [format!("{program}@if{}", link.a.ifindex)]);
        let shown = a.run(&["ip", "-d", "link", "show", &interface]).unwrap();
        let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
        assert!(
            shown.contains(&format!("name {program} ")),
            "{interface} runs `{program}`: {shown}"
        );
    };
    for (program, accelerated) in [("xdp_stats", false), ("xdp_lb", true), ("xdp_stats", false)] {
        a.enter(|| {
            let mut dataplane = Dataplane::open(&root).unwrap();
            if accelerated {
                dataplane
                    .attach_xdp_lb(&interface, XdpAttachMode::Native)
                    .unwrap();
            } else {
                dataplane
                    .attach_counters_xdp(&interface, XdpAttachMode::Native)
                    .unwrap();
            }
            dataplane.prune_stale_links().unwrap();
        })
        .unwrap();
        attached(program);
    }
}
