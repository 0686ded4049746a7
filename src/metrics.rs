//! Counters for `GET /metrics` (Prometheus text format).

use std::{collections::BTreeMap, fmt::Write, sync::Mutex, time::Duration};

use netns::WatchStats;

/// Latency histogram bucket bounds, seconds.
const BUCKETS: [f64; 8] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1, 1.0];

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(&'static str, &'static str, u16), u64>,
    refusals: BTreeMap<&'static str, u64>,
    latency_buckets: [u64; BUCKETS.len()],
    latency_count: u64,
    latency_sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    pub fn request(
        &self,
        api: &'static str,
        endpoint: &'static str,
        status: u16,
        latency: Duration,
    ) {
        let mut m = self.lock();
        *m.requests.entry((api, endpoint, status)).or_default() += 1;
        let secs = latency.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                m.latency_buckets[i] += 1;
            }
        }
        m.latency_count += 1;
        m.latency_sum += secs;
    }

    pub fn refusal(&self, reason: &'static str) {
        *self.lock().refusals.entry(reason).or_default() += 1;
    }

    pub fn render(&self, registrations: usize, watch: WatchStats) -> String {
        let m = self.lock();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP rkt_mds_requests_total HTTP requests answered, by API, endpoint and status."
        );
        let _ = writeln!(out, "# TYPE rkt_mds_requests_total counter");
        for ((api, endpoint, status), n) in &m.requests {
            let _ = writeln!(
                out,
                "rkt_mds_requests_total{{api=\"{api}\",endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(out, "# HELP rkt_mds_identity_refusals_total Public requests refused by the identity policy, by reason.");
        let _ = writeln!(out, "# TYPE rkt_mds_identity_refusals_total counter");
        for (reason, n) in &m.refusals {
            let _ = writeln!(
                out,
                "rkt_mds_identity_refusals_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let gauges = [
            (
                "rkt_mds_registrations",
                "Registered pods.",
                registrations as u64,
                "gauge",
            ),
            (
                "rkt_mds_watched_namespaces",
                "Network namespaces watched.",
                watch.watched as u64,
                "gauge",
            ),
            (
                "rkt_mds_netlink_dumps_total",
                "Address dumps, initial ones included.",
                watch.dumps,
                "counter",
            ),
            (
                "rkt_mds_netlink_redumps_total",
                "Address re-dumps (refreshes, overruns).",
                watch.redumps,
                "counter",
            ),
            (
                "rkt_mds_netlink_overruns_total",
                "Netlink receive overruns (ENOBUFS).",
                watch.overruns,
                "counter",
            ),
        ];
        for (name, help, value, kind) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP rkt_mds_request_duration_seconds Request latency."
        );
        let _ = writeln!(out, "# TYPE rkt_mds_request_duration_seconds histogram");
        for (bound, n) in BUCKETS.iter().zip(m.latency_buckets) {
            let _ = writeln!(
                out,
                "rkt_mds_request_duration_seconds_bucket{{le=\"{bound}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "rkt_mds_request_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            m.latency_count
        );
        let _ = writeln!(
            out,
            "rkt_mds_request_duration_seconds_sum {}",
            m.latency_sum
        );
        let _ = writeln!(
            out,
            "rkt_mds_request_duration_seconds_count {}",
            m.latency_count
        );
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}
