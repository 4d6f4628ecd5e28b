//! What the tests may leave on the host, found and removed.
//!
//! Every test names what it creates with the `kt-` prefix (see `keel-testhost`). Before the
//! suite, leftovers of earlier crashed runs are swept; after it, anything still there is a
//! leak the suite reports as a failure (and then removes).

use std::process::Command;

use anyhow::bail;

use crate::command;

const PREFIX: &str = "kt-";

/// Removes what earlier runs left behind.
pub fn sweep() -> anyhow::Result<()> {
    let found = namespaces()?;
    for name in &found {
        remove_namespace(name)?;
    }
    eprintln!("sweep: removed {} leftover network namespaces", found.len());
    Ok(())
}

/// Fails if the suite left anything behind, after removing it.
pub fn check() -> anyhow::Result<()> {
    let found = namespaces()?;
    if found.is_empty() {
        eprintln!("leak check: nothing left behind");
        return Ok(());
    }
    for name in &found {
        remove_namespace(name)?;
    }
    bail!(
        "the tests left network namespaces behind: {}",
        found.join(", ")
    )
}

fn namespaces() -> anyhow::Result<Vec<String>> {
    let listing =
        command::stdout_if_ok(Command::new("ip").args(["netns", "list"]))?.unwrap_or_default();
    Ok(listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(PREFIX))
        .map(str::to_owned)
        .collect())
}

fn remove_namespace(name: &str) -> anyhow::Result<()> {
    command::run(Command::new("ip").args(["netns", "delete", name]))
}
