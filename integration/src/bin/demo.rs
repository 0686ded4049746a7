//! The README's demo: the agent doing its real job. Starts the agent,
//! brings up two pods as network namespaces, registers them with the
//! shared fixtures, and shows from inside each pod what an app sees.
//! Everything it creates is removed on exit, Ctrl-C included. Needs root.

use std::{
    net::IpAddr,
    process::{Command, ExitCode, Output},
    sync::atomic::{AtomicBool, Ordering},
};

use integration::{fixtures, Agent, AgentOptions, PodNet};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

const U1: &str = "d3e0b9a2-4f1c-4b8e-9a7d-1c2b3a4d5e6f";
const U2: &str = "7f6e5d4c-3b2a-4190-8f7e-6d5c4b3a2910";

fn main() -> ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "demo: run as root (it creates network namespaces): sudo {}",
            std::env::args().next().unwrap_or_default()
        );
        return ExitCode::from(2);
    }
    // Ctrl-C: finish the current step, then unwind so every guard cleans up.
    if let Err(e) = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst)) {
        eprintln!("demo: cannot handle Ctrl-C ({e}); continuing");
    }
    match run() {
        Ok(()) => {
            println!("\ndemo: all steps behaved as expected; cleaning up.");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("\ndemo: {e}; cleaning up.");
            ExitCode::FAILURE
        }
    }
}

fn step(title: &str) -> Result<(), String> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err("interrupted".into());
    }
    println!("\n== {title}");
    Ok(())
}

fn run() -> Result<(), String> {
    step("Starting the agent (identity mode token+netns)")?;
    let agent = Agent::start(AgentOptions::identity("token+netns"));
    println!(
        "   registration socket {}, public port {}",
        agent.socket.display(),
        agent.port
    );

    step("Bringing up two pods: network namespaces joined to the host by veth pairs")?;
    let pod1 = PodNet::new();
    let pod2 = PodNet::new();
    for (n, p) in [(1, &pod1), (2, &pod2)] {
        println!(
            "   pod {n}: netns {}  address {} / {}  (host side {})",
            p.name,
            p.v4(),
            p.v6(),
            p.host_v4()
        );
    }

    step("Registering them as a runtime would (`rkt-mds register`)")?;
    let fx = fixtures::dir();
    let f = |rel: &str| fx.join(rel).display().to_string();
    let url1 = register(
        &agent,
        &pod1,
        U1,
        &f("pods/web-pod.json"),
        &[
            ("web", f("pods/web-image.json")),
            ("log-shipper", f("pods/log-shipper-image.json")),
        ],
    )?;
    let url2 = register(
        &agent,
        &pod2,
        U2,
        &f("pods/bare-pod.json"),
        &[("worker", f("pods/worker-image.json"))],
    )?;
    let token1 = url1.rsplit('/').next().unwrap_or_default().to_owned();

    step("Pod 1 asks who it is")?;
    expect(
        &in_pod(
            &pod1,
            &url1,
            &["curl", "-s", &format!("{url1}/acMetadata/v1/pod/uuid")],
        )?,
        U1,
    )?;
    let annotations = in_pod(
        &pod1,
        &url1,
        &[
            "curl",
            "-s",
            &format!("{url1}/acMetadata/v1/pod/annotations"),
        ],
    )?;
    expect(&annotations, "tenant-a")?;
    expect(
        &in_pod(
            &pod1,
            &url1,
            &[
                "curl",
                "-s",
                &format!("{url1}/acMetadata/v1/apps/web/annotations/example.com/tier"),
            ],
        )?,
        "frontend-override",
    )?;

    step("Pod 2 asks who it is")?;
    expect(
        &in_pod(
            &pod2,
            &url2,
            &["curl", "-s", &format!("{url2}/acMetadata/v1/pod/uuid")],
        )?,
        U2,
    )?;

    step("Pod 1 signs a message; pod 2 verifies it came from pod 1")?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let msg = dir.path().join("message.txt");
    std::fs::write(&msg, "pay tenant-b 42 credits\n").map_err(|e| e.to_string())?;
    let sig = in_pod(
        &pod1,
        &url1,
        &[&bin(), "sign", "--file", &msg.display().to_string()],
    )?;
    let sig = sig.trim().to_owned();
    expect(&format!("{} characters", sig.len()), "88 characters")?;
    let msg_path = msg.display().to_string();
    let verify = || {
        let args = [
            bin(),
            "verify".into(),
            "--file".into(),
            msg_path.clone(),
            "--uuid".into(),
            U1.into(),
            "--signature".into(),
            sig.clone(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_in_pod(&pod2, &url2, &args)
    };
    let valid = verify()?;
    if !valid.status.success() {
        return Err(format!(
            "verify failed: {}",
            String::from_utf8_lossy(&valid.stderr)
        ));
    }
    println!("   -> valid (exit 0)");
    std::fs::write(&msg, "pay tenant-b 4200 credits\n").map_err(|e| e.to_string())?;
    if verify()?.status.code() != Some(1) {
        return Err("a tampered message verified".into());
    }
    println!("   -> a tampered message: invalid (exit 1)");

    step("Pod 2 steals pod 1's token: refused, the request is not from pod 1's namespace")?;
    let host2 = match url2.split('/').nth(2) {
        Some(h) => h.to_owned(),
        None => return Err("bad URL".into()),
    };
    let stolen = format!("http://{host2}/{token1}/acMetadata/v1/pod/uuid");
    let out = in_pod(
        &pod2,
        &url2,
        &["curl", "-s", "-w", " (HTTP %{http_code})", &stolen],
    )?;
    expect(&out, "403")?;

    step("The operator's audit: which pod holds which address")?;
    let audit = Command::new(bin())
        .args(["audit", "--socket", &agent.socket.display().to_string()])
        .output()
        .map_err(|e| e.to_string())?;
    print!("{}", String::from_utf8_lossy(&audit.stdout));
    if !audit.status.success() {
        return Err("audit failed".into());
    }
    let text = String::from_utf8_lossy(&audit.stdout).into_owned();
    expect(&text, &pod1.v4().to_string())?;
    expect(&text, "verified")?;
    Ok(())
}

fn bin() -> String {
    integration::agent::binary().display().to_string()
}

fn register(
    agent: &Agent,
    pod: &PodNet,
    uuid: &str,
    manifest: &str,
    apps: &[(&str, String)],
) -> Result<String, String> {
    let mut args: Vec<String> = vec![
        "register".into(),
        "--socket".into(),
        agent.socket.display().to_string(),
        "--uuid".into(),
        uuid.into(),
        "--manifest".into(),
        manifest.into(),
        "--netns".into(),
        pod.netns_path(),
        "--host".into(),
        IpAddr::V4(pod.host_v4()).to_string(),
    ];
    for (name, file) in apps {
        args.push("--app".into());
        args.push(format!("{name}={file}"));
    }
    println!(
        "   $ rkt-mds register --uuid {uuid} --manifest {} --netns {} ...",
        short(manifest),
        pod.netns_path()
    );
    let out = Command::new(bin())
        .args(&args)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "register failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in printed.lines() {
        println!("   {line}");
    }
    printed
        .lines()
        .find_map(|l| l.strip_prefix("AC_METADATA_URL="))
        .map(str::to_owned)
        .ok_or_else(|| format!("unexpected output {printed:?}"))
}

fn short(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn run_in_pod(pod: &PodNet, url: &str, cmd: &[&str]) -> Result<Output, String> {
    let shown: Vec<&str> = cmd
        .iter()
        .map(|c| {
            if c.contains('/') && c.starts_with('/') {
                short(c)
            } else {
                c
            }
        })
        .collect();
    println!("   [{}] $ {}", pod.name, shown.join(" "));
    Command::new("ip")
        .args(["netns", "exec", &pod.name])
        .args(cmd)
        .env("AC_METADATA_URL", url)
        .output()
        .map_err(|e| e.to_string())
}

fn in_pod(pod: &PodNet, url: &str, cmd: &[&str]) -> Result<String, String> {
    let out = run_in_pod(pod, url, cmd)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("   -> {}", text.trim());
    Ok(text)
}

fn expect(got: &str, want: &str) -> Result<(), String> {
    if got.contains(want) {
        Ok(())
    } else {
        Err(format!("expected {want:?} in {got:?}"))
    }
}
