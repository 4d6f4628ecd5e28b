//! `cargo xtask setup`: installs what is missing and says what it did. Safe to run any time.

use std::fs;
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::command::{self, is_root};
use crate::paths::Paths;

/// Debian packages the build, the tests and a local cluster need.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "busybox-static",
    "curl",
    "docker-registry",
    "etcd-client",
    "etcd-server",
    // Turns checksum offload off on test hosts whose frames an XDP program translates.
    "ethtool",
    "iperf3",
    "iproute2",
    "iputils-ping",
    // The well-known .proto files (google/protobuf/*.proto) that etcd-client's build imports.
    "libprotobuf-dev",
    "protobuf-compiler",
    "runc",
    "skopeo",
];

/// The toolchain that builds the eBPF programs (`-Z build-std` needs nightly).
pub const NIGHTLY: &str = "nightly";

/// The bpf-linker release that links against the nightly toolchain's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";

pub fn run(paths: &Paths) -> anyhow::Result<()> {
    debian_packages()?;
    rust_src()?;
    bpf_linker(paths)?;
    Ok(())
}

fn debian_packages() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for package in DEBIAN_PACKAGES {
        let status = command::stdout_if_ok(Command::new("dpkg-query").args([
            "-W",
            "-f=${Status}",
            package,
        ]))?;
        if status.as_deref() != Some("install ok installed") {
            missing.push(*package);
        }
    }
    if missing.is_empty() {
        eprintln!(
            "setup: Debian packages: all {} present",
            DEBIAN_PACKAGES.len()
        );
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {list}; run `sudo apt-get install {list}` or run \
             `cargo xtask setup` as root",
            list = missing.join(" ")
        );
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    command::run(Command::new("apt-get").args(["update", "-q"]))?;
    command::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    eprintln!("setup: installed {}", missing.join(" "));
    Ok(())
}

fn rust_src() -> anyhow::Result<()> {
    let toolchains = command::stdout_if_ok(Command::new("rustup").args(["toolchain", "list"]))?
        .context("`rustup toolchain list` failed: is rustup installed?")?;
    if !toolchains.lines().any(|line| line.starts_with("nightly-")) {
        bail!(
            "the `{NIGHTLY}` Rust toolchain is missing; the eBPF programs need it \
             (`rustup toolchain install {NIGHTLY} --component rust-src`)"
        );
    }
    let installed = command::stdout_if_ok(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))?
    .unwrap_or_default();
    if installed.lines().any(|line| line.trim() == "rust-src") {
        eprintln!("setup: rust-src for {NIGHTLY}: present");
        return Ok(());
    }
    eprintln!("setup: installing rust-src for {NIGHTLY}");
    command::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        NIGHTLY,
    ]))
}

fn bpf_linker(paths: &Paths) -> anyhow::Result<()> {
    let linker = paths.bpf_linker();
    let wanted = format!("bpf-linker {BPF_LINKER_VERSION}");
    // Running it also proves that the LLVM it was linked against is still where it expects.
    let version = command::stdout_if_ok(Command::new(&linker).arg("--version")).unwrap_or(None);
    if version.as_deref().map(str::trim) == Some(wanted.as_str()) {
        eprintln!("setup: {wanted}: present in {}", paths.tools.display());
        return Ok(());
    }
    eprintln!("setup: building {wanted} into {}", paths.tools.display());

    // bpf-linker links against LLVM; Debian 12 has no LLVM 22, the nightly toolchain ships it.
    let sysroot = command::stdout_if_ok(
        Command::new("rustup").args(["run", NIGHTLY, "rustc", "--print", "sysroot"]),
    )?
    .context("cannot ask the nightly toolchain for its sysroot")?;
    let sysroot_lib = std::path::Path::new(sysroot.trim()).join("lib");
    let llvm = fs::read_dir(&sysroot_lib)
        .with_context(|| format!("cannot read {}", sysroot_lib.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", sysroot_lib.display()))?;
    let llvm_prefix = paths.tools.join("llvm");
    let llvm_lib = llvm_prefix.join("lib");
    fs::create_dir_all(&llvm_lib)
        .with_context(|| format!("cannot create {}", llvm_lib.display()))?;
    // `libLLVM.so` is what bpf-linker's build links against; the binary then asks for the
    // library by its versioned soname (the file's own name), which its rpath finds here too.
    let soname = llvm.file_name().context("libLLVM path has no file name")?;
    for name in [std::ffi::OsStr::new("libLLVM.so"), soname] {
        let link = llvm_lib.join(name);
        if fs::symlink_metadata(&link).is_ok() {
            fs::remove_file(&link).with_context(|| format!("cannot replace {}", link.display()))?;
        }
        std::os::unix::fs::symlink(&llvm, &link)
            .with_context(|| format!("cannot link {} to {}", link.display(), llvm.display()))?;
    }

    let mut install = Command::new("cargo");
    install
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--force",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args([
            "--no-default-features",
            "--features",
            BPF_LINKER_LLVM_FEATURE,
        ])
        .arg("--root")
        .arg(&paths.tools)
        .env("LLVM_PREFIX", &llvm_prefix);
    crate::ebpf::clear_outer_cargo_env(&mut install);
    command::run(&mut install)?;
    eprintln!("setup: built {wanted}");
    Ok(())
}
