//! Refusing a flow to a Service that has no backend the way kube-proxy's REJECT does: the
//! packet becomes an ICMP port-unreachable error back to its sender, so the client fails at
//! once instead of waiting for a timeout.

use aya_ebpf::bindings::TC_ACT_REDIRECT;
use aya_ebpf::helpers::{bpf_redirect, bpf_skb_change_tail};
use aya_ebpf::programs::TcContext;
use keel_ebpf_common::DropReason;
use keel_ebpf_common::checksum::internet_checksum;

use crate::tc_lb::{ETH_HLEN, ETH_P_IPV4, IPV4_MIN_HLEN};

/// What an ICMP error quotes of the offending packet: its IPv4 header and 8 bytes beyond.
const QUOTE: usize = IPV4_MIN_HLEN + 8;
const ICMP_HLEN: usize = 8;
const ICMP_DEST_UNREACHABLE: u8 = 3;
const ICMP_PORT_UNREACHABLE: u8 = 3;
const IPPROTO_ICMP: u8 = 1;

/// Rewrites the packet into an ICMP port-unreachable from `frontend` (the address the client
/// asked for) and sends it back out of the interface it came in on.
#[inline(always)]
pub fn port_unreachable(ctx: &TcContext, l4: usize) -> Result<i32, DropReason> {
    // Rare IPv4 options: such packets are only dropped.
    if l4 != ETH_HLEN + IPV4_MIN_HLEN {
        return Err(DropReason::NoBackend);
    }
    let failed = |_| DropReason::NoBackend;
    // Constant-size reads: `load_bytes` clamps its length to the packet, which the verifier
    // sees as a possibly empty read and refuses.
    let macs: [u8; 12] = ctx.load(0).map_err(failed)?;
    let quote: [u8; QUOTE] = ctx.load(ETH_HLEN).map_err(failed)?;

    let total = ETH_HLEN + IPV4_MIN_HLEN + ICMP_HLEN + QUOTE;
    // SAFETY: the context's `__sk_buff`, which bpf_skb_change_tail takes.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, total as u32, 0) } != 0 {
        return Err(DropReason::NoBackend);
    }

    let mut ethernet = [0u8; ETH_HLEN];
    ethernet[..6].copy_from_slice(&macs[6..12]);
    ethernet[6..12].copy_from_slice(&macs[..6]);
    ethernet[12..].copy_from_slice(&ETH_P_IPV4.to_be_bytes());

    let mut ip = [0u8; IPV4_MIN_HLEN];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((IPV4_MIN_HLEN + ICMP_HLEN + QUOTE) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = IPPROTO_ICMP;
    // From the frontend the client addressed, to the client.
    ip[12..16].copy_from_slice(&quote[16..20]);
    ip[16..20].copy_from_slice(&quote[12..16]);
    let ip_checksum = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&ip_checksum.to_be_bytes());

    let mut icmp = [0u8; ICMP_HLEN + QUOTE];
    icmp[0] = ICMP_DEST_UNREACHABLE;
    icmp[1] = ICMP_PORT_UNREACHABLE;
    icmp[ICMP_HLEN..].copy_from_slice(&quote);
    let icmp_checksum = internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&icmp_checksum.to_be_bytes());

    ctx.store(0, &ethernet, 0).map_err(failed)?;
    ctx.store(ETH_HLEN, &ip, 0).map_err(failed)?;
    ctx.store(ETH_HLEN + IPV4_MIN_HLEN, &icmp, 0)
        .map_err(failed)?;
    // SAFETY: `ctx.skb.skb` is the program's `__sk_buff`; ifindex is readable in a classifier.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: bpf_redirect only records the target; flags 0 send it out of that interface.
    unsafe { bpf_redirect(ifindex, 0) };
    Ok(TC_ACT_REDIRECT)
}
