//! Bringing the dataplane up: loading the object and its programs, unpinned (everything goes
//! with the value) or on the pins of an instance root, taking over what an agent before left.

use std::collections::HashMap;
use std::path::Path;

use aya::Ebpf;
use aya::programs::{CgroupSockAddr, SchedClassifier, Xdp};
use keel_ebpf_common::program;

use super::attach::{LB_TC_PROGRAMS, SOCKET_PROGRAMS, XDP_PROGRAMS};
use super::object::{DataplaneError, load_object, load_object_pinned, program_mut};
use super::pins::{MapSizes, PinRoot, object_maps};
use super::services::Dataplane;

impl Dataplane {
    /// Loads the object with maps of its own and every program; nothing is pinned, and
    /// dropping the value detaches everything it attached.
    pub fn load() -> Result<Dataplane, DataplaneError> {
        Dataplane::with_object(load_object()?, None)
    }

    /// Opens the dataplane pinned under `root` (a directory on a bpf filesystem; created if
    /// missing): maps pinned there by an agent before are reused when their definition
    /// matches this object's (else replaced, loudly), what they hold about Services is taken
    /// over (so [`apply`](Self::apply) rewrites only what changed), and attachments made
    /// later take over the pinned links of the same program and target. What this value
    /// attaches stays attached after it is dropped or the process exits; `remove_pins`
    /// undoes it all.
    pub fn open(root: &Path) -> Result<Dataplane, DataplaneError> {
        Dataplane::open_sized(root, MapSizes::default())
    }

    /// [`open`](Self::open) with the sizes of the maps that have a flag: a pinned map of
    /// another size is replaced (its entries lost, said loudly), as any changed definition.
    pub fn open_sized(root: &Path, sizes: MapSizes) -> Result<Dataplane, DataplaneError> {
        let pins = PinRoot::prepare(root)?;
        let mut maps = object_maps()?;
        sizes.apply(&mut maps);
        let replaced = pins.drop_incompatible_maps(&maps)?;
        let ebpf = load_object_pinned(&pins.maps_dir(), &maps)?;
        let mut dataplane = Dataplane::with_object(ebpf, Some(pins))?;
        let adopted = dataplane.adopt_services()?;
        log::info!(
            "dataplane pinned under {}: {} Service frontends and {} backends taken over{}",
            root.display(),
            adopted.services,
            adopted.backends,
            if replaced.is_empty() {
                String::new()
            } else {
                format!(", maps replaced: {}", replaced.join(", "))
            }
        );
        if adopted.broken > 0 || adopted.orphans > 0 {
            log::warn!(
                "pinned Service maps were inconsistent (an agent died mid-write?): {} \
                 frontends dropped for rewriting, {} unreachable entries removed",
                adopted.broken,
                adopted.orphans
            );
        }
        Ok(dataplane)
    }

    fn with_object(mut ebpf: Ebpf, pins: Option<PinRoot>) -> Result<Dataplane, DataplaneError> {
        let load_error = |program, source| DataplaneError::ProgramLoad { program, source };
        for name in XDP_PROGRAMS {
            program_mut::<Xdp>(&mut ebpf, name)?
                .load()
                .map_err(|source| load_error(name, source))?;
        }
        for name in [program::TC_STATS_INGRESS, program::TC_STATS_EGRESS]
            .into_iter()
            .chain(LB_TC_PROGRAMS)
        {
            program_mut::<SchedClassifier>(&mut ebpf, name)?
                .load()
                .map_err(|source| load_error(name, source))?;
        }
        for name in SOCKET_PROGRAMS {
            program_mut::<CgroupSockAddr>(&mut ebpf, name)?
                .load()
                .map_err(|source| load_error(name, source))?;
        }
        Ok(Dataplane {
            ebpf,
            pins,
            held_links: Vec::new(),
            services: HashMap::new(),
            backends: HashMap::new(),
            backend_addresses: HashMap::new(),
            maglev: super::maglev::tables::MaglevTables::default(),
            next_service_id: 1,
            next_backend_id: 1,
        })
    }

    /// The loaded object, for tests that run its programs with `BPF_PROG_TEST_RUN` or read
    /// its maps.
    pub fn object(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The pin root, for a pinned dataplane.
    pub fn pin_root(&self) -> Option<&Path> {
        self.pins.as_ref().map(PinRoot::root)
    }
}
