//! Tests that need root run everywhere root is; elsewhere they skip
//! loudly, except under `CI=true` where a missing privilege fails.

/// True when the test may proceed. Prints `SKIPPED (needs root)` and
/// returns false outside CI; panics in CI.
pub fn require_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root, and CI=true forbids skipping");
    }
    eprintln!("SKIPPED (needs root): {test}");
    false
}
