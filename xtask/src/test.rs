//! `cargo xtask test`: the whole suite, in the order CI runs it.
//!
//! setup -> fmt -> eBPF build (and proof that a second build does nothing) -> clippy (host
//! crates and the eBPF crate) -> unit tests -> integration tests (root) -> the end-to-end
//! suite (`tests/e2e`: `cargo xtask up`, kubectl, `down`) -> leak check.
//! The eBPF build comes before clippy because the agent embeds the object: without it the
//! agent does not compile, so neither clippy nor any test could look at it.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail, ensure};

use crate::command::{self, is_root};
use crate::ebpf::{self, Outcome};
use crate::paths::Paths;
use crate::{leaks, setup};

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Extra arguments for the test binaries of the integration phase (e.g. a test name filter).
    #[arg(last = true)]
    pub filter: Vec<String>,
}

pub fn run(paths: &Paths, args: &TestArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let ci = std::env::var("CI").is_ok_and(|value| value == "true");
    if !is_root() {
        bail!(
            "the integration tests need root (network namespaces, eBPF, runc): run \
             `sudo -E cargo xtask test`{}",
            if ci { " (CI=true)" } else { "" }
        );
    }

    step("setup", || setup::run(paths))?;
    step("sweep leftovers of earlier runs", leaks::sweep)?;
    step("cargo fmt --check", || {
        command::run(cargo(paths).args(["fmt", "--all", "--check"]))
    })?;
    step("build-ebpf", || {
        ebpf::build(paths)?;
        let again = ebpf::build(paths)?;
        ensure!(
            again == Outcome::Unchanged,
            "a second `build-ebpf` with nothing changed rebuilt the object: the build is not \
             incremental"
        );
        Ok(())
    })?;
    step("clippy", || {
        command::run(cargo(paths).args([
            "clippy",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]))?;
        ebpf::clippy(paths)
    })?;
    step("unit tests", || {
        command::run(cargo(paths).args(["test", "--locked", "--lib", "--bins"]))?;
        command::run(cargo(paths).args(["test", "--locked", "--doc"]))
    })?;
    let integration = step("integration tests", || {
        command::run(
            cargo(paths)
                .args(["test", "--locked", "--test", "*", "--"])
                .args(&args.filter),
        )
    });
    // `cargo test` holds cargo's build lock while the tests run, so the suite that runs
    // `cargo xtask up` itself comes after them, as a program of its own.
    let e2e = match (&integration, args.filter.is_empty()) {
        (Ok(()), true) => step("end-to-end suite (tests/e2e)", || {
            command::run(cargo(paths).args(["run", "--locked", "--quiet", "-p", "keel-e2e"]))
        }),
        (Ok(()), false) => {
            eprintln!(
                "\n== end-to-end suite: NOT RUN, a test filter was given (`cargo run -p keel-e2e` runs it)"
            );
            Ok(())
        }
        (Err(_), _) => Ok(()),
    };
    // Whatever the tests did, nothing they created may stay on the host.
    let leaked = step("leak check", leaks::check);
    integration?;
    e2e?;
    leaked?;
    eprintln!("xtask test: all steps passed in {:.0?}", started.elapsed());
    Ok(())
}

/// `cargo` (the one running xtask) in the workspace root.
pub fn cargo(paths: &Paths) -> Command {
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo.current_dir(&paths.root);
    cargo
}

fn step(name: &str, body: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    eprintln!("\n== {name}");
    let started = Instant::now();
    let result = body().with_context(|| format!("step `{name}` failed"));
    eprintln!(
        "== {name}: {} in {:.1?}",
        if result.is_ok() { "ok" } else { "FAILED" },
        started.elapsed()
    );
    result
}
