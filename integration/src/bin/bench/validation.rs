//! Manifest validation stays linear: the time to register a pod manifest
//! with 5k, 10k and 20k annotations (20k is near the 1 MiB body limit) (parse, validate, precompute, fsync).

use std::time::Instant;

use integration::{Agent, AgentOptions};
use serde_json::{json, Value};

pub struct Validation {
    /// (annotations, milliseconds)
    pub points: Vec<(usize, f64)>,
}

impl Validation {
    pub fn markdown(&self) -> String {
        let mut s =
            String::from("\nRegistering a pod manifest with many annotations (median of 3):");
        for (n, ms) in &self.points {
            s += &format!(" {n}: {ms:.1} ms;");
        }
        if let (Some(first), Some(last)) = (self.points.first(), self.points.last()) {
            s += &format!(
                " {:.1}x the time for {:.0}x the annotations.",
                last.1 / first.1.max(1e-9),
                last.0 as f64 / first.0 as f64
            );
        }
        s + "\n"
    }

    pub fn json(&self) -> Value {
        json!(self
            .points
            .iter()
            .map(|(n, ms)| json!({"annotations": n, "ms": ms}))
            .collect::<Vec<_>>())
    }
}

pub fn measure() -> Result<Validation, String> {
    let agent = Agent::start(AgentOptions::identity("token"));
    let mut points = Vec::new();
    for (k, n) in [5_000usize, 10_000, 20_000].into_iter().enumerate() {
        let annotations: Vec<Value> = (0..n)
            .map(|i| json!({"name": format!("example.com/a{i}"), "value": "v"}))
            .collect();
        let manifest = json!({
            "acKind": "PodManifest", "acVersion": "0.8.11",
            "apps": [], "annotations": annotations,
        })
        .to_string();
        let mut times = Vec::new();
        for round in 0..3 {
            let uuid = format!("a0000000-a507-4694-aabf-{:012x}", k * 10 + round);
            let token = format!("validation{:022x}", k * 10 + round);
            let start = Instant::now();
            let r = agent.register(&uuid, &token, manifest.as_bytes(), "");
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            if r.status != 200 {
                return Err(format!("{n} annotations: {} {}", r.status, r.text()));
            }
        }
        times.sort_by(|a, b| a.total_cmp(b));
        points.push((n, times[1]));
    }
    Ok(Validation { points })
}
