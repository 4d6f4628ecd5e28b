//! Embeds the eBPF object that `cargo xtask build-ebpf` produced, so `keel-agent` is one
//! self-contained binary.
//!
//! The object is not built here: `cargo xtask build-ebpf` is the one place that drives the
//! nightly eBPF toolchain. If the object is missing the build stops with a message that says
//! so; if the eBPF sources are newer than the object it warns that the embedded object is stale.

use std::path::{Path, PathBuf};
use std::time::SystemTime;
use std::{env, fs};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir
        .parent()
        .expect("agent/ lives in the workspace root");
    println!("cargo:rerun-if-env-changed=KEEL_BPF_DIR");
    let bpf_dir = env::var_os("KEEL_BPF_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target").join("bpf"));
    let object = bpf_dir.join("keel.o");
    println!("cargo:rerun-if-changed={}", object.display());

    let Ok(object_meta) = fs::metadata(&object) else {
        eprintln!();
        eprintln!(
            "error: the eBPF object {} does not exist.",
            object.display()
        );
        eprintln!("keel-agent embeds it; build it first with:  cargo xtask build-ebpf");
        eprintln!("(or point KEEL_BPF_DIR at a directory holding keel.o)");
        eprintln!();
        std::process::exit(1);
    };

    let sources = workspace.join("ebpf");
    println!("cargo:rerun-if-changed={}", sources.display());
    if let (Ok(built), Some(newest)) = (object_meta.modified(), newest_source(&sources))
        && newest > built
    {
        println!(
            "cargo:warning=the eBPF sources under {} are newer than {}: run `cargo xtask \
             build-ebpf` or the agent embeds stale programs",
            sources.display(),
            object.display()
        );
    }
    println!("cargo:rustc-env=KEEL_EBPF_OBJECT={}", object.display());
}

/// The newest mtime of any `.rs` or `Cargo.toml` under `dir`.
fn newest_source(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).ok()?.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs")
                || path.file_name().is_some_and(|name| name == "Cargo.toml")
            {
                newest = newest.max(meta.modified().ok());
            }
        }
    }
    newest
}
