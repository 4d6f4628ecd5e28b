//! The agent's pod networking as a CNI plugin (`keel-cni`, CNI spec 1.0): what the agent does
//! for its own pods (a routed veth, a /32 from the node's pod CIDR, the link-local gateway; see
//! [`crate::sandbox::network`]), offered to any container runtime that speaks CNI, a stock
//! kubelet with containerd or CRI-O included.
//!
//! The runtime runs the plugin with the operation in `CNI_COMMAND` (`ADD`, `DEL`, `CHECK`,
//! `VERSION`), the container in `CNI_CONTAINERID` / `CNI_NETNS` / `CNI_IFNAME`, and the network
//! configuration as JSON on stdin; the plugin answers with a JSON result on stdout, or with a
//! JSON error (`{cniVersion, code, msg, details}`) on stdout and a non-zero exit status.
//!
//! The network configuration:
//!
//! ```json
//! { "cniVersion": "1.0.0", "name": "keel", "type": "keel-cni",
//!   "podCIDR": "10.244.1.0/24", "dataDir": "/var/lib/cni/networks/keel" }
//! ```
//!
//! `podCIDR` (required) is the node's pod CIDR; `dataDir` (default
//! `/var/lib/cni/networks/<name>`) holds the address allocations, one file per address, as the
//! agent's own IPAM keeps them. An attachment is keyed by container ID and interface name, so
//! `ADD` run twice returns the same address, and `DEL` (idempotent, as the spec requires) frees
//! exactly what `ADD` took.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::sandbox::POD_GATEWAY;
use crate::sandbox::ipam::{Ipam, Ipv4Cidr};
use crate::sandbox::network::{self, NetworkError};

/// The CNI versions this plugin speaks, oldest first. Results are written in the version the
/// configuration asks for.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// Where allocations live when the configuration names no `dataDir` (host-local's default).
const DEFAULT_DATA_ROOT: &str = "/var/lib/cni/networks";

/// The spec's well-known error codes (CNI spec, "Error").
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    /// Plugin-specific (100 and up): the node or the pod is not wired as `ADD` left it.
    pub const NOT_AS_ADDED: u32 = 100;
    /// Plugin-specific: setting up or tearing down the pod's interface failed.
    pub const NETWORK_FAILURE: u32 = 101;
}

/// A CNI error: printed as JSON on stdout, with a non-zero exit status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    fn with_details(mut self, details: impl std::fmt::Display) -> CniError {
        self.details = details.to_string();
        self
    }

    /// The error as the spec's JSON object, in `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut value = serde_json::to_value(self).expect("a CniError serializes");
        value["cniVersion"] = Value::from(cni_version);
        value
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// The operation the runtime asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Add,
    Del,
    Check,
    Version,
}

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub operation: Operation,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
}

impl Invocation {
    /// Reads the invocation from `vars` (the process environment, in the binary). `VERSION`
    /// needs nothing but `CNI_COMMAND`; `DEL` may lack `CNI_NETNS` (the namespace may be gone).
    pub fn from_env(vars: &HashMap<String, String>) -> Result<Invocation, CniError> {
        let get = |name: &str| vars.get(name).map(String::as_str).filter(|v| !v.is_empty());
        let missing = |name: &str| {
            CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("the environment variable {name} is required"),
            )
        };
        let operation = match get("CNI_COMMAND") {
            Some("ADD") => Operation::Add,
            Some("DEL") => Operation::Del,
            Some("CHECK") => Operation::Check,
            Some("VERSION") => Operation::Version,
            Some(other) => {
                return Err(CniError::new(
                    code::INVALID_ENVIRONMENT,
                    format!(
                        "CNI_COMMAND `{other}` is not one of ADD, DEL, CHECK, VERSION \
                         (this plugin implements CNI spec 1.0.0)"
                    ),
                ));
            }
            None => return Err(missing("CNI_COMMAND")),
        };
        if operation == Operation::Version {
            return Ok(Invocation {
                operation,
                container_id: String::new(),
                netns: None,
                ifname: String::new(),
            });
        }
        let container_id = get("CNI_CONTAINERID").ok_or_else(|| missing("CNI_CONTAINERID"))?;
        validate_container_id(container_id)?;
        let ifname = get("CNI_IFNAME").ok_or_else(|| missing("CNI_IFNAME"))?;
        validate_ifname(ifname)?;
        let netns = get("CNI_NETNS").map(PathBuf::from);
        if netns.is_none() && operation != Operation::Del {
            return Err(missing("CNI_NETNS"));
        }
        Ok(Invocation {
            operation,
            container_id: container_id.to_owned(),
            netns,
            ifname: ifname.to_owned(),
        })
    }

    /// The key of this attachment: the IPAM owner and the seed of the node-side veth's name.
    fn key(&self) -> String {
        format!("cni:{}:{}", self.container_id, self.ifname)
    }
}

/// The spec's rule for container IDs and network names: alphanumerics and `_.-`, starting
/// with an alphanumeric.
fn valid_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

const IDENTIFIER_RULE: &str =
    "it must start with a letter or digit and hold only letters, digits, `_`, `.` and `-`";

fn validate_container_id(id: &str) -> Result<(), CniError> {
    if valid_identifier(id) {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_CONTAINERID `{id}` is invalid: {IDENTIFIER_RULE}"),
        ))
    }
}

/// The spec's (and the kernel's) rule for interface names.
fn validate_ifname(name: &str) -> Result<(), CniError> {
    let problem = if name.len() > 15 {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is `.` or `..`")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Some("holds `/`, `:` or whitespace")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_IFNAME `{name}` {problem}"),
        )),
        None => Ok(()),
    }
}

/// The network configuration on stdin, with keel-cni's own fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub pod_cidr: Ipv4Cidr,
    pub data_dir: PathBuf,
    /// The previous plugin's (or this plugin's `ADD`) result, passed on `CHECK` and `DEL`.
    pub prev_result: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNetConf {
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(rename = "podCIDR")]
    pod_cidr: Option<String>,
    data_dir: Option<PathBuf>,
    prev_result: Option<Value>,
}

impl NetConf {
    /// Parses and checks the configuration; an error names the field at fault.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let raw: RawNetConf = serde_json::from_slice(stdin).map_err(|error| {
            CniError::new(
                code::DECODE_FAILURE,
                "cannot decode the network configuration on stdin",
            )
            .with_details(error)
        })?;
        let invalid = |msg: String| CniError::new(code::INVALID_CONFIG, msg);
        let cni_version = raw
            .cni_version
            .ok_or_else(|| invalid("the network configuration has no `cniVersion`".into()))?;
        check_version(&cni_version)?;
        let name = raw
            .name
            .ok_or_else(|| invalid("the network configuration has no `name`".into()))?;
        validate_network_name(&name)?;
        if raw.kind.as_deref().is_none_or(str::is_empty) {
            return Err(invalid("the network configuration has no `type`".into()));
        }
        let pod_cidr = raw.pod_cidr.ok_or_else(|| {
            invalid("the network configuration has no `podCIDR` (the node's pod CIDR)".into())
        })?;
        let pod_cidr = Ipv4Cidr::parse(&pod_cidr)
            .map_err(|error| invalid(format!("`podCIDR` is invalid: {error}")))?;
        let data_dir = match raw.data_dir {
            Some(dir) if dir.is_relative() => {
                return Err(invalid(format!(
                    "`dataDir` must be an absolute path, not `{}`",
                    dir.display()
                )));
            }
            Some(dir) => dir,
            None => Path::new(DEFAULT_DATA_ROOT).join(&name),
        };
        Ok(NetConf {
            cni_version,
            name,
            pod_cidr,
            data_dir,
            prev_result: raw.prev_result,
        })
    }
}

fn validate_network_name(name: &str) -> Result<(), CniError> {
    if valid_identifier(name) {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_CONFIG,
            format!("`name` `{name}` is invalid: {IDENTIFIER_RULE}"),
        ))
    }
}

fn check_version(version: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "`cniVersion` {version} is not supported; this plugin speaks {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ))
    }
}

/// Whether `version` is at least `major.minor`.
fn at_least(version: &str, major: u32, minor: u32) -> bool {
    let mut parts = version
        .split('.')
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let (have_major, have_minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (have_major, have_minor) >= (major, minor)
}

/// Runs one invocation: `stdin` holds the network configuration (for `VERSION`, just
/// `{"cniVersion": ...}`, possibly empty). The answer is what goes to stdout: `None` for a
/// successful `DEL` or `CHECK`, which print nothing.
pub fn run(invocation: &Invocation, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    if invocation.operation == Operation::Version {
        return Ok(Some(version_result()));
    }
    let conf = NetConf::parse(stdin)?;
    let ipam = Ipam::open(conf.pod_cidr, &conf.data_dir).map_err(|error| {
        CniError::new(code::IO_FAILURE, "cannot open the address store").with_details(error)
    })?;
    match invocation.operation {
        Operation::Add => add(invocation, &conf, &ipam).map(Some),
        Operation::Del => del(invocation, &ipam).map(|()| None),
        Operation::Check => check(invocation, &conf, &ipam).map(|()| None),
        Operation::Version => unreachable!("answered above"),
    }
}

fn version_result() -> Value {
    json!({
        "cniVersion": SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.len() - 1],
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

fn network_error(what: &str, error: NetworkError) -> CniError {
    CniError::new(code::NETWORK_FAILURE, what).with_details(error)
}

/// The pod's namespace, which must exist (else error 3: the runtime need not clean up).
fn existing_netns(invocation: &Invocation) -> Result<&Path, CniError> {
    let netns = invocation
        .netns
        .as_deref()
        .expect("ADD and CHECK invocations carry CNI_NETNS");
    if !netns.exists() {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("the network namespace {} does not exist", netns.display()),
        ));
    }
    Ok(netns)
}

fn add(invocation: &Invocation, conf: &NetConf, ipam: &Ipam) -> Result<Value, CniError> {
    let netns = existing_netns(invocation)?;
    let key = invocation.key();
    network::enable_forwarding()
        .map_err(|error| network_error("cannot enable IPv4 forwarding", error))?;
    let addr = ipam.allocate(&key).map_err(|error| {
        CniError::new(code::IO_FAILURE, "cannot allocate an address").with_details(error)
    })?;
    let wired = network::attach_interface(netns, &key, &invocation.ifname, addr).and_then(|()| {
        let host_if = network::host_interface(&key);
        let host_mac = network::link_mac(&host_if)?;
        let pod_mac = network::link_mac_in(netns, &invocation.ifname)?;
        Ok((host_if, host_mac, pod_mac))
    });
    let (host_if, host_mac, pod_mac) = match wired {
        Ok(wired) => wired,
        Err(error) => {
            // Leave nothing behind: the runtime may never call DEL after a failed ADD.
            let _ = network::detach(&key);
            let _ = ipam.release(&key);
            return Err(network_error(
                &format!(
                    "cannot wire {} of container {}",
                    invocation.ifname, invocation.container_id
                ),
                error,
            ));
        }
    };
    Ok(add_result(
        &conf.cni_version,
        (&host_if, host_mac.as_deref()),
        (&invocation.ifname, pod_mac.as_deref(), netns),
        addr,
    ))
}

/// `ADD`'s result in `version`: the node-side and pod-side interfaces, the address on the
/// pod-side one (index 1) with the gateway, and the default route.
fn add_result(
    version: &str,
    (host_if, host_mac): (&str, Option<&str>),
    (pod_if, pod_mac, netns): (&str, Option<&str>, &Path),
    addr: Ipv4Addr,
) -> Value {
    let mut ip = json!({
        "address": format!("{addr}/32"),
        "gateway": POD_GATEWAY.to_string(),
        "interface": 1,
    });
    if !at_least(version, 1, 0) {
        // Before 1.0 each address carried its family.
        ip["version"] = Value::from("4");
    }
    json!({
        "cniVersion": version,
        "interfaces": [
            { "name": host_if, "mac": host_mac.unwrap_or_default() },
            { "name": pod_if, "mac": pod_mac.unwrap_or_default(), "sandbox": netns },
        ],
        "ips": [ip],
        "routes": [{ "dst": "0.0.0.0/0", "gw": POD_GATEWAY.to_string() }],
        "dns": {},
    })
}

fn del(invocation: &Invocation, ipam: &Ipam) -> Result<(), CniError> {
    let key = invocation.key();
    // Deleting the node-side veth takes the pod side and the /32 route with it, whether or
    // not the pod's namespace still exists.
    network::detach(&key).map_err(|error| {
        network_error(
            &format!(
                "cannot remove the interface of container {}",
                invocation.container_id
            ),
            error,
        )
    })?;
    ipam.release(&key).map_err(|error| {
        CniError::new(code::IO_FAILURE, "cannot release the address").with_details(error)
    })
}

fn check(invocation: &Invocation, conf: &NetConf, ipam: &Ipam) -> Result<(), CniError> {
    if !at_least(&conf.cni_version, 0, 4) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "CHECK needs cniVersion 0.4.0 or later, the configuration says {}",
                conf.cni_version
            ),
        ));
    }
    let netns = existing_netns(invocation)?;
    let key = invocation.key();
    let addr = ipam
        .find(&key)
        .map_err(|error| {
            CniError::new(code::IO_FAILURE, "cannot read the address store").with_details(error)
        })?
        .ok_or_else(|| {
            CniError::new(
                code::NOT_AS_ADDED,
                format!(
                    "no address is allocated to {} of container {}",
                    invocation.ifname, invocation.container_id
                ),
            )
        })?;
    if let Some(prev) = &conf.prev_result {
        let listed = prev["ips"].as_array().is_some_and(|ips| {
            ips.iter()
                .any(|ip| ip["address"].as_str() == Some(format!("{addr}/32").as_str()))
        });
        if !listed {
            return Err(CniError::new(
                code::NOT_AS_ADDED,
                format!("prevResult does not list the allocated address {addr}/32"),
            ));
        }
    }
    network::verify(netns, &key, &invocation.ifname, addr).map_err(|error| match error {
        NetworkError::Differs(what) => CniError::new(code::NOT_AS_ADDED, what),
        error => network_error("cannot inspect the pod's network", error),
    })
}

/// The version the answer to `stdin` should be written in: the configuration's, when it can
/// be read, else the newest this plugin speaks.
pub fn answer_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|conf| conf["cniVersion"].as_str().map(str::to_owned))
        .filter(|version| SUPPORTED_VERSIONS.contains(&version.as_str()))
        .unwrap_or_else(|| SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.len() - 1].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const CONF: &str =
        r#"{"cniVersion":"1.0.0","name":"keel","type":"keel-cni","podCIDR":"10.244.1.0/24"}"#;

    #[test]
    fn invocation_reads_the_environment() {
        let add = Invocation::from_env(&env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc-123"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        assert_eq!(add.operation, Operation::Add);
        assert_eq!(add.key(), "cni:abc-123:eth0");
        // DEL without a namespace is valid: the namespace may be gone.
        let del = Invocation::from_env(&env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        assert_eq!(del.netns, None);
        let version = Invocation::from_env(&env(&[("CNI_COMMAND", "VERSION")])).unwrap();
        assert_eq!(version.operation, Operation::Version);
    }

    #[test]
    fn bad_environment_is_error_4_naming_the_variable() {
        let cases = [
            (env(&[]), "CNI_COMMAND"),
            (env(&[("CNI_COMMAND", "GC")]), "`GC`"),
            (
                env(&[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/x"),
                ]),
                "CNI_CONTAINERID",
            ),
            (
                env(&[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "eth0"),
                ]),
                "CNI_NETNS",
            ),
            (
                env(&[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "-bad"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/x"),
                ]),
                "CNI_CONTAINERID `-bad`",
            ),
            (
                env(&[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "much-too-long-name"),
                    ("CNI_NETNS", "/x"),
                ]),
                "longer than 15",
            ),
            (
                env(&[
                    ("CNI_COMMAND", "CHECK"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "et/h0"),
                    ("CNI_NETNS", "/x"),
                ]),
                "CNI_IFNAME",
            ),
        ];
        for (vars, expected) in cases {
            let error = Invocation::from_env(&vars).unwrap_err();
            assert_eq!(error.code, code::INVALID_ENVIRONMENT, "{vars:?}");
            assert!(error.msg.contains(expected), "{vars:?}: {}", error.msg);
        }
    }

    #[test]
    fn configuration_defaults_and_errors_name_the_field() {
        let conf = NetConf::parse(CONF.as_bytes()).unwrap();
        assert_eq!(conf.data_dir, Path::new("/var/lib/cni/networks/keel"));
        assert_eq!(conf.pod_cidr.to_string(), "10.244.1.0/24");

        let cases: [(&str, u32, &str); 7] = [
            ("{not json", code::DECODE_FAILURE, "decode"),
            (
                r#"{"name":"k","type":"t","podCIDR":"10.0.0.0/24"}"#,
                code::INVALID_CONFIG,
                "`cniVersion`",
            ),
            (
                r#"{"cniVersion":"0.2.0","name":"k","type":"t","podCIDR":"10.0.0.0/24"}"#,
                code::INCOMPATIBLE_VERSION,
                "0.2.0",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"k","type":"t"}"#,
                code::INVALID_CONFIG,
                "`podCIDR`",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"k","type":"t","podCIDR":"10.0.0.0/33"}"#,
                code::INVALID_CONFIG,
                "`podCIDR` is invalid",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"bad name","type":"t","podCIDR":"10.0.0.0/24"}"#,
                code::INVALID_CONFIG,
                "`name`",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"k","type":"t","podCIDR":"10.0.0.0/24","dataDir":"rel"}"#,
                code::INVALID_CONFIG,
                "`dataDir`",
            ),
        ];
        for (text, expected_code, expected) in cases {
            let error = NetConf::parse(text.as_bytes()).unwrap_err();
            assert_eq!(error.code, expected_code, "{text}: {error}");
            assert!(
                error.msg.contains(expected) || error.details.contains(expected),
                "{text}: {error}"
            );
        }
    }

    #[test]
    fn results_follow_the_configured_version() {
        let netns = Path::new("/var/run/netns/p");
        let addr = Ipv4Addr::new(10, 244, 1, 7);
        let v1 = add_result(
            "1.0.0",
            ("kpabc", Some("aa:bb")),
            ("eth0", Some("cc:dd"), netns),
            addr,
        );
        assert_eq!(v1["cniVersion"], "1.0.0");
        assert_eq!(v1["ips"][0]["address"], "10.244.1.7/32");
        assert_eq!(v1["ips"][0]["gateway"], "169.254.1.1");
        assert_eq!(v1["ips"][0]["interface"], 1);
        assert!(v1["ips"][0].get("version").is_none());
        assert_eq!(v1["interfaces"][1]["sandbox"], "/var/run/netns/p");
        let old = add_result("0.3.1", ("kpabc", None), ("eth0", None, netns), addr);
        assert_eq!(old["ips"][0]["version"], "4");
    }

    #[test]
    fn version_and_errors_are_spec_json() {
        let invocation = Invocation::from_env(&env(&[("CNI_COMMAND", "VERSION")])).unwrap();
        let answer = run(&invocation, b"").unwrap().unwrap();
        assert_eq!(answer["cniVersion"], "1.0.0");
        assert_eq!(
            answer["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0"])
        );
        let error = CniError::new(code::INVALID_CONFIG, "bad").to_json("0.4.0");
        assert_eq!(
            error,
            json!({"cniVersion": "0.4.0", "code": 7, "msg": "bad"})
        );
        assert_eq!(answer_version(br#"{"cniVersion":"0.3.1"}"#), "0.3.1");
        assert_eq!(answer_version(b"garbage"), "1.0.0");
    }

    #[test]
    fn versions_compare() {
        assert!(at_least("0.4.0", 0, 4));
        assert!(at_least("1.0.0", 0, 4));
        assert!(!at_least("0.3.1", 0, 4));
    }
}
