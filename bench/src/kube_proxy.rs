//! kube-proxy's iptables mode, the incumbent the Service benchmarks compare against: its nat
//! table for a set of ClusterIP Services, loaded with `iptables-restore` as kube-proxy loads it.

use std::io::Write as _;
use std::net::SocketAddrV4;
use std::process::Stdio;

use anyhow::{Context as _, ensure};

/// kube-proxy's iptables-mode nat table for `services` (ClusterIP, TCP), in the order given:
/// `OUTPUT` / `PREROUTING` -> `KUBE-SERVICES`, one `KUBE-SVC-*` chain per Service choosing a
/// `KUBE-SEP-*` endpoint chain with `statistic --mode random` (probability 1/n, 1/(n-1), ...,
/// the last unconditional), each endpoint marking hairpin traffic for masquerade and DNATing,
/// and `KUBE-POSTROUTING` masquerading marked packets. (Chain names are numbered where
/// kube-proxy hashes: the layout and the rule count are what cost.)
pub fn rules(services: &[(SocketAddrV4, Vec<SocketAddrV4>)]) -> String {
    use std::fmt::Write as _;
    let mut chains = String::from(
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n",
    );
    let mut rules = String::from(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    );
    let mut endpoint = 0usize;
    for (index, (frontend, backends)) in services.iter().enumerate() {
        let svc = format!("KUBE-SVC-{index:016X}");
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"bench/svc{index}:http cluster IP\" -m tcp --dport {} -j {svc}",
            frontend.ip(),
            frontend.port()
        );
        for (k, backend) in backends.iter().enumerate() {
            let sep = format!("KUBE-SEP-{endpoint:016X}");
            endpoint += 1;
            let _ = writeln!(chains, ":{sep} - [0:0]");
            let left = backends.len() - k;
            if left > 1 {
                let _ = writeln!(
                    rules,
                    "-A {svc} -m comment --comment \"bench/svc{index}:http -> {backend}\" -m statistic --mode random --probability {:.11} -j {sep}",
                    1.0 / left as f64
                );
            } else {
                let _ = writeln!(
                    rules,
                    "-A {svc} -m comment --comment \"bench/svc{index}:http -> {backend}\" -j {sep}"
                );
            }
            let _ = writeln!(
                rules,
                "-A {sep} -s {}/32 -m comment --comment \"bench/svc{index}:http\" -j KUBE-MARK-MASQ",
                backend.ip()
            );
            let _ = writeln!(
                rules,
                "-A {sep} -p tcp -m comment --comment \"bench/svc{index}:http\" -m tcp -j DNAT --to-destination {backend}"
            );
        }
    }
    chains.push_str(&rules);
    chains.push_str("COMMIT\n");
    chains
}

/// Loads `rules` into `host`'s tables with `iptables-restore` (replacing the nat table).
pub fn restore(host: &keel_testhost::Host, rules: &str) -> anyhow::Result<()> {
    let mut restore = host
        .command("iptables-restore")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run iptables-restore (Debian package iptables)")?;
    restore
        .stdin
        .take()
        .expect("piped")
        .write_all(rules.as_bytes())?;
    let output = restore.wait_with_output()?;
    ensure!(
        output.status.success(),
        "iptables-restore failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}
