//! Which namespace a registration names: `netns=`, `pid=`, rkt's pod
//! directory. Every source is opened (without blocking, type-checked) and
//! held open while they are compared, so "same namespace" is sound: no
//! instance can die and hand its inode to another meanwhile. Blocking file
//! I/O: call from a blocking thread.

use netns::NetnsFile;

use super::{rkt_dir::RktDir, RegisterError};
use crate::appc::PodUuid;

/// What the sources of a registration say.
#[derive(Debug)]
pub enum Found {
    /// A namespace (every source that names one agrees).
    Netns(NetnsFile),
    /// No namespace yet, but rkt's pod directory exists: rkt writes the
    /// `netns` file after it registers.
    Pending,
    /// No namespace and no rkt pod: host network.
    HostNetwork,
}

/// The registration's namespace, from every source it has; the sources
/// must agree, and none may name the agent's own namespace.
pub fn find_netns(
    rkt: &RktDir,
    uuid: &PodUuid,
    netns: Option<&str>,
    pid: Option<&str>,
) -> Result<Found, RegisterError> {
    let mut found: Vec<(&'static str, NetnsFile)> = Vec::new();
    if let Some(path) = netns.filter(|p| !p.is_empty()) {
        if !path.starts_with('/') {
            return Err(RegisterError::BadNetns(format!(
                "netns must be an absolute path, got {path:?}"
            )));
        }
        found.push(("netns", open(path)?));
    }
    if let Some(pid) = pid.filter(|p| !p.is_empty()) {
        let pid: u32 =
            pid.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                RegisterError::BadNetns(format!("pid {pid:?} is not a process id"))
            })?;
        let file = NetnsFile::of_pid(pid).map_err(|e| RegisterError::BadNetns(e.to_string()))?;
        found.push(("pid", file));
    }
    match rkt.netns_path(uuid) {
        Ok(Some(path)) => found.push(("rkt pod directory", open_rkt(&path)?)),
        Ok(None) => {}
        Err(reason) => {
            return Err(RegisterError::BadNetns(format!(
                "rkt pod directory: {reason}"
            )))
        }
    }
    let Some(((first_src, first), rest)) = found.split_first() else {
        return Ok(if rkt.has_pod(uuid) {
            Found::Pending
        } else {
            Found::HostNetwork
        });
    };
    if let Some((src, other)) = rest.iter().find(|(_, f)| !f.same_namespace(first)) {
        return Err(RegisterError::NetnsConflict(format!(
            "{first_src} names network namespace net:[{}] but {src} names net:[{}]",
            first.ino(),
            other.ino()
        )));
    }
    refuse_own(first)?;
    let (_, file) = found.swap_remove(0);
    Ok(Found::Netns(file))
}

/// The namespace named by rkt's pod-directory file, for lazy discovery.
pub fn discover_netns(rkt: &RktDir, uuid: &PodUuid) -> Result<Option<NetnsFile>, String> {
    let Some(path) = rkt.netns_path(uuid)? else {
        return Ok(None);
    };
    let file = open_rkt(&path).map_err(|e| e.to_string())?;
    refuse_own(&file).map_err(|e| e.to_string())?;
    Ok(Some(file))
}

fn open(path: &str) -> Result<NetnsFile, RegisterError> {
    NetnsFile::open(path).map_err(|e| RegisterError::BadNetns(e.to_string()))
}

fn open_rkt(path: &std::path::Path) -> Result<NetnsFile, RegisterError> {
    NetnsFile::open(path).map_err(|e| RegisterError::BadNetns(format!("rkt pod directory: {e}")))
}

/// A pod bound to the agent's own namespace would be "verified" from every
/// host address: that is a host-network pod, registered without a
/// namespace.
fn refuse_own(file: &NetnsFile) -> Result<(), RegisterError> {
    let own = NetnsFile::current().map_err(|e| RegisterError::BadNetns(e.to_string()))?;
    if file.same_namespace(&own) {
        return Err(RegisterError::BadNetns(format!(
            "{} is the agent's own network namespace: register a host-network pod without netns= or pid=",
            file.path().display()
        )));
    }
    Ok(())
}
