//! [`TestNet`]: a set of test hosts (network namespaces), the links and switches between
//! them, and their removal when the `TestNet` is dropped (also while a test panics).
//!
//! Addresses: link number `k` is `198.18.k.0/24` (ends `.1` and `.2`); switch number `k` is
//! `198.19.k.0/24` (hosts from `.1`). Each `TestNet` is its own isolated world, so two
//! `TestNet`s may use the same addresses.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::process::{self, HostProcess, ProcessError};
use crate::run::{self, PREFIX, RunError};

#[derive(Debug, thiserror::Error)]
pub enum TestNetError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("`{name}` is not a usable host or switch name (lowercase letters, digits, at most 12)")]
    BadName { name: String },
    #[error("host `{host}` already exists in this test net")]
    Exists { host: String },
    #[error("too many {what} in one test net (at most 255)")]
    TooMany { what: &'static str },
    #[error(transparent)]
    Command(#[from] ProcessError),
    #[error("cannot enter the network namespace of host `{host}`")]
    Enter {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot set {path} in host `{host}`")]
    Sysctl {
        host: String,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("nothing accepted on {addr} in host `{host}` within {timeout:?}")]
    PortTimeout {
        host: String,
        addr: SocketAddr,
        timeout: Duration,
    },
    #[error("`{command}` did not enter host `{host}` (it exited, or took over {ENTER_TIMEOUT:?})")]
    NotEntered { host: String, command: String },
    #[error("no interface `{interface}` in host `{host}`")]
    NoInterface { host: String, interface: String },
}

/// Link layer options of a link or switch port.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkOptions {
    /// Leave IPv6 on. Off by default: no router solicitations, DAD or MLD on test links.
    pub ipv6: bool,
    /// Install permanent neighbour entries on both ends, so no ARP crosses the link: with
    /// `ipv6: false`, the only packets on the link are the ones the test sends.
    pub static_neighbours: bool,
    pub mtu: Option<u32>,
}

/// One end of a link, or a host's port on a switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The host's name in the test (`client`), not its namespace name.
    pub host: String,
    pub interface: String,
    pub ifindex: u32,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub mac: [u8; 6],
}

/// A veth pair between two hosts.
#[derive(Debug, Clone)]
pub struct Link {
    pub a: Endpoint,
    pub b: Endpoint,
}

/// A bridge in a namespace of its own that hosts plug into.
#[derive(Debug, Clone)]
pub struct Switch {
    pub name: String,
    netns: String,
    number: u8,
    ports: u8,
}

/// A test host: a network namespace with `lo` up.
#[derive(Debug, Clone)]
pub struct Host {
    name: String,
    netns: String,
}

/// Everything one test created; dropping it removes all of it.
#[derive(Debug)]
pub struct TestNet {
    prefix: String,
    /// Namespace names, in creation order.
    namespaces: Vec<String>,
    interfaces: HashMap<String, u32>,
    links: u32,
    switches: u32,
}

/// How long a spawned process may take to join its host's namespace.
const ENTER_TIMEOUT: Duration = Duration::from_secs(10);

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

impl TestNet {
    /// A new, empty test net. `tag` makes its names readable (`kt-<run>-<n>-<tag>-<host>`).
    pub fn new(tag: &str) -> Result<TestNet, TestNetError> {
        check_name(tag)?;
        let run = run::run_id()?;
        let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        Ok(TestNet {
            prefix: format!("{PREFIX}{run}-{sequence}-{tag}"),
            namespaces: Vec::new(),
            interfaces: HashMap::new(),
            links: 0,
            switches: 0,
        })
    }

    /// Namespace names of everything this net created.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    pub fn add_host(&mut self, name: &str) -> Result<Host, TestNetError> {
        let netns = self.add_namespace(name)?;
        Ok(Host {
            name: name.to_owned(),
            netns,
        })
    }

    fn add_namespace(&mut self, name: &str) -> Result<String, TestNetError> {
        check_name(name)?;
        let netns = format!("{}-{name}", self.prefix);
        if self.namespaces.contains(&netns) {
            return Err(TestNetError::Exists {
                host: name.to_owned(),
            });
        }
        process::run_checked(Command::new("ip").args(["netns", "add", &netns]))?;
        self.namespaces.push(netns.clone());
        process::run_checked(Command::new("ip").args(["-n", &netns, "link", "set", "lo", "up"]))?;
        Ok(netns)
    }

    fn next_interface(&mut self, netns: &str) -> String {
        let count = self.interfaces.entry(netns.to_owned()).or_insert(0);
        let name = format!("eth{count}");
        *count += 1;
        name
    }

    /// Connects two hosts with a veth pair: `a` gets `198.18.k.1/24`, `b` gets `.2`.
    pub fn connect(
        &mut self,
        a: &Host,
        b: &Host,
        options: LinkOptions,
    ) -> Result<Link, TestNetError> {
        let number =
            u8::try_from(self.links).map_err(|_| TestNetError::TooMany { what: "links" })?;
        self.links += 1;
        let subnet = Ipv4Addr::new(198, 18, number, 0);
        let a_if = self.next_interface(&a.netns);
        let b_if = self.next_interface(&b.netns);
        let a_mac = [0x02, 0x6b, 0x74, 0x00, number, 1];
        let b_mac = [0x02, 0x6b, 0x74, 0x00, number, 2];
        create_veth((&a.netns, &a_if, a_mac), (&b.netns, &b_if, b_mac))?;
        let a_end = configure(a, &a_if, a_mac, host_ip(subnet, 1), options)?;
        let b_end = configure(b, &b_if, b_mac, host_ip(subnet, 2), options)?;
        if options.static_neighbours {
            add_neighbour(a, &a_end, &b_end)?;
            add_neighbour(b, &b_end, &a_end)?;
        }
        Ok(Link { a: a_end, b: b_end })
    }

    /// A switch: a bridge `br0` in a namespace of its own.
    pub fn add_switch(&mut self, name: &str) -> Result<Switch, TestNetError> {
        let number =
            u8::try_from(self.switches).map_err(|_| TestNetError::TooMany { what: "switches" })?;
        self.switches += 1;
        let netns = self.add_namespace(name)?;
        process::run_checked(
            Command::new("ip").args(["-n", &netns, "link", "add", "br0", "type", "bridge"]),
        )?;
        process::run_checked(Command::new("ip").args(["-n", &netns, "link", "set", "br0", "up"]))?;
        Ok(Switch {
            name: name.to_owned(),
            netns,
            number,
            ports: 0,
        })
    }

    /// Plugs a host into a switch; the host's port gets the next address of the switch's
    /// `198.19.k.0/24`.
    pub fn plug(
        &mut self,
        host: &Host,
        switch: &mut Switch,
        options: LinkOptions,
    ) -> Result<Endpoint, TestNetError> {
        let port = switch
            .ports
            .checked_add(1)
            .filter(|port| *port < 255)
            .ok_or(TestNetError::TooMany {
                what: "switch ports",
            })?;
        switch.ports = port;
        let interface = self.next_interface(&host.netns);
        let mac = [0x02, 0x6b, 0x74, 0x01 + switch.number % 0x7f, 0, port];
        let switch_port = format!("p{port}");
        let port_mac = [0x02, 0x6b, 0x74, 0x80 + switch.number % 0x7f, 0, port];
        create_veth(
            (&host.netns, &interface, mac),
            (&switch.netns, &switch_port, port_mac),
        )?;
        process::run_checked(Command::new("ip").args([
            "-n",
            &switch.netns,
            "link",
            "set",
            &switch_port,
            "master",
            "br0",
            "up",
        ]))?;
        let subnet = Ipv4Addr::new(198, 19, switch.number, 0);
        configure(host, &interface, mac, host_ip(subnet, port), options)
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for netns in self.namespaces.iter().rev() {
            if let Err(error) = run::remove_namespace(netns) {
                // The sweeper removes it on the next run; say so rather than panic in drop.
                eprintln!("keel-testhost: {error}");
            }
        }
    }
}

impl Switch {
    /// The switch's own namespace, as a host: where its bridge and port interfaces live.
    pub fn host(&self) -> Host {
        Host {
            name: self.name.clone(),
            netns: self.netns.clone(),
        }
    }

    /// The switch-side interface of `endpoint`'s port (`None`: not plugged into this switch).
    pub fn port_interface(&self, endpoint: &Endpoint) -> Option<String> {
        let ours = endpoint.mac[..4] == [0x02, 0x6b, 0x74, 0x01 + self.number % 0x7f];
        ours.then(|| format!("p{}", endpoint.mac[5]))
    }
}

impl Host {
    /// The host's name in the test.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The network namespace name (`/run/netns/<name>`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// A command that runs `program` inside this host (through `ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns, program]);
        command
    }

    /// Runs `args` inside the host; an error names the command, the host and its stderr.
    pub fn run(&self, args: &[&str]) -> Result<Output, TestNetError> {
        let (program, rest) = args.split_first().ok_or(ProcessError::Empty)?;
        Ok(process::run_checked(self.command(program).args(rest))?)
    }

    /// Starts `args` inside the host; the returned guard kills it when dropped.
    ///
    /// Returns once the process is inside the host's namespace, so that dropping the
    /// `TestNet` right after finds and kills it (`ip netns exec` joins the namespace only after
    /// it starts).
    pub fn spawn(&self, args: &[&str]) -> Result<HostProcess, TestNetError> {
        let (program, rest) = args.split_first().ok_or(ProcessError::Empty)?;
        let mut process = HostProcess::spawn(self.command(program).args(rest))?;
        let deadline = Instant::now() + ENTER_TIMEOUT;
        while !self.holds_process(process.pid()) {
            if !process.is_running() || Instant::now() > deadline {
                return Err(TestNetError::NotEntered {
                    host: self.name.clone(),
                    command: args.join(" "),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(process)
    }

    /// Whether process `pid` runs in this host's network namespace.
    pub fn holds_process(&self, pid: u32) -> bool {
        let namespace = std::fs::metadata(format!("/run/netns/{}", self.netns));
        let process = std::fs::metadata(format!("/proc/{pid}/ns/net"));
        match (namespace, process) {
            (Ok(namespace), Ok(process)) => {
                namespace.dev() == process.dev() && namespace.ino() == process.ino()
            }
            _ => false,
        }
    }

    /// Runs `body` on a thread inside this host's network namespace and returns its result.
    /// Sockets it creates stay in the host; interface names resolve in the host. A panic in
    /// `body` is resumed in the caller.
    pub fn enter<R: Send>(&self, body: impl FnOnce() -> R + Send) -> Result<R, TestNetError> {
        let path = format!("/run/netns/{}", self.netns);
        let namespace = File::open(&path).map_err(|source| self.enter_error(source))?;
        std::thread::scope(|scope| {
            let thread = scope.spawn(|| {
                // SAFETY: setns on a namespace fd we own; it changes only this thread, which
                // ends when `body` returns.
                if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(body())
            });
            match thread.join() {
                Ok(result) => result.map_err(|source| self.enter_error(source)),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    fn enter_error(&self, source: io::Error) -> TestNetError {
        TestNetError::Enter {
            host: self.name.clone(),
            source,
        }
    }

    /// Waits until something in the host accepts TCP connections on `addr`.
    pub fn wait_for_port(&self, addr: SocketAddr, timeout: Duration) -> Result<(), TestNetError> {
        let accepted = self.enter(|| {
            let deadline = Instant::now() + timeout;
            while Instant::now() < deadline {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            false
        })?;
        if accepted {
            Ok(())
        } else {
            Err(TestNetError::PortTimeout {
                host: self.name.clone(),
                addr,
                timeout,
            })
        }
    }

    /// The index of `interface` inside the host.
    pub fn ifindex(&self, interface: &str) -> Result<u32, TestNetError> {
        let name = std::ffi::CString::new(interface).map_err(|_| self.no_interface(interface))?;
        // SAFETY: `name` is a valid C string that outlives the call.
        let index = self.enter(|| unsafe { libc::if_nametoindex(name.as_ptr()) })?;
        if index == 0 {
            Err(self.no_interface(interface))
        } else {
            Ok(index)
        }
    }

    fn no_interface(&self, interface: &str) -> TestNetError {
        TestNetError::NoInterface {
            host: self.name.clone(),
            interface: interface.to_owned(),
        }
    }

    /// Routes `destination` (CIDR, e.g. `10.96.0.0/12`) via `gateway`.
    pub fn add_route(&self, destination: &str, gateway: Ipv4Addr) -> Result<(), TestNetError> {
        process::run_checked(Command::new("ip").args([
            "-n",
            &self.netns,
            "route",
            "add",
            destination,
            "via",
            &gateway.to_string(),
        ]))?;
        Ok(())
    }

    /// Makes the host a router: IPv4 forwarding on.
    pub fn enable_forwarding(&self) -> Result<(), TestNetError> {
        self.sysctl("net/ipv4/ip_forward", "1")
    }

    /// Writes `value` to `/proc/sys/<key>` as seen from inside the host.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), TestNetError> {
        let path = format!("/proc/sys/{key}");
        self.enter(|| std::fs::write(&path, value))?
            .map_err(|source| TestNetError::Sysctl {
                host: self.name.clone(),
                path,
                source,
            })
    }
}

fn check_name(name: &str) -> Result<(), TestNetError> {
    let ok = !name.is_empty()
        && name.len() <= 12
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(TestNetError::BadName {
            name: name.to_owned(),
        })
    }
}

fn host_ip(subnet: Ipv4Addr, host: u8) -> Ipv4Addr {
    let [a, b, c, _] = subnet.octets();
    Ipv4Addr::new(a, b, c, host)
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Creates a veth pair with each end directly inside its namespace: nothing ever appears in
/// the root namespace.
fn create_veth(a: (&str, &str, [u8; 6]), b: (&str, &str, [u8; 6])) -> Result<(), TestNetError> {
    process::run_checked(Command::new("ip").args([
        "link",
        "add",
        "name",
        a.1,
        "address",
        &mac_text(a.2),
        "netns",
        a.0,
        "type",
        "veth",
        "peer",
        "name",
        b.1,
        "address",
        &mac_text(b.2),
        "netns",
        b.0,
    ]))?;
    Ok(())
}

/// Addresses an interface inside its host and brings it up (IPv6 off first, if asked).
fn configure(
    host: &Host,
    interface: &str,
    mac: [u8; 6],
    ip: Ipv4Addr,
    options: LinkOptions,
) -> Result<Endpoint, TestNetError> {
    if !options.ipv6 {
        host.sysctl(&format!("net/ipv6/conf/{interface}/disable_ipv6"), "1")?;
    }
    let ns = host.netns.as_str();
    if let Some(mtu) = options.mtu {
        process::run_checked(Command::new("ip").args([
            "-n",
            ns,
            "link",
            "set",
            interface,
            "mtu",
            &mtu.to_string(),
        ]))?;
    }
    let cidr = format!("{ip}/24");
    process::run_checked(
        Command::new("ip").args(["-n", ns, "addr", "add", &cidr, "dev", interface]),
    )?;
    process::run_checked(Command::new("ip").args(["-n", ns, "link", "set", interface, "up"]))?;
    Ok(Endpoint {
        host: host.name.clone(),
        interface: interface.to_owned(),
        ifindex: host.ifindex(interface)?,
        ip,
        prefix_len: 24,
        mac,
    })
}

fn add_neighbour(host: &Host, local: &Endpoint, remote: &Endpoint) -> Result<(), TestNetError> {
    process::run_checked(Command::new("ip").args([
        "-n",
        &host.netns,
        "neigh",
        "replace",
        &remote.ip.to_string(),
        "lladdr",
        &mac_text(remote.mac),
        "dev",
        &local.interface,
        "nud",
        "permanent",
    ]))?;
    Ok(())
}
