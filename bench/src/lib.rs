//! Keel's benchmarks. Each binary under `src/bin/` measures one figure of Keel beside a
//! baseline measured in the same run on the same machine, and prints both and their ratio:
//! the machine is shared and noisy, so only ratios carry from one run to another. Nothing
//! here is a test and nothing gates CI on a number.

use std::time::Duration;

/// Rate of `count` operations done in `elapsed`, per second.
pub fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(f64::EPSILON)
}
