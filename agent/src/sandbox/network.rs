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

/// Wires the pod at `netns_path` to the node with `addr`. Idempotent: run again on a pod that is
/// already wired (an agent restart), it changes nothing.
pub fn attach(netns_path: &Path, pod_uid: &str, addr: Ipv4Addr) -> Result<(), NetworkError> {
    let host_if = host_interface(pod_uid);
    if link_mac(&host_if)?.is_none() {
        ip_batch(
            &format!("create the veth pair {host_if} for pod {pod_uid}"),
            &format!(
                "link add {host_if} type veth peer name eth0 netns {}\n\
                 link set {host_if} up\n",
                netns_path.display()
            ),
        )?;
    }
    let host_mac = link_mac(&host_if)?.ok_or_else(|| NetworkError::Ip {
        what: format!("find the veth {host_if} just made"),
        stderr: "it is gone".to_owned(),
    })?;
    let what = format!("configure eth0 of pod {pod_uid}");
    let script = format!(
        "link set lo up\n\
         addr replace {addr}/32 dev eth0\n\
         link set eth0 up\n\
         neigh replace {POD_GATEWAY} lladdr {} dev eth0 nud permanent\n\
         route replace {POD_GATEWAY} dev eth0 scope link\n\
         route replace default via {POD_GATEWAY} dev eth0\n",
        host_mac.trim()
    );
    netns::run_in(netns_path, || ip_batch(&what, &script))??;
    ip_batch(
        &format!("route {addr} to {host_if}"),
        &format!("route replace {addr}/32 dev {host_if} scope link\n"),
    )
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
    let output = Command::new("ip")
        .args(["-o", "link", "show", "dev", name])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetworkError::Spawn {
            what: what.clone(),
            source,
        })?;
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
