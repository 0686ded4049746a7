//! The churn test's long form: at least 10,000 requests and 1,000
//! namespace lifecycles per identity mode (see `integration::churn`).

use std::time::Duration;

use integration::churn::{self, Config, Report};
use serde_json::{json, Value};

pub struct ChurnLong {
    pub reports: Vec<Report>,
}

impl ChurnLong {
    pub fn clean(&self) -> bool {
        self.reports.iter().all(Report::clean)
    }

    pub fn markdown(&self) -> String {
        let mut s = String::from(
            "\nChurn, long form (per identity mode; CHURN_SEED replays a run):\n\n| mode | seed | requests | served | refused | namespace lifecycles | bridged (answers to bridge ports) | recycled inodes | restarts | takeovers | races | misattributions | false refusals (in window + outside) | rate | peak RSS MiB | every deleted namespace freed | time s |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |\n",
        );
        for r in &self.reports {
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} + {} | {:.4}% | {:.1} | {} | {:.0} |\n",
                r.mode, r.seed, r.requests, r.served, r.refused, r.lifecycles, r.bridged,
                r.bridged_served, r.recycled_inodes,
                r.restarts, r.takeovers, r.races, r.misattributions.len(),
                r.false_refusals_in_window, r.false_refusals.len(),
                100.0 * r.false_refusal_rate(), r.peak_rss_kib as f64 / 1024.0,
                if r.all_freed { "yes" } else { "NO" }, r.elapsed.as_secs_f64()
            );
        }
        for r in self.reports.iter().filter(|r| !r.clean()) {
            s += &format!("\n```\n{}\n```\n", r.details());
        }
        s
    }

    pub fn json(&self) -> Value {
        json!(self
            .reports
            .iter()
            .map(|r| json!({
                "mode": r.mode, "seed": r.seed, "requests": r.requests, "served": r.served,
                "refused": r.refused, "connect_failures": r.connect_failures,
                "lifecycles": r.lifecycles, "bridged": r.bridged,
                "bridged_served": r.bridged_served, "registrations": r.registrations,
                "recycled_inodes": r.recycled_inodes, "restarts": r.restarts,
                "takeovers": r.takeovers, "races": r.races,
                "misattributions": r.misattributions, "false_refusals_in_window": r.false_refusals_in_window,
                "false_refusals_outside": r.false_refusals, "false_refusal_rate": r.false_refusal_rate(),
                "peak_rss_kib": r.peak_rss_kib, "all_freed": r.all_freed, "secs": r.elapsed.as_secs_f64(),
            }))
            .collect::<Vec<_>>())
    }
}

pub fn measure() -> Result<ChurnLong, String> {
    let seed = Config::seed_from_env();
    let mut reports = Vec::new();
    for (i, mode) in ["token", "token+netns", "netns"].into_iter().enumerate() {
        crate::check_interrupted()?;
        eprintln!("bench: churn, long form, {mode}");
        let report = churn::run(&Config {
            seed: seed.wrapping_add(i as u64),
            mode,
            duration: Duration::from_secs(20 * 60),
            requests: 10_000,
            lifecycles: 1_000,
            slots: 6,
            pool: 4,
        });
        eprintln!("bench: {}", report.summary());
        reports.push(report);
    }
    Ok(ChurnLong { reports })
}
