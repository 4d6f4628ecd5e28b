//! The harness against the real kernel: hosts reach each other over links and switches,
//! processes and sockets live inside hosts, and everything goes away on drop, on panic, and
//! (for crashed runs) through the sweeper. Needs root.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use keel_testhost::{LinkOptions, TestNet, require_root, require_tool};

fn namespace_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn ping(from: &keel_testhost::Host, to: std::net::Ipv4Addr) {
    from.run(&["ping", "-c", "1", "-W", "2", &to.to_string()])
        .unwrap_or_else(|error| panic!("{} cannot reach {to}: {error}", from.name()));
}

#[test]
fn hosts_on_a_link_reach_each_other_and_only_through_it() {
    require_root();
    require_tool("ping", "iputils-ping");
    let mut net = TestNet::new("link").unwrap();
    let a = net.add_host("a").unwrap();
    let b = net.add_host("b").unwrap();
    let link = net.connect(&a, &b, LinkOptions::default()).unwrap();

    assert_eq!(link.a.ip.octets()[..2], [198, 18]);
    assert_eq!(
        (link.a.interface.as_str(), link.b.interface.as_str()),
        ("eth0", "eth0")
    );
    ping(&a, link.b.ip);
    ping(&b, link.a.ip);
    // The root namespace got nothing: no interface carries the link's MAC there.
    let root_links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let mac = "02:6b:74:00:00:01";
    assert!(
        !String::from_utf8_lossy(&root_links.stdout).contains(mac),
        "a veth end leaked into the root namespace"
    );
}

#[test]
fn static_neighbours_and_no_ipv6_leave_a_silent_link() {
    require_root();
    let mut net = TestNet::new("quiet").unwrap();
    let a = net.add_host("a").unwrap();
    let b = net.add_host("b").unwrap();
    let options = LinkOptions {
        static_neighbours: true,
        ..LinkOptions::default()
    };
    let link = net.connect(&a, &b, options).unwrap();

    let neighbours = a
        .run(&["ip", "neigh", "show", "dev", &link.a.interface])
        .unwrap();
    let neighbours = String::from_utf8_lossy(&neighbours.stdout);
    assert!(
        neighbours.contains(&link.b.ip.to_string()) && neighbours.contains("PERMANENT"),
        "{neighbours}"
    );
    let addresses = a
        .run(&["ip", "-6", "addr", "show", "dev", &link.a.interface])
        .unwrap();
    assert!(
        addresses.stdout.is_empty(),
        "IPv6 is on: {}",
        String::from_utf8_lossy(&addresses.stdout)
    );
}

#[test]
fn three_hosts_on_a_switch_reach_each_other() {
    require_root();
    require_tool("ping", "iputils-ping");
    let mut net = TestNet::new("switch").unwrap();
    let mut switch = net.add_switch("sw").unwrap();
    let hosts: Vec<_> = ["h1", "h2", "h3"]
        .iter()
        .map(|name| net.add_host(name).unwrap())
        .collect();
    let ports: Vec<_> = hosts
        .iter()
        .map(|host| net.plug(host, &mut switch, LinkOptions::default()).unwrap())
        .collect();

    assert_eq!(
        ports
            .iter()
            .map(|port| port.ip.octets()[3])
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    for (from, host) in hosts.iter().enumerate() {
        for (to, port) in ports.iter().enumerate() {
            if from != to {
                ping(host, port.ip);
            }
        }
    }
}

#[test]
fn a_server_spawned_in_one_host_answers_another() {
    require_root();
    require_tool("busybox", "busybox-static");
    let mut net = TestNet::new("server").unwrap();
    let server = net.add_host("server").unwrap();
    let client = net.add_host("client").unwrap();
    let link = net
        .connect(&client, &server, LinkOptions::default())
        .unwrap();
    let root = TempDir::new("keel-testhost-www");
    std::fs::write(root.0.join("index.html"), "hello from the server host\n").unwrap();
    let addr = SocketAddr::from((link.b.ip, 8080));

    let _httpd = server
        .spawn(&[
            "busybox",
            "httpd",
            "-f",
            "-p",
            &addr.to_string(),
            "-h",
            root.0.to_str().unwrap(),
        ])
        .unwrap();
    server.wait_for_port(addr, Duration::from_secs(10)).unwrap();

    let page = client
        .enter(|| {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
            stream
                .write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
                .unwrap();
            let mut page = String::new();
            stream.read_to_string(&mut page).unwrap();
            page
        })
        .unwrap();
    assert!(
        page.starts_with("HTTP/1.") && page.contains("hello from the server host"),
        "{page}"
    );
}

#[test]
fn sockets_made_inside_a_host_stay_there() {
    require_root();
    let mut net = TestNet::new("socket").unwrap();
    let a = net.add_host("a").unwrap();
    let b = net.add_host("b").unwrap();
    let link = net.connect(&a, &b, LinkOptions::default()).unwrap();

    let receiver = b
        .enter(|| UdpSocket::bind((link.b.ip, 9999)).unwrap())
        .unwrap();
    let sender = a
        .enter(|| UdpSocket::bind((link.a.ip, 0)).unwrap())
        .unwrap();
    // Used from this thread, in the root namespace: the sockets still live in their hosts.
    sender.send_to(b"across", (link.b.ip, 9999)).unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buffer = [0u8; 16];
    let (len, from) = receiver.recv_from(&mut buffer).unwrap();
    assert_eq!(&buffer[..len], b"across");
    assert_eq!(from.ip(), link.a.ip);
    assert_eq!(b.ifindex(&link.b.interface).unwrap(), link.b.ifindex);
}

#[test]
fn dropping_the_net_removes_namespaces_and_kills_what_ran_inside() {
    require_root();
    let mut net = TestNet::new("drop").unwrap();
    let host = net.add_host("h").unwrap();
    // Not behind a HostProcess guard: only the TestNet's cleanup can stop it.
    let mut orphan = host.command("sleep").arg("1000").spawn().unwrap();
    while !host.holds_process(orphan.id()) {
        assert!(orphan.try_wait().unwrap().is_none(), "sleep exited early");
        std::thread::sleep(Duration::from_millis(2));
    }
    let names = net.namespaces().to_vec();
    assert!(names.iter().all(|name| namespace_exists(name)));

    drop(net);

    assert!(
        names.iter().all(|name| !namespace_exists(name)),
        "left: {names:?}"
    );
    let status = orphan.wait().unwrap();
    assert!(
        !status.success(),
        "the process inside was not killed: {status}"
    );
}

#[test]
fn a_panicking_test_still_cleans_up() {
    require_root();
    let names = std::panic::catch_unwind(|| {
        let mut net = TestNet::new("panic").unwrap();
        net.add_host("h").unwrap();
        let names = net.namespaces().to_vec();
        assert!(names.iter().all(|name| namespace_exists(name)));
        std::panic::panic_any(names);
    })
    .unwrap_err();
    let names = names.downcast::<Vec<String>>().unwrap();
    assert!(!names.is_empty());
    assert!(
        names.iter().all(|name| !namespace_exists(name)),
        "left after panic: {names:?}"
    );
}

/// The sweeper tests each fake a dead run and sweep: one at a time, or one sweep takes the
/// other's dead run from under it.
static SWEEPING: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn the_sweeper_removes_dead_runs_and_spares_live_ones() {
    require_root();
    let _one_at_a_time = SWEEPING.lock().unwrap_or_else(|e| e.into_inner());
    let mut net = TestNet::new("live").unwrap();
    net.add_host("h").unwrap();
    let live = net.namespaces().to_vec();
    // A run that crashed: its namespace and an unheld lock file remain.
    let dead_run = format!("dead{:x}", std::process::id());
    let dead = format!("kt-{dead_run}-0-crashed");
    std::fs::create_dir_all("/run/keel-testhost").unwrap();
    let lock = format!("/run/keel-testhost/{dead_run}.lock");
    std::fs::write(&lock, "").unwrap();
    let added = Command::new("ip")
        .args(["netns", "add", &dead])
        .status()
        .unwrap();
    assert!(added.success());
    let mut inside = Command::new("ip")
        .args(["netns", "exec", &dead, "sleep", "1000"])
        .spawn()
        .unwrap();
    // `ip netns exec` joins the namespace after it starts; a process not in yet cannot be
    // found by any sweeper.
    let dead_ns = std::fs::metadata(format!("/run/netns/{dead}")).unwrap();
    while !std::fs::metadata(format!("/proc/{}/ns/net", inside.id()))
        .is_ok_and(|ns| ns.ino() == dead_ns.ino() && ns.dev() == dead_ns.dev())
    {
        assert!(
            inside.try_wait().unwrap().is_none(),
            "sleep exited before entering"
        );
        std::thread::sleep(Duration::from_millis(2));
    }

    assert!(keel_testhost::leftovers().unwrap().contains(&dead));
    let removed = keel_testhost::sweep().unwrap();

    assert!(removed.contains(&dead), "swept {removed:?}");
    assert!(!namespace_exists(&dead));
    assert!(
        !Path::new(&lock).exists(),
        "the dead run's lock file stayed"
    );
    assert!(
        !inside.wait().unwrap().success(),
        "a process in the dead run's namespace survived"
    );
    assert!(
        live.iter().all(|name| namespace_exists(name)),
        "the sweeper removed a live run's namespace"
    );
    assert!(!removed.iter().any(|name| live.contains(name)));
}

/// A temp dir removed on drop, also when the test fails.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        let thread = format!("{:?}", std::thread::current().id()).replace(['(', ')'], "");
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{thread}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn the_sweeper_unmounts_a_dead_runs_bpffs_and_spares_a_live_one() {
    require_root();
    let _one_at_a_time = SWEEPING.lock().unwrap_or_else(|e| e.into_inner());
    let live = keel_testhost::TestBpffs::new().unwrap();
    let dead_run = format!("dead{:x}", std::process::id());
    let dead = std::env::temp_dir().join(format!("kt-{dead_run}-bpf-crashed"));
    std::fs::create_dir_all(&dead).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(&dead)
        .status()
        .unwrap();
    assert!(mounted.success());
    let mounts = || std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount_point = |dir: &Path| format!(" {} ", dir.display());
    assert!(mounts().contains(&mount_point(&dead)));

    keel_testhost::sweep().unwrap();

    assert!(
        !mounts().contains(&mount_point(&dead)),
        "the dead run's bpffs is still mounted"
    );
    assert!(!dead.exists(), "the dead run's directory stayed");
    assert!(
        mounts().contains(&mount_point(live.path())),
        "the sweeper unmounted a live run's bpffs"
    );
}
