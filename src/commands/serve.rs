//! `rkt-mds serve`: the agent itself.

use std::sync::Arc;

use anyhow::{Context, Result};
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
    tenant::Tenancy,
};

pub async fn run(args: ServeArgs, activation: Activation) -> Result<()> {
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
    let listeners = listen::listen(
        &Plan {
            socket: &args.socket.socket,
            port: args.listen_port,
            addresses: &args.listen_addresses,
        },
        activation,
    )
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
            options: identity::Options {
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
    let fds = fd_limit::raise(args.max_connections).context("cannot read the open-file limit")?;
    if fds.public_connections < args.max_connections {
        tracing::warn!(
            limit = fds.limit,
            max_connections = fds.public_connections,
            "the open-file limit cannot hold --max-connections beside the agent's own files: public connections capped (raise LimitNOFILE)"
        );
    }
    let node = match &args.node_name {
        Some(n) => n.clone(),
        None => host_name().context("cannot read the host name (or pass --node-name)")?,
    };
    let config = DocConfig::new(
        &args.trust_domain,
        &node,
        args.jwt_issuer.as_deref(),
        args.jwt_ttl,
    )
    .map_err(anyhow::Error::msg)?;
    let jwt_keys = JwtKeyring::load_or_create(&args.state_dir).with_context(|| {
        format!(
            "cannot load the identity document keys in {}",
            args.state_dir.display()
        )
    })?;
    let docs = IdentityDocs::new(jwt_keys, config, args.jwks_file.clone());
    docs.write_jwks_file()
        .context("cannot write the JWK Set file (--jwks-file)")?;
    let state = Arc::new(AppState {
        pods,
        keys,
        docs,
        metrics: Metrics::default(),
        tenancy: Tenancy::new(
            args.rate_limit,
            args.rate_burst,
            args.max_connections_per_source,
        ),
        require_metadata_flavor: args.require_metadata_flavor,
        registration_group: args.registration_group,
        public_port,
    });
    let limits = Limits {
        max_connections: fds.public_connections,
        max_connections_per_source: args.max_connections_per_source,
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
        ..Limits::default()
    };
    // The cluster directory only reads the state: nothing else knows.
    let directory = args.etcd.map(|endpoints| {
        cluster::start(
            cluster::Config {
                endpoints: endpoints.0,
                prefix: args.etcd_prefix.prefix.clone(),
                lease_ttl: args.etcd_lease_ttl,
                node: node.clone(),
            },
            state.clone(),
        )
    });
    let served = server::run(state, listeners, limits, shutdown_signal()).await;
    if let Some(directory) = directory {
        directory.stop().await;
    }
    served.context("serving failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// This host's name, for identity documents.
fn host_name() -> Result<String> {
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
