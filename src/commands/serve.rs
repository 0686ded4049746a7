//! `rkt-mds serve`: the agent itself.
//!
//! Start-up checks every flag and file before binding anything, so that a
//! mistake ends the start with exit 2 (the unit's
//! `RestartPreventExitStatus`) and leaves no socket behind; what may pass
//! by itself (an address not there yet, another agent still stopping)
//! exits 1, and systemd restarts it.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use netns::{WatchConfig, WatchSet};

use rkt_mds::{
    cli::ServeArgs,
    cluster, fd_limit, identity,
    jwt::{DocConfig, IdentityDocs, JwtKeyring},
    keys::Keyring,
    listen::{self, Activation, Plan},
    metrics::Metrics,
    persist::PodStore,
    pods::{self, Pods},
    server::{self, Limits},
    state::AppState,
    state_lock,
    store::ensure_private_dir,
    svid,
    tenant::{self, Tenancy},
};

use super::{Fatal, Fate};

pub async fn run(args: ServeArgs, activation: Activation) -> Result<(), Fatal> {
    // 1. Flags and files, before anything is bound or written.
    let node = match &args.node_name {
        Some(n) => n.clone(),
        None => host_name()
            .context("cannot read the host name (or pass --node-name)")
            .config()?,
    };
    let doc_config = DocConfig::new(
        &args.trust_domain,
        &node,
        args.jwt_issuer.as_deref(),
        args.jwt_ttl,
    )
    .map_err(anyhow::Error::msg)
    .config()?;
    if args.x509_ttl.is_zero() || args.x509_ttl > svid::MAX_SVID_TTL {
        return Err(anyhow::anyhow!(
            "--x509-ttl {:?}: more than nothing and at most 24h",
            args.x509_ttl
        ))
        .config();
    }
    let etcd_access = match &args.etcd {
        Some(endpoints) => Some(
            cluster::etcd::Access::load(&args.etcd_access.flags(), endpoints.https()).config()?,
        ),
        None => None,
    };
    if let Some(file) = &args.jwks_file {
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir.filter(|d| !d.is_dir()) {
            return Err(anyhow::anyhow!(
                "--jwks-file {}: the directory {} does not exist",
                file.display(),
                dir.display()
            ))
            .config();
        }
    }
    // 2. The state directory is ours alone.
    ensure_private_dir(&args.state_dir)
        .with_context(|| format!("cannot use --state-dir {}", args.state_dir.display()))
        .config()?;
    let _lock = state_lock::lock(&args.state_dir).transient()?;
    let keys = Keyring::load_or_create(&args.state_dir, args.key_retention)
        .with_context(|| format!("cannot load the HMAC keys in {}", args.state_dir.display()))
        .config()?;
    let memory = match &args.etcd {
        Some(_) => Some(
            cluster::memory::Memory::load_or_create(&args.state_dir)
                .with_context(|| {
                    format!(
                        "cannot load the node secret in {}",
                        args.state_dir.display()
                    )
                })
                .config()?,
        ),
        None => None,
    };
    let jwt_keys = JwtKeyring::load_or_create(&args.state_dir)
        .with_context(|| {
            format!(
                "cannot load the identity document keys in {}",
                args.state_dir.display()
            )
        })
        .config()?;
    let x509 = match (&args.x509_ca_cert, &args.x509_ca_key, &args.x509_bundle) {
        (Some(cert), Some(key), Some(bundle)) => {
            let read = |p: &std::path::PathBuf| {
                rkt_mds::store::read_regular_file(p, 1 << 20)
                    .with_context(|| format!("cannot read {}", p.display()))
            };
            svid::X509Authority::from_operator(
                &read(cert).config()?,
                &read(key).config()?,
                &read(bundle).config()?,
                &args.trust_domain,
            )
            .context("cannot use the operator's X.509 CA")
            .config()?
        }
        _ => svid::X509Authority::load_or_create(&args.state_dir, &args.trust_domain)
            .with_context(|| format!("cannot load the X.509 CA in {}", args.state_dir.display()))
            .config()?,
    };
    // Namespace instances are told apart by their cookies, which are
    // unique only within one boot.
    // A kernel without namespace cookies will not grow them: exit 2.
    netns::NetnsCookie::current()
        .context("cannot identify network namespaces")
        .config()?;
    let boot_id = netns::boot_id()
        .context("cannot read the boot id")
        .transient()?;
    let store = PodStore::open(&args.runtime_dir, boot_id)
        .with_context(|| {
            format!(
                "cannot use the runtime directory {}",
                args.runtime_dir.display()
            )
        })
        .transient()?;
    let wanted = match args.max_connections {
        0 => usize::MAX,
        n => n,
    };
    let fds = fd_limit::raise(wanted)
        .context("cannot read the open-file limit")
        .transient()?;
    if args.max_connections != 0 && fds.public_connections < args.max_connections {
        tracing::warn!(
            limit = fds.limit,
            max_connections = fds.public_connections,
            "the open-file limit cannot hold --max-connections beside the agent's own files: public connections capped (raise LimitNOFILE)"
        );
    }
    // 3. Sockets.
    let metrics_listener = match args.metrics_address.0 {
        Some(addr) => Some(
            std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .with_context(|| format!("cannot bind --metrics-address {addr}"))
                .transient()?,
        ),
        None => None,
    };
    let listeners = match listen::listen(
        &Plan {
            socket: &args.socket.socket,
            port: args.listen_port,
            addresses: &args.listen_addresses,
            workload_port: args.workload_api_port,
            hop_limit: args.response_hop_limit,
            workload_socket: Some(args.workload_api_socket.as_path())
                .filter(|p| p.as_os_str() != "off"),
        },
        activation,
    ) {
        Ok(listeners) => listeners,
        // A path that is not a socket, a directory we may not create, a
        // bad activation: the configuration, which a restart cannot fix.
        Err(
            e @ (listen::ListenError::NotASocket(_)
            | listen::ListenError::Dir { .. }
            | listen::ListenError::Activation(_)),
        ) => return Err(anyhow::Error::new(e).context("cannot listen")).config(),
        // Another agent, an address in use or not there yet: may pass.
        Err(e) => return Err(anyhow::Error::new(e).context("cannot listen")).transient(),
    };
    let public_port = listeners
        .public
        .first()
        .and_then(|l| l.local_addr().ok())
        .map_or(args.listen_port, |a| a.port());
    let workload_api_port = listeners
        .workload
        .first()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port());
    let socket_path = listeners.owned_socket.clone();
    // From here on an error must not leave the socket file behind.
    let result = serve(
        args,
        listeners,
        metrics_listener,
        Started {
            keys,
            jwt_keys,
            x509,
            doc_config,
            store,
            node,
            public_port,
            workload_api_port,
            max_connections: fds.public_connections,
            etcd_access,
            memory,
        },
    )
    .await;
    if result.is_err() {
        if let Some(path) = socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
    result
}

/// What start-up prepared.
struct Started {
    keys: Keyring,
    jwt_keys: JwtKeyring,
    x509: svid::X509Authority,
    doc_config: DocConfig,
    store: PodStore,
    node: String,
    public_port: u16,
    workload_api_port: Option<u16>,
    max_connections: usize,
    etcd_access: Option<cluster::etcd::Access>,
    memory: Option<cluster::memory::Memory>,
}

async fn serve(
    args: ServeArgs,
    listeners: listen::Listeners,
    metrics_listener: Option<std::net::TcpListener>,
    s: Started,
) -> Result<(), Fatal> {
    let watches = WatchSet::new(WatchConfig {
        liveness_interval: args.liveness_interval,
        ..WatchConfig::default()
    });
    let pods = Pods::new(
        pods::Config {
            mode: args.identity,
            options: identity::Options {
                allow_unenforced_bridge: args.allow_unenforced_bridge,
            },
            rkt_dir: args.dir.clone(),
            gc_grace: args.gc_grace,
        },
        watches,
        Some(s.store),
    )
    .await
    .context("cannot watch the agent's own network namespace")
    .transient()?;
    let started = std::time::Instant::now();
    let reloaded = pods.reload().await;
    let docs = IdentityDocs::new(s.jwt_keys, s.doc_config, args.jwks_file.clone());
    let share = tenant::share_of(args.max_connections_per_source, s.max_connections);
    if share != args.max_connections_per_source {
        tracing::warn!(
            max_connections = s.max_connections,
            max_connections_per_source = share,
            "--max-connections-per-source lowered to a quarter of the connection cap, so that no one pod can fill it"
        );
    }
    docs.write_jwks_file()
        .context("cannot write the JWK Set file (--jwks-file)")
        .transient()?;
    let state = Arc::new(AppState {
        pods,
        keys: s.keys,
        docs,
        svids: svid::Svids::new(s.x509, args.x509_ttl),
        workload_streams: rkt_mds::workload::streams::StreamBudget::new(),
        metrics: Metrics::default(),
        tenancy: Tenancy::new(args.rate_limit, args.rate_burst, share),
        require_metadata_flavor: args.require_metadata_flavor,
        registration_group: args.registration_group,
        public_port: s.public_port,
        workload_api_port: s.workload_api_port,
        directory: args.etcd.as_ref().map(|_| Arc::default()),
    });
    let limits = Limits {
        max_connections: s.max_connections,
        max_connections_per_source: share,
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
        ..Limits::default()
    };
    let metrics_addr: Option<SocketAddr> = match metrics_listener {
        Some(l) => {
            let addr = l.local_addr().ok();
            let l = tokio::net::TcpListener::from_std(l)
                .context("cannot serve --metrics-address")
                .transient()?;
            tokio::spawn(server::metrics::serve(l, state.clone()));
            addr
        }
        None => None,
    };
    // The cluster directory only reads the state: nothing else knows.
    let directory = args.etcd.map(|endpoints| {
        Arc::new(cluster::start(
            cluster::Config {
                endpoints: endpoints.0,
                access: s.etcd_access.clone().unwrap_or_default(),
                prefix: args.etcd_prefix.prefix.clone(),
                lease_ttl: args.etcd_lease_ttl,
                node: s.node.clone(),
                memory: s.memory.clone(),
            },
            state.clone(),
            state.directory.clone().unwrap_or_default(),
        ))
    });
    let hup = tokio::spawn(reload_on_sighup(state.clone(), directory.clone()));
    tracing::info!(
        pods = reloaded,
        millis = started.elapsed().as_millis() as u64,
        identity = %args.identity,
        socket = %args.socket.socket.display(),
        activated = listeners.activated,
        port = s.public_port,
        metrics = metrics_addr.map(|a| a.to_string()),
        "rkt-mds serving"
    );
    let served = server::run(state, listeners, limits, shutdown_signal()).await;
    hup.abort();
    // Its clone of the directory's handle goes with it.
    let _ = hup.await;
    if let Some(directory) = directory.and_then(|d| Arc::try_unwrap(d).ok()) {
        directory.stop().await;
    }
    served.context("serving failed").transient()?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: look at the host again (its network tables, rkt's pod
/// directories, dead namespaces), re-publish to etcd, and say in one line
/// what changed. The agent goes on serving.
async fn reload_on_sighup(state: Arc<AppState>, directory: Option<Arc<cluster::Handle>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler");
        return;
    };
    while hup.recv().await.is_some() {
        let before = state.pods.registry().len();
        let generation = state.pods.generation();
        state.pods.watches().sync_host().await;
        state.pods.discover_pending().await;
        state.pods.collect_garbage().await;
        if let Some(d) = &directory {
            d.refresh();
        }
        let after = state.pods.registry().len();
        tracing::info!(
            pods = after,
            removed = before.saturating_sub(after),
            changed = state.pods.generation() != generation,
            etcd = directory.is_some(),
            "SIGHUP: applied the host's pending network changes, looked again at rkt's pod directories and for dead namespaces{}",
            if directory.is_some() {
                "; re-publishing to etcd"
            } else {
                ""
            }
        );
    }
}

/// This host's name, for identity documents.
fn host_name() -> std::io::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    Ok(name.trim().to_owned())
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
