//! The churn test's CI form (about 20 s per identity mode, the modes in
//! parallel): see `integration::churn`. A misattribution fails at once
//! with the seed and the last operations; `CHURN_SEED=N` replays a run.
//! Needs root; runs in CI. The long form is `integration/bench.sh
//! --only churn`.

use std::{io::Write, time::Duration};

use integration::{
    churn::{self, Config},
    privilege::require_root,
};

fn churn(mode: &'static str) {
    let config = Config {
        seed: Config::seed_from_env(),
        mode,
        duration: Duration::from_secs(20),
        requests: usize::MAX,
        lifecycles: usize::MAX,
        slots: 6,
        pool: 4,
    };
    let report = churn::run(&config);
    // Straight to the stderr handle: libtest captures `eprintln!`.
    let _ = writeln!(std::io::stderr(), "{}", report.summary());
    assert!(report.clean(), "{}", report.details());
    assert!(
        report.requests > 100 && report.lifecycles > 5 && report.bridged > 0,
        "{}",
        report.summary()
    );
}

#[test]
fn churn_token() {
    if require_root("churn_token") {
        churn("token");
    }
}

#[test]
fn churn_token_netns() {
    if require_root("churn_token_netns") {
        churn("token+netns");
    }
}

#[test]
fn churn_netns() {
    if require_root("churn_netns") {
        churn("netns");
    }
}
