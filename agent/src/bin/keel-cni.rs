//! `keel-cni`: Keel's pod networking as a CNI plugin (spec 1.0.0). See `keel_agent::cni`.
//!
//! Reads the operation from `CNI_COMMAND` and friends and the network configuration from
//! stdin; writes the result, or the error, as JSON on stdout. Exit status 0 on success, 1 on
//! error, as the spec requires.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::process::ExitCode;

use keel_agent::cni::{self, CniError, Invocation, code};

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let answer = std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|error| CniError {
            code: code::IO_FAILURE,
            msg: "cannot read the network configuration from stdin".to_owned(),
            details: error.to_string(),
        })
        .and_then(|_| {
            let vars: HashMap<String, String> = std::env::vars().collect();
            let invocation = Invocation::from_env(&vars)?;
            cni::run(&invocation, &stdin)
        });
    let (output, status) = match answer {
        Ok(Some(result)) => (Some(result), ExitCode::SUCCESS),
        Ok(None) => (None, ExitCode::SUCCESS),
        Err(error) => (
            Some(error.to_json(&cni::answer_version(&stdin))),
            ExitCode::FAILURE,
        ),
    };
    if let Some(output) = output {
        let mut stdout = std::io::stdout().lock();
        let written = serde_json::to_writer_pretty(&mut stdout, &output)
            .map_err(std::io::Error::from)
            .and_then(|()| stdout.write_all(b"\n"))
            .and_then(|()| stdout.flush());
        if written.is_err() {
            return ExitCode::FAILURE;
        }
    }
    status
}
