//! Binding the two listeners, or taking them from systemd socket
//! activation (SPEC §1).

use std::{
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
};

use socket2::{Domain, Protocol, Socket, Type};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot create {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("another process is already serving {0}: stop it first")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket: refusing to replace it")]
    NotASocket(PathBuf),
    #[error("cannot bind {what}: {source}")]
    Bind { what: String, source: io::Error },
    #[error("socket activation: {0}")]
    Activation(String),
}

/// The listening sockets: std types, already non-blocking, for tokio to adopt.
pub struct Listeners {
    pub registration: std::os::unix::net::UnixListener,
    pub public: Vec<std::net::TcpListener>,
    /// The SPIFFE Workload API's (none when its port is 0).
    pub workload: Vec<std::net::TcpListener>,
    /// The Workload API's Unix socket and its path (removed at a clean
    /// stop), unless `off`.
    pub workload_unix: Option<(std::os::unix::net::UnixListener, PathBuf)>,
    /// The socket file to remove on clean exit (`None` under activation:
    /// systemd owns it).
    pub owned_socket: Option<PathBuf>,
    pub activated: bool,
}

/// What to bind when not socket-activated.
pub struct Plan<'a> {
    pub socket: &'a Path,
    pub port: u16,
    pub addresses: &'a [IpAddr],
    /// The Workload API's port (0: none), on the same addresses; bound by
    /// the agent even under socket activation.
    pub workload_port: u16,
    /// IP TTL and IPv6 hop limit of what the TCP listeners send: 1 keeps
    /// every answer, the handshake's included, on the pod's own link.
    pub hop_limit: u8,
    /// The Workload API's Unix socket (mode 0666, its directory 0755 if
    /// made), or none.
    pub workload_socket: Option<&'a Path>,
}

/// What systemd passed (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`).
pub struct Activation {
    passed: Option<(listenfd::ListenFd, Vec<String>)>,
}

impl Activation {
    /// Reads the `LISTEN_*` variables and unsets them, as systemd asks.
    /// Changing the environment while other threads run is unsound: call
    /// this first thing in `main`, before any thread (the log writer, the
    /// runtime) starts.
    pub fn take_from_env() -> Self {
        let ours = std::env::var("LISTEN_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            == Some(std::process::id());
        let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .map(|n| n.split(':').map(str::to_owned).collect())
            .unwrap_or_default();
        if !ours {
            return Self { passed: None };
        }
        // listenfd unsets LISTEN_PID and LISTEN_FDS; FDNAMES is ours to drop.
        let fds = listenfd::ListenFd::from_env();
        std::env::remove_var("LISTEN_FDNAMES");
        Self {
            passed: Some((fds, names)),
        }
    }

    /// No sockets passed (tests, and other subcommands).
    pub fn none() -> Self {
        Self { passed: None }
    }
}

/// Takes activated sockets when systemd passed any, else binds per plan.
/// Under activation, TCP listeners not passed are bound per plan too.
pub fn listen(plan: &Plan<'_>, activation: Activation) -> Result<Listeners, ListenError> {
    let activated = take_activated(activation)?;
    let (registration, owned_socket, mut public, is_activated) = match activated {
        Some((unix, tcp)) => {
            let unix = match unix {
                Some(u) => u,
                None => {
                    return Err(ListenError::Activation(
                        "no Unix stream socket was passed".into(),
                    ))
                }
            };
            (unix, None, tcp, true)
        }
        None => (
            bind_unix(plan.socket)?,
            Some(plan.socket.to_path_buf()),
            Vec::new(),
            false,
        ),
    };
    if public.is_empty() {
        public = bind_tcp(plan.port, plan.addresses)?;
    }
    let workload = match plan.workload_port {
        0 => Vec::new(),
        port => bind_tcp(port, plan.addresses)?,
    };
    // Any process may connect: who it is comes from its namespace.
    let workload_unix = match plan.workload_socket {
        Some(path) => {
            let l = bind_unix_mode(path, 0o666)?;
            l.set_nonblocking(true)
                .map_err(|source| ListenError::Bind {
                    what: path.display().to_string(),
                    source,
                })?;
            Some((l, path.to_path_buf()))
        }
        None => None,
    };
    for l in public.iter().chain(&workload) {
        set_hop_limit(l, plan.hop_limit).map_err(|source| ListenError::Bind {
            what: format!("hop limit {} on a TCP listener", plan.hop_limit),
            source,
        })?;
        l.set_nonblocking(true)
            .map_err(|source| ListenError::Bind {
                what: "public listener".into(),
                source,
            })?;
    }
    registration
        .set_nonblocking(true)
        .map_err(|source| ListenError::Bind {
            what: "registration socket".into(),
            source,
        })?;
    Ok(Listeners {
        registration,
        public,
        workload,
        workload_unix,
        owned_socket,
        activated: is_activated,
    })
}

type Activated = (
    Option<std::os::unix::net::UnixListener>,
    Vec<std::net::TcpListener>,
);

/// The passed sockets: one Unix stream listener, any TCP listeners.
fn take_activated(activation: Activation) -> Result<Option<Activated>, ListenError> {
    let Some((mut fds, names)) = activation.passed else {
        return Ok(None);
    };
    if fds.len() == 0 {
        return Ok(None);
    }
    let mut unix = None;
    let mut tcp = Vec::new();
    for i in 0..fds.len() {
        let name = names.get(i).map(String::as_str).unwrap_or("");
        if let Ok(Some(u)) = fds.take_unix_listener(i) {
            if unix.is_some() {
                return Err(ListenError::Activation(format!(
                    "more than one Unix socket passed (fd {}, name {name:?})",
                    3 + i
                )));
            }
            tracing::info!(fd = 3 + i, name, "registration socket from systemd");
            unix = Some(u);
        } else if let Ok(Some(t)) = fds.take_tcp_listener(i) {
            tracing::info!(fd = 3 + i, name, addr = ?t.local_addr().ok(), "public listener from systemd");
            tcp.push(t);
        } else {
            return Err(ListenError::Activation(format!(
                "fd {} ({name:?}) is neither a Unix stream nor a TCP listener",
                3 + i
            )));
        }
    }
    Ok(Some((unix, tcp)))
}

fn bind_unix(path: &Path) -> Result<std::os::unix::net::UnixListener, ListenError> {
    bind_unix_mode(path, 0o660)
}

fn bind_unix_mode(path: &Path, mode: u32) -> Result<std::os::unix::net::UnixListener, ListenError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .and_then(|()| {
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                })
                .map_err(|source| ListenError::Dir {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ListenError::NotASocket(path.to_path_buf()));
        }
        // A stale socket from a crash is replaced; a live one is not.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ListenError::InUse(path.to_path_buf()));
        }
        let _ = std::fs::remove_file(path);
    }
    let bind_err = |source| ListenError::Bind {
        what: path.display().to_string(),
        source,
    };
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(bind_err)?;
    Ok(listener)
}

/// Sets what a listener (and so the SYN-ACK and every connection it
/// accepts) sends with: IP TTL, and the IPv6 unicast hop limit on an IPv6
/// socket (whose IPv4-mapped peers get the TTL).
fn set_hop_limit(listener: &std::net::TcpListener, hops: u8) -> io::Result<()> {
    let socket = socket2::SockRef::from(listener);
    if listener.local_addr()?.is_ipv6() {
        socket.set_unicast_hops_v6(u32::from(hops))?;
        // A dual-stack socket's IPv4-mapped peers get the IPv4 TTL; an
        // IPv6-only socket has no IPv4 side to set.
        match socket.set_ttl_v4(u32::from(hops)) {
            Err(e) if !socket.only_v6().unwrap_or(false) => Err(e),
            _ => Ok(()),
        }
    } else {
        socket.set_ttl_v4(u32::from(hops))
    }
}

/// Binds `port` on each address; with none, one dual-stack `[::]` socket
/// (IPv4 peers arrive as `::ffff:a.b.c.d`), or `0.0.0.0` where the host
/// has no IPv6.
fn bind_tcp(port: u16, addresses: &[IpAddr]) -> Result<Vec<std::net::TcpListener>, ListenError> {
    if addresses.is_empty() {
        return match tcp_socket(
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            true,
        ) {
            Ok(l) => Ok(vec![l]),
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => Ok(vec![tcp_socket(
                SocketAddr::from(([0, 0, 0, 0], port)),
                false,
            )
            .map_err(|source| ListenError::Bind {
                what: format!("0.0.0.0:{port}"),
                source,
            })?]),
            Err(source) => Err(ListenError::Bind {
                what: format!("[::]:{port}"),
                source,
            }),
        };
    }
    addresses
        .iter()
        .map(|a| {
            let addr = SocketAddr::new(*a, port);
            tcp_socket(addr, false).map_err(|source| ListenError::Bind {
                what: addr.to_string(),
                source,
            })
        })
        .collect()
}

fn tcp_socket(addr: SocketAddr, dual_stack: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(!dual_stack)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}
