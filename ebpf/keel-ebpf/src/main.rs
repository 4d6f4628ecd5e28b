//! Keel's eBPF programs: one object, one entry function per attach point.
//!
//! Entry functions (`xdp_stats`, `xdp_lb`, `tc_stats_ingress`, `tc_stats_egress`, `tc_lb_ingress`, `tc_lb_egress`, `sock_connect4`,
//! `sock_sendmsg4`, `sock_recvmsg4`, `sock_getpeername4`; each named the same in file and
//! function) only dispatch; the logic and maps live in the modules below. Shared
//! types come from `keel-ebpf-common`, which the agent uses too.
//!
//! Build with `cargo xtask build-ebpf` (nightly, `-Z build-std=core`, bpf-linker).
#![no_std]
#![no_main]

mod ct_map;
mod drop_stats;
mod iface_stats;
mod maglev;
mod nat_map;
mod reject;
mod route;
mod service_maps;
mod sock_connect4;
mod sock_getpeername4;
mod sock_recvmsg4;
mod sock_sendmsg4;
mod socket_lb;
mod tc_lb;
mod tc_lb_egress;
mod tc_lb_ingress;
mod tc_stats_egress;
mod tc_stats_ingress;
mod xdp_lb;
mod xdp_nat;
mod xdp_stats;

/// eBPF has no unwinding: a panic path must never be reachable. The verifier rejects the
/// infinite loop below, so a program from which a panic is reachable fails to load instead of
/// misbehaving at run time.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
