//! Runs a loaded program on a crafted packet with `BPF_PROG_TEST_RUN` and returns its verdict
//! and the packet as the program left it: exact, fast tests of packet-rewriting programs
//! without attaching anything to any interface.

use std::time::Duration;

use aya::Ebpf;
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp};

use super::object::{DataplaneError, program_mut};

/// Room for programs that grow the packet (encapsulation, ICMP errors) beyond its input size.
const GROWTH_ROOM: usize = 512;

/// What a program did to one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketRun {
    /// The program's return value: an `xdp_action` or a `TC_ACT_*` code.
    pub verdict: u32,
    /// The packet after the program ran, as long as the program left it.
    pub packet: Vec<u8>,
    /// Average run time per repetition, as the kernel measured it.
    pub duration: Duration,
}

/// Runs the XDP program `name` of a loaded object `repeat` times on `packet`.
///
/// Without an explicit context the kernel runs the program as if the packet arrived on the
/// loopback device of the calling thread's network namespace.
pub fn run_xdp(
    ebpf: &mut Ebpf,
    name: &'static str,
    packet: &[u8],
    repeat: u32,
) -> Result<PacketRun, DataplaneError> {
    let program: &mut Xdp = program_mut(ebpf, name)?;
    run(program, name, packet, repeat)
}

/// Runs the TC (`sched_cls`) program `name` of a loaded object `repeat` times on `packet`,
/// an Ethernet frame.
pub fn run_tc(
    ebpf: &mut Ebpf,
    name: &'static str,
    packet: &[u8],
    repeat: u32,
) -> Result<PacketRun, DataplaneError> {
    let program: &mut SchedClassifier = program_mut(ebpf, name)?;
    run(program, name, packet, repeat)
}

fn run<P>(
    program: &P,
    name: &'static str,
    packet: &[u8],
    repeat: u32,
) -> Result<PacketRun, DataplaneError>
where
    P: for<'o> TestRun<Opts<'o> = TestRunOptions<'o>, Result = TestRunResult>,
{
    let mut out = vec![0u8; packet.len() + GROWTH_ROOM];
    let options = TestRunOptions {
        data_in: Some(packet),
        data_out: Some(&mut out),
        repeat: repeat.max(1),
        ..TestRunOptions::default()
    };
    let result = program
        .test_run(options)
        .map_err(|source| DataplaneError::TestRun {
            program: name,
            source,
        })?;
    out.truncate(result.data_size_out as usize);
    Ok(PacketRun {
        verdict: result.return_value,
        packet: out,
        duration: result.duration,
    })
}
