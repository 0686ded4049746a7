//! Load from inside a pod namespace with `wrk`, and its report parsed.

use std::{process::Command, time::Duration};

use integration::PodNet;

/// One wrk run's figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct Figures {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU time (user + system) the server spent per request, in µs: less
    /// sensitive than req/s to the load generator sharing the 2 cores.
    pub cpu_us: f64,
}

pub struct Load<'a> {
    /// Where the load comes from: inside this pod, or the host.
    pub pod: Option<&'a PodNet>,
    /// wrk threads.
    pub threads: u32,
    pub url: String,
    /// An urlencoded form body: POST instead of GET.
    pub form: Option<&'a str>,
    /// `Connection: close`: one request per connection.
    pub close: bool,
    pub connections: u32,
    pub duration: Duration,
    /// The server process, whose CPU time is measured.
    pub server: u32,
}

/// One second of the same load, discarded: connections, caches and the
/// allocator settle before anything is measured.
pub fn warm_up(load: &Load<'_>, scripts: &std::path::Path) -> Result<(), String> {
    let short = Load {
        url: load.url.clone(),
        duration: Duration::from_secs(1),
        ..*load
    };
    run(&short, scripts).map(|_| ())
}

/// One measured run; any non-2xx answer or socket error fails it.
pub fn run(load: &Load<'_>, scripts: &std::path::Path) -> Result<Figures, String> {
    let (figures, outcome) = run_counting(load, scripts)?;
    if outcome.non_2xx > 0 || outcome.socket_errors {
        return Err(format!("wrk saw errors:\n{}", outcome.text));
    }
    Ok(figures)
}

/// What a run answered besides its figures.
pub struct Outcome {
    /// Requests answered.
    pub requests: u64,
    pub non_2xx: u64,
    pub socket_errors: bool,
    pub text: String,
}

/// One measured run that counts non-2xx answers instead of failing on
/// them (a flood that is answered 429 is the point).
pub fn run_counting(
    load: &Load<'_>,
    scripts: &std::path::Path,
) -> Result<(Figures, Outcome), String> {
    let mut cmd = match load.pod {
        Some(pod) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &pod.name, "wrk"]);
            c
        }
        None => Command::new("wrk"),
    };
    cmd.arg(format!("-t{}", load.threads.max(1)))
        .arg("--latency")
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.duration.as_secs().max(1)))
        .arg("--timeout")
        .arg("5s");
    if load.close {
        cmd.args(["-H", "Connection: close"]);
    }
    if load.url.contains("/identity/") {
        // Identity endpoints want it (SPEC §9).
        cmd.args(["-H", "Metadata: true"]);
    }
    if let Some(body) = load.form {
        let script = scripts.join("post.lua");
        std::fs::write(
            &script,
            format!(
                // A long bracket: a PEM body's new lines and quotes stay as
                // they are.
                "wrk.method = \"POST\"\nwrk.body = [==[{body}]==]\nwrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        cmd.arg("-s").arg(&script);
    }
    cmd.arg(&load.url);
    settle(load);
    let cpu_before = cpu_ticks(load.server)?;
    let out = cmd.output().map_err(|e| format!("cannot run wrk: {e}"))?;
    let cpu = cpu_ticks(load.server)? - cpu_before;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "wrk failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut figures = parse(&text)?;
    let tick_us = 1e6 / clock_ticks_per_second();
    let requests = requests(&text)?;
    figures.cpu_us = cpu as f64 * tick_us / requests as f64;
    let non_2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let socket_errors = text.lines().any(|l| l.trim().starts_with("Socket errors"));
    Ok((
        figures,
        Outcome {
            requests,
            non_2xx,
            socket_errors,
            text,
        },
    ))
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("server {pid}: {e}"))?;
    // utime and stime are the 14th and 15th fields of the line: the 12th
    // and 13th after the parenthesized command name.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or(format!("bad /proc/{pid}/stat"))
    };
    Ok(field(11)? + field(12)?)
}

pub fn clock_ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// The `N requests in ...` count of a wrk report.
fn requests(text: &str) -> Result<u64, String> {
    text.lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("no request count in wrk's report:\n{text}"))
}

/// Parses wrk's `--latency` report (non-2xx answers and socket errors are
/// counted by the caller).
pub fn parse(text: &str) -> Result<Figures, String> {
    let mut f = Figures::default();
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            f.rps = v.trim().parse().map_err(|_| format!("bad line {line:?}"))?;
        } else if let Some(v) = line.strip_prefix("50%") {
            f.p50_ms = millis(v.trim())?;
        } else if let Some(v) = line.strip_prefix("99%") {
            f.p99_ms = millis(v.trim())?;
        }
    }
    if f.rps == 0.0 {
        return Err(format!("no throughput in wrk's report:\n{text}"));
    }
    Ok(f)
}

fn millis(v: &str) -> Result<f64, String> {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().map_err(|_| format!("bad latency {v:?}"))?;
    Ok(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return Err(format!("bad latency unit {v:?}")),
    })
}

/// Waits (at most 5 s) until the server holds no connection on the URL's
/// port: the last run's connections still count in its source's share
/// until it has closed them, and a run starting before that would find
/// the share full (its 65th connection closed at accept).
fn settle(load: &Load<'_>) {
    let Some(port) = load
        .url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|authority| authority.rsplit(':').next())
        .and_then(|p| p.parse::<u16>().ok())
    else {
        return;
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while held(load.server, port) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The connections on local `port` that `pid`'s network namespace holds
/// open at the server's end (established, or closed by the peer and not
/// yet by the server).
fn held(pid: u32, port: u16) -> usize {
    use integration::proc_net::{tcp_sockets, CLOSE_WAIT, ESTABLISHED};
    tcp_sockets(pid)
        .iter()
        .filter(|s| s.local_port == port && (s.state == ESTABLISHED || s.state == CLOSE_WAIT))
        .count()
}

/// Warms every target up, then runs them in rounds, each round starting
/// with another target (no one always runs first, or after the same
/// neighbour). One list of runs per target.
pub fn alternate<'a>(
    args: &crate::Args,
    targets: &[(u32, String)],
    load: &dyn Fn(&(u32, String)) -> Load<'a>,
    scripts: &std::path::Path,
    what: &str,
) -> Result<Vec<Vec<Figures>>, String> {
    for t in targets {
        warm_up(&load(t), scripts)?;
    }
    let mut runs: Vec<Vec<Figures>> = vec![Vec::new(); targets.len()];
    for round in 0..args.rounds {
        crate::check_interrupted()?;
        eprintln!("bench: {what} round {}", round + 1);
        for k in 0..targets.len() {
            let i = (round + k) % targets.len();
            runs[i].push(run(&load(&targets[i]), scripts)?);
        }
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_report() {
        let r = "Running 3s test @ http://x\n  1 threads and 16 connections\n  Latency Distribution\n     50%  210.00us\n     75%  300.00us\n     90%    1.10ms\n     99%    2.50ms\n  100 requests in 3.00s, 1.00MB read\nRequests/sec:  41152.50\nTransfer/sec:      5.00MB\n";
        let f = parse(r).unwrap();
        assert_eq!((f.rps, f.p50_ms, f.p99_ms), (41152.5, 0.21, 2.5));
        assert_eq!(requests(r), Ok(100));
    }
}
