//! Running rtnetlink requests in a namespace.
//!
//! Every call gets a dedicated short-lived thread that enters the
//! namespace (or stays in the caller's), builds a current-thread tokio
//! runtime and opens the netlink socket there: a socket belongs to the
//! namespace of the thread that created it, so requests act on that
//! namespace. No tokio worker thread ever calls setns, and a test's own
//! runtime, if it has one, is never nested into.

use std::{fmt, future::Future, time::Duration};

use netns::NetnsFile;
pub use rtnetlink::Handle;

/// Bounds a whole call: a kernel that never answers fails the test
/// instead of hanging it.
const LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub enum Error {
    /// The thread, the runtime or the socket could not be set up.
    Setup(String),
    /// A request that cannot be expressed (a bad prefix, say).
    Invalid(String),
    /// The kernel has no link of that name.
    NoLink(String),
    /// The kernel refused a request, or the connection broke.
    Netlink(rtnetlink::Error),
    /// No answer within [`LIMIT`].
    TimedOut,
}

impl Error {
    /// The errno the kernel refused the request with.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Netlink(rtnetlink::Error::NetlinkError(m)) => Some(m.raw_code().abs()),
            _ => None,
        }
    }

    /// Whether the link asked for does not exist.
    pub fn is_no_link(&self) -> bool {
        matches!(self, Self::NoLink(_)) || self.errno() == Some(nix::errno::Errno::ENODEV as i32)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Setup(e) => write!(f, "netlink set-up: {e}"),
            Self::Invalid(e) => write!(f, "invalid request: {e}"),
            Self::NoLink(name) => write!(f, "no link {name}"),
            Self::Netlink(e) => write!(f, "{e}"),
            Self::TimedOut => write!(f, "no netlink answer within {LIMIT:?}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<rtnetlink::Error> for Error {
    fn from(e: rtnetlink::Error) -> Self {
        Self::Netlink(e)
    }
}

/// Runs `f` with a handle whose socket is in the caller's namespace (the
/// host's, for the harness).
pub fn in_own<T, F, Fut>(f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, Error>>,
{
    std::thread::Builder::new()
        .name("netlink".into())
        .spawn(move || on_this_thread(f))
        .map_err(|e| Error::Setup(format!("spawning a thread: {e}")))?
        .join()
        .map_err(|_| Error::Setup("the netlink thread panicked".into()))?
}

/// Runs `f` with a handle whose socket is in `ns`.
pub fn in_netns<T, F, Fut>(ns: &NetnsFile, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, Error>>,
{
    netns::run_in(ns, move || on_this_thread(f))
        .map_err(|e| Error::Setup(format!("entering {}: {e}", ns.path().display())))?
}

/// The body of the dedicated thread: the runtime, the socket and `f`, all
/// gone when it returns.
fn on_this_thread<T, F, Fut>(f: F) -> Result<T, Error>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Setup(format!("building a runtime: {e}")))?;
    runtime.block_on(async {
        let (connection, handle, _) = rtnetlink::new_connection()
            .map_err(|e| Error::Setup(format!("opening a netlink socket: {e}")))?;
        let driver = tokio::spawn(connection);
        let result = tokio::time::timeout(LIMIT, f(handle)).await;
        driver.abort();
        result.map_err(|_| Error::TimedOut)?
    })
}
