//! Where things live: the workspace, the project-local tools, the eBPF build and its objects.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The directories xtask works with, all inside the workspace's `target/`.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The workspace root (the directory holding the top-level `Cargo.toml`).
    pub root: PathBuf,
    /// Project-local tools: `bpf-linker` in `bin/`, the LLVM it links against in `llvm/lib/`.
    pub tools: PathBuf,
    /// Cargo target dir of the nested eBPF build (nightly, `bpfel-unknown-none`).
    pub ebpf_target: PathBuf,
    /// Where the finished eBPF objects go; the agent's `build.rs` reads them from here.
    pub bpf_objects: PathBuf,
}

impl Paths {
    pub fn discover() -> anyhow::Result<Paths> {
        let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let root = manifest_dir
            .parent()
            .context("xtask's manifest dir has no parent")?
            .to_path_buf();
        let target = root.join("target");
        Ok(Paths {
            tools: target.join("tools"),
            ebpf_target: target.join("ebpf"),
            // The agent's build.rs computes the same default from its own manifest dir;
            // KEEL_BPF_DIR overrides it for both.
            bpf_objects: std::env::var_os("KEEL_BPF_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| target.join("bpf")),
            root,
        })
    }

    pub fn bpf_linker(&self) -> PathBuf {
        self.tools.join("bin").join("bpf-linker")
    }
}
