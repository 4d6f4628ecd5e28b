//! Cluster DNS end to end: the real `keel-agent` in a node host with `--services-file` and
//! `--cluster-dns 169.254.20.10` answers busybox `nslookup` for Services, headless endpoints,
//! SRV records, pod names and ExternalNames, says NXDOMAIN for unknown names of the domain,
//! and forwards other names to an upstream resolver in another test host.

use std::net::{Ipv4Addr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, OpCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record};
use keel_testhost::{
    HostProcess, LinkOptions, TestBpffs, TestCgroup, TestNet, require_root, require_tool,
};

const CLUSTER_DNS: &str = "169.254.20.10";

const SERVICES: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: data}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-1
  namespace: data
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
ports: [{name: pg, port: 5432, protocol: TCP}]
endpoints:
- {addresses: [10.244.1.5], hostname: db-0, conditions: {ready: true}}
- {addresses: [10.244.2.6], conditions: {ready: true}}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: default}
spec: {type: ExternalName, externalName: example.org}
";

/// `busybox nslookup <args> 169.254.20.10` in `host`: its output and success.
fn nslookup(host: &keel_testhost::Host, args: &[&str]) -> (bool, String) {
    let output = host
        .command("busybox")
        .arg("nslookup")
        .args(args)
        .arg(CLUSTER_DNS)
        .output()
        .expect("busybox nslookup");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_agent_answers_cluster_names_and_forwards_the_rest() {
    require_root();
    require_tool("busybox", "busybox-static");
    let mut net = TestNet::new("dns").unwrap();
    let node = net.add_host("node").unwrap();
    let upstream = net.add_host("upstream").unwrap();
    let link = net
        .connect(&node, &upstream, LinkOptions::default())
        .unwrap();
    let upstream_ip = link.b.ip;

    // The upstream resolver: answers every A question with 192.0.2.7.
    let socket = upstream
        .enter(|| UdpSocket::bind((upstream_ip, 53)).expect("bind :53 in the upstream host"))
        .unwrap();
    std::thread::spawn(move || {
        let mut buffer = [0_u8; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut buffer) {
            let Ok(request) = Message::from_vec(&buffer[..n]) else {
                continue;
            };
            let mut answer = Message::response(request.metadata.id, OpCode::Query);
            answer.metadata.recursion_available = true;
            for query in &request.queries {
                answer.add_query(query.clone());
                answer.add_answer(Record::from_rdata(
                    query.name().clone(),
                    60,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
                ));
            }
            let _ = socket.send_to(&answer.to_vec().unwrap(), peer);
        }
    });

    let dir = tempfile::Builder::new()
        .prefix("kt-dns-")
        .tempdir()
        .unwrap();
    let file = dir.path().join("services.yaml");
    std::fs::write(&file, SERVICES).unwrap();
    let cgroup = TestCgroup::new().unwrap();
    let bpffs = TestBpffs::new().unwrap();
    let log_path = dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // nsenter, not `ip netns exec`: that remounts /sys, hiding the test's cgroup.
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net=/run/netns/{}", node.netns()))
        .arg(env!("CARGO_BIN_EXE_keel-agent"))
        .arg("--services-file")
        .arg(&file)
        .arg("--root-dir")
        .arg(dir.path().join("root"))
        .arg("--socket-lb-cgroup")
        .arg(cgroup.path())
        .arg("--bpf-root")
        .arg(bpffs.path().join("keel"))
        .args(["--cluster-dns", CLUSTER_DNS])
        .args(["--dns-upstream", &format!("{upstream_ip}:53")])
        .args(["--metrics-bind-address", ""])
        .stdout(Stdio::null())
        .stderr(log);
    let mut agent = HostProcess::spawn(&mut command).unwrap();
    let agent_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // The zone follows the file once the agent read it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let web = loop {
        let (ok, text) = nslookup(&node, &["web.default.svc.cluster.local"]);
        if ok && text.contains("10.96.0.10") {
            break text;
        }
        assert!(agent.is_running(), "the agent exited:\n{}", agent_log());
        assert!(
            Instant::now() < deadline,
            "{text}\nagent log:\n{}",
            agent_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(web.contains("Address: 10.96.0.10"), "{web}");

    let (ok, db) = nslookup(&node, &["db.data.svc.cluster.local"]);
    assert!(
        ok && db.contains("10.244.1.5") && db.contains("10.244.2.6"),
        "{db}"
    );
    let (ok, db0) = nslookup(&node, &["db-0.db.data.svc.cluster.local"]);
    assert!(ok && db0.contains("10.244.1.5"), "{db0}");
    let (ok, srv) = nslookup(&node, &["-type=srv", "_pg._tcp.db.data.svc.cluster.local"]);
    assert!(
        ok && srv.contains("5432 db-0.db.data.svc.cluster.local"),
        "{srv}"
    );
    let (ok, pod) = nslookup(&node, &["10-244-3-9.default.pod.cluster.local"]);
    assert!(ok && pod.contains("10.244.3.9"), "{pod}");
    let (_, ext) = nslookup(&node, &["-type=cname", "ext.default.svc.cluster.local"]);
    assert!(ext.contains("example.org"), "{ext}");
    let (ok, missing) = nslookup(&node, &["nope.default.svc.cluster.local"]);
    assert!(!ok && missing.contains("NXDOMAIN"), "{missing}");

    // Outside the domain: forwarded to the upstream.
    let (ok, forwarded) = nslookup(&node, &["example.org"]);
    assert!(ok && forwarded.contains("192.0.2.7"), "{forwarded}");

    // The address carries the agent's label on the loopback interface; `keel-agent reset`
    // takes it away.
    let labelled = || {
        let output = node
            .run(&[
                "ip",
                "-o",
                "addr",
                "show",
                "dev",
                "lo",
                "label",
                "lo:keel-dns",
            ])
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert!(labelled().contains("169.254.20.10/32"), "{}", labelled());

    // SAFETY: signalling our own child, not yet reaped.
    unsafe { libc::kill(agent.pid() as libc::pid_t, libc::SIGTERM) };
    let _ = agent.child().wait();
    let cleanup = Command::new(env!("CARGO_BIN_EXE_keel-agent"))
        .arg("--cleanup-bpf")
        .arg("--bpf-root")
        .arg(bpffs.path().join("keel"))
        .output()
        .unwrap();
    assert!(cleanup.status.success());
    let reset = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", node.netns()))
        .arg(env!("CARGO_BIN_EXE_keel-agent"))
        .arg("reset")
        .arg("--root-dir")
        .arg(dir.path().join("root"))
        .args(["--cgroup-root", "kt-dns-none"])
        .output()
        .unwrap();
    assert!(
        reset.status.success(),
        "{}",
        String::from_utf8_lossy(&reset.stderr)
    );
    assert_eq!(labelled(), "");
}
