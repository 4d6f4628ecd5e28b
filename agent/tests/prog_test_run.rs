//! The stats programs on hand-built packets through `BPF_PROG_TEST_RUN`: verdicts, packets
//! returned unchanged, and the exact counts they leave in their maps. Needs root.

mod support;

use std::net::Ipv4Addr;

use aya::programs::Program;
use keel_agent::dataplane::test_run::{run_tc, run_xdp};
use keel_agent::dataplane::{StatsDataplane, load_object};
use keel_ebpf_common::{IfaceCounters, map, program};
use support::packet::{self, Endpoints};

const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
/// `BPF_PROG_TEST_RUN` without a context runs the program as if on the loopback device.
const LOOPBACK_IFINDEX: u32 = 1;

fn endpoints() -> Endpoints {
    Endpoints {
        src_mac: [0x02, 0, 0, 0, 0, 0x01],
        dst_mac: [0x02, 0, 0, 0, 0, 0x02],
        src_ip: Ipv4Addr::new(198, 18, 0, 1),
        dst_ip: Ipv4Addr::new(198, 18, 0, 2),
    }
}

#[test]
fn object_holds_every_program_and_map_of_the_contract() {
    keel_testhost::require_root();
    let ebpf = load_object().expect("load the embedded object");
    for name in program::ALL {
        assert!(
            ebpf.program(name).is_some(),
            "program `{name}` missing from the object"
        );
    }
    for name in map::ALL {
        assert!(
            ebpf.map(name).is_some(),
            "map `{name}` missing from the object"
        );
    }
    let names: Vec<_> = ebpf.programs().map(|(name, _)| name.to_owned()).collect();
    assert_eq!(
        names.len(),
        program::ALL.len(),
        "programs not in the contract: {names:?}"
    );
}

#[test]
fn every_program_in_the_object_passes_the_verifier() {
    keel_testhost::require_root();
    let mut ebpf = load_object().expect("load the embedded object");
    for (name, program) in ebpf.programs_mut() {
        let loaded = match program {
            Program::Xdp(program) => program.load(),
            Program::SchedClassifier(program) => program.load(),
            Program::CgroupSockAddr(program) => program.load(),
            other => panic!(
                "program `{name}` has a type this test does not know: {:?}",
                other.prog_type()
            ),
        };
        if let Err(error) = loaded {
            panic!("the verifier refused `{name}`: {error:?}");
        }
    }
}

#[test]
fn xdp_stats_passes_the_frame_unchanged_and_counts_it() {
    keel_testhost::require_root();
    let mut dataplane = StatsDataplane::load().expect("load the stats programs");
    let frame = packet::udp(&endpoints(), 40000, 5353, b"keel test payload");

    let run = run_xdp(dataplane.object(), program::XDP_STATS, &frame, 5).expect("test run");

    assert_eq!(run.verdict, XDP_PASS);
    assert_eq!(run.packet, frame, "xdp_stats must not change the frame");
    let stats = dataplane.iface_stats().expect("read IFACE_STATS");
    let lo = stats.get(&LOOPBACK_IFINDEX).copied().unwrap_or_default();
    let want = IfaceCounters {
        packets: 5,
        bytes: 5 * frame.len() as u64,
    };
    assert_eq!(lo.xdp, want);
    assert_eq!(lo.tc_ingress, IfaceCounters::default());
    assert_eq!(lo.tc_egress, IfaceCounters::default());
    assert_eq!(
        stats.len(),
        1,
        "counters for interfaces nothing ran on: {stats:?}"
    );
    assert!(dataplane.drop_stats().unwrap().iter().all(|(_, n)| *n == 0));
}

#[test]
fn tc_stats_pass_the_frame_unchanged_and_count_by_direction() {
    keel_testhost::require_root();
    let mut dataplane = StatsDataplane::load().expect("load the stats programs");
    let ping = packet::icmp_echo_request(&endpoints(), 0x4b45, 1, &[0x5a; 56]);
    let datagram = packet::udp(&endpoints(), 40000, 53, b"q");

    let ingress = run_tc(dataplane.object(), program::TC_STATS_INGRESS, &ping, 3).unwrap();
    let egress = run_tc(dataplane.object(), program::TC_STATS_EGRESS, &datagram, 2).unwrap();

    assert_eq!((ingress.verdict, egress.verdict), (TC_ACT_OK, TC_ACT_OK));
    assert_eq!(ingress.packet, ping);
    assert_eq!(egress.packet, datagram);
    let lo = dataplane.iface_stats().unwrap()[&LOOPBACK_IFINDEX];
    assert_eq!(
        lo.tc_ingress,
        IfaceCounters {
            packets: 3,
            bytes: 3 * ping.len() as u64
        }
    );
    assert_eq!(
        lo.tc_egress,
        IfaceCounters {
            packets: 2,
            bytes: 2 * datagram.len() as u64
        }
    );
    assert_eq!(lo.xdp, IfaceCounters::default());
}
