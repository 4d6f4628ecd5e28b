//! `cargo xtask build-ebpf`: the one place that drives the eBPF toolchain.
//!
//! Builds `ebpf/keel-ebpf` with nightly, `-Z build-std=core` and the project-local bpf-linker
//! into its own target dir, then copies the object to `target/bpf/keel.o` (only when its bytes
//! changed, so an unchanged object keeps its mtime and the agent is not rebuilt).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use anyhow::Context as _;

use crate::command;
use crate::paths::Paths;
use crate::setup::NIGHTLY;

const TARGET: &str = "bpfel-unknown-none";
const PACKAGE: &str = "keel-ebpf";
/// The `[[bin]]` name of the eBPF crate: the ELF file cargo writes.
const OBJECT: &str = "keel";

/// Whether a build changed the object the agent embeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Built,
    Unchanged,
}

pub fn build(paths: &Paths) -> anyhow::Result<Outcome> {
    let elf = paths.ebpf_target.join(TARGET).join("release").join(OBJECT);
    let before = modified(&elf);
    command::run(nightly_cargo(paths, "build")?.arg("--release"))?;
    let rebuilt = modified(&elf) != before;

    let object = paths.bpf_objects.join(format!("{OBJECT}.o"));
    let bytes = fs::read(&elf).with_context(|| format!("cannot read {}", elf.display()))?;
    // Rewritten whenever cargo rebuilt it, even to the same bytes, so that the object is never
    // older than the sources it came from (the agent's build.rs warns about stale objects).
    let copied = if !rebuilt && fs::read(&object).ok().as_deref() == Some(bytes.as_slice()) {
        false
    } else {
        fs::create_dir_all(&paths.bpf_objects)
            .with_context(|| format!("cannot create {}", paths.bpf_objects.display()))?;
        fs::write(&object, &bytes).with_context(|| format!("cannot write {}", object.display()))?;
        true
    };
    let outcome = if rebuilt || copied {
        Outcome::Built
    } else {
        Outcome::Unchanged
    };
    let said = match outcome {
        Outcome::Built => "built",
        Outcome::Unchanged => "unchanged, nothing to do",
    };
    eprintln!("build-ebpf: {} ({said})", object.display());
    Ok(outcome)
}

/// Clippy for the eBPF crate, on its real target.
pub fn clippy(paths: &Paths) -> anyhow::Result<()> {
    command::run(nightly_cargo(paths, "clippy")?.args(["--release", "--", "-D", "warnings"]))
}

fn nightly_cargo(paths: &Paths, subcommand: &str) -> anyhow::Result<Command> {
    let mut cargo = Command::new("rustup");
    cargo
        .args(["run", NIGHTLY, "cargo", subcommand])
        .args([
            "--package",
            PACKAGE,
            "--target",
            TARGET,
            "-Z",
            "build-std=core",
        ])
        .arg("--target-dir")
        .arg(&paths.ebpf_target)
        .current_dir(&paths.root);
    clear_outer_cargo_env(&mut cargo);
    let tools_bin = paths.tools.join("bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(std::iter::once(tools_bin).chain(std::env::split_paths(&path)))
        .context("a PATH entry contains ':'")?;
    // BTF in the object lets the loader relocate against the running kernel's types.
    cargo.env("PATH", path).env(
        "CARGO_ENCODED_RUSTFLAGS",
        "-Cdebuginfo=2\x1f-Clink-arg=--btf",
    );
    Ok(cargo)
}

/// Keeps the toolchain and flags of the `cargo xtask` invocation out of a nested cargo.
pub fn clear_outer_cargo_env(cargo: &mut Command) {
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTDOC",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTUP_TOOLCHAIN",
    ] {
        cargo.env_remove(var);
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    fs::metadata(path).and_then(|meta| meta.modified()).ok()
}
