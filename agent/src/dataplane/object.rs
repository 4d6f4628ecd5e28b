//! The eBPF object `cargo xtask build-ebpf` built, embedded in the binary, and its loading.

use std::path::{Path, PathBuf};

use aya::maps::MapError;
use aya::programs::tc::{self, SchedClassifierLinkId, TcAttachType};
use aya::programs::{ProgramError, SchedClassifier};
use aya::util::KernelVersion;
use aya::{Ebpf, EbpfLoader};

use super::pins::{MapDefinition, object_maps};

/// The ELF object holding every Keel eBPF program, embedded by `build.rs`.
pub static KEEL_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("KEEL_EBPF_OBJECT"));

/// What can go wrong between the embedded object and programs running in the kernel.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("cannot load the embedded eBPF object into the kernel")]
    Load(#[source] aya::EbpfError),
    #[error("program `{program}` is not in the eBPF object")]
    MissingProgram { program: &'static str },
    #[error("program `{program}` is not of the expected type")]
    ProgramType {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("the kernel refused program `{program}`")]
    ProgramLoad {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("cannot attach `{program}` to interface `{interface}`")]
    Attach {
        program: &'static str,
        interface: String,
        #[source]
        source: ProgramError,
    },
    #[error("cannot attach `{program}` to cgroup {}", cgroup.display())]
    AttachCgroup {
        program: &'static str,
        cgroup: std::path::PathBuf,
        #[source]
        source: ProgramError,
    },
    #[error("there is no interface `{interface}` here")]
    NoInterface { interface: String },
    #[error("cannot open cgroup {}", path.display())]
    Cgroup {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("map `{map}` is not in the eBPF object")]
    MissingMap { map: &'static str },
    #[error("cannot use map `{map}`")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("cannot parse the embedded eBPF object")]
    Parse(#[source] aya_obj::ParseError),
    #[error("{} is not on a bpf filesystem: mount one there (mount -t bpf bpf <dir>) or give another --bpf-root", path.display())]
    NotBpffs { path: std::path::PathBuf },
    #[error("another agent uses the pins under {} (one agent per --bpf-root)", path.display())]
    InUse { path: std::path::PathBuf },
    #[error("cannot use the bpffs pin {}", path.display())]
    Pin {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot pin the link of `{program}` at {}", path.display())]
    PinLink {
        program: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("the attachment of `{program}` is not a bpf link that can be pinned")]
    Unpinnable {
        program: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("cannot take the link of `{program}`")]
    TakeLink {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("BPF_PROG_TEST_RUN of `{program}` failed")]
    TestRun {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
}

/// The program `name` of a loaded object, as its concrete type (`Xdp`, `SchedClassifier`, ...).
pub fn program_mut<'a, P>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut P, DataplaneError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DataplaneError::MissingProgram { program: name })?
        .try_into()
        .map_err(|source| DataplaneError::ProgramType {
            program: name,
            source,
        })
}

/// Loads the embedded object: creates its maps in the kernel; programs are loaded on demand.
pub fn load_object() -> Result<Ebpf, DataplaneError> {
    Ebpf::load(KEEL_OBJECT).map_err(DataplaneError::Load)
}

/// Loads the embedded object with the maps of its map sections pinned in `maps_dir` under
/// their names, sized as `maps` says: the pinned map is used where one exists (the caller removed incompatible
/// ones first), else a new one is created and pinned.
pub fn load_object_pinned(
    maps_dir: &Path,
    maps: &[(String, MapDefinition)],
) -> Result<Ebpf, DataplaneError> {
    let paths: Vec<(&str, PathBuf)> = maps
        .iter()
        .map(|(name, _)| (name.as_str(), maps_dir.join(name)))
        .collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    // Sizes that differ from the object's (flags): the loader creates those maps so.
    let object = object_maps()?;
    for (name, definition) in maps {
        let declared = object
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.max_entries);
        if declared != Some(definition.max_entries) {
            loader.map_max_entries(name, definition.max_entries);
        }
    }
    loader.load(KEEL_OBJECT).map_err(DataplaneError::Load)
}

/// Whether TC programs attach through tcx links (kernel 6.6+), which can be pinned; before,
/// they hang off a clsact qdisc as netlink filters.
pub fn tcx_links() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// Attaches the TC program `name` to `interface` (a name in the calling thread's network
/// namespace) in `direction`. From 6.6 aya attaches through tcx links, which need nothing
/// else; before, TC programs hang off a clsact qdisc, added here if missing.
pub fn attach_classifier(
    ebpf: &mut Ebpf,
    name: &'static str,
    interface: &str,
    direction: TcAttachType,
) -> Result<SchedClassifierLinkId, DataplaneError> {
    let attach_error = |source| DataplaneError::Attach {
        program: name,
        interface: interface.to_owned(),
        source,
    };
    if !tcx_links()
        && let Err(error) = tc::qdisc_add_clsact(interface)
    {
        let exists = matches!(&error, tc::TcError::NetlinkError(e) if e.raw_os_error() == Some(libc::EEXIST));
        if !exists {
            return Err(attach_error(ProgramError::TcError(error)));
        }
    }
    program_mut::<SchedClassifier>(ebpf, name)?
        .attach(interface, direction)
        .map_err(attach_error)
}
