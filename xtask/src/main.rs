//! `cargo xtask`: Keel's build and test driver, in plain Rust.
//!
//! - `up` / `down`: a single-node cluster on this host (`--nodes N`: N nodes, each in a
//!   network namespace of its own), started in the background / stopped and removed.
//! - `setup`: installs what the build and the tests need (Debian packages, nightly `rust-src`,
//!   `bpf-linker`), idempotently, saying what it did.
//! - `build-ebpf`: builds the eBPF object the agent embeds (the one place that drives the eBPF
//!   toolchain).
//! - `test`: the whole suite, as CI runs it.
//! - `gen-protobuf-fields`: the API server's protobuf field table, from k8s-pb's sources.

mod cluster;
mod command;
mod ebpf;
mod leaks;
mod paths;
mod protofields;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Keel's build and test driver")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// A single-node cluster on this host, left running in the background: etcd, the control
    /// plane and an agent; prints `export KUBECONFIG=...` once the node is Ready.
    Up(cluster::UpArgs),
    /// Stop the cluster `up` started and remove what it made (its etcd data stays).
    Down(cluster::StateDirArg),
    /// Install what is missing: Debian packages (as root), nightly rust-src, bpf-linker.
    Setup,
    /// Build the eBPF object (release) into target/bpf/, where the agent embeds it from.
    BuildEbpf,
    /// Run the whole suite: setup, fmt, eBPF build, clippy, unit tests, integration tests.
    Test(test::TestArgs),
    /// Regenerate the API server's protobuf field table from the k8s-pb sources.
    GenProtobufFields,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let paths = paths::Paths::discover()?;
    match cli.task {
        Task::Up(args) => cluster::up(&paths, &args),
        Task::Down(args) => cluster::down(&paths, &args),
        Task::Setup => setup::run(&paths),
        Task::BuildEbpf => {
            setup::run(&paths)?;
            ebpf::build(&paths).map(|_| ())
        }
        Task::Test(args) => test::run(&paths, &args),
        Task::GenProtobufFields => protofields::run(&paths),
    }
}
