//! Per-interface packet and byte counters (XDP, TC ingress, TC egress) and per-reason drop
//! counters: the dataplane's observability base, exported as metrics by the agent.

use std::collections::BTreeMap;

use aya::maps::{PerCpuArray, PerCpuHashMap};
use aya::programs::XdpMode;
use keel_ebpf_common::{DropReason, Hook, IfaceCounters, IfaceKey, map};

use super::object::DataplaneError;
use super::services::Dataplane;

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
    pub(super) fn aya(self) -> XdpMode {
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
    /// Frames the XDP load balancer sent back out (`XDP_TX`).
    pub xdp_tx: IfaceCounters,
}

impl IfaceStats {
    fn slot(&mut self, hook: Hook) -> &mut IfaceCounters {
        match hook {
            Hook::Xdp => &mut self.xdp,
            Hook::TcIngress => &mut self.tc_ingress,
            Hook::TcEgress => &mut self.tc_egress,
            Hook::XdpTx => &mut self.xdp_tx,
        }
    }
}

impl Dataplane {
    /// Counters per interface index, summed over CPUs.
    pub fn iface_stats(&self) -> Result<BTreeMap<u32, IfaceStats>, DataplaneError> {
        let raw = self.map_ref(map::IFACE_STATS)?;
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

    fn map_ref(&self, name: &'static str) -> Result<&aya::maps::Map, DataplaneError> {
        self.ebpf
            .map(name)
            .ok_or(DataplaneError::MissingMap { map: name })
    }

    /// Packets dropped per reason, summed over CPUs, every reason listed.
    pub fn drop_stats(&self) -> Result<Vec<(DropReason, u64)>, DataplaneError> {
        let raw = self.map_ref(map::DROP_STATS)?;
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

fn map_error(map: &'static str, source: aya::maps::MapError) -> DataplaneError {
    DataplaneError::Map { map, source }
}
