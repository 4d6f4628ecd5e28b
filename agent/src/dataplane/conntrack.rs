//! Connection tracking of the TC load-balancing path, from the agent's side: collecting idle
//! flows, and forgetting the UDP flows of removed backends.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddrV4;
use std::time::Duration;

use keel_ebpf_common::conntrack::{CT_CLOSING, CT_FORWARD, CT_UNREPLIED, CtKey, CtValue};
use keel_ebpf_common::map;
use keel_ebpf_common::nat::{NAT_FORWARD, NatValue};
use keel_ebpf_common::service::{PROTO_TCP, ServiceKey};

use super::object::DataplaneError;
use super::services::{Dataplane, Frontend, Protocol, map_error};

/// How long a tracked flow may stay idle before it is collected, by protocol and, for TCP, by
/// the state the TC programs saw (`CT_UNREPLIED`, `CT_CLOSING`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtTimeouts {
    /// An established TCP flow (answered, not closing).
    pub tcp: Duration,
    /// A TCP flow whose SYN was never answered.
    pub tcp_syn: Duration,
    /// A TCP flow after a FIN or RST (until a SYN reopens the tuple).
    pub tcp_close: Duration,
    pub udp: Duration,
}

impl Default for CtTimeouts {
    /// Cilium's defaults: established TCP 6 hours, TCP SYN 60 s, TCP closing 10 s, non-TCP
    /// 60 s.
    fn default() -> Self {
        CtTimeouts {
            tcp: Duration::from_secs(6 * 3600),
            tcp_syn: Duration::from_secs(60),
            tcp_close: Duration::from_secs(10),
            udp: Duration::from_secs(60),
        }
    }
}

impl CtTimeouts {
    /// The same `timeout` for every flow (`Duration::ZERO`: collect everything idle at all).
    pub fn all(timeout: Duration) -> CtTimeouts {
        CtTimeouts {
            tcp: timeout,
            tcp_syn: timeout,
            tcp_close: timeout,
            udp: timeout,
        }
    }

    /// The timeout of a flow of `protocol` whose entries carry `flags` (forward and reverse
    /// OR-ed, except `CT_UNREPLIED`, which only the reverse entry carries).
    pub fn of(&self, protocol: u8, forward_flags: u8, reverse_flags: u8) -> Duration {
        if protocol != PROTO_TCP {
            self.udp
        } else if (forward_flags | reverse_flags) & CT_CLOSING != 0 {
            self.tcp_close
        } else if reverse_flags & CT_UNREPLIED != 0 {
            self.tcp_syn
        } else {
            self.tcp
        }
    }
}

/// One garbage collection of `CT4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtCollection {
    /// Entries found (both directions of a flow count).
    pub entries: usize,
    /// Entries removed as idle.
    pub removed: usize,
}

impl Dataplane {
    /// Removes tracked flows idle for longer than their protocol's timeout, from `CT4` and
    /// from the SNAT map `NAT4`.
    pub fn collect_conntrack(
        &mut self,
        timeouts: CtTimeouts,
    ) -> Result<CtCollection, DataplaneError> {
        let now = monotonic_now();
        let ct = self.collect_pairs::<CtValue>(map::CT4, timeouts, now)?;
        let nat = self.collect_pairs::<NatValue>(map::NAT4, timeouts, now)?;
        Ok(CtCollection {
            entries: ct.entries + nat.entries,
            removed: ct.removed + nat.removed,
        })
    }

    /// One collection of a map of flow directions keyed by `CtKey`.
    fn collect_pairs<V: aya::Pod + Tracked>(
        &mut self,
        name: &'static str,
        timeouts: CtTimeouts,
        now: Duration,
    ) -> Result<CtCollection, DataplaneError> {
        let mut ct = self.map::<CtKey, V>(name)?;
        let entries: HashMap<CtKey, V> = ct.iter().filter_map(Result::ok).collect();
        let idle = |value: &V, timeout: Duration| {
            now.saturating_sub(Duration::from_nanos(value.last_seen())) > timeout
        };
        // A flow ages as a pair, under the state both directions show: the client may talk
        // for a long time before the backend answers, so the reverse entry goes only when both
        // directions are idle.
        let mut collect = Vec::new();
        let mut owned = HashSet::new();
        for (key, value) in &entries {
            let Some(reverse) = value.reverse_of(key) else {
                continue;
            };
            owned.insert(reverse);
            let reverse_value = entries.get(&reverse);
            let timeout = timeouts.of(
                key.protocol,
                value.tcp_flags(),
                reverse_value.map_or(0, Tracked::tcp_flags),
            );
            if idle(value, timeout) && reverse_value.is_none_or(|r| idle(r, timeout)) {
                collect.push(*key);
                collect.push(reverse);
            }
        }
        // Reverse entries whose forward entry is gone (LRU eviction) follow their own clock.
        for (key, value) in &entries {
            if value.reverse_of(key).is_none()
                && !owned.contains(key)
                && idle(value, timeouts.of(key.protocol, 0, value.tcp_flags()))
            {
                collect.push(*key);
            }
        }
        let mut collection = CtCollection {
            entries: entries.len(),
            removed: 0,
        };
        for key in collect {
            match ct.remove(&key) {
                Ok(()) => collection.removed += 1,
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => return Err(map_error(name, source)),
            }
        }
        Ok(collection)
    }

    /// Deletes the tracked UDP flows of `frontend` that go to one of `gone`, both directions,
    /// so the flow's next datagram picks a live backend instead of vanishing into the old one
    /// (kube-proxy's long-standing UDP blackhole). TCP flows are left to finish: a terminating
    /// endpoint keeps its open connections, as upstream intends.
    pub(super) fn forget_udp_flows(
        &mut self,
        frontend: Frontend,
        gone: &[SocketAddrV4],
    ) -> Result<(), DataplaneError> {
        if frontend.protocol != Protocol::Udp || gone.is_empty() {
            return Ok(());
        }
        let front = frontend.key();
        let gone: Vec<(u32, u16)> = gone
            .iter()
            .map(|b| (u32::from_ne_bytes(b.ip().octets()), b.port().to_be()))
            .collect();
        self.forget_flows_to::<CtValue>(map::CT4, front, &gone)?;
        self.forget_flows_to::<NatValue>(map::NAT4, front, &gone)?;
        Ok(())
    }

    /// Deletes the flows of map `name` to `front` whose backend is one of `gone` (addresses
    /// and ports in network order), both directions.
    fn forget_flows_to<V: aya::Pod + Tracked>(
        &mut self,
        name: &'static str,
        front: ServiceKey,
        gone: &[(u32, u16)],
    ) -> Result<(), DataplaneError> {
        let mut flows = self.map::<CtKey, V>(name)?;
        let mut stale = Vec::new();
        for entry in flows.iter() {
            let Ok((key, value)) = entry else { continue };
            let to_frontend = key.daddr == front.address
                && key.dport == front.port
                && key.protocol == front.protocol;
            if let Some(reverse) = value.reverse_of(&key)
                && to_frontend
                && gone.contains(&value.backend())
            {
                stale.push(key);
                stale.push(reverse);
            }
        }
        for key in stale {
            match flows.remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(source) => return Err(map_error(name, source)),
            }
        }
        Ok(())
    }
}

/// The key of the reverse entry that belongs to the forward entry `(key, value)`: the
/// backend's reply to the client.
fn reverse_key(key: &CtKey, value: &CtValue) -> CtKey {
    CtKey {
        saddr: value.address,
        daddr: key.saddr,
        sport: value.port,
        dport: key.sport,
        protocol: key.protocol,
        pad: [0; 3],
    }
}

/// The key of the reverse entry of the SNAT forward entry `(key, value)`: the backend's reply
/// to the node's allocated port.
fn nat_reverse_key(key: &CtKey, value: &NatValue) -> CtKey {
    CtKey {
        saddr: value.address,
        daddr: value.nat_address,
        sport: value.port,
        dport: value.nat_port,
        protocol: key.protocol,
        pad: [0; 3],
    }
}

/// One direction of a tracked flow (`CT4`, `NAT4`).
trait Tracked {
    /// When the direction last saw a packet (`bpf_ktime_get_ns`).
    fn last_seen(&self) -> u64;
    /// The TCP state the programs recorded (`CT_UNREPLIED`, `CT_CLOSING`).
    fn tcp_flags(&self) -> u8;
    /// For a forward entry keyed `key`: the key of its reverse entry; `None` for a reverse one.
    fn reverse_of(&self, key: &CtKey) -> Option<CtKey>;
    /// The backend of a forward entry (address, port; network order).
    fn backend(&self) -> (u32, u16);
}

impl Tracked for CtValue {
    fn last_seen(&self) -> u64 {
        self.last_seen
    }

    fn tcp_flags(&self) -> u8 {
        self.flags
    }

    fn reverse_of(&self, key: &CtKey) -> Option<CtKey> {
        (self.kind == CT_FORWARD).then(|| reverse_key(key, self))
    }

    fn backend(&self) -> (u32, u16) {
        (self.address, self.port)
    }
}

impl Tracked for NatValue {
    fn last_seen(&self) -> u64 {
        self.last_seen
    }

    fn tcp_flags(&self) -> u8 {
        self.flags
    }

    fn reverse_of(&self, key: &CtKey) -> Option<CtKey> {
        (self.kind == NAT_FORWARD).then(|| nat_reverse_key(key, self))
    }

    fn backend(&self) -> (u32, u16) {
        (self.address, self.port)
    }
}

/// `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns`.
fn monotonic_now() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    Duration::new(
        now.tv_sec.try_into().unwrap_or(0),
        now.tv_nsec.try_into().unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_ebpf_common::service::PROTO_UDP;

    #[test]
    fn a_flow_times_out_by_its_protocol_and_tcp_state() {
        let timeouts = CtTimeouts::default();
        // UDP: one timeout whatever the flags.
        assert_eq!(timeouts.of(PROTO_UDP, 0, 0), timeouts.udp);
        // TCP: unanswered SYN, established, closing from either side; closing wins.
        assert_eq!(timeouts.of(PROTO_TCP, 0, CT_UNREPLIED), timeouts.tcp_syn);
        assert_eq!(timeouts.of(PROTO_TCP, 0, 0), timeouts.tcp);
        assert_eq!(timeouts.of(PROTO_TCP, CT_CLOSING, 0), timeouts.tcp_close);
        assert_eq!(timeouts.of(PROTO_TCP, 0, CT_CLOSING), timeouts.tcp_close);
        assert_eq!(
            timeouts.of(PROTO_TCP, CT_CLOSING, CT_UNREPLIED),
            timeouts.tcp_close
        );
        // Cilium's defaults.
        assert_eq!(timeouts.tcp_syn, Duration::from_secs(60));
        assert_eq!(timeouts.tcp_close, Duration::from_secs(10));
    }
}
