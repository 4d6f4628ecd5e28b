//! Asking the kernel's routes from a program (`bpf_fib_lookup`): where a translated packet
//! would leave, and with which MAC addresses.

use aya_ebpf::bindings::bpf_fib_lookup;
use aya_ebpf::helpers::bpf_fib_lookup as fib_lookup;

const AF_INET: u8 = 2;

/// The route from `source` to `destination` (IPv4, network byte order) for a packet of
/// `protocol` that arrived on `ifindex`: the helper's result code and the filled request
/// (`ifindex` out, `smac` / `dmac` on success).
///
/// # Safety
/// `ctx` must be the running program's context pointer (`__sk_buff` or `xdp_md`).
#[inline(always)]
pub unsafe fn lookup(
    ctx: *mut core::ffi::c_void,
    ifindex: u32,
    protocol: u8,
    source: u32,
    destination: u32,
) -> (i64, bpf_fib_lookup) {
    // SAFETY: an all-zero `bpf_fib_lookup` is a valid (empty) request.
    let mut route: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    route.family = AF_INET;
    route.l4_protocol = protocol;
    route.ifindex = ifindex;
    route.__bindgen_anon_3.ipv4_src = source;
    route.__bindgen_anon_4.ipv4_dst = destination;
    // SAFETY: the caller's context pointer; `route` is ours, of the size given.
    let found = unsafe {
        fib_lookup(
            ctx.cast(),
            &mut route,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    (found, route)
}
