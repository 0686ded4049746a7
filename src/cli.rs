//! Command-line interface.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::identity::Mode;

pub const DEFAULT_SOCKET: &str = "/run/rkt/metadata-svc.sock";

/// What `--version` and `rkt-mds version` print after the name, as
/// `rkt version` does: the version, the commit, the target and the optional
/// parts built in (`+` built, `-` not).
pub const LONG_VERSION: &str = concat!(
    "Version: ",
    env!("CARGO_PKG_VERSION"),
    "\nGit Commit: ",
    env!("RKT_MDS_GIT_COMMIT"),
    "\nTarget: ",
    env!("RKT_MDS_TARGET"),
    "\nFeatures: +ETCD_DIRECTORY +ETCD_TLS +SYN_FILTER",
);

#[derive(Parser, Debug)]
#[command(
    name = "rkt-mds",
    version,
    long_version = LONG_VERSION,
    about = "Pod metadata service for rkt: a drop-in replacement for `rkt metadata-service` \
             that checks, through netlink, that each request comes from inside the network \
             namespace of the pod whose token it carries.",
    after_help = "Run `rkt-mds serve` as root on the host. Pods reach the public API at \
                  AC_METADATA_URL=http://<host address>:18112/<token>."
)]
pub struct Cli {
    /// Log at debug level (overridden by RUST_LOG).
    #[arg(long, global = true)]
    pub debug: bool,
    /// How log lines are written on stderr: `text` (TIME LEVEL target:
    /// message key=value) or `json` (one object per line, access lines
    /// included).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start: the size of the serve variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the agent: registration socket for the runtime, public API for pods.
    Serve(ServeArgs),
    /// Register a pod (and its apps) the way rkt does; prints AC_METADATA_URL.
    Register(RegisterArgs),
    /// Remove a pod's registration.
    Unregister(UnregisterArgs),
    /// Show which pod holds which address, and every identity in doubt.
    Audit(AuditArgs),
    /// Manage the signing keys (HMAC for sign/verify, ECDSA for identity
    /// documents).
    Keys(KeysArgs),
    /// Inside a pod: print an identity document (a JWT) for an audience
    /// (uses AC_METADATA_URL).
    Token(TokenArgs),
    /// Verify an identity document offline against a JWK Set. Prints the
    /// claims; exit 0 valid, 1 invalid (one line saying why), 2 error.
    VerifyToken(VerifyTokenArgs),
    /// Print the cluster's trust bundle: the union of every node's JWK Set
    /// in the etcd cluster directory.
    Jwks(JwksArgs),
    /// Print the trust domain's SPIFFE bundle (X.509 authorities and JWT
    /// keys): the local agent's, or with --etcd every node's.
    Bundle(BundleArgs),
    /// Inside a pod: sign a file's contents as this pod (uses AC_METADATA_URL).
    Sign(SignArgs),
    /// Inside a pod: verify another pod's signature (uses AC_METADATA_URL).
    /// Exit 0 valid, 1 invalid, 2 error.
    Verify(VerifyArgs),
    /// The etcd cluster directory's administration (`cluster roles`).
    Cluster(ClusterArgs),
    /// Print the version, the git commit, the target and the optional
    /// parts built in (the same as --version).
    Version,
    /// Print the man page of rkt-mds or of one subcommand (roff), or write
    /// every page to a directory.
    Man(ManArgs),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
}

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub action: ClusterAction,
}

#[derive(Subcommand, Debug)]
pub enum ClusterAction {
    /// Print the etcdctl commands that create a node's role and user (it
    /// may read the directory and write only its own keys) and the
    /// readers' role (read only). Paste them into a shell where etcdctl
    /// reaches the cluster as root.
    Roles(RolesArgs),
}

#[derive(Args, Debug)]
pub struct RolesArgs {
    /// The node (its agent's --node-name).
    #[arg(long, value_name = "NAME")]
    pub node: String,
    /// The directory's prefix (the agents' --etcd-prefix).
    #[arg(long, default_value = crate::cluster::DEFAULT_PREFIX, value_name = "PREFIX")]
    pub prefix: String,
    /// The file etcdctl reads the new node user's password from.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// The subcommand whose page to print (default: rkt-mds itself).
    #[arg(value_name = "SUBCOMMAND")]
    pub subcommand: Option<String>,
    /// Write rkt-mds.1 and rkt-mds-SUBCOMMAND.1 for every subcommand here
    /// instead of printing one page.
    #[arg(long, value_name = "DIR", conflicts_with = "subcommand")]
    pub out_dir: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct SocketArg {
    /// Path of the agent's registration socket.
    #[arg(long, default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TCP port of the public (appc) API. rkt's code and flag table use
    /// 18112 (one sentence of rkt's docs says 2375; it is wrong).
    #[arg(long, default_value_t = 18112, value_name = "PORT")]
    pub listen_port: u16,
    /// Address to serve the public API on; repeatable. Default: every IPv4
    /// and IPv6 address (one dual-stack socket).
    #[arg(long = "listen-address", value_name = "ADDR")]
    pub listen_addresses: Vec<IpAddr>,
    /// TCP port of the SPIFFE Workload API (gRPC, cleartext HTTP/2), on
    /// the public API's addresses; pods use
    /// SPIFFE_ENDPOINT_SOCKET=tcp://HOST:PORT. Callers are attested by
    /// their source address (off in --identity token). 0 turns it off.
    #[arg(long, default_value_t = 18114, value_name = "PORT")]
    pub workload_api_port: u16,
    /// The SPIFFE Workload API on a Unix socket too (mode 0666; its
    /// directory is made 0755): a runtime bind-mounts the directory into
    /// its pods, which use SPIFFE_ENDPOINT_SOCKET=unix://PATH. Callers are
    /// attested by their pidfd's network namespace. `off` disables it.
    #[arg(
        long,
        default_value = "/run/rkt-mds/workload/api.sock",
        value_name = "PATH|off"
    )]
    pub workload_api_socket: PathBuf,
    /// IP TTL / IPv6 hop limit of everything the public and Workload API
    /// ports send, the TCP handshake included: 1 keeps answers on the
    /// pod's own link, so a client behind a router cannot hold a
    /// conversation (a defence against forged requests).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..), value_name = "HOPS")]
    pub response_hop_limit: u8,
    #[command(flatten)]
    pub socket: SocketArg,
    /// rkt's data directory: pods' network namespaces are discovered from
    /// <dir>/pods/run/<uuid>/netns.
    #[arg(long, default_value = "/var/lib/rkt", value_name = "PATH")]
    pub dir: PathBuf,
    /// Durable state: the HMAC and JWT keys, the lock that keeps a second
    /// agent off it, and with --etcd the node's secret and last lease.
    /// Created 0700.
    #[arg(long, default_value = "/var/lib/rkt-mds", value_name = "PATH")]
    pub state_dir: PathBuf,
    /// Registrations (survive an agent restart, not a reboot). Created 0700.
    #[arg(long, default_value = "/run/rkt/mds", value_name = "PATH")]
    pub runtime_dir: PathBuf,
    /// How a request's pod is established: `token` (rkt's behaviour),
    /// `token+netns` (token, and the source address must be in the pod's
    /// network namespace), or `netns` (the source address alone; a token,
    /// if given, must agree).
    #[arg(long, value_enum, default_value_t = Mode::TokenNetns)]
    pub identity: Mode,
    /// Refuse public requests without `Metadata-Flavor: AppContainer` (403).
    #[arg(long)]
    pub require_metadata_flavor: bool,
    /// Identify bridged pods by their source address (with their token,
    /// and tokenless in `--identity netns`) even when the bridge does not
    /// enforce source addresses (no permanent neighbour entry and static
    /// sticky FDB entry): another port can then take a pod's MAC and
    /// address, and with a stolen token act as it. Off by default.
    #[arg(long)]
    pub allow_unenforced_bridge: bool,
    /// Besides root, peers of this group (a name or a GID) may use the
    /// registration socket.
    #[arg(long, value_name = "GROUP", value_parser = parse_group)]
    pub registration_group: Option<u32>,
    /// How long a pod may look dead (network namespace gone, or rkt's pod
    /// directory gone from <dir>/pods/run) before its registration is removed.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub gc_grace: Duration,
    /// How many HMAC keys to keep after rotations (the newest signs, all verify).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub key_retention: usize,
    /// Concurrent public connections; beyond, 503. Lowered at start if the
    /// open-file limit cannot hold them (raise LimitNOFILE). 0: as many as
    /// the open-file limit holds.
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_connections: usize,
    /// Concurrent public connections of one tenant: a pod (all its
    /// addresses), an unregistered namespace (per host-side port), else an
    /// IPv4 address or IPv6 /64. Beyond, closed at accept, and the kernel
    /// then drops the tenant's new connections (a SYN filter on the
    /// listeners; its connects wait) until one of its own closes. At most a
    /// quarter of --max-connections, so only many tenants together can fill
    /// it. 0 turns the limit off.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_connections_per_source: usize,
    /// Public requests per second per pod (per source address when no pod
    /// resolves); beyond, 429 with Retry-After. 0 turns limits off.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub rate_limit: u32,
    /// Requests a pod (or source) may make at once above its rate.
    #[arg(long, default_value_t = 2000, value_name = "N")]
    pub rate_burst: u32,
    /// A request's head must arrive within this, or the connection is
    /// closed (slow-client defence).
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub header_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub idle_timeout: Duration,
    /// The SPIFFE trust domain of identity documents (`sub` is
    /// spiffe://TRUST_DOMAIN/rkt/node/NODE/pod/UUID).
    #[arg(long, default_value = "rkt.local", value_name = "DOMAIN")]
    pub trust_domain: String,
    /// This host's name in identity documents (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// The `iss` of identity documents (default: spiffe://TRUST_DOMAIN).
    #[arg(long, value_name = "ISSUER")]
    pub jwt_issuer: Option<String>,
    /// How long an identity document is valid (at most 1h).
    #[arg(long, default_value = "5m", value_parser = parse_duration, value_name = "DURATION")]
    pub jwt_ttl: Duration,
    /// The operator's intermediate CA for X509-SVIDs instead of the
    /// agent's own: its certificate (PEM: the signing CA first, then any
    /// intermediates above it, all served after each SVID). Needs
    /// --x509-ca-key and --x509-bundle.
    #[arg(long, value_name = "FILE", requires_all = ["x509_ca_key", "x509_bundle"])]
    pub x509_ca_cert: Option<PathBuf>,
    /// The private key of --x509-ca-cert (PEM PKCS#8).
    #[arg(long, value_name = "FILE", requires = "x509_ca_cert")]
    pub x509_ca_key: Option<PathBuf>,
    /// The trust domain's roots (PEM) that --x509-ca-cert chains to: the
    /// bundle handed to pods.
    #[arg(long, value_name = "FILE", requires = "x509_ca_cert")]
    pub x509_bundle: Option<PathBuf>,
    /// How long an X509-SVID is valid (at most 24h).
    #[arg(long, default_value = "1h", value_parser = parse_duration, value_name = "DURATION")]
    pub x509_ttl: Duration,
    /// Also write the JWK Set (the public keys that verify identity
    /// documents) to this file, atomically, at start and on every rotation.
    #[arg(long, value_name = "PATH")]
    pub jwks_file: Option<PathBuf>,
    /// How often watched namespace files are checked for deletion.
    #[arg(long, default_value = "500ms", value_parser = parse_duration, value_name = "DURATION")]
    pub liveness_interval: Duration,
    /// Publish this node to the cluster directory in etcd: its record (the
    /// JWK Set of its identity documents) and each pod's `GET /pods`
    /// entry, under a lease kept alive. Comma-separated http[s]://host:port,
    /// every member: the agent starts at the one its --node-name picks and
    /// fails over to the others. Off by default: without it nothing
    /// connects to etcd. etcd being down never stops local service.
    #[arg(long, value_name = "ENDPOINTS", value_parser = parse_endpoints)]
    pub etcd: Option<Endpoints>,
    #[command(flatten)]
    pub etcd_prefix: EtcdPrefixArg,
    #[command(flatten)]
    pub etcd_access: EtcdAccessArgs,
    /// The lease of this node's keys in etcd: they vanish this long after
    /// the agent stops renewing it (a crash, a lost host). Its record is
    /// rewritten every half of it.
    #[arg(long, default_value = "30s", value_parser = parse_lease_ttl, value_name = "DURATION")]
    pub etcd_lease_ttl: Duration,
    /// Serve Prometheus metrics (`GET /metrics`) over HTTP on HOST:PORT;
    /// `off` disables it. The same text is on the registration socket.
    #[arg(long, default_value = "127.0.0.1:18113", value_parser = parse_metrics_address, value_name = "HOST:PORT|off")]
    pub metrics_address: MetricsAddress,
}

/// `--metrics-address`: where to serve metrics, or nowhere (`off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsAddress(pub Option<std::net::SocketAddr>);

fn parse_metrics_address(s: &str) -> Result<MetricsAddress, String> {
    if s == "off" {
        return Ok(MetricsAddress(None));
    }
    s.parse()
        .map(|a| MetricsAddress(Some(a)))
        .map_err(|_| format!("{s:?} is not HOST:PORT (e.g. 127.0.0.1:18113, [::1]:18113) or off"))
}

/// `--etcd ENDPOINTS`: etcd client URLs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints(pub Vec<String>);

/// TLS and a user for etcd, with etcdctl's flag names.
#[derive(Args, Debug, Clone, Default)]
pub struct EtcdAccessArgs {
    /// The CA that signed etcd's server certificate (PEM), for https://
    /// endpoints (default: the system's CA bundle).
    #[arg(long, value_name = "FILE", requires = "etcd")]
    pub etcd_cacert: Option<PathBuf>,
    /// A client certificate (PEM) for etcd's --client-cert-auth.
    #[arg(long, value_name = "FILE", requires_all = ["etcd_key", "etcd"])]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// The etcd user (with --etcd-password-file); see `rkt-mds cluster
    /// roles` for the permissions it needs.
    #[arg(long, value_name = "NAME", requires_all = ["etcd_password_file", "etcd"])]
    pub etcd_user: Option<String>,
    /// A file holding the etcd user's password (never on the command line).
    #[arg(long, value_name = "FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
}

impl EtcdAccessArgs {
    /// The first of these flags given, if any: they mean nothing without
    /// `--etcd` (clap's `requires` does not see that where `--etcd` is one
    /// of a group, as in `verify-token`).
    pub fn first_given(&self) -> Option<&'static str> {
        [
            (self.etcd_cacert.is_some(), "--etcd-cacert"),
            (self.etcd_cert.is_some(), "--etcd-cert"),
            (self.etcd_key.is_some(), "--etcd-key"),
            (self.etcd_user.is_some(), "--etcd-user"),
            (self.etcd_password_file.is_some(), "--etcd-password-file"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
    }

    /// The flags for `cluster::etcd::Access::load`.
    pub fn flags(&self) -> crate::cluster::etcd::AccessFlags {
        crate::cluster::etcd::AccessFlags {
            cacert: self.etcd_cacert.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
            user: self.etcd_user.clone(),
            password_file: self.etcd_password_file.clone(),
        }
    }
}

impl Endpoints {
    /// Whether any endpoint is `https://`.
    pub fn https(&self) -> bool {
        self.0.iter().any(|e| e.starts_with("https://"))
    }
}

#[derive(Args, Debug, Clone)]
pub struct EtcdPrefixArg {
    /// Where the cluster directory lives in etcd: PREFIX nodes/NODE and
    /// PREFIX pods/NODE/UUID. The agent needs read and write access to
    /// this prefix, readers read access.
    #[arg(long = "etcd-prefix", default_value = crate::cluster::DEFAULT_PREFIX, value_name = "PREFIX")]
    pub prefix: String,
}

#[derive(Args, Debug)]
pub struct RegisterArgs {
    /// The pod's UUID.
    #[arg(long)]
    pub uuid: String,
    /// The pod manifest (JSON file).
    #[arg(long, value_name = "FILE")]
    pub manifest: PathBuf,
    /// An app's image manifest; repeatable.
    #[arg(long = "app", value_name = "NAME=IMAGE_MANIFEST")]
    pub apps: Vec<String>,
    /// The pod's network namespace file.
    #[arg(long, value_name = "PATH", conflicts_with = "pid")]
    pub netns: Option<PathBuf>,
    /// A process inside the pod.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// The token (default: 128 random bits as 32 hex digits).
    #[arg(long)]
    pub token: Option<String>,
    /// Host address the pod reaches the agent at, for AC_METADATA_URL.
    /// Default: with --netns or --pid, the host's own address on its route
    /// to the pod's address (what the kernel would use to reach the pod);
    /// for a host-network pod, 127.0.0.1.
    #[arg(long, value_name = "ADDR")]
    pub host: Option<IpAddr>,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Args, Debug)]
pub struct UnregisterArgs {
    /// The pod's UUID.
    pub uuid: String,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Print the agent's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Exit 1 when any conflict, gone or long-unknown namespace, or a
    /// bridged pod on a bridge that does not enforce source addresses
    /// (state `unenforced`), exists.
    #[arg(long)]
    pub check: bool,
    /// With --check: an `unenforced` pod is no failure (the agent runs
    /// with --allow-unenforced-bridge).
    #[arg(long)]
    pub allow_unenforced_bridge: bool,
    /// With --check: how old a netns-unknown entry must be to count
    /// (default: the agent's --gc-grace; with --etcd, they count only
    /// when this is given).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub grace: Option<Duration>,
    #[command(flatten)]
    pub socket: SocketArg,
    /// Audit the whole cluster from the etcd cluster directory instead of
    /// one agent (comma-separated http[s]://host:port): a NODE column, and an
    /// address held by pods on two nodes is a conflict. With --check, a
    /// stale node record (on no lease, or without a readable time) counts
    /// too.
    #[arg(long, value_name = "ENDPOINTS", value_parser = parse_endpoints)]
    pub etcd: Option<Endpoints>,
    #[command(flatten)]
    pub etcd_prefix: EtcdPrefixArg,
    #[command(flatten)]
    pub etcd_access: EtcdAccessArgs,
    /// Accepted for older scripts, and no longer used: a node's record
    /// is current while its lease lives (its agent lets the lease go when
    /// etcd refuses its writes for 3 TTLs), however long ago it was
    /// written.
    #[arg(long, default_value = "30s", value_parser = parse_lease_ttl, value_name = "DURATION")]
    pub etcd_lease_ttl: Duration,
}

#[derive(Args, Debug)]
pub struct JwksArgs {
    /// The etcd cluster directory (comma-separated http[s]://host:port).
    #[arg(long, value_name = "ENDPOINTS", value_parser = parse_endpoints)]
    pub etcd: Endpoints,
    #[command(flatten)]
    pub etcd_prefix: EtcdPrefixArg,
    #[command(flatten)]
    pub etcd_access: EtcdAccessArgs,
}

#[derive(Args, Debug)]
pub struct BundleArgs {
    /// The agent's registration socket (without --etcd).
    #[arg(long, default_value = DEFAULT_SOCKET, value_name = "PATH", conflicts_with = "etcd")]
    pub socket: PathBuf,
    /// Every node's authorities, from the etcd cluster directory
    /// (comma-separated http[s]://host:port).
    #[arg(long, value_name = "ENDPOINTS", value_parser = parse_endpoints)]
    pub etcd: Option<Endpoints>,
    #[command(flatten)]
    pub etcd_prefix: EtcdPrefixArg,
    #[command(flatten)]
    pub etcd_access: EtcdAccessArgs,
}

#[derive(Args, Debug)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub action: KeysAction,
}

#[derive(Subcommand, Debug)]
pub enum KeysAction {
    /// Add new signing keys (both kinds, or --kind); older kept keys still
    /// verify.
    Rotate(RotateArgs),
    /// List kept keys of both kinds (ids and times, never the keys) as a
    /// table.
    List(KeysListArgs),
}

#[derive(Args, Debug)]
pub struct KeysListArgs {
    /// Print the agent's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Args, Debug)]
pub struct RotateArgs {
    /// Rotate only this kind.
    #[arg(long, value_enum)]
    pub kind: Option<KeyKind>,
    #[command(flatten)]
    pub socket: SocketArg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyKind {
    /// rkt's sign/verify key.
    Hmac,
    /// The identity documents' key.
    Jwt,
    /// The node's X.509 CA (only when named: the old CA stays in the
    /// bundle for a day, until every SVID it signed has expired).
    X509,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// Who the document is for (its `aud`).
    #[arg(long)]
    pub audience: String,
    /// A document for this app of the pod instead of the pod.
    #[arg(long)]
    pub app: Option<String>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("keys").required(true).args(["jwks", "socket", "etcd"])))]
pub struct VerifyTokenArgs {
    /// The audience the document must be for.
    #[arg(long)]
    pub audience: String,
    /// An accepted issuer (`iss`); repeatable. Default: any.
    #[arg(long = "issuer", value_name = "ISSUER")]
    pub issuers: Vec<String>,
    /// The trust domain the document's `sub` must be in. Default: any.
    #[arg(long, value_name = "DOMAIN")]
    pub trust_domain: Option<String>,
    /// The JWK Set, from a file.
    #[arg(long, value_name = "FILE")]
    pub jwks: Option<PathBuf>,
    /// The JWK Set, from the agent's registration socket.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The cluster's trust bundle (every node's JWK Set), from the etcd
    /// cluster directory (comma-separated http[s]://host:port): a document
    /// from any node of the cluster verifies.
    #[arg(long, value_name = "ENDPOINTS", value_parser = parse_endpoints)]
    pub etcd: Option<Endpoints>,
    #[command(flatten)]
    pub etcd_prefix: EtcdPrefixArg,
    #[command(flatten)]
    pub etcd_access: EtcdAccessArgs,
    /// The token, or @FILE to read it from a file.
    pub token: String,
}

#[derive(Args, Debug)]
pub struct SignArgs {
    /// The file whose contents to sign.
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    /// Write the signature here instead of stdout.
    #[arg(long, value_name = "SIG")]
    pub output: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The signed file.
    #[arg(long, value_name = "FILE")]
    pub file: PathBuf,
    /// UUID of the pod that signed it.
    #[arg(long)]
    pub uuid: String,
    /// The signature, or @FILE to read it from a file.
    #[arg(long)]
    pub signature: String,
}

/// `250ms`, `10s`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 10s, 2m or 1h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(n.saturating_mul(3600))),
        _ => Err(format!("{s:?}: unit must be ms, s, m or h")),
    }
}

/// `--registration-group`: a GID, or a group name looked up in the group
/// database.
fn parse_group(s: &str) -> Result<u32, String> {
    if let Ok(gid) = s.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(s) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(format!("no group named {s:?} (give a name or a GID)")),
        Err(e) => Err(format!("cannot look up group {s:?}: {e}")),
    }
}

/// A duration as a person writes it, in the largest unit that is exact:
/// `0s`, `500ms`, `90s`, `2m`, `2h` (what `parse_duration` reads back).
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() % 1_000_000 != 0 {
        return format!("{d:?}");
    }
    if d.subsec_millis() != 0 {
        return format!("{}ms", d.as_millis());
    }
    match d.as_secs() {
        0 => "0s".into(),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// `http[s]://host:port[,http[s]://host:port...]`.
pub fn parse_endpoints(s: &str) -> Result<Endpoints, String> {
    let mut out = Vec::new();
    for e in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (scheme, authority) = match (e.strip_prefix("http://"), e.strip_prefix("https://")) {
            (Some(a), _) => ("http", a),
            (_, Some(a)) => ("https", a),
            _ => {
                return Err(format!(
                    "{e}: an endpoint is http://host:port or https://host:port"
                ))
            }
        };
        let authority = authority.trim_end_matches('/');
        let port = authority
            .rsplit_once(':')
            .map(|(host, port)| (host, port.parse::<u16>()));
        match port {
            Some((host, Ok(p))) if !host.is_empty() && p != 0 && !host.contains('/') => {}
            _ => {
                return Err(format!(
                    "{e}: an endpoint is http://host:port or https://host:port"
                ))
            }
        }
        out.push(format!("{scheme}://{authority}"));
    }
    if out.is_empty() {
        return Err("no endpoint: give http[s]://host:port[,http[s]://host:port...]".into());
    }
    Ok(Endpoints(out))
}

/// A lease TTL: whole seconds, at least 1 s (etcd may raise it to its
/// minimum), at most a day.
fn parse_lease_ttl(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(86_400) {
        return Err(format!("{s:?}: a lease TTL is 1s to 24h"));
    }
    Ok(Duration::from_secs(d.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_given() {
        for given in ["0s", "500ms", "1500ms", "10s", "90s", "2m", "2h", "1h"] {
            let d = parse_duration(given).unwrap();
            assert_eq!(format_duration(d), given);
        }
        assert_eq!(format_duration(parse_duration("120s").unwrap()), "2m");
    }

    #[test]
    fn groups_by_name_or_gid() {
        assert_eq!(parse_group("0"), Ok(0));
        assert_eq!(parse_group("root"), Ok(0));
        assert!(parse_group("no-such-group-xyz")
            .unwrap_err()
            .contains("no group named"));
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoints("http://127.0.0.1:2379, http://[::1]:2379/"),
            Ok(Endpoints(vec![
                "http://127.0.0.1:2379".into(),
                "http://[::1]:2379".into()
            ]))
        );
        assert_eq!(
            parse_endpoints("https://etcd-1.example.org:2379"),
            Ok(Endpoints(vec!["https://etcd-1.example.org:2379".into()]))
        );
        for bad in [
            "",
            ",",
            "127.0.0.1:2379",
            "http://host",
            "https://h",
            "ftp://h:1",
            "http://:1",
            "http://h:0",
        ] {
            assert!(parse_endpoints(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_lease_ttl("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_lease_ttl("500ms").is_err());
    }
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("x").is_err());
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5d").is_err());
    }
}
