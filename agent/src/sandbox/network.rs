//! A pod's network: a veth pair between the agent's network namespace ("the node") and the
//! pod's, the pod's address as a /32 on its `eth0`, a /32 route to it on the node, and in the
//! pod a default route through a link-local gateway (`169.254.1.1`) that a permanent neighbour
//! entry resolves to the node-side veth. Routed, no bridge: each pod has its own node-side
//! interface (`kp<hash>`), where the eBPF dataplane hooks its per-pod programs.

use std::io::{self, Write as _};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::sys::netns::{self, NetnsError};

/// The pod's default gateway. Never configured on an interface: the pod resolves it to the
/// node-side veth's MAC through a static neighbour entry.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("cannot run `ip` to {what}")]
    Spawn {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("`ip` failed to {what}: {stderr}")]
    Ip { what: String, stderr: String },
    #[error("{0}")]
    Differs(String),
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The node-side interface name for a pod: `kp` and 11 hex digits of a hash of its UID (13
/// characters, within the kernel's 15).
pub fn host_interface(pod_uid: &str) -> String {
    // FNV-1a: stable across runs and builds (std's hasher is not).
    let hash = pod_uid
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("kp{:011x}", hash & 0xfff_ffff_ffff)
}

/// The node-side interfaces of pods ([`host_interface`]'s `kp` names) in the calling
/// thread's network namespace: (name, ifindex), from `if_nameindex` (netlink, so right in
/// any namespace, whatever `/sys` shows).
pub fn host_interfaces() -> io::Result<Vec<(String, u32)>> {
    // SAFETY: no arguments; the result is freed below and not used after.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut found = Vec::new();
    let mut entry = list;
    // SAFETY: `if_nameindex` returns an array ended by an entry with index 0 and a null
    // name; every name before it is a NUL-terminated string the array owns.
    unsafe {
        while (*entry).if_index != 0 && !(*entry).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*entry).if_name).to_string_lossy();
            if name.starts_with("kp") {
                found.push((name.into_owned(), (*entry).if_index));
            }
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    Ok(found)
}

/// Wires the pod at `netns_path` to the node with `addr` on its `eth0`. Idempotent: run again
/// on a pod that is already wired (an agent restart), it changes nothing.
pub fn attach(netns_path: &Path, pod_uid: &str, addr: Ipv4Addr) -> Result<(), NetworkError> {
    attach_interface(netns_path, pod_uid, POD_INTERFACE, addr)
}

/// The pod's interface when the agent wires it (CNI callers name their own).
pub const POD_INTERFACE: &str = "eth0";

/// [`attach`] with the pod-side interface named `pod_if`; `key` names the attachment (the
/// node-side veth is `host_interface(key)`).
pub fn attach_interface(
    netns_path: &Path,
    key: &str,
    pod_if: &str,
    addr: Ipv4Addr,
) -> Result<(), NetworkError> {
    let host_if = host_interface(key);
    if link_mac(&host_if)?.is_none() {
        ip_batch(
            &format!("create the veth pair {host_if} for {key}"),
            &format!(
                "link add {host_if} type veth peer name {pod_if} netns {}\n\
                 link set {host_if} up\n",
                netns_path.display()
            ),
        )?;
    }
    let host_mac = link_mac(&host_if)?.ok_or_else(|| NetworkError::Ip {
        what: format!("find the veth {host_if} just made"),
        stderr: "it is gone".to_owned(),
    })?;
    let what = format!("configure {pod_if} of {key}");
    let script = format!(
        "link set lo up\n\
         addr replace {addr}/32 dev {pod_if}\n\
         link set {pod_if} up\n\
         neigh replace {POD_GATEWAY} lladdr {} dev {pod_if} nud permanent\n\
         route replace {POD_GATEWAY} dev {pod_if} scope link\n\
         route replace default via {POD_GATEWAY} dev {pod_if}\n",
        host_mac.trim()
    );
    netns::run_in(netns_path, || ip_batch(&what, &script))??;
    ip_batch(
        &format!("route {addr} to {host_if}"),
        &format!("route replace {addr}/32 dev {host_if} scope link\n"),
    )
}

/// Checks that what [`attach_interface`] made is still in place: the node-side veth and its
/// /32 route, and in the pod `pod_if` up with `addr`, the gateway's neighbour entry and the
/// default route. `Err(NetworkError::Differs)` says what is missing.
pub fn verify(
    netns_path: &Path,
    key: &str,
    pod_if: &str,
    addr: Ipv4Addr,
) -> Result<(), NetworkError> {
    let host_if = host_interface(key);
    let differs = |what: String| Err(NetworkError::Differs(what));
    if link_mac(&host_if)?.is_none() {
        return differs(format!("the node-side interface {host_if} is missing"));
    }
    let routes = ip_json(&["-4", "route", "show", "exact", &format!("{addr}/32")])?;
    if !routes
        .iter()
        .any(|route| route["dev"].as_str() == Some(host_if.as_str()))
    {
        return differs(format!("the node has no route to {addr} through {host_if}"));
    }
    let pod_if = pod_if.to_owned();
    netns::run_in(netns_path, move || -> Result<(), NetworkError> {
        let Some(link) = ip_json(&["-4", "addr", "show", "dev", &pod_if])
            .ok()
            .and_then(|links| links.into_iter().next())
        else {
            return differs(format!("the pod has no interface {pod_if}"));
        };
        if !link["flags"]
            .as_array()
            .is_some_and(|flags| flags.iter().any(|flag| flag == "UP"))
        {
            return differs(format!("{pod_if} in the pod is down"));
        }
        let has_addr = link["addr_info"].as_array().is_some_and(|infos| {
            infos.iter().any(|info| {
                info["local"].as_str() == Some(addr.to_string().as_str())
                    && info["prefixlen"].as_u64() == Some(32)
            })
        });
        if !has_addr {
            return differs(format!("{pod_if} in the pod does not hold {addr}/32"));
        }
        let defaults = ip_json(&["-4", "route", "show", "default"])?;
        let gateway = POD_GATEWAY.to_string();
        if !defaults.iter().any(|route| {
            route["gateway"].as_str() == Some(gateway.as_str())
                && route["dev"].as_str() == Some(pod_if.as_str())
        }) {
            return differs(format!(
                "the pod's default route is not via {POD_GATEWAY} on {pod_if}"
            ));
        }
        let neighbours = ip_json(&["-4", "neigh", "show", &gateway, "dev", &pod_if])?;
        if !neighbours.iter().any(|entry| {
            entry["state"]
                .as_array()
                .is_some_and(|states| states.iter().any(|state| state == "PERMANENT"))
        }) {
            return differs(format!(
                "the pod has no permanent neighbour entry for {POD_GATEWAY} on {pod_if}"
            ));
        }
        Ok(())
    })?
}

/// The MAC address of `name` inside the namespace at `netns_path`.
pub fn link_mac_in(netns_path: &Path, name: &str) -> Result<Option<String>, NetworkError> {
    let name = name.to_owned();
    netns::run_in(netns_path, move || link_mac(&name))?
}

/// `ip -j <args>` in the calling thread's namespace, parsed: a list of objects.
fn ip_json(args: &[&str]) -> Result<Vec<serde_json::Value>, NetworkError> {
    let what = format!("run `ip -j {}`", args.join(" "));
    let output = ip_output(&what, &[&["-j"], args].concat())?;
    if !output.status.success() {
        return Err(NetworkError::Ip {
            what,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    // `ip -j` prints nothing at all for an empty result on some versions.
    if output.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&output.stdout).map_err(|error| NetworkError::Ip {
        what,
        stderr: format!("unreadable JSON: {error}"),
    })
}

/// Runs `ip <args>` in the calling thread's namespace; its output, whatever its status.
fn ip_output(what: &str, args: &[&str]) -> Result<std::process::Output, NetworkError> {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetworkError::Spawn {
            what: what.to_owned(),
            source,
        })
}

/// Removes the pod's veth pair (and with it the route). Idempotent.
pub fn detach(pod_uid: &str) -> Result<(), NetworkError> {
    let host_if = host_interface(pod_uid);
    if link_mac(&host_if)?.is_some() {
        ip_batch(
            &format!("delete the veth pair {host_if}"),
            &format!("link del {host_if}\n"),
        )?;
    }
    Ok(())
}

/// The MAC address of interface `name` in the calling thread's network namespace; `None` when
/// there is no such interface. (Not through `/sys/class/net`: sysfs shows the namespace it was
/// mounted in, which need not be the agent's.)
pub fn link_mac(name: &str) -> Result<Option<String>, NetworkError> {
    let what = format!("look up interface {name}");
    let output = ip_output(&what, &["-o", "link", "show", "dev", name])?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("does not exist") {
            return Ok(None);
        }
        return Err(NetworkError::Ip {
            what,
            stderr: stderr.trim().to_owned(),
        });
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text
        .split_whitespace()
        .skip_while(|word| *word != "link/ether")
        .nth(1)
        .map(str::to_owned))
}

/// Turns on IPv4 forwarding in the agent's namespace: pods on this node reach each other
/// through it.
pub fn enable_forwarding() -> Result<(), NetworkError> {
    let path = Path::new("/proc/sys/net/ipv4/ip_forward");
    if std::fs::read_to_string(path).is_ok_and(|value| value.trim() == "1") {
        return Ok(());
    }
    std::fs::write(path, "1").map_err(|source| NetworkError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Runs `ip -batch -` with `script` in the calling thread's network namespace.
pub(super) fn ip_batch(what: &str, script: &str) -> Result<(), NetworkError> {
    let spawn = |source| NetworkError::Spawn {
        what: what.to_owned(),
        source,
    };
    let mut child = Command::new("ip")
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(script.as_bytes())
        .map_err(spawn)?;
    let output = child.wait_with_output().map_err(spawn)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NetworkError::Ip {
            what: what.to_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_interface_names_fit_and_are_stable() {
        let name = host_interface("6f1c1f2e-5b8a-4d7e-9b1e-1c2d3e4f5a6b");
        assert_eq!(name.len(), 13);
        assert!(name.starts_with("kp"));
        assert_eq!(name, host_interface("6f1c1f2e-5b8a-4d7e-9b1e-1c2d3e4f5a6b"));
        assert_ne!(name, host_interface("6f1c1f2e-5b8a-4d7e-9b1e-1c2d3e4f5a6c"));
    }
}
