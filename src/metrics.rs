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

/// One request series: its count and its latencies.
#[derive(Clone, Copy, Default)]
struct Series {
    count: u64,
    /// Requests per latency bucket (not cumulative: summed at render).
    buckets: [u64; BUCKETS.len()],
    sum_ns: u64,
}

#[derive(Default)]
struct Counts {
    /// A short list (at most APIs × endpoints × statuses), searched by the
    /// labels' addresses (no hashing on the request path). The labels are
    /// `'static`: a label that has two addresses gets two entries, which
    /// the scrape adds up.
    requests: Vec<(RequestKey, Series)>,
    /// By family ("identity", "rate-limit", "connection") and reason.
    refusals: HashMap<(&'static str, &'static str), u64>,
}

/// Reasons of each refusal family, exported at 0 from the start.
const REFUSAL_REASONS: [(&str, &[&str]); 2] = [
    ("rate-limit", &["pod", "source"]),
    ("connection", &["per-source", "cap"]),
];

/// The endpoint group of a request's latency: what an operator compares
/// (a metadata read, a signature, an identity document, discovery, the
/// runtime's registrations).
fn group(api: &str, endpoint: &str) -> &'static str {
    if api != "public" {
        return "registration";
    }
    if endpoint.starts_with(".well-known") {
        "discovery"
    } else if endpoint.ends_with("identity/jwt") {
        "identity"
    } else if endpoint.starts_with("pod/hmac") {
        "sign"
    } else {
        "metadata"
    }
}

/// Every group, exported from the start.
const GROUPS: [&str; 5] = ["metadata", "sign", "identity", "discovery", "registration"];

/// What a scrape reports beside the request counters.
#[derive(Default)]
pub struct Gauges {
    /// Registered pods by state (`verified`, `conflict`, ...).
    pub pods: BTreeMap<&'static str, usize>,
    /// Addresses whose new connections the kernel drops (over their
    /// source's share).
    pub sources_filtered: usize,
    pub watch: WatchStats,
    /// The cluster directory's publisher, with `--etcd`.
    pub directory: Option<crate::cluster::stats::Snapshot>,
}

/// Every state `GET /pods` reports, exported from the start.
pub const POD_STATES: [&str; 6] = [
    "verified",
    "conflict",
    "unenforced",
    "netns-gone",
    "netns-unknown",
    "host-network",
];

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
            let i = match c.requests.iter().position(|(k, _)| same_key(k, &key)) {
                Some(i) => {
                    // One step forward per hit: the busy series end up
                    // first, whatever order rare ones came in.
                    c.requests.swap(i, i.saturating_sub(1));
                    i.saturating_sub(1)
                }
                None => {
                    c.requests.push((key, Series::default()));
                    c.requests.len() - 1
                }
            };
            let series = &mut c.requests[i].1;
            series.count += 1;
            if let Some(b) = BUCKETS_NS.iter().position(|b| ns <= *b) {
                series.buckets[b] += 1;
            }
            series.sum_ns = series.sum_ns.saturating_add(ns);
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

    /// The text of a scrape (Prometheus text format 0.0.4).
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut requests: BTreeMap<RequestKey, u64> = BTreeMap::new();
        let mut latency: BTreeMap<&str, Series> =
            GROUPS.iter().map(|g| (*g, Series::default())).collect();
        let mut refusals: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for reason in crate::identity::Refusal::ALL.map(|r| r.label()) {
            refusals.insert(("identity", reason), 0);
        }
        for (family, reasons) in REFUSAL_REASONS {
            for reason in reasons {
                refusals.insert((family, reason), 0);
            }
        }
        self.counts.for_each(|c| {
            for ((api, endpoint, status), series) in &c.requests {
                *requests.entry((api, endpoint, *status)).or_default() += series.count;
                let total = latency.entry(group(api, endpoint)).or_default();
                total.count += series.count;
                total.sum_ns = total.sum_ns.saturating_add(series.sum_ns);
                for (t, n) in total.buckets.iter_mut().zip(series.buckets) {
                    *t += n;
                }
            }
            for (k, n) in &c.refusals {
                *refusals.entry(*k).or_default() += n;
            }
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
        let _ = writeln!(
            out,
            "# HELP rkt_mds_pods Registered pods, by the state GET /pods reports.\n# TYPE rkt_mds_pods gauge"
        );
        for state in POD_STATES {
            let n = gauges.pods.get(state).copied().unwrap_or(0);
            let _ = writeln!(out, "rkt_mds_pods{{state=\"{state}\"}} {n}");
        }
        let watch = &gauges.watch;
        let plain = [
            (
                "rkt_mds_registrations",
                "Registered pods (all states).",
                gauges.pods.values().sum::<usize>() as u64,
                "gauge",
            ),
            (
                "rkt_mds_sources_filtered",
                "Tenants (pods, ports, addresses) over their connection share whose new connections the kernel drops.",
                gauges.sources_filtered as u64,
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
        for (name, help, value, kind) in plain {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP rkt_mds_request_duration_seconds Request latency, by endpoint group.\n# TYPE rkt_mds_request_duration_seconds histogram"
        );
        for (group, series) in &latency {
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(series.buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "rkt_mds_request_duration_seconds_bucket{{group=\"{group}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "rkt_mds_request_duration_seconds_bucket{{group=\"{group}\",le=\"+Inf\"}} {}\nrkt_mds_request_duration_seconds_sum{{group=\"{group}\"}} {}\nrkt_mds_request_duration_seconds_count{{group=\"{group}\"}} {}",
                series.count,
                series.sum_ns as f64 / 1e9,
                series.count
            );
        }
        if let Some(d) = &gauges.directory {
            render_directory(&mut out, d);
        }
        out
    }
}

/// The cluster directory's families (with `--etcd`).
fn render_directory(out: &mut String, d: &crate::cluster::stats::Snapshot) {
    use crate::cluster::stats::BUCKETS as PUBLISH_BUCKETS;
    let plain = [
        (
            "rkt_mds_etcd_connected",
            "1 while the publisher holds its lease and etcd answers, else 0.",
            u64::from(d.connected),
            "gauge",
        ),
        (
            "rkt_mds_etcd_publish_errors_total",
            "Failed etcd calls within a session (each retry counts) and sessions that ended on an etcd failure, a refusal or fencing.",
            d.errors,
            "counter",
        ),
        (
            "rkt_mds_etcd_node_name_refusals_total",
            "Claims of the node name refused: another live lease holds it.",
            d.refusals,
            "counter",
        ),
        (
            "rkt_mds_etcd_last_publish_timestamp_seconds",
            "Unix time of the last fenced transaction etcd applied: a write, or the check every half TTL that the node still holds its name (0: none yet).",
            d.last_success,
            "gauge",
        ),
    ];
    for (name, help, value, kind) in plain {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    let name = "rkt_mds_etcd_publish_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Latency of one fenced etcd transaction of the publisher.\n# TYPE {name} histogram"
    );
    for (bound, n) in PUBLISH_BUCKETS.iter().zip(d.buckets) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
        d.count, d.sum_seconds, d.count
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges() -> Gauges {
        Gauges {
            pods: [("verified", 1)].into_iter().collect(),
            ..Gauges::default()
        }
    }

    #[test]
    fn groups_of_endpoints() {
        assert_eq!(group("public", "pod/uuid"), "metadata");
        assert_eq!(group("public", "apps/{app}/image/manifest"), "metadata");
        assert_eq!(group("public", "pod/hmac/verify"), "sign");
        assert_eq!(group("public", "apps/{app}/identity/jwt"), "identity");
        assert_eq!(group("public", ".well-known/jwks.json"), "discovery");
        assert_eq!(group("registration", "pods"), "registration");
    }

    #[test]
    fn the_directory_families_with_etcd() {
        let stats = crate::cluster::Stats::default();
        stats.published(Duration::from_millis(3));
        stats.refused();
        let text = Metrics::default().render(&Gauges {
            directory: Some(stats.snapshot()),
            ..Gauges::default()
        });
        for line in [
            "rkt_mds_etcd_connected 0",
            "rkt_mds_etcd_node_name_refusals_total 1",
            "rkt_mds_etcd_publish_errors_total 0",
            "rkt_mds_etcd_publish_duration_seconds_bucket{le=\"0.0025\"} 0",
            "rkt_mds_etcd_publish_duration_seconds_bucket{le=\"0.005\"} 1",
            "rkt_mds_etcd_publish_duration_seconds_count 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}:\n{text}");
        }
        assert!(
            !text.contains("rkt_mds_etcd_last_publish_timestamp_seconds 0\n"),
            "{text}"
        );
    }

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
        let text = m.render(&gauges());
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
        // 10 at 50 µs, 10 at 450 µs, all metadata reads.
        let bucket = |le: &str| {
            format!("rkt_mds_request_duration_seconds_bucket{{group=\"metadata\",le=\"{le}\"}} ")
        };
        assert!(text.contains(&format!("{}10", bucket("0.0001"))), "{text}");
        assert!(text.contains(&format!("{}20", bucket("0.0005"))), "{text}");
        assert!(text.contains(&format!("{}20", bucket("+Inf"))), "{text}");
        assert!(
            text.contains("rkt_mds_request_duration_seconds_count{group=\"metadata\"} 20"),
            "{text}"
        );
        // The other groups and every refusal reason are there, at 0.
        assert!(
            text.contains("rkt_mds_request_duration_seconds_count{group=\"identity\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("rkt_mds_identity_refusals_total{reason=\"bridge-not-enforced\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("rkt_mds_connections_refused_total{reason=\"cap\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("rkt_mds_pods{state=\"verified\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("rkt_mds_pods{state=\"conflict\"} 0"),
            "{text}"
        );
        // Without --etcd, no directory families.
        assert!(!text.contains("rkt_mds_etcd_"), "{text}");
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
        let text = m.render(&gauges());
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
