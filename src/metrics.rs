//! Counters for `GET /metrics` (Prometheus text format). Every request
//! counts on its own worker thread's shard (no lock or cache line shared
//! between workers); a scrape adds the shards up.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write,
    time::Duration,
};

use netns::WatchStats;

use crate::per_thread::PerThread;

/// Latency histogram bucket bounds, seconds.
const BUCKETS: [f64; 8] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.1, 1.0];

/// Bucket bounds in nanoseconds, for the request path (no float work).
const BUCKETS_NS: [u64; 8] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
];

type RequestKey = (&'static str, &'static str, u16);

#[derive(Default)]
struct Counts {
    /// A short list (at most APIs × endpoints × statuses), searched by the
    /// labels' addresses (no hashing on the request path). The labels are
    /// `'static`: a label that has two addresses gets two entries, which
    /// the scrape adds up.
    requests: Vec<(RequestKey, u64)>,
    /// By family ("identity", "rate-limit", "connection") and reason.
    refusals: HashMap<(&'static str, &'static str), u64>,
    /// Requests per latency bucket (not cumulative: summed at render).
    latency_buckets: [u64; BUCKETS.len()],
    latency_count: u64,
    latency_sum_ns: u64,
}

fn same_key(a: &RequestKey, b: &RequestKey) -> bool {
    std::ptr::eq(a.0, b.0) && std::ptr::eq(a.1, b.1) && a.2 == b.2
}

#[derive(Default)]
pub struct Metrics {
    counts: PerThread<Counts>,
}

impl Metrics {
    pub fn request(
        &self,
        api: &'static str,
        endpoint: &'static str,
        status: u16,
        latency: Duration,
    ) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.counts.with(|c| {
            let key = (api, endpoint, status);
            match c.requests.iter().position(|(k, _)| same_key(k, &key)) {
                Some(i) => {
                    c.requests[i].1 += 1;
                    // One step forward per hit: the busy series end up
                    // first, whatever order rare ones came in.
                    c.requests.swap(i, i.saturating_sub(1));
                }
                None => c.requests.push((key, 1)),
            }
            if let Some(i) = BUCKETS_NS.iter().position(|b| ns <= *b) {
                c.latency_buckets[i] += 1;
            }
            c.latency_count += 1;
            c.latency_sum_ns = c.latency_sum_ns.saturating_add(ns);
        });
    }

    /// A public request refused by the identity policy.
    pub fn refusal(&self, reason: &'static str) {
        self.refused("identity", reason);
    }

    /// A request or connection refused: `family` is `identity`,
    /// `rate-limit` or `connection`.
    pub fn refused(&self, family: &'static str, reason: &'static str) {
        self.counts
            .with(|c| *c.refusals.entry((family, reason)).or_default() += 1);
    }

    /// The text of a scrape. `sources_filtered`: addresses whose new
    /// connections the kernel now drops (over their source's share).
    pub fn render(
        &self,
        registrations: usize,
        sources_filtered: usize,
        watch: WatchStats,
    ) -> String {
        let mut requests: BTreeMap<RequestKey, u64> = BTreeMap::new();
        let mut refusals: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        let mut buckets = [0u64; BUCKETS.len()];
        let (mut count, mut sum_ns) = (0u64, 0u64);
        self.counts.for_each(|c| {
            for (k, n) in &c.requests {
                *requests.entry(*k).or_default() += n;
            }
            for (k, n) in &c.refusals {
                *refusals.entry(*k).or_default() += n;
            }
            for (total, n) in buckets.iter_mut().zip(c.latency_buckets) {
                *total += n;
            }
            count += c.latency_count;
            sum_ns = sum_ns.saturating_add(c.latency_sum_ns);
        });
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP rkt_mds_requests_total HTTP requests answered, by API, endpoint and status."
        );
        let _ = writeln!(out, "# TYPE rkt_mds_requests_total counter");
        for ((api, endpoint, status), n) in &requests {
            let _ = writeln!(
                out,
                "rkt_mds_requests_total{{api=\"{api}\",endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        for (family, name, help) in [
            (
                "identity",
                "rkt_mds_identity_refusals_total",
                "Public requests refused by the identity policy, by reason.",
            ),
            (
                "rate-limit",
                "rkt_mds_rate_limited_total",
                "Public requests refused with 429, by what was limited (pod or source).",
            ),
            (
                "connection",
                "rkt_mds_connections_refused_total",
                "Public connections refused at accept, by reason.",
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for ((f, reason), n) in &refusals {
                if *f == family {
                    let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {n}");
                }
            }
        }
        let gauges = [
            (
                "rkt_mds_registrations",
                "Registered pods.",
                registrations as u64,
                "gauge",
            ),
            (
                "rkt_mds_sources_filtered",
                "Addresses over their source's connection share whose new connections the kernel drops.",
                sources_filtered as u64,
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
                "Netlink dumps, initial ones included.",
                watch.dumps,
                "counter",
            ),
            (
                "rkt_mds_netlink_redumps_total",
                "Netlink re-dumps (refreshes, overruns, interrupted dumps).",
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
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(buckets) {
            cumulative += n;
            let _ = writeln!(
                out,
                "rkt_mds_request_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "rkt_mds_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "rkt_mds_request_duration_seconds_sum {}",
            sum_ns as f64 / 1e9
        );
        let _ = writeln!(out, "rkt_mds_request_duration_seconds_count {count}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_add_up_and_buckets_are_cumulative() {
        let m = std::sync::Arc::new(Metrics::default());
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let m = m.clone();
                s.spawn(move || {
                    for _ in 0..10 {
                        m.request(
                            "public",
                            "pod/uuid",
                            200,
                            Duration::from_micros(50 + t * 400),
                        );
                    }
                    m.refused("rate-limit", "pod");
                });
            }
        });
        let text = m.render(1, 0, WatchStats::default());
        assert!(
            text.contains(
                "rkt_mds_requests_total{api=\"public\",endpoint=\"pod/uuid\",status=\"200\"} 20"
            ),
            "{text}"
        );
        assert!(
            text.contains("rkt_mds_rate_limited_total{reason=\"pod\"} 2"),
            "{text}"
        );
        // 10 at 50 µs, 10 at 450 µs.
        assert!(text.contains("bucket{le=\"0.0001\"} 10"), "{text}");
        assert!(text.contains("bucket{le=\"0.0005\"} 20"), "{text}");
        assert!(text.contains("bucket{le=\"+Inf\"} 20"), "{text}");
        assert!(
            text.contains("rkt_mds_request_duration_seconds_count 20"),
            "{text}"
        );
    }

    #[test]
    fn a_label_at_two_addresses_is_one_series() {
        let m = Metrics::default();
        // The same text at another address (as two crates' copies of one
        // literal could be): counted apart, rendered as one.
        let copy: &'static str = String::from("pod/uuid").leak();
        m.request("public", "pod/uuid", 200, Duration::ZERO);
        m.request("public", copy, 200, Duration::ZERO);
        m.request("public", copy, 404, Duration::ZERO);
        let text = m.render(1, 0, WatchStats::default());
        let series = |status: &str| {
            let prefix = format!(
                "rkt_mds_requests_total{{api=\"public\",endpoint=\"pod/uuid\",status=\"{status}\"}} "
            );
            text.lines()
                .filter(|l| l.starts_with(&prefix))
                .map(|l| l[prefix.len()..].to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(series("200"), ["2"], "{text}");
        assert_eq!(series("404"), ["1"], "{text}");
    }
}
