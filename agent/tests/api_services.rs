//! Services from the API server: the agent (`--kubeconfig`) watches Services and
//! EndpointSlices with reflectors and load-balances them. A Service made with kubectl gets
//! its ClusterIP from the API server; an EndpointSlice the test writes (managed by the test,
//! so no controller touches it) lists backend hosts running name servers; a client in the
//! agent's socket-LB cgroup reaches them through the ClusterIP, and a client host through the
//! NodePort on the node's `--node-ip` (TC on the `--devices` facing it); editing the slice
//! moves the traffic; a restarted agent takes the Services over unchanged. Needs root.

mod support;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use keel_testhost::cluster::TestControlPlane;
use keel_testhost::node::TestNode;
use support::agent_binary;
use support::servers::{BACKEND_PORT, NameServer, answer, nc_to};

/// The `managed-by` of the slices this test writes: a controller leaves them alone.
const MANAGED_BY: &str = "api-services-test.keel.dev";

fn slice_yaml(backends: &[Ipv4Addr]) -> String {
    let mut yaml = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-test\n  \
         namespace: default\n  labels:\n    kubernetes.io/service-name: web\n    \
         endpointslice.kubernetes.io/managed-by: {MANAGED_BY}\naddressType: IPv4\n\
         ports:\n- {{name: http, port: {BACKEND_PORT}, protocol: TCP}}\nendpoints:\n"
    );
    for backend in backends {
        yaml.push_str(&format!(
            "- addresses: ['{backend}']\n  conditions: {{ready: true}}\n"
        ));
    }
    yaml
}

/// Connections from the node, in the socket-LB cgroup, to `vip:80` until `rounds` in a row
/// answer from exactly `expected`.
fn wait_for_answers(node: &TestNode, vip: Ipv4Addr, expected: &[&str], rounds: usize) {
    wait_for(node, &format!("{vip}:80"), expected, rounds, &|| {
        nc_to(&node.host, vip, 80, Some(&node.socket_lb_cgroup))
    });
}

/// `connect` until `rounds` in a row answer from exactly `expected` (`""`: no answer).
fn wait_for(
    node: &TestNode,
    what: &str,
    expected: &[&str],
    rounds: usize,
    connect: &dyn Fn() -> std::process::Output,
) {
    let expected: BTreeSet<String> = expected.iter().map(|name| (*name).to_owned()).collect();
    node.wait_for(
        &format!("answers from {expected:?} on {what}"),
        Duration::from_secs(30),
        || {
            let mut seen = BTreeSet::new();
            for _ in 0..rounds {
                let output = connect();
                seen.insert(if output.status.success() {
                    answer(&output)
                } else {
                    String::new()
                });
            }
            (seen == expected).then_some(())
        },
    );
}

#[test]
fn services_from_the_api_server_reach_their_endpoint_slices_backends() {
    let mut node = TestNode::new("apisvc", agent_binary());
    keel_testhost::require_tool("busybox", "busybox-static");
    let control_plane = TestControlPlane::start(&node);
    let mut servers = Vec::new();
    let mut backends = Vec::new();
    for index in 1..=3 {
        let name = format!("backend{index}");
        let (host, link) = node.add_host(&name);
        // NodePort flows come from the client host: replies go back through the node.
        host.run(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &link.a.ip.to_string(),
        ])
        .unwrap();
        let address = SocketAddrV4::new(link.b.ip, BACKEND_PORT);
        servers.push(NameServer::start(&host, address, name));
        backends.push((host, link.b.ip));
    }
    let ips: Vec<Ipv4Addr> = backends.iter().map(|(_, ip)| *ip).collect();
    // A client host outside the node, for the NodePort on the node's address facing it.
    let (client, client_link) = node.add_host("client");
    let node_ip = client_link.a.ip;
    client
        .run(&["ip", "route", "add", "default", "via", &node_ip.to_string()])
        .unwrap();
    node.extra_args = vec![
        "--kubeconfig".into(),
        control_plane.kubeconfig().display().to_string(),
        "--devices".into(),
        client_link.a.interface.clone(),
        "--node-ip".into(),
        node_ip.to_string(),
    ];
    node.start_agent();

    control_plane.kubectl_ok(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  \
             type: NodePort\n  selector: {app: web}\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n",
        ),
    );
    control_plane.kubectl_ok(&["apply", "-f", "-"], Some(&slice_yaml(&ips[..2])));
    let cluster_ip: Ipv4Addr = control_plane
        .kubectl_ok(
            &["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"],
            None,
        )
        .trim()
        .parse()
        .expect("an IPv4 ClusterIP");
    let node_port: u16 = control_plane
        .kubectl_ok(
            &[
                "get",
                "service",
                "web",
                "-o",
                "jsonpath={.spec.ports[0].nodePort}",
            ],
            None,
        )
        .trim()
        .parse()
        .expect("a NodePort");
    let through_node_port = || nc_to(&client, node_ip, node_port, None);
    let node_port_name = format!("NodePort {node_ip}:{node_port}");

    wait_for_answers(&node, cluster_ip, &["backend1", "backend2"], 20);
    wait_for(
        &node,
        &node_port_name,
        &["backend1", "backend2"],
        20,
        &through_node_port,
    );

    // The slice changes: backend1 goes, backend3 comes; the traffic follows.
    control_plane.kubectl_ok(&["apply", "-f", "-"], Some(&slice_yaml(&ips[1..])));
    wait_for_answers(&node, cluster_ip, &["backend2", "backend3"], 20);
    wait_for(
        &node,
        &node_port_name,
        &["backend2", "backend3"],
        20,
        &through_node_port,
    );

    // kill -9 and a new agent: it takes the Service over and changes nothing.
    node.kill_agent();
    wait_for_answers(&node, cluster_ip, &["backend2", "backend3"], 10);
    let started = node.agent_log().len();
    node.start_agent();
    node.wait_for(
        "the new agent's first apply",
        Duration::from_secs(60),
        || {
            let log = node.agent_log();
            let new_run = &log[started..];
            let first_apply = new_run.lines().find(|l| l.contains("API: "))?;
            Some((new_run.to_owned(), first_apply.to_owned()))
        },
    );
    let log = node.agent_log();
    let new_run = &log[started..];
    assert!(
        new_run.contains("Service frontends and ") && !new_run.contains(" 0 Service frontends"),
        "{new_run}"
    );
    let first_apply = new_run.lines().find(|l| l.contains("API: ")).unwrap();
    assert!(first_apply.ends_with("(0 changed)"), "{new_run}");
    wait_for_answers(&node, cluster_ip, &["backend2", "backend3"], 10);

    // The Service goes: so does its frontend.
    control_plane.kubectl_ok(&["delete", "service", "web"], None);
    wait_for_answers(&node, cluster_ip, &[""], 3);
    wait_for(&node, &node_port_name, &[""], 3, &through_node_port);
    drop(servers);
}
