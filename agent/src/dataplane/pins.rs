//! The dataplane's pins in bpffs, so programs and maps outlive the agent process: a restarted
//! (or upgraded) agent finds the maps and links of the one before and carries on with them.
//!
//! Layout under the instance's root (`--bpf-root`, `/sys/fs/bpf/keel` by default):
//! - `maps/<MAP>`: every map of the object's map sections, by its name in the object;
//! - `links/<program>@if<ifindex>` (XDP, tcx) and `links/<program>@cg<cgroup inode>` (cgroup
//!   socket programs): the attachments. A link stays attached while its pin exists; removing
//!   the pin detaches it.
//!
//! bpffs allows no `.` in names, hence `@`.

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use aya::maps::MapInfo;
use aya_obj::EbpfSectionKind;
use aya_obj::generated::bpf_cmd;

use super::object::{DataplaneError, KEEL_OBJECT};

/// Where an agent pins by default.
pub const DEFAULT_BPF_ROOT: &str = "/sys/fs/bpf/keel";
/// The conventional bpffs mount point, mounted by the agent when a root under it needs one.
const BPFFS_MOUNT: &str = "/sys/fs/bpf";
/// `statfs` type of a bpf filesystem.
const BPF_FS_MAGIC: libc::c_long = 0xcafe_4a11;

/// What the kernel records of a map's definition: a pinned map is reused only when all of it
/// matches the object's (libbpf's rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapDefinition {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl std::fmt::Display for MapDefinition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {} key {} B value {} B max_entries {} flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

/// The maps of the embedded object's map sections (not its `.rodata` / `.bss` data), by name.
pub fn object_maps() -> Result<Vec<(String, MapDefinition)>, DataplaneError> {
    let object = aya_obj::Object::parse(KEEL_OBJECT).map_err(DataplaneError::Parse)?;
    let mut maps: Vec<(String, MapDefinition)> = object
        .maps
        .iter()
        .filter(|(_, map)| {
            matches!(
                map.section_kind(),
                EbpfSectionKind::Maps | EbpfSectionKind::BtfMaps
            )
        })
        .map(|(name, map)| {
            let definition = MapDefinition {
                map_type: map.map_type(),
                key_size: map.key_size(),
                value_size: map.value_size(),
                max_entries: map.max_entries(),
                flags: map.map_flags(),
            };
            (name.clone(), definition)
        })
        .collect();
    maps.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(maps)
}

/// The sizes of the maps an operator may choose (flags); the rest keep the object's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapSizes {
    /// `CT4`'s entries (LRU: the least recently used flows go first when it is full).
    pub conntrack: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        MapSizes {
            conntrack: keel_ebpf_common::conntrack::CT4_MAX_ENTRIES,
        }
    }
}

impl MapSizes {
    /// Puts these sizes into the object's map definitions.
    pub fn apply(&self, maps: &mut [(String, MapDefinition)]) {
        for (name, definition) in maps {
            if name == keel_ebpf_common::map::CT4 {
                definition.max_entries = self.conntrack;
            }
        }
    }
}

/// What an attachment hangs off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkTarget {
    /// An interface, by index (in the agent's network namespace).
    Interface(u32),
    /// A cgroup2 group, by inode number (the kernel's cgroup id).
    Cgroup(u64),
}

/// One agent instance's pin directory on a bpf filesystem.
#[derive(Debug)]
pub struct PinRoot {
    root: PathBuf,
    /// Link pins this agent attached or took over since it started.
    claimed: HashSet<PathBuf>,
    /// An exclusive `flock` on the root: one agent per root (the kernel drops it with the
    /// process, `kill -9` included).
    _lock: std::fs::File,
}

impl PinRoot {
    /// Prepares `root`: mounts bpffs on `/sys/fs/bpf` if the root is under it and none is
    /// mounted there yet (as Cilium does), creates the directories, and checks they are on a
    /// bpf filesystem.
    pub fn prepare(root: &Path) -> Result<PinRoot, DataplaneError> {
        if root.starts_with(BPFFS_MOUNT) && !on_bpffs(Path::new(BPFFS_MOUNT)) {
            mount_bpffs(Path::new(BPFFS_MOUNT))?;
            log::info!("mounted a bpf filesystem on {BPFFS_MOUNT}");
        }
        for dir in [root.join("maps"), root.join("links")] {
            std::fs::create_dir_all(&dir).map_err(|source| DataplaneError::Pin {
                path: dir.clone(),
                source,
            })?;
        }
        if !on_bpffs(root) {
            return Err(DataplaneError::NotBpffs {
                path: root.to_owned(),
            });
        }
        Ok(PinRoot {
            root: root.to_owned(),
            claimed: HashSet::new(),
            _lock: lock_root(root)?,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.root.join("maps")
    }

    fn links_dir(&self) -> PathBuf {
        self.root.join("links")
    }

    /// Removes pinned maps this object cannot use: those whose definition differs from the
    /// object's (the contract changed; they are replaced, their entries lost, said loudly)
    /// and those the object no longer has. Returns the names replaced.
    pub fn drop_incompatible_maps(
        &self,
        wanted: &[(String, MapDefinition)],
    ) -> Result<Vec<String>, DataplaneError> {
        let mut replaced = Vec::new();
        for entry in read_dir(&self.maps_dir())? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let Some((_, want)) = wanted.iter().find(|(n, _)| *n == name) else {
                log::warn!(
                    "pinned map {} is not in this agent's eBPF object: removing it",
                    path.display()
                );
                remove_pin(&path)?;
                continue;
            };
            let pinned = match MapInfo::from_pin(&path) {
                Ok(info) => Some(MapDefinition {
                    map_type: info.map_type().map_or(u32::MAX, |t| t as u32),
                    key_size: info.key_size(),
                    value_size: info.value_size(),
                    max_entries: info.max_entries(),
                    flags: info.map_flags(),
                }),
                Err(_) => None,
            };
            if pinned != Some(*want) {
                let found = pinned.map_or_else(|| "not a map".to_owned(), |d| d.to_string());
                log::warn!(
                    "pinned map {} does not match this agent's object (pinned: {found}; \
                     wanted: {want}): the map contract changed, replacing it (its entries \
                     are lost)",
                    path.display()
                );
                remove_pin(&path)?;
                replaced.push(name);
            }
        }
        Ok(replaced)
    }

    /// The pin path of `program`'s attachment to `target`, claimed as in use.
    pub fn link_path(&mut self, program: &str, target: LinkTarget) -> PathBuf {
        let path = self.unclaimed_link_path(program, target);
        self.claimed.insert(path.clone());
        path
    }

    fn unclaimed_link_path(&self, program: &str, target: LinkTarget) -> PathBuf {
        let name = match target {
            LinkTarget::Interface(ifindex) => format!("{program}@if{ifindex}"),
            LinkTarget::Cgroup(inode) => format!("{program}@cg{inode}"),
        };
        self.links_dir().join(name)
    }

    /// Detaches `program` from `target` if a pinned link holds it there: for a hook that
    /// takes one program, before another takes its place. `true` if there was one.
    pub fn release_link(
        &mut self,
        program: &str,
        target: LinkTarget,
    ) -> Result<bool, DataplaneError> {
        let path = self.unclaimed_link_path(program, target);
        self.claimed.remove(&path);
        let pinned = std::fs::symlink_metadata(&path).is_ok();
        remove_pin(&path)?;
        Ok(pinned)
    }

    /// Detaches (unpins) every pinned link this agent did not attach or take over since it
    /// started: attachments to interfaces or cgroups it no longer serves. Returns their paths.
    pub fn prune_links(&self) -> Result<Vec<PathBuf>, DataplaneError> {
        let mut pruned = Vec::new();
        for entry in read_dir(&self.links_dir())? {
            let path = entry.path();
            if !self.claimed.contains(&path) {
                remove_pin(&path)?;
                pruned.push(path);
            }
        }
        Ok(pruned)
    }
}

/// Makes the pinned link at `path` run `program` instead of the program it runs now, in one
/// step (`BPF_LINK_UPDATE`: no packet or socket sees neither). `false` when there is no pin
/// there, or its link can no longer be used (its interface or cgroup is gone, or it is not a
/// link): then the pin is removed and the caller attaches afresh.
pub fn replace_program(path: &Path, program: BorrowedFd<'_>) -> Result<bool, DataplaneError> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(false);
    }
    let updated = obj_get(path).and_then(|link| link_update(&link, program));
    match updated {
        Ok(()) => Ok(true),
        Err(error) => {
            log::warn!(
                "pinned link {} cannot take the new program ({error}): attaching afresh",
                path.display()
            );
            remove_pin(path)?;
            Ok(false)
        }
    }
}

/// Removes everything pinned under `root`: links first (which detaches the programs), then
/// maps, then the directories. A root that does not exist is fine.
pub fn remove_pins(root: &Path) -> Result<(), DataplaneError> {
    if !root.exists() {
        return Ok(());
    }
    let _lock = lock_root(root)?;
    for dir in ["links", "maps"] {
        let dir = root.join(dir);
        if !dir.exists() {
            continue;
        }
        for entry in read_dir(&dir)? {
            remove_pin(&entry.path())?;
        }
        remove_dir(&dir)?;
    }
    remove_dir(root)
}

/// Takes the root's lock, or says which root another agent holds.
fn lock_root(root: &Path) -> Result<std::fs::File, DataplaneError> {
    let dir = std::fs::File::open(root).map_err(|source| DataplaneError::Pin {
        path: root.to_owned(),
        source,
    })?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let source = io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(DataplaneError::InUse {
                path: root.to_owned(),
            });
        }
        return Err(DataplaneError::Pin {
            path: root.to_owned(),
            source,
        });
    }
    Ok(dir)
}

fn remove_dir(dir: &Path) -> Result<(), DataplaneError> {
    std::fs::remove_dir(dir).map_err(|source| DataplaneError::Pin {
        path: dir.to_owned(),
        source,
    })
}

fn remove_pin(path: &Path) -> Result<(), DataplaneError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DataplaneError::Pin {
            path: path.to_owned(),
            source,
        }),
    }
}

fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>, DataplaneError> {
    let error = |source| DataplaneError::Pin {
        path: dir.to_owned(),
        source,
    };
    std::fs::read_dir(dir)
        .map_err(error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(error)
}

fn on_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: an all-zero statfs is a valid value for the kernel to overwrite.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statfs we own, both valid for the call.
    let found = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } == 0;
    found && stat.f_type == BPF_FS_MAGIC
}

fn mount_bpffs(target: &Path) -> Result<(), DataplaneError> {
    let error = |source| DataplaneError::Pin {
        path: target.to_owned(),
        source,
    };
    let c_target = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| error(io::Error::from(io::ErrorKind::InvalidInput)))?;
    // SAFETY: NUL-terminated strings that outlive the call; no data argument.
    let mounted = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c_target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if mounted != 0 {
        return Err(error(io::Error::last_os_error()));
    }
    Ok(())
}

/// A `union bpf_attr`, zeroed: big enough for the commands below, which read only their
/// leading fields (the kernel checks the rest is zero).
#[repr(C, align(8))]
struct BpfAttr([u32; 32]);

fn bpf(command: bpf_cmd, attr: &mut BpfAttr) -> io::Result<libc::c_long> {
    // SAFETY: bpf(2) reads (and for some commands writes) at most `size` bytes of `attr`,
    // which we own for the whole call.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command as libc::c_int,
            attr as *mut BpfAttr,
            std::mem::size_of::<BpfAttr>(),
        )
    };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// `BPF_OBJ_GET`: a descriptor of the object pinned at `path`.
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr = BpfAttr([0; 32]);
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; ... }
    let pointer = c_path.as_ptr() as u64;
    attr.0[0] = pointer as u32;
    attr.0[1] = (pointer >> 32) as u32;
    let fd = bpf(bpf_cmd::BPF_OBJ_GET, &mut attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: BPF_OBJ_GET returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `BPF_LINK_UPDATE`: `link` runs `program` from now on.
fn link_update(link: &OwnedFd, program: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = BpfAttr([0; 32]);
    // struct { __u32 link_fd; __u32 new_prog_fd; __u32 flags; __u32 old_prog_fd; }
    attr.0[0] = link.as_raw_fd() as u32;
    attr.0[1] = program.as_raw_fd() as u32;
    bpf(bpf_cmd::BPF_LINK_UPDATE, &mut attr).map(drop)
}

#[cfg(test)]
mod tests {
    use super::{LinkTarget, PinRoot, object_maps};

    #[test]
    fn every_map_of_the_contract_is_pinned_and_nothing_else() {
        let mut pinned: Vec<String> = object_maps()
            .unwrap()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        pinned.sort();
        let mut contract: Vec<String> = keel_ebpf_common::map::ALL
            .iter()
            .map(|name| (*name).to_owned())
            .collect();
        contract.sort();
        assert_eq!(pinned, contract);
    }

    #[test]
    fn link_pins_are_named_by_program_and_target_without_dots() {
        let mut pins = PinRoot {
            root: "/sys/fs/bpf/keel".into(),
            claimed: Default::default(),
            _lock: std::fs::File::open("/").unwrap(),
        };
        let tc = pins.link_path("tc_lb_ingress", LinkTarget::Interface(7));
        let cgroup = pins.link_path("sock_connect4", LinkTarget::Cgroup(4242));
        assert_eq!(
            tc.to_str(),
            Some("/sys/fs/bpf/keel/links/tc_lb_ingress@if7")
        );
        assert_eq!(
            cgroup.to_str(),
            Some("/sys/fs/bpf/keel/links/sock_connect4@cg4242")
        );
        assert!(pins.claimed.contains(&tc) && pins.claimed.contains(&cgroup));
    }
}
