//! The benchmark's report: a markdown table and a JSON document.

use serde_json::{json, Value};

use crate::{
    churn_long::ChurnLong, documents::Documents, isolation::Isolation, median, medians,
    validation::Validation, wrk::Figures, Args,
};

pub struct Row {
    pub scenario: String,
    pub mode: &'static str,
    pub body_bytes: usize,
    pub agent: Figures,
    pub agent_runs: Vec<Figures>,
    pub reference: Option<Figures>,
    pub reference_runs: Vec<Figures>,
}

impl Row {
    pub fn new(
        scenario: String,
        mode: &'static str,
        body_bytes: usize,
        runs: &[Figures],
        reference: Option<(&Vec<Figures>, Figures)>,
    ) -> Self {
        Self {
            scenario,
            mode,
            body_bytes,
            agent: medians(runs),
            agent_runs: runs.to_vec(),
            reference: reference.map(|(_, m)| m),
            reference_runs: reference.map(|(r, _)| r.clone()).unwrap_or_default(),
        }
    }

    /// Agent req/s over the reference's.
    fn ratio(&self) -> Option<f64> {
        self.paired(|agent, reference| agent.rps / reference.rps)
    }

    /// Reference CPU per request over the agent's: the efficiency ratio.
    fn cpu_ratio(&self) -> Option<f64> {
        self.paired(|agent, reference| reference.cpu_us / agent.cpu_us)
    }

    /// The median of each round's ratio. A round's runs are under half a
    /// minute apart; the medians' runs can be minutes apart, and when the
    /// machine changes speed in between, a ratio of the medians pairs a
    /// fast agent run with a slow reference run. (It can change within a
    /// round too: one such round of five leaves the median where it is.)
    /// The ratio of the medians when runs do not pair.
    fn paired(&self, ratio: impl Fn(&Figures, &Figures) -> f64) -> Option<f64> {
        let reference = self.reference.as_ref()?;
        let runs = &self.agent_runs;
        if runs.is_empty() || runs.len() != self.reference_runs.len() {
            return Some(ratio(&self.agent, reference));
        }
        let ratios: Vec<f64> = runs
            .iter()
            .zip(&self.reference_runs)
            .map(|(a, r)| ratio(a, r))
            .collect();
        Some(median(&ratios))
    }
}

pub struct Reaction {
    pub add_ms: Vec<f64>,
    pub del_ms: Vec<f64>,
}

pub struct Scale {
    pub pods: u32,
    pub namespaces: u32,
    pub setup_secs: f64,
    pub registration_per_sec: f64,
    pub rss_hwm_kib: u64,
    pub at_10: Figures,
    pub at_n: Figures,
    pub reload_ms: u64,
}

pub struct Report {
    pub rounds: usize,
    pub seconds: u64,
    pub connections: u32,
    pub version: String,
    pub rows: Vec<Row>,
    pub reaction: Option<Reaction>,
    pub scale: Option<Scale>,
    pub isolation: Option<Isolation>,
    pub documents: Option<Documents>,
    pub validation: Option<Validation>,
    pub churn: Option<ChurnLong>,
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

fn machine() -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    json!({"cores": cores, "cpu": cpu, "kernel": kernel.trim()})
}

/// Versions of hyper and tokio from the lock file both servers are built from.
fn versions(agent: &str) -> Value {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock"))
        .unwrap_or_default();
    let version_of = |name: &str| -> String {
        let needle = format!("name = \"{name}\"\nversion = \"");
        lock.find(&needle)
            .map(|i| {
                lock[i + needle.len()..]
                    .split('"')
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .unwrap_or_default()
    };
    let wrk = std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .unwrap_or_default();
    // The agent's own answer when a section asked it, else the lock file's.
    let agent = match agent {
        "" => version_of("rkt-mds"),
        v => v.to_owned(),
    };
    json!({"rkt-mds": agent, "hyper": version_of("hyper"), "tokio": version_of("tokio"), "wrk": wrk})
}

fn figures(f: &Figures) -> Value {
    json!({"rps": f.rps, "p50_ms": f.p50_ms, "p99_ms": f.p99_ms, "cpu_us_per_request": f.cpu_us})
}

impl Report {
    pub fn new(args: &Args) -> Self {
        Self {
            rounds: args.rounds,
            seconds: args.seconds,
            connections: args.connections,
            version: String::new(),
            rows: Vec::new(),
            reaction: None,
            scale: None,
            isolation: None,
            documents: None,
            validation: None,
            churn: None,
        }
    }

    pub fn markdown(&self) -> String {
        let m = machine();
        let v = versions(&self.version);
        let mut out = format!(
            "Machine: {} cores ({}), kernel {}; rkt-mds {}, hyper {}, tokio {}. Loopback rows: wrk 2 threads, 64 connections (16 for Connection: close) on 127.0.0.1, at least 4 s per run; other rows: from inside a pod over veth, wrk 1 thread, {} connections (4 for Connection: close), {} s per run. {} alternating rounds, medians; a ratio is the median of the rounds' ratios.\n\n",
            m["cores"], m["cpu"].as_str().unwrap_or(""), m["kernel"].as_str().unwrap_or(""),
            v["rkt-mds"].as_str().unwrap_or(""), v["hyper"].as_str().unwrap_or(""), v["tokio"].as_str().unwrap_or(""),
            self.connections, self.seconds, self.rounds
        );
        out += "| scenario | identity | body B | req/s | p50 ms | p99 ms | reference req/s | ratio | CPU µs/req | reference CPU µs/req | CPU ratio |\n";
        out += "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n";
        for r in &self.rows {
            out += &format!(
                "| {} | {} | {} | {:.0} | {:.3} | {:.3} | {} | {} | {:.2} | {} | {} |\n",
                r.scenario,
                r.mode,
                r.body_bytes,
                r.agent.rps,
                r.agent.p50_ms,
                r.agent.p99_ms,
                r.reference.map_or("-".into(), |f| format!("{:.0}", f.rps)),
                r.ratio().map_or("-".into(), |x| format!("{x:.2}")),
                r.agent.cpu_us,
                r.reference
                    .map_or("-".into(), |f| format!("{:.2}", f.cpu_us)),
                r.cpu_ratio().map_or("-".into(), |x| format!("{x:.2}")),
            );
        }
        let pairs: Vec<(String, f64)> = self
            .rows
            .iter()
            .filter(|r| r.mode == "token")
            .filter_map(|t| {
                let n = self
                    .rows
                    .iter()
                    .find(|r| r.scenario == t.scenario && r.mode == "token+netns")?;
                Some((t.scenario.clone(), n.agent.rps / t.agent.rps))
            })
            .collect();
        if !pairs.is_empty() {
            out += "\n| scenario | token+netns / token |\n| --- | ---: |\n";
            for (s, x) in pairs {
                out += &format!("| {s} | {x:.3} |\n");
            }
        }
        if let Some(s) = &self.scale {
            out += &format!(
                "\nScale: {} pods over {} namespaces (setup {:.1} s). Registration {:.0} pods/s (sequential, one connection each, fsync'd). \
                 Peak RSS (VmHWM) {:.1} MiB. GET /pod/uuid keep-alive on one agent, in rounds alternating between 10 pods and all (the others unregistered and registered again), at 10 pods {:.0} req/s ({:.2} CPU µs/req), at {} pods {:.0} req/s ({:.2} CPU µs/req): ratio {:.3} by req/s, {:.3} by CPU. \
                 Reload of {} registrations at start-up: {} ms.\n",
                s.pods, s.namespaces, s.setup_secs, s.registration_per_sec, s.rss_hwm_kib as f64 / 1024.0,
                s.at_10.rps, s.at_10.cpu_us, s.pods, s.at_n.rps, s.at_n.cpu_us, s.at_n.rps / s.at_10.rps,
                s.at_10.cpu_us / s.at_n.cpu_us, s.pods, s.reload_ms
            );
        }
        if let Some(i) = &self.isolation {
            out += &i.markdown();
        }
        if let Some(d) = &self.documents {
            out += &d.markdown();
        }
        if let Some(v) = &self.validation {
            out += &v.markdown();
        }
        if let Some(c) = &self.churn {
            out += &c.markdown();
        }
        if let Some(r) = &self.reaction {
            out += &format!(
                "\nReaction to address changes inside a pod namespace ({} trials, from `ip addr` returning to the agent's inventory): \
                 add median {:.2} ms (max {:.2}), delete median {:.2} ms (max {:.2}).\n",
                r.add_ms.len(), median(&r.add_ms), max(&r.add_ms), median(&r.del_ms), max(&r.del_ms)
            );
        }
        out
    }

    pub fn json(&self) -> Value {
        json!({
            "machine": machine(),
            "versions": versions(&self.version),
            "settings": {"rounds": self.rounds, "seconds": self.seconds, "connections": self.connections},
            "rows": self.rows.iter().map(|r| json!({
                "scenario": r.scenario, "identity": r.mode, "body_bytes": r.body_bytes,
                "agent": figures(&r.agent), "reference": r.reference.as_ref().map(figures),
                "ratio": r.ratio(),
                "cpu_ratio": r.cpu_ratio(),
                "agent_runs": r.agent_runs.iter().map(figures).collect::<Vec<_>>(),
                "reference_runs": r.reference_runs.iter().map(figures).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "scale": self.scale.as_ref().map(|s| json!({
                "pods": s.pods, "namespaces": s.namespaces, "setup_secs": s.setup_secs,
                "registration_per_sec": s.registration_per_sec, "rss_hwm_kib": s.rss_hwm_kib,
                "at_10": figures(&s.at_10), "at_n": figures(&s.at_n), "ratio": s.at_n.rps / s.at_10.rps,
                "reload_ms": s.reload_ms,
            })),
            "isolation": self.isolation.as_ref().map(Isolation::json),
            "documents": self.documents.as_ref().map(Documents::json),
            "validation": self.validation.as_ref().map(Validation::json),
            "churn": self.churn.as_ref().map(ChurnLong::json),
            "reaction": self.reaction.as_ref().map(|r| json!({
                "add_ms": r.add_ms, "del_ms": r.del_ms,
                "add_median_ms": median(&r.add_ms), "del_median_ms": median(&r.del_ms),
            })),
        })
    }
}
