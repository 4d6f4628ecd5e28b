//! `keel-cni` as a container runtime calls it: the node is a test host, each "pod" a network
//! namespace of the test's own, and the plugin runs inside the node with the CNI environment
//! and configuration a runtime would give it. Real veths, real routes, real traffic.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use keel_testhost::{Host, TestNet, require_root};
use serde_json::{Value, json};

const PLUGIN: &str = env!("CARGO_BIN_EXE_keel-cni");
const POD_CIDR: &str = "198.18.200.0/24";

/// What one plugin run printed, and whether it succeeded.
struct Answer {
    ok: bool,
    stdout: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| panic!("keel-cni printed no JSON ({error}): {}", self.stdout))
    }

    /// The spec's error object, checked for its shape.
    fn error(&self) -> (u64, String) {
        assert!(
            !self.ok,
            "keel-cni succeeded where it should fail: {}",
            self.stdout
        );
        let error = self.json();
        let code = error["code"].as_u64().expect("an error has a numeric code");
        let msg = error["msg"]
            .as_str()
            .expect("an error has a msg")
            .to_owned();
        assert!(error["cniVersion"].is_string(), "{error}");
        (code, msg)
    }
}

/// Runs the plugin inside `node` with `command`, the container's namespace (if any) and
/// `conf` on stdin.
fn plugin(
    node: &Host,
    command: &str,
    container: &str,
    netns: Option<&Host>,
    conf: &Value,
) -> Answer {
    let mut cmd = node.command(PLUGIN);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", Path::new(PLUGIN).parent().unwrap())
        .env_remove("CNI_NETNS");
    if let Some(pod) = netns {
        cmd.env("CNI_NETNS", format!("/run/netns/{}", pod.netns()));
    }
    run(&mut cmd, conf.to_string().as_bytes())
}

fn run(cmd: &mut Command, stdin: &[u8]) -> Answer {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start keel-cni");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let output = child.wait_with_output().unwrap();
    Answer {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
    }
}

fn ping(from: &Host, to: &str) -> bool {
    from.command("ping")
        .args(["-c", "1", "-W", "2", to])
        .output()
        .unwrap()
        .status
        .success()
}

fn pod_address(result: &Value) -> String {
    let address = result["ips"][0]["address"]
        .as_str()
        .expect("ADD gives an address");
    address.strip_suffix("/32").expect("a /32").to_owned()
}

#[test]
fn add_check_del_wire_and_unwire_pods_that_reach_the_node_and_each_other() {
    require_root();
    let mut net = TestNet::new("cni").unwrap();
    let node = net.add_host("node").unwrap();
    let pod_a = net.add_host("poda").unwrap();
    let pod_b = net.add_host("podb").unwrap();
    // The node's own address, for traffic from the pods to the node.
    node.run(&["ip", "addr", "add", "198.18.201.1/32", "dev", "lo"])
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let conf = json!({
        "cniVersion": "1.0.0",
        "name": "kt-cni",
        "type": "keel-cni",
        "podCIDR": POD_CIDR,
        "dataDir": data.path(),
    });

    // ADD: a 1.0.0 result with both interfaces, the /32 and the gateway.
    let added = plugin(&node, "ADD", "ctr-a", Some(&pod_a), &conf);
    assert!(added.ok, "ADD failed: {}", added.stdout);
    let result = added.json();
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(result["ips"][0]["interface"], 1);
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(
        result["interfaces"][1]["sandbox"],
        format!("/run/netns/{}", pod_a.netns())
    );
    for interface in result["interfaces"].as_array().unwrap() {
        assert_eq!(interface["mac"].as_str().unwrap().len(), 17, "{interface}");
    }
    assert_eq!(result["routes"][0]["dst"], "0.0.0.0/0");
    let addr_a = pod_address(&result);
    assert_eq!(addr_a, "198.18.200.1");
    // The address is held on disk, keyed by container and interface.
    assert_eq!(
        std::fs::read_to_string(data.path().join(&addr_a)).unwrap(),
        "cni:ctr-a:eth0"
    );

    // ADD again (a retrying runtime): the same address, nothing new.
    let again = plugin(&node, "ADD", "ctr-a", Some(&pod_a), &conf);
    assert!(again.ok, "second ADD failed: {}", again.stdout);
    assert_eq!(pod_address(&again.json()), addr_a);

    // Real traffic: node to pod, pod to node, and (through the node) pod to pod.
    let added_b = plugin(&node, "ADD", "ctr-b", Some(&pod_b), &conf);
    assert!(added_b.ok, "ADD b failed: {}", added_b.stdout);
    let addr_b = pod_address(&added_b.json());
    assert_eq!(addr_b, "198.18.200.2");
    assert!(ping(&node, &addr_a), "the node reaches pod a");
    assert!(ping(&pod_a, "198.18.201.1"), "pod a reaches the node");
    assert!(
        ping(&pod_a, &addr_b),
        "pod a reaches pod b through the node"
    );

    // CHECK: nothing to say while all is in place (prevResult given, as runtimes do).
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = result.clone();
    let checked = plugin(&node, "CHECK", "ctr-a", Some(&pod_a), &check_conf);
    assert!(checked.ok, "CHECK failed: {}", checked.stdout);
    assert!(
        checked.stdout.trim().is_empty(),
        "CHECK prints nothing: {}",
        checked.stdout
    );

    // CHECK is 0.4.0 and later.
    let mut old_conf = check_conf.clone();
    old_conf["cniVersion"] = json!("0.3.1");
    let (code, msg) = plugin(&node, "CHECK", "ctr-a", Some(&pod_a), &old_conf).error();
    assert_eq!(code, 1, "{msg}");
    assert!(msg.contains("0.4.0"), "{msg}");

    // Break the pod's default route: CHECK says so, with the plugin's own code.
    pod_a.run(&["ip", "route", "del", "default"]).unwrap();
    let (code, msg) = plugin(&node, "CHECK", "ctr-a", Some(&pod_a), &check_conf).error();
    assert_eq!(code, 100, "{msg}");
    assert!(msg.contains("default route"), "{msg}");

    // DEL: the veth pair and the address go; DEL again and DEL without a namespace are fine.
    let host_if = result["interfaces"][0]["name"].as_str().unwrap().to_owned();
    for netns in [Some(&pod_a), Some(&pod_a), None] {
        let deleted = plugin(&node, "DEL", "ctr-a", netns, &conf);
        assert!(deleted.ok, "DEL failed: {}", deleted.stdout);
        assert!(
            deleted.stdout.trim().is_empty(),
            "DEL prints nothing: {}",
            deleted.stdout
        );
    }
    let links = node.run(&["ip", "-o", "link", "show"]).unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(&host_if),
        "{host_if} is gone from the node"
    );
    let pod_links = pod_a.run(&["ip", "-o", "link", "show"]).unwrap();
    assert!(!String::from_utf8_lossy(&pod_links.stdout).contains("eth0"));
    assert!(
        !data.path().join(&addr_a).exists(),
        "the address is released"
    );
    assert!(ping(&node, &addr_b), "pod b is untouched");

    // A pod whose namespace is gone: error 3, and no address is taken.
    let ghost = net.add_host("ghost").unwrap();
    let ghost_path = format!("/run/netns/{}", ghost.netns());
    node.run(&["ip", "netns", "del", ghost.netns()]).unwrap();
    assert!(!Path::new(&ghost_path).exists());
    let (code, msg) = plugin(&node, "ADD", "ctr-ghost", Some(&ghost), &conf).error();
    assert_eq!(code, 3, "{msg}");
    let held: Vec<_> = std::fs::read_dir(data.path())
        .unwrap()
        .filter_map(|entry| entry.unwrap().file_name().into_string().ok())
        .filter(|name| name.starts_with("198."))
        .collect();
    assert_eq!(
        held,
        std::slice::from_ref(&addr_b),
        "only pod b holds an address"
    );

    let deleted_b = plugin(&node, "DEL", "ctr-b", Some(&pod_b), &conf);
    assert!(deleted_b.ok, "DEL b failed: {}", deleted_b.stdout);
}

#[test]
fn version_and_bad_input_answer_with_spec_errors() {
    require_root();
    let mut net = TestNet::new("cniv").unwrap();
    let node = net.add_host("node").unwrap();
    let pod = net.add_host("pod").unwrap();

    let version = plugin(&node, "VERSION", "", None, &json!({"cniVersion": "1.0.0"}));
    assert!(version.ok, "{}", version.stdout);
    assert_eq!(
        version.json(),
        json!({"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]})
    );

    // A configuration without podCIDR: error 7 naming the field, in the asked version.
    let bad = json!({"cniVersion": "0.4.0", "name": "kt-cni", "type": "keel-cni"});
    let answer = plugin(&node, "ADD", "ctr", Some(&pod), &bad);
    let (code, msg) = answer.error();
    assert_eq!(code, 7, "{msg}");
    assert!(msg.contains("podCIDR"), "{msg}");
    assert_eq!(answer.json()["cniVersion"], "0.4.0");

    // Not JSON at all: error 6.
    let mut cmd = node.command(PLUGIN);
    cmd.env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "ctr")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", format!("/run/netns/{}", pod.netns()));
    let (code, _) = run(&mut cmd, b"{ not json").error();
    assert_eq!(code, 6);

    // An unknown command: error 4 naming it.
    let (code, msg) = plugin(&node, "FROB", "ctr", Some(&pod), &bad).error();
    assert_eq!(code, 4, "{msg}");
    assert!(msg.contains("FROB"), "{msg}");
}
