//! Service load-balancing on the TC path with real traffic: a client host whose traffic to a
//! ClusterIP is routed through a node host reaches the Service's backends behind the node; the
//! replies come back through the node, reverse-translated. No socket-level program is involved
//! (the client runs in no cgroup of ours). Needs root.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddrV4;

use keel_agent::dataplane::{Frontend, Protocol, ServiceDataplane};
use keel_testhost::{LinkOptions, TestNet, require_root, require_tool};
use support::servers::{BACKEND_PORT, NameServer, VIP, answer, nc_to_vip};

#[test]
fn routed_traffic_to_a_cluster_ip_reaches_every_backend_through_the_node() {
    require_root();
    require_tool("busybox", "busybox-static");
    let mut net = TestNet::new("tclb").unwrap();
    let client = net.add_host("client").unwrap();
    let node = net.add_host("node").unwrap();
    let uplink = net.connect(&client, &node, LinkOptions::default()).unwrap();
    let mut switch = net.add_switch("sw").unwrap();
    let node_port = net
        .plug(&node, &mut switch, LinkOptions::default())
        .unwrap();
    node.enable_forwarding().unwrap();
    client.add_route("10.96.0.0/12", uplink.b.ip).unwrap();
    let mut servers = Vec::new();
    let mut backends = Vec::new();
    for index in 1..=3 {
        let host = net.add_host(&format!("backend{index}")).unwrap();
        let port = net
            .plug(&host, &mut switch, LinkOptions::default())
            .unwrap();
        host.run(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &node_port.ip.to_string(),
        ])
        .unwrap();
        let address = SocketAddrV4::new(port.ip, BACKEND_PORT);
        servers.push(NameServer::start(&host, address, format!("backend{index}")));
        backends.push(address);
    }

    let mut dataplane = ServiceDataplane::load().unwrap();
    node.enter(|| {
        dataplane.attach_tc(&uplink.b.interface).unwrap();
        dataplane.attach_tc(&node_port.interface).unwrap();
    })
    .unwrap();
    let frontend = Frontend {
        address: VIP,
        port: 80,
        protocol: Protocol::Tcp,
    };
    dataplane.upsert(frontend, &backends).unwrap();

    let mut answers = BTreeMap::<String, usize>::new();
    for _ in 0..30 {
        *answers
            .entry(answer(&nc_to_vip(&client, None)))
            .or_default() += 1;
    }
    assert_eq!(
        answers.keys().map(String::as_str).collect::<Vec<_>>(),
        ["backend1", "backend2", "backend3"],
        "{answers:?}"
    );

    // Without backends the node drops the flow: the client's connection fails.
    dataplane.upsert(frontend, &[]).unwrap();
    assert!(!nc_to_vip(&client, None).status.success());
}
