//! Identity documents: tokens and X509-SVIDs per second from one pod, and
//! the CPU cost of each against a `/pod/uuid` answer of the same agent;
//! SVIDs through the SPIFFE Workload API (rust-spiffe's client).

use std::time::{Duration, Instant};

use integration::{AgentOptions, PodNet};
use serde_json::{json, Value};

use crate::{check_interrupted, medians, register_example, wrk, Args, TOKEN, UUID};

pub struct Documents {
    pub jwt: wrk::Figures,
    pub uuid: wrk::Figures,
    /// `POST .../identity/x509` with a P-256 CSR.
    pub x509: wrk::Figures,
    pub workload: Workload,
}

/// `FetchX509SVID` from one client, one call after another (each the first
/// message of a stream: an SVID and a fresh key per identity).
pub struct Workload {
    pub calls: u64,
    pub svids_per_call: usize,
    pub svids_per_s: f64,
    pub cpu_us_per_svid: f64,
}

impl Documents {
    pub fn markdown(&self) -> String {
        let uuid = self.uuid.cpu_us.max(1e-9);
        format!(
            "\nIdentity documents from one pod (keep-alive, over veth, rate limit with headroom): {:.0} tokens/s at {:.1} CPU µs each, against {:.0} req/s at {:.1} CPU µs for GET /pod/uuid: a token costs {:.1}x (an ECDSA P-256 signature and a JSON body). X509-SVIDs for a P-256 CSR (POST .../identity/x509): {:.0}/s at {:.1} CPU µs each ({:.1}x /pod/uuid: the CSR's signature checked, a certificate signed). Through the Workload API (rust-spiffe's FetchX509SVID, one call after another, {} SVIDs per call, each with a key the agent makes): {:.0} SVIDs/s at {:.1} CPU µs each ({} calls).\n",
            self.jwt.rps, self.jwt.cpu_us, self.uuid.rps, self.uuid.cpu_us,
            self.jwt.cpu_us / uuid,
            self.x509.rps, self.x509.cpu_us, self.x509.cpu_us / uuid,
            self.workload.svids_per_call, self.workload.svids_per_s, self.workload.cpu_us_per_svid,
            self.workload.calls,
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "jwt": {"rps": self.jwt.rps, "cpu_us": self.jwt.cpu_us, "p99_ms": self.jwt.p99_ms},
            "uuid": {"rps": self.uuid.rps, "cpu_us": self.uuid.cpu_us, "p99_ms": self.uuid.p99_ms},
            "x509_csr": {"rps": self.x509.rps, "cpu_us": self.x509.cpu_us, "p99_ms": self.x509.p99_ms},
            "workload_api": {
                "calls": self.workload.calls,
                "svids_per_call": self.workload.svids_per_call,
                "svids_per_s": self.workload.svids_per_s,
                "cpu_us_per_svid": self.workload.cpu_us_per_svid,
            },
        })
    }
}

pub fn measure(args: &Args, scripts: &std::path::Path) -> Result<Documents, String> {
    let mut options = AgentOptions::identity("token+netns")
        .arg("--rate-limit")
        .arg(crate::RATE_HEADROOM)
        .arg("--rate-burst")
        .arg(crate::RATE_HEADROOM);
    options.liveness_interval = "500ms";
    let agent = integration::Agent::start(options);
    let pod = PodNet::new();
    register_example(&agent, &pod, UUID, TOKEN)?;
    let base = format!(
        "http://{}:{}/{TOKEN}/acMetadata/v1",
        pod.host_v4(),
        agent.port
    );
    let csr = {
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        rcgen::CertificateParams::default()
            .serialize_request(&key)
            .and_then(|r| r.pem())
            .map_err(|e| e.to_string())?
    };
    let load = |(url, form): (String, Option<&'static str>)| wrk::Load {
        pod: Some(&pod),
        threads: 1,
        url,
        form,
        close: false,
        connections: args.connections,
        duration: Duration::from_secs(args.seconds),
        server: agent.pid().unwrap_or(0),
    };
    // The bench's one CSR, for its whole run.
    let csr: &'static str = Box::leak(csr.into_boxed_str());
    let urls = [
        (
            format!("{base}/pod/identity/jwt?audience=bench.example"),
            None,
        ),
        (format!("{base}/pod/uuid"), None),
        (format!("{base}/pod/identity/x509"), Some(csr)),
    ];
    for u in &urls {
        wrk::warm_up(&load(u.clone()), scripts)?;
    }
    let mut runs: [Vec<wrk::Figures>; 3] = Default::default();
    for round in 0..args.rounds {
        check_interrupted()?;
        eprintln!("bench: identity documents round {}", round + 1);
        for (i, u) in urls.iter().enumerate() {
            runs[i].push(wrk::run(&load(u.clone()), scripts)?);
        }
    }
    eprintln!("bench: the Workload API");
    let workload = workload_api(&agent, &pod, Duration::from_secs(args.seconds.max(3)))?;
    Ok(Documents {
        jwt: medians(&runs[0]),
        uuid: medians(&runs[1]),
        x509: medians(&runs[2]),
        workload,
    })
}

/// `FetchX509SVID` calls one after another from inside `pod` for `span`.
fn workload_api(
    agent: &integration::Agent,
    pod: &PodNet,
    span: Duration,
) -> Result<Workload, String> {
    let endpoint = format!("tcp://{}:{}", pod.host_v4(), agent.workload_port);
    let pid = agent.pid().unwrap_or(0);
    let cpu_before = wrk::cpu_ticks(pid)?;
    let (calls, svids) = netns::run_in(&pod.netns(), move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(async move {
                let client = spiffe::WorkloadApiClient::connect_to(&endpoint)
                    .await
                    .map_err(|e| e.to_string())?;
                let (mut calls, mut svids) = (0u64, 0usize);
                let until = Instant::now() + span;
                while Instant::now() < until && calls < 1_000_000 {
                    svids = client
                        .fetch_all_x509_svids()
                        .await
                        .map_err(|e| e.to_string())?
                        .len();
                    calls += 1;
                }
                Ok::<_, String>((calls, svids))
            })
    })
    .map_err(|e| e.to_string())??;
    let cpu_s = (wrk::cpu_ticks(pid)? - cpu_before) as f64 / wrk::clock_ticks_per_second();
    let issued = calls as f64 * svids as f64;
    Ok(Workload {
        calls,
        svids_per_call: svids,
        svids_per_s: issued / span.as_secs_f64(),
        cpu_us_per_svid: cpu_s * 1e6 / issued.max(1.0),
    })
}
