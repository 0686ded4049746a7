//! The subcommands. This is the binary's edge: errors carry context for a
//! person and end as exit code 254 (verify: 2).

use std::{net::SocketAddr, path::Path, sync::Arc};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hyper::Method;
use netns::{WatchConfig, WatchSet};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;

use rkt_mds::{
    cli::{
        AuditArgs, KeysAction, KeysArgs, RegisterArgs, ServeArgs, SignArgs, UnregisterArgs,
        VerifyArgs,
    },
    client::{self, Reply, Target},
    keys::Keyring,
    listen::{self, Plan},
    metrics::Metrics,
    persist::PodStore,
    pods::{self, Pods},
    server::{self, AppState, Limits},
};

const FORM: &str = "application/x-www-form-urlencoded";

pub async fn serve(args: ServeArgs) -> Result<()> {
    let keys = Keyring::load_or_create(&args.state_dir, args.key_retention)
        .with_context(|| format!("cannot load the HMAC keys in {}", args.state_dir.display()))?;
    // Namespace instances are told apart by their cookies, which are
    // unique only within one boot.
    netns::NetnsCookie::current().context("cannot identify network namespaces")?;
    let boot_id = netns::boot_id().context("cannot read the boot id")?;
    let store = PodStore::open(&args.runtime_dir, boot_id).with_context(|| {
        format!(
            "cannot use the runtime directory {}",
            args.runtime_dir.display()
        )
    })?;
    let listeners = listen::listen(&Plan {
        socket: &args.socket.socket,
        port: args.listen_port,
        addresses: &args.listen_addresses,
    })
    .context("cannot listen")?;
    let public_port = listeners
        .public
        .first()
        .and_then(|l| l.local_addr().ok())
        .map_or(args.listen_port, |a| a.port());
    let watches = WatchSet::new(WatchConfig {
        liveness_interval: args.liveness_interval,
        ..WatchConfig::default()
    });
    let pods = Pods::new(
        pods::Config {
            mode: args.identity,
            options: rkt_mds::identity::Options {
                allow_unenforced_bridge: args.allow_unenforced_bridge,
            },
            rkt_dir: args.dir.clone(),
            gc_grace: args.gc_grace,
        },
        watches,
        Some(store),
    )
    .await
    .context("cannot watch the agent's own network namespace")?;
    let started = std::time::Instant::now();
    let reloaded = pods.reload().await;
    tracing::info!(
        pods = reloaded,
        millis = started.elapsed().as_millis() as u64,
        identity = %args.identity,
        socket = %args.socket.socket.display(),
        activated = listeners.activated,
        port = public_port,
        "rkt-mds serving"
    );
    let state = Arc::new(AppState {
        pods,
        keys,
        metrics: Metrics::default(),
        require_metadata_flavor: args.require_metadata_flavor,
        registration_group: args.registration_group,
        public_port,
    });
    let limits = Limits {
        max_connections: args.max_connections,
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
        ..Limits::default()
    };
    server::run(state, listeners, limits, shutdown_signal())
        .await
        .context("serving failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<(Bytes, &str)>,
) -> Result<Reply> {
    Ok(client::request(&Target::Unix(socket.to_path_buf()), method, path, body).await?)
}

fn expect_ok(reply: &Reply, what: &str) -> Result<()> {
    if reply.status != 200 {
        bail!(
            "{what}: the agent answered {}: {}",
            reply.status,
            reply.text()
        );
    }
    Ok(())
}

fn read_json_file(path: &Path) -> Result<Bytes> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    Ok(Bytes::from(bytes))
}

/// Percent-encodes a URL component or form value (any bytes).
fn enc(s: impl AsRef<[u8]>) -> String {
    form_urlencoded::byte_serialize(s.as_ref()).collect()
}

pub async fn register(args: RegisterArgs) -> Result<()> {
    let socket = &args.socket.socket;
    let manifest = read_json_file(&args.manifest)?;
    let mut apps = Vec::new();
    for spec in &args.apps {
        let (name, file) = spec
            .split_once('=')
            .with_context(|| format!("--app {spec:?}: expected NAME=IMAGE_MANIFEST"))?;
        apps.push((name.to_owned(), read_json_file(Path::new(file))?));
    }
    let token = match &args.token {
        Some(t) => t.clone(),
        None => random_token()?,
    };
    let mut path = format!("/pods/{}?token={}", enc(&args.uuid), enc(&token));
    if let Some(ns) = &args.netns {
        path += &format!("&netns={}", enc(ns.display().to_string()));
    }
    if let Some(pid) = args.pid {
        path += &format!("&pid={pid}");
    }
    let json = "application/json";
    let reply = call(socket, Method::PUT, &path, Some((manifest, json))).await?;
    expect_ok(&reply, "registering the pod")?;
    for (name, image) in apps {
        let reply = call(
            socket,
            Method::PUT,
            &format!("/pods/{}/{}", enc(&args.uuid), enc(&name)),
            Some((image, json)),
        )
        .await?;
        if let Err(e) = expect_ok(&reply, &format!("registering app {name}")) {
            // rkt's rule: a half-registered pod is unregistered.
            let _ = call(
                socket,
                Method::DELETE,
                &format!("/pods/{}", enc(&args.uuid)),
                None,
            )
            .await;
            return Err(e);
        }
    }
    let port = info(socket).await?.public_port;
    let host = match args.host {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    println!("AC_METADATA_URL=http://{host}:{port}/{token}");
    Ok(())
}

#[derive(Deserialize)]
struct Info {
    public_port: u16,
    gc_grace_secs: u64,
}

async fn info(socket: &Path) -> Result<Info> {
    let reply = call(socket, Method::GET, "/info", None).await?;
    expect_ok(&reply, "asking the agent for its settings")?;
    serde_json::from_slice(&reply.body).context("the agent's /info is not valid")
}

fn random_token() -> Result<String> {
    let mut raw = [0u8; 16];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}

pub async fn unregister(args: UnregisterArgs) -> Result<()> {
    let reply = call(
        &args.socket.socket,
        Method::DELETE,
        &format!("/pods/{}", enc(&args.uuid)),
        None,
    )
    .await?;
    expect_ok(&reply, "unregistering")
}

#[derive(Deserialize)]
struct Listing {
    pods: Vec<PodRow>,
}

#[derive(Deserialize)]
struct PodRow {
    uuid: String,
    apps: Vec<String>,
    netns: Option<NetnsRow>,
    addresses: Vec<String>,
    state: String,
    conflicts: Vec<String>,
    registered_at: u64,
}

#[derive(Deserialize)]
struct NetnsRow {
    path: String,
}

/// Exit code: 0, or 1 with `--check` when something is in doubt.
pub async fn audit(args: AuditArgs) -> Result<i32> {
    let reply = call(&args.socket.socket, Method::GET, "/pods", None).await?;
    expect_ok(&reply, "listing pods")?;
    let listing: Listing =
        serde_json::from_slice(&reply.body).context("the agent's listing is not valid")?;
    if args.json {
        println!("{}", reply.text());
    } else {
        println!(
            "{:<36}  {:<13}  {:<28}  {:<24}  APPS",
            "POD", "STATE", "NETNS", "ADDRESS"
        );
        for p in &listing.pods {
            let ns = p.netns.as_ref().map_or("-", |n| n.path.as_str());
            let apps = p.apps.join(",");
            let addrs: Vec<String> = if p.addresses.is_empty() {
                vec!["-".into()]
            } else {
                p.addresses
                    .iter()
                    .map(|a| {
                        if p.conflicts.contains(a) {
                            format!("{a} (CONFLICT)")
                        } else {
                            a.clone()
                        }
                    })
                    .collect()
            };
            for a in addrs {
                println!(
                    "{:<36}  {:<13}  {:<28}  {:<24}  {apps}",
                    p.uuid, p.state, ns, a
                );
            }
        }
    }
    if !args.check {
        return Ok(0);
    }
    let grace = match args.grace {
        Some(g) => g.as_secs(),
        None => info(&args.socket.socket).await?.gc_grace_secs,
    };
    let now = pods::unix_now();
    let doubtful = listing.pods.iter().filter(|p| match p.state.as_str() {
        "conflict" | "netns-gone" => true,
        "netns-unknown" => now.saturating_sub(p.registered_at) >= grace,
        _ => false,
    });
    let n = doubtful.count();
    if n > 0 {
        eprintln!("rkt-mds audit: {n} pod(s) with an identity in doubt");
        return Ok(1);
    }
    Ok(0)
}

pub async fn keys(args: KeysArgs) -> Result<()> {
    match args.action {
        KeysAction::Rotate(s) => {
            let reply = call(&s.socket, Method::POST, "/keys/rotate", None).await?;
            expect_ok(&reply, "rotating keys")?;
            println!("{}", reply.text());
        }
        KeysAction::List(s) => {
            let reply = call(&s.socket, Method::GET, "/keys", None).await?;
            expect_ok(&reply, "listing keys")?;
            println!("{}", reply.text());
        }
    }
    Ok(())
}

/// `AC_METADATA_URL` = `http://HOST:PORT/TOKEN`.
fn metadata_url() -> Result<(SocketAddr, String)> {
    let url = std::env::var("AC_METADATA_URL")
        .context("AC_METADATA_URL is not set: run this inside a pod")?;
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("AC_METADATA_URL {url:?} does not start with http://"))?;
    let (host, token) = rest.split_once('/').unwrap_or((rest, ""));
    let addr: SocketAddr = host
        .parse()
        .with_context(|| format!("AC_METADATA_URL host {host:?} is not ADDRESS:PORT"))?;
    Ok((addr, token.trim_end_matches('/').to_owned()))
}

fn metadata_path(token: &str, endpoint: &str) -> String {
    if token.is_empty() {
        format!("/acMetadata/v1/{endpoint}")
    } else {
        format!("/{token}/acMetadata/v1/{endpoint}")
    }
}

/// POSTs a form to this pod's metadata endpoint (from `AC_METADATA_URL`).
/// Values are bytes: the signed content need not be text.
async fn post_form(endpoint: &str, fields: &[(&str, &[u8])]) -> Result<Reply> {
    let (addr, token) = metadata_url()?;
    let body = fields
        .iter()
        .map(|(name, value)| format!("{name}={}", enc(value)))
        .collect::<Vec<_>>()
        .join("&");
    Ok(client::request(
        &Target::Tcp(addr),
        Method::POST,
        &metadata_path(&token, endpoint),
        Some((Bytes::from(body), FORM)),
    )
    .await?)
}

pub async fn sign(args: SignArgs) -> Result<()> {
    let content = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let reply = post_form("pod/hmac/sign", &[("content", &content)]).await?;
    expect_ok(&reply, "signing")?;
    match args.output {
        Some(out) => std::fs::write(&out, &reply.body)
            .with_context(|| format!("cannot write {}", out.display()))?,
        None => println!("{}", reply.text()),
    }
    Ok(())
}

/// Exit 0 valid, 1 invalid, 2 on any error.
pub async fn verify(args: VerifyArgs) -> Result<i32> {
    match try_verify(&args).await {
        Ok(valid) => Ok(if valid { 0 } else { 1 }),
        Err(e) => {
            eprintln!("rkt-mds verify: {e:#}");
            Ok(2)
        }
    }
}

async fn try_verify(args: &VerifyArgs) -> Result<bool> {
    let content = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let signature = match args.signature.strip_prefix('@') {
        Some(file) => {
            std::fs::read_to_string(file).with_context(|| format!("cannot read {file}"))?
        }
        None => args.signature.clone(),
    };
    let fields: [(&str, &[u8]); 3] = [
        ("content", &content),
        ("uuid", args.uuid.as_bytes()),
        ("signature", signature.trim().as_bytes()),
    ];
    let reply = post_form("pod/hmac/verify", &fields).await?;
    match reply.status {
        200 => Ok(true),
        403 => Ok(false),
        s => bail!("the agent answered {s}: {}", reply.text()),
    }
}
