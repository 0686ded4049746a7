//! Identity documents: tokens per second from one pod, and the CPU cost
//! of one against a `/pod/uuid` answer of the same agent.

use std::time::Duration;

use integration::{AgentOptions, PodNet};
use serde_json::{json, Value};

use crate::{check_interrupted, medians, register_example, wrk, Args, TOKEN, UUID};

pub struct Documents {
    pub jwt: wrk::Figures,
    pub uuid: wrk::Figures,
}

impl Documents {
    pub fn markdown(&self) -> String {
        format!(
            "\nIdentity documents from one pod (keep-alive, over veth, rate limit with headroom): {:.0} tokens/s at {:.1} CPU µs each, against {:.0} req/s at {:.1} CPU µs for GET /pod/uuid: a token costs {:.1}x (an ECDSA P-256 signature and a JSON body).\n",
            self.jwt.rps, self.jwt.cpu_us, self.uuid.rps, self.uuid.cpu_us,
            self.jwt.cpu_us / self.uuid.cpu_us.max(1e-9)
        )
    }

    pub fn json(&self) -> Value {
        json!({
            "jwt": {"rps": self.jwt.rps, "cpu_us": self.jwt.cpu_us, "p99_ms": self.jwt.p99_ms},
            "uuid": {"rps": self.uuid.rps, "cpu_us": self.uuid.cpu_us, "p99_ms": self.uuid.p99_ms},
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
    let load = |url: String| wrk::Load {
        pod: Some(&pod),
        threads: 1,
        url,
        form: None,
        close: false,
        connections: args.connections,
        duration: Duration::from_secs(args.seconds),
        server: agent.pid().unwrap_or(0),
    };
    let urls = [
        format!("{base}/pod/identity/jwt?audience=bench.example"),
        format!("{base}/pod/uuid"),
    ];
    for u in &urls {
        wrk::warm_up(&load(u.clone()), scripts)?;
    }
    let mut runs: [Vec<wrk::Figures>; 2] = Default::default();
    for round in 0..args.rounds {
        check_interrupted()?;
        eprintln!("bench: identity documents round {}", round + 1);
        for (i, u) in urls.iter().enumerate() {
            runs[i].push(wrk::run(&load(u.clone()), scripts)?);
        }
    }
    Ok(Documents {
        jwt: medians(&runs[0]),
        uuid: medians(&runs[1]),
    })
}
