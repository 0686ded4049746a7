//! The loopback setup: what a busy client on the host sees. `wrk -t2 -c64`
//! on 127.0.0.1 against a host-network pod in `token+netns` (default
//! flags, access log on, the rate limit on with headroom), the bare hyper
//! server in the same run, alternating; and the same agent with one
//! feature off at a time, for what each costs.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use integration::{fixtures, Agent, AgentOptions};

use crate::{
    agent_target, medians,
    report::Row,
    wrk::{self, Load},
    Args, Reference, TOKEN, UUID,
};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

struct Variant {
    label: &'static str,
    args: &'static [&'static str],
    log: &'static str,
}

const VARIANTS: [Variant; 6] = [
    Variant {
        label: "token+netns",
        args: &[],
        log: "info",
    },
    Variant {
        label: "token+netns, rate limit off",
        args: &["--rate-limit", "0"],
        log: "info",
    },
    Variant {
        label: "token+netns, per-source accounting off",
        args: &["--max-connections-per-source", "0"],
        log: "info",
    },
    Variant {
        label: "token+netns, no access log",
        args: &[],
        log: "warn",
    },
    Variant {
        label: "token+netns, Workload API off",
        args: &["--workload-api-port", "0", "--workload-api-socket", "off"],
        log: "info",
    },
    Variant {
        label: "token+netns, metrics listener off",
        args: &["--metrics-address", "off"],
        log: "info",
    },
];

/// The rows of bare hyper doing a sign request's own work: reading the
/// body; reading it, decoding the form and answering its signature.
const READING: &str = "bare hyper, reading the body";
const SIGNING: &str = "bare hyper, reading the form and signing it";

fn start(v: &Variant) -> Result<Agent, String> {
    let mut options = AgentOptions::identity("token+netns");
    // The limit on, with headroom, unless the variant turns it off.
    if !v.args.contains(&"--rate-limit") {
        options = options
            .arg("--rate-limit")
            .arg(crate::RATE_HEADROOM)
            .arg("--rate-burst")
            .arg(crate::RATE_HEADROOM);
    }
    for a in v.args {
        options = options.arg(*a);
    }
    options.log_filter = v.log.to_owned();
    options.liveness_interval = "500ms";
    let agent = Agent::start(options);
    // A host-network pod: the appc example (a 1.5 KB manifest), no namespace.
    let r = agent.register(
        UUID,
        TOKEN,
        &fixtures::read("appc-examples/pod_runtime.json"),
        "",
    );
    if r.status != 200 {
        return Err(format!("register: {} {}", r.status, r.text()));
    }
    Ok(agent)
}

/// The answer's size, so the reference answers as much.
fn body_size(agent: &Agent, path: &str, form: Option<&str>) -> Result<usize, String> {
    let url = format!("/{TOKEN}/acMetadata/v1/{path}");
    let req = match form {
        Some(f) => {
            let (k, v) = f.split_once('=').unwrap_or((f, ""));
            integration::http::Request::form(&url, &[(k, v)])
        }
        None => integration::http::Request::get(&url),
    };
    let r = integration::http::tcp(agent.loopback(), &req).map_err(|e| e.to_string())?;
    if r.status != 200 {
        return Err(format!("{url}: {} {}", r.status, r.text()));
    }
    Ok(r.body.len())
}

pub fn measure(args: &Args, scripts: &std::path::Path) -> Result<Vec<Row>, String> {
    let agents = VARIANTS.iter().map(start).collect::<Result<Vec<_>, _>>()?;
    let mut rows = Vec::new();
    let endpoints: [(&str, &str, Option<&'static str>); 3] = [
        ("GET /pod/uuid", "pod/uuid", None),
        ("GET /pod/manifest", "pod/manifest", None),
        (
            "POST /pod/hmac/sign",
            "pod/hmac/sign",
            Some("content=hello"),
        ),
    ];
    let secs = Duration::from_secs(args.seconds.max(4));
    for (name, path, form) in endpoints {
        let size = body_size(&agents[0], path, form)?;
        let reference = Reference::start(size)?;
        let mut targets: Vec<(u32, String)> = agents
            .iter()
            .map(|a| agent_target(a, LOOPBACK, path))
            .collect();
        // For a POST, also bare hyper doing the request's own work: the
        // reference answers without reading the body.
        let work = match form {
            Some(_) => vec![
                (READING, Reference::reading(size)?),
                (SIGNING, Reference::signing()?),
            ],
            None => Vec::new(),
        };
        targets.extend(work.iter().map(|(_, r)| r.target(LOOPBACK)));
        targets.push(reference.target(LOOPBACK));
        let load = |(server, url): &(u32, String)| Load {
            pod: None,
            threads: 2,
            url: url.clone(),
            form,
            close: false,
            connections: 64,
            duration: secs,
            server: *server,
        };
        let mut runs = wrk::alternate(
            args,
            &targets,
            &load,
            scripts,
            &format!("loopback keep-alive {name}"),
        )
        .map_err(|e| with_logs(e, &agents))?;
        let reference_runs = runs.pop().unwrap_or_default();
        let reference = medians(&reference_runs);
        let labels = VARIANTS
            .iter()
            .map(|v| v.label)
            .chain(work.iter().map(|(label, _)| *label));
        for (label, r) in labels.zip(&runs) {
            rows.push(Row::new(
                format!("loopback keep-alive {name}"),
                label,
                size,
                r,
                Some((&reference_runs, reference)),
            ));
        }
    }
    // One request per connection: per-connection costs (accept, source
    // accounting, deadlines) on every request.
    let size = body_size(&agents[0], "pod/uuid", None)?;
    let reference = Reference::start(size)?;
    // With the per-source accounting on, and off.
    let measured = [0, 2];
    let mut targets: Vec<(u32, String)> = measured
        .iter()
        .map(|&i| agent_target(&agents[i], LOOPBACK, "pod/uuid"))
        .collect();
    targets.push(reference.target(LOOPBACK));
    let load = |(server, url): &(u32, String)| Load {
        pod: None,
        threads: 2,
        url: url.clone(),
        form: None,
        close: true,
        connections: 16,
        duration: secs,
        server: *server,
    };
    let mut runs = wrk::alternate(args, &targets, &load, scripts, "loopback Connection: close")
        .map_err(|e| with_logs(e, &agents))?;
    let reference_runs = runs.pop().unwrap_or_default();
    let reference = medians(&reference_runs);
    for (label, r) in measured.iter().map(|&i| VARIANTS[i].label).zip(&runs) {
        rows.push(Row::new(
            "loopback Connection: close GET /pod/uuid".into(),
            label,
            size,
            r,
            Some((&reference_runs, reference)),
        ));
    }
    Ok(rows)
}

/// A failed run's error, with what each agent logged besides its access
/// lines: a socket error in wrk is the agent closing a connection, and
/// the agents' logs go when they do.
fn with_logs(error: String, agents: &[Agent]) -> String {
    let mut out = error;
    for (v, agent) in VARIANTS.iter().zip(agents) {
        let port = agent.loopback().port();
        out += &format!(
            "\n--- agent \"{}\" (port {port}), its log without access lines ---\n",
            v.label
        );
        for line in agent.log().lines().filter(|l| !l.contains(" access: ")) {
            out += line;
            out.push('\n');
        }
    }
    out
}
