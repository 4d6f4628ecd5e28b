//! Leader election between two `keel-controlplane scheduler` processes against one API
//! server (started alone, so no scheduler of its own competes): one holds the
//! `kube-system/kube-scheduler` Lease and binds; after it is killed with SIGKILL the other
//! takes the Lease over (once it has gone unrenewed for the lease duration) and binding
//! resumes. A leader stopped with SIGTERM releases the Lease for the next one. The same for
//! two `keel-controlplane controller-manager` processes on `kube-controller-manager`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::etcd::die_with_parent;
use crate::{TestApiServer, add_node, get_json, pod_manifest, wait_bound, wait_for};

/// A scheduler (or controller-manager) process, killed on drop.
struct Scheduler {
    child: Child,
    log: PathBuf,
}

impl Scheduler {
    fn start(server: &TestApiServer, name: &str) -> anyhow::Result<Self> {
        Self::start_component(server, "scheduler", name)
    }

    /// `keel-controlplane <component> --kubeconfig ...`, logging to `<name>.log`.
    fn start_component(
        server: &TestApiServer,
        component: &str,
        name: &str,
    ) -> anyhow::Result<Self> {
        let log = server.data_dir().join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_keel-controlplane"));
        command
            .arg(component)
            .arg(format!("--kubeconfig={}", server.kubeconfig().display()))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        die_with_parent(&mut command);
        Ok(Self {
            child: command.spawn()?,
            log,
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The identity the process competes as (from its log).
    fn identity(&self) -> Option<String> {
        identity_in(&self.log)
    }
}

fn identity_in(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().find_map(|line| {
        let rest = line.split("leader election: ").nth(1)?;
        let (identity, tail) = rest.split_once(' ')?;
        tail.starts_with("waits for lease")
            .then(|| identity.to_owned())
    })
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lease(server: &TestApiServer) -> serde_json::Value {
    lease_named(server, "kube-scheduler")
}

fn lease_named(server: &TestApiServer, name: &str) -> serde_json::Value {
    let output = server.kubectl(&["get", "lease", name, "-n", "kube-system", "-o", "json"]);
    if output.status.success() {
        serde_json::from_slice(&output.stdout).unwrap_or_default()
    } else {
        serde_json::Value::Null
    }
}

#[tokio::test]
async fn one_scheduler_leads_and_the_other_takes_over_when_it_dies() -> anyhow::Result<()> {
    let server = TestApiServer::start_apiserver_only().await?;
    add_node(&server, "n1", "4", &[], "[]");
    let mut schedulers = vec![
        Scheduler::start(&server, "scheduler-a")?,
        Scheduler::start(&server, "scheduler-b")?,
    ];
    let identities: Vec<String> = schedulers
        .iter()
        .map(|scheduler| {
            wait_for(&server, "the schedulers' identities", || {
                scheduler.identity()
            })
        })
        .collect();
    assert_ne!(identities[0], identities[1]);

    let holder = wait_for(&server, "a holder of kube-scheduler", || {
        lease(&server)["spec"]["holderIdentity"]
            .as_str()
            .filter(|holder| !holder.is_empty())
            .map(str::to_owned)
    });
    let leader = identities
        .iter()
        .position(|identity| *identity == holder)
        .unwrap_or_else(|| panic!("holder {holder} is neither of {identities:?}"));
    let follower = 1 - leader;
    let first = lease(&server);
    assert_eq!(first["spec"]["leaseDurationSeconds"], 15);

    // Only the leader binds.
    server.ok_with_input(
        &["apply", "-f", "-"],
        &pod_manifest("before", "{app: x}", "100m", ""),
    );
    assert_eq!(wait_bound(&server, &["before"])["before"], "n1");
    assert!(
        schedulers[leader]
            .log()
            .contains("bound default/before to n1")
    );
    assert!(
        !schedulers[follower].log().contains("bound "),
        "the follower acted:\n{}",
        schedulers[follower].log()
    );

    // SIGKILL the leader: it cannot release; the follower waits out the lease and takes it.
    let transitions = first["spec"]["leaseTransitions"].as_i64().unwrap_or(0);
    schedulers[leader].child.kill()?;
    schedulers[leader].child.wait()?;
    let taken = wait_for(&server, "the follower to take the lease", || {
        let current = lease(&server);
        (current["spec"]["holderIdentity"] == identities[follower].as_str()).then_some(current)
    });
    assert_eq!(
        taken["spec"]["leaseTransitions"].as_i64().unwrap_or(0),
        transitions + 1,
        "{taken}"
    );

    // Binding resumes under the new leader.
    server.ok_with_input(
        &["apply", "-f", "-"],
        &pod_manifest("after", "{app: x}", "100m", ""),
    );
    assert_eq!(wait_bound(&server, &["after"])["after"], "n1");
    assert!(
        schedulers[follower]
            .log()
            .contains("bound default/after to n1")
    );
    let events = get_json(&server, &["get", "events", "-n", "default"]);
    assert!(
        events["items"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|event| event["involvedObject"]["name"] == "after"
                && event["reason"] == "Scheduled"),
        "no Scheduled event for the pod bound after the takeover"
    );

    // SIGTERM the new leader: it releases the Lease on its way out, and a third candidate
    // takes it without waiting for it to expire.
    schedulers.push(Scheduler::start(&server, "scheduler-c")?);
    let third = wait_for(&server, "the third identity", || schedulers[2].identity());
    let pid = i32::try_from(schedulers[follower].child.id())?;
    // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = schedulers[follower].child.wait()?;
    assert!(
        status.success(),
        "the scheduler exited with {status} on SIGTERM"
    );
    assert!(
        schedulers[follower]
            .log()
            .contains("released lease kube-system/kube-scheduler"),
        "{}",
        schedulers[follower].log()
    );
    let released_to = wait_for(&server, "the third scheduler to take the lease", || {
        let current = lease(&server);
        (current["spec"]["holderIdentity"] == third.as_str()).then_some(current)
    });
    assert_eq!(
        released_to["spec"]["leaseTransitions"]
            .as_i64()
            .unwrap_or(0),
        transitions + 2
    );
    server.ok_with_input(
        &["apply", "-f", "-"],
        &pod_manifest("last", "{app: x}", "100m", ""),
    );
    assert_eq!(wait_bound(&server, &["last"])["last"], "n1");
    assert!(schedulers[2].log().contains("bound default/last to n1"));
    schedulers.clear();
    Ok(())
}

#[tokio::test]
async fn one_controller_manager_acts_and_the_other_takes_over_when_it_dies() -> anyhow::Result<()> {
    let server = TestApiServer::start_apiserver_only().await?;
    let managers = [
        Scheduler::start_component(&server, "controller-manager", "controller-manager-a")?,
        Scheduler::start_component(&server, "controller-manager", "controller-manager-b")?,
    ];
    let identities: Vec<String> = managers
        .iter()
        .map(|manager| wait_for(&server, "the managers' identities", || manager.identity()))
        .collect();
    let holder = wait_for(&server, "a holder of kube-controller-manager", || {
        lease_named(&server, "kube-controller-manager")["spec"]["holderIdentity"]
            .as_str()
            .filter(|holder| !holder.is_empty())
            .map(str::to_owned)
    });
    let leader = identities
        .iter()
        .position(|identity| *identity == holder)
        .unwrap_or_else(|| panic!("holder {holder} is neither of {identities:?}"));
    let follower = 1 - leader;
    let [mut a, mut b] = managers;
    let (leading, following) = if leader == 0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };

    // Only the leader acts: the ServiceAccount controller gives a new namespace its `default`.
    server.ok(&["create", "namespace", "first"]);
    wait_for(&server, "the leader to create first/default", || {
        leading
            .log()
            .contains("serviceaccount first/default created")
            .then_some(())
    });
    assert!(
        !following.log().contains("serviceaccount first/default"),
        "the follower acted:\n{}",
        following.log()
    );

    // SIGKILL the leader: the other takes the Lease once it expires, and acts.
    let transitions = lease_named(&server, "kube-controller-manager")["spec"]["leaseTransitions"]
        .as_i64()
        .unwrap_or(0);
    leading.child.kill()?;
    leading.child.wait()?;
    let taken = wait_for(&server, "the follower to take the lease", || {
        let current = lease_named(&server, "kube-controller-manager");
        (current["spec"]["holderIdentity"] == identities[follower].as_str()).then_some(current)
    });
    assert_eq!(
        taken["spec"]["leaseTransitions"].as_i64().unwrap_or(0),
        transitions + 1,
        "{taken}"
    );
    server.ok(&["create", "namespace", "second"]);
    wait_for(&server, "the new leader to create second/default", || {
        following
            .log()
            .contains("serviceaccount second/default created")
            .then_some(())
    });
    Ok(())
}
