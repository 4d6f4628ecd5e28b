//! Per-interface packet and byte counters (XDP, TC ingress, TC egress) and per-reason drop
//! counters: the dataplane's observability base, exported as metrics by the agent.

use std::collections::BTreeMap;

use aya::Ebpf;
use aya::maps::{PerCpuArray, PerCpuHashMap};
use aya::programs::tc::TcAttachType;
use aya::programs::{SchedClassifier, Xdp, XdpMode};
use keel_ebpf_common::{DropReason, Hook, IfaceCounters, IfaceKey, map, program};

use super::object::{DataplaneError, attach_classifier, load_object, program_mut};

/// How the XDP stats program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpAttachMode {
    /// Native (driver) mode where the driver supports it, else generic.
    #[default]
    Auto,
    /// Native (driver) mode only; fails where the driver lacks XDP support.
    Native,
    /// Generic (skb) mode: always available, costs nothing measurable on a veth.
    Generic,
}

impl XdpAttachMode {
    fn aya(self) -> XdpMode {
        match self {
            XdpAttachMode::Auto => XdpMode::Default,
            XdpAttachMode::Native => XdpMode::Driver,
            XdpAttachMode::Generic => XdpMode::Skb,
        }
    }
}

/// Which way through an interface a TC program sees packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

/// The counters of one interface, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IfaceStats {
    pub xdp: IfaceCounters,
    pub tc_ingress: IfaceCounters,
    pub tc_egress: IfaceCounters,
}

impl IfaceStats {
    fn slot(&mut self, hook: Hook) -> &mut IfaceCounters {
        match hook {
            Hook::Xdp => &mut self.xdp,
            Hook::TcIngress => &mut self.tc_ingress,
            Hook::TcEgress => &mut self.tc_egress,
        }
    }
}

/// The stats programs loaded into the kernel, their maps, and their attachments.
///
/// Attachments are links owned by the loaded object: dropping a `StatsDataplane` detaches
/// every program it attached.
#[derive(Debug)]
pub struct StatsDataplane {
    ebpf: Ebpf,
}

impl StatsDataplane {
    /// Loads the object and verifies the three stats programs.
    pub fn load() -> Result<StatsDataplane, DataplaneError> {
        let mut ebpf = load_object()?;
        xdp_program(&mut ebpf)?
            .load()
            .map_err(|source| load_error(program::XDP_STATS, source))?;
        for name in [program::TC_STATS_INGRESS, program::TC_STATS_EGRESS] {
            tc_program(&mut ebpf, name)?
                .load()
                .map_err(|source| load_error(name, source))?;
        }
        Ok(StatsDataplane { ebpf })
    }

    /// The loaded object, for tests that run its programs with `BPF_PROG_TEST_RUN`.
    pub fn object(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Attaches XDP, TC ingress and TC egress counting to `interface` (a name in the calling
    /// thread's network namespace).
    pub fn attach(
        &mut self,
        interface: &str,
        xdp_mode: XdpAttachMode,
    ) -> Result<(), DataplaneError> {
        self.attach_xdp(interface, xdp_mode)?;
        self.attach_tc(interface, Direction::Ingress)?;
        self.attach_tc(interface, Direction::Egress)
    }

    pub fn attach_xdp(
        &mut self,
        interface: &str,
        mode: XdpAttachMode,
    ) -> Result<(), DataplaneError> {
        xdp_program(&mut self.ebpf)?
            .attach(interface, mode.aya())
            .map(drop)
            .map_err(|source| attach_error(program::XDP_STATS, interface, source))
    }

    pub fn attach_tc(
        &mut self,
        interface: &str,
        direction: Direction,
    ) -> Result<(), DataplaneError> {
        let (name, attach_type) = match direction {
            Direction::Ingress => (program::TC_STATS_INGRESS, TcAttachType::Ingress),
            Direction::Egress => (program::TC_STATS_EGRESS, TcAttachType::Egress),
        };
        attach_classifier(&mut self.ebpf, name, interface, attach_type)
    }

    /// Counters per interface index, summed over CPUs.
    pub fn iface_stats(&self) -> Result<BTreeMap<u32, IfaceStats>, DataplaneError> {
        let raw = self.map(map::IFACE_STATS)?;
        let counters: PerCpuHashMap<_, IfaceKey, IfaceCounters> =
            PerCpuHashMap::try_from(raw).map_err(|source| map_error(map::IFACE_STATS, source))?;
        let mut stats = BTreeMap::<u32, IfaceStats>::new();
        for entry in counters.iter() {
            let (key, per_cpu) = entry.map_err(|source| map_error(map::IFACE_STATS, source))?;
            // A hook number this agent does not know was written by a newer program: skip it
            // rather than misfile it.
            let Some(hook) = Hook::from_u32(key.hook) else {
                continue;
            };
            let total = per_cpu
                .iter()
                .fold(IfaceCounters::default(), |sum, cpu| sum.add(*cpu));
            let slot = stats.entry(key.ifindex).or_default().slot(hook);
            *slot = slot.add(total);
        }
        Ok(stats)
    }

    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, DataplaneError> {
        self.ebpf
            .map(name)
            .ok_or(DataplaneError::MissingMap { map: name })
    }

    /// Packets dropped per reason, summed over CPUs, every reason listed.
    pub fn drop_stats(&self) -> Result<Vec<(DropReason, u64)>, DataplaneError> {
        let raw = self.map(map::DROP_STATS)?;
        let drops: PerCpuArray<_, u64> =
            PerCpuArray::try_from(raw).map_err(|source| map_error(map::DROP_STATS, source))?;
        DropReason::ALL
            .iter()
            .map(|reason| {
                let per_cpu = drops
                    .get(&(*reason as u32), 0)
                    .map_err(|source| map_error(map::DROP_STATS, source))?;
                Ok((
                    *reason,
                    per_cpu.iter().copied().fold(0u64, u64::wrapping_add),
                ))
            })
            .collect()
    }
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    program_mut(ebpf, program::XDP_STATS)
}

fn tc_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DataplaneError> {
    program_mut(ebpf, name)
}

fn load_error(program: &'static str, source: aya::programs::ProgramError) -> DataplaneError {
    DataplaneError::ProgramLoad { program, source }
}

fn attach_error(
    program: &'static str,
    interface: &str,
    source: aya::programs::ProgramError,
) -> DataplaneError {
    DataplaneError::Attach {
        program,
        interface: interface.to_owned(),
        source,
    }
}

fn map_error(map: &'static str, source: aya::maps::MapError) -> DataplaneError {
    DataplaneError::Map { map, source }
}
