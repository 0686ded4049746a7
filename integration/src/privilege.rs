//! Tests that need root run everywhere root is; elsewhere they skip
//! loudly, except under `CI=true` where a missing privilege fails.

use std::io::Write;

/// True when the test may proceed. Prints `SKIPPED (needs root)` and
/// returns false outside CI; panics in CI.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root, and CI=true forbids skipping");
    }
    // Straight to the stderr handle: libtest captures `eprintln!`, and a
    // skip must be seen.
    let _ = writeln!(std::io::stderr(), "SKIPPED (needs root): {test}");
    false
}
