//! Keeps the public listeners' SYN filter (`tenant::syn_filter`) in step
//! with the tenants that went beyond their connection share.

use std::{io, net::IpAddr, sync::Arc, time::Duration};

use socket2::Socket;
use tokio::sync::watch;

use super::warn_refusal;
use crate::{
    state::AppState,
    tenant::{
        syn_filter::{filterable, socket_filter, Entry, MAX_FILTERED, MAX_INTERFACES},
        SourceKey, Subject,
    },
};

/// At most one new program per this long: a source flapping at the edge
/// of its share cannot make the kernel compile a filter per connection.
/// Between changes, an over-share connection is still closed at accept.
const MIN_INTERVAL: Duration = Duration::from_millis(50);

/// How often a held filter is computed again (applied only if it changed).
const RECOMPUTE: Duration = Duration::from_secs(1);

/// How long after the filter is lifted an accepted connection may still
/// carry it, inherited while it waited in the accept queue.
const INHERIT_GRACE: Duration = Duration::from_secs(5);

/// Runs until `stop`. `listeners` are duplicates of the public listening
/// sockets (a filter set through one fd applies to the socket).
pub(super) async fn keep(
    state: Arc<AppState>,
    listeners: Vec<Socket>,
    mut stop: watch::Receiver<bool>,
) {
    let connections = state.tenancy.connections.clone();
    // Under socket activation the sockets outlive us: a filter a previous
    // agent left must not keep refusing addresses that are no longer over.
    if let Err(e) = detach_all(&listeners) {
        tracing::warn!(error = %e, "cannot clear the listeners' SYN filter");
    }
    // What the listeners hold; `None` after a failure or a shrink, so
    // that the next change applies again, down to an empty list.
    let mut holding: Option<Vec<Entry>> = Some(Vec::new());
    loop {
        let grace = connections.may_inherit() && connections.filtered() == 0;
        // While anything is filtered, look again now and then: a pod's
        // veth can go (and its index be given to another pod's) while its
        // connections stay over the share.
        let held = connections.filtered() > 0;
        tokio::select! {
            () = connections.over_share_changed() => {}
            () = tokio::time::sleep(RECOMPUTE), if held => {}
            () = tokio::time::sleep(INHERIT_GRACE), if grace => {
                connections.set_may_inherit(false);
                continue;
            }
            _ = stop.wait_for(|s| *s) => break,
        }
        let over: Vec<Entry> = connections
            .over_share()
            .into_iter()
            .map(|(key, addr)| entry(&state, key, addr))
            .filter(|e| !e.is_empty())
            .take(MAX_FILTERED)
            .collect();
        if !over.is_empty() {
            connections.set_may_inherit(true);
        }
        let wanted = over.len();
        if let Some((attached, error)) = reconcile(&mut holding, over, |a| apply(&listeners, a)) {
            if let Some(e) = &error {
                warn_refusal(
                    &state,
                    Subject::Agent,
                    "syn-filter-failed",
                    &format!(
                        "the listeners' SYN filter holds {attached} of {wanted} sources (the rest are still closed at accept): {e}"
                    ),
                );
            }
            tracing::debug!(sources = attached, "SYN filter updated");
            connections.set_filtered(attached);
        }
        tokio::select! {
            () = tokio::time::sleep(MIN_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    let _ = detach_all(&listeners);
    connections.set_filtered(0);
}

/// What to drop for tenant `key`, over its share, that last tried from
/// `addr`: a pod's routed veths (the ingress interfaces only it sends
/// through), or an unwatched namespace's port, and the address unless
/// other tenants share it (loopback, the host's own addresses).
fn entry(state: &AppState, key: SourceKey, addr: IpAddr) -> Entry {
    let mut interfaces = match key {
        SourceKey::Netns(cookie) => state.pods.watches().veths_into(netns::NetnsCookie(cookie)),
        SourceKey::Port(port) => vec![port],
        SourceKey::V4(_) | SourceKey::V6Prefix(_) => Vec::new(),
    };
    interfaces.truncate(MAX_INTERFACES);
    Entry {
        interfaces,
        address: Some(addr).filter(|a| filterable(*a) && !state.pods.is_host_address(a)),
    }
}

/// Applies `over` unless the listeners hold it already; returns what
/// `apply` said. After a failure or a shrink what they hold is unknown, and
/// the next call applies again, even an empty list.
fn reconcile(
    holding: &mut Option<Vec<Entry>>,
    over: Vec<Entry>,
    apply: impl FnOnce(&[Entry]) -> (usize, Option<io::Error>),
) -> Option<(usize, Option<io::Error>)> {
    if holding.as_ref() == Some(&over) {
        return None;
    }
    let (attached, error) = apply(&over);
    *holding = error.is_none().then_some(over);
    Some((attached, error))
}

/// Sets the program for `entries` on every listener; returns how many
/// entries it holds, and the error that made it hold fewer. A program
/// that does not fit the socket's option memory is retried with half the
/// entries; on any other failure no listener keeps a filter (the refusal
/// at accept still holds).
fn apply(listeners: &[Socket], entries: &[Entry]) -> (usize, Option<io::Error>) {
    // Detach first: the kernel charges a replacement before it frees the
    // program it replaces.
    if let Err(e) = detach_all(listeners) {
        return (0, Some(e));
    }
    let mut n = entries.len();
    let mut error = None;
    while n > 0 {
        let program = socket_filter(&entries[..n]);
        match listeners.iter().try_for_each(|l| l.attach_filter(&program)) {
            Ok(()) => return (n, error),
            Err(e) => {
                let _ = detach_all(listeners);
                let fits_fewer = e.raw_os_error() == Some(libc::ENOMEM);
                error = Some(e);
                if !fits_fewer {
                    return (0, error);
                }
                n /= 2;
            }
        }
    }
    (0, error)
}

fn detach_all(listeners: &[Socket]) -> io::Result<()> {
    listeners.iter().try_for_each(detach)
}

/// Detaching when there is no filter is not an error.
pub(super) fn detach(socket: &Socket) -> io::Result<()> {
    match socket.detach_filter() {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    //! The filter in the real kernel, on loopback (no privilege needed).

    use std::{
        net::{SocketAddr, TcpListener},
        time::Duration,
    };

    use socket2::{Domain, Protocol, Socket, Type};

    use super::*;

    fn by_address(addrs: &[IpAddr]) -> Vec<Entry> {
        addrs
            .iter()
            .map(|a| Entry {
                interfaces: Vec::new(),
                address: Some(*a),
            })
            .collect()
    }

    fn connect_from(src: &str, to: SocketAddr) -> io::Result<Socket> {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        s.bind(&SocketAddr::new(src.parse::<IpAddr>().unwrap(), 0).into())?;
        s.connect_timeout(&to.into(), Duration::from_millis(300))?;
        Ok(s)
    }

    #[test]
    fn the_kernel_drops_new_connections_of_listed_addresses_until_lifted() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap();
        let filtered = vec![Socket::from(listener.try_clone().unwrap())];
        let open = connect_from("127.0.0.3", to).expect("before the filter");
        // (Loopback is never filtered by the agent; the kernel doesn't mind.)
        let listed: IpAddr = "127.0.0.3".parse().unwrap();
        assert_eq!(apply(&filtered, &by_address(&[listed])).0, 1);
        let r = connect_from("127.0.0.3", to);
        assert!(
            matches!(&r, Err(e) if e.kind() == io::ErrorKind::TimedOut),
            "{r:?}"
        );
        assert!(connect_from("127.0.0.4", to).is_ok(), "another address");
        // A connection opened before is untouched.
        let (accepted, _) = listener.accept().unwrap();
        open.send(b"x").unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(
            accepted.peek(&mut buf).unwrap(),
            1,
            "data of an open connection passes"
        );
        // Replacing, then what `keep` does at start and at stop (twice is
        // no error).
        let other: IpAddr = "127.0.0.5".parse().unwrap();
        assert_eq!(apply(&filtered, &by_address(&[other, listed])).0, 2);
        assert_eq!(apply(&filtered, &[]).0, 0);
        detach_all(&filtered).unwrap();
        assert!(connect_from("127.0.0.3", to).is_ok(), "lifted");
    }

    /// By interface: everything that arrives on loopback (index 1) is
    /// dropped, whatever its address; another interface's entry drops
    /// nothing here. (The agent never lists loopback; the kernel doesn't
    /// mind. `isolation.rs` runs it with a routed pod's veth.)
    #[test]
    fn the_kernel_drops_new_connections_arriving_on_a_listed_interface() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap();
        let filtered = vec![Socket::from(listener.try_clone().unwrap())];
        let on = |interfaces: Vec<u32>| Entry {
            interfaces,
            address: None,
        };
        assert_eq!(apply(&filtered, &[on(vec![u32::MAX - 1])]).0, 1);
        assert!(connect_from("127.0.0.3", to).is_ok(), "another interface");
        assert_eq!(apply(&filtered, &[on(vec![1])]).0, 1);
        for src in ["127.0.0.3", "127.0.0.9"] {
            let r = connect_from(src, to);
            assert!(
                matches!(&r, Err(e) if e.kind() == io::ErrorKind::TimedOut),
                "{src}: {r:?}"
            );
        }
        detach_all(&filtered).unwrap();
        assert!(connect_from("127.0.0.9", to).is_ok(), "lifted");
    }

    /// However little option memory the socket has (`optmem_max` is 20 KiB
    /// on older kernels), a long list ends up attached in part, and says
    /// why, rather than not at all.
    #[test]
    fn a_list_too_big_for_the_socket_is_shrunk_until_it_fits() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let filtered = vec![Socket::from(listener.try_clone().unwrap())];
        let addrs: Vec<IpAddr> = (0..MAX_FILTERED as u128)
            .map(|i| IpAddr::V6(std::net::Ipv6Addr::from(0xfd00_u128 << 112 | i)))
            .collect();
        let (attached, error) = apply(&filtered, &by_address(&addrs));
        assert!(attached >= 1, "{error:?}");
        assert_eq!(
            attached < addrs.len(),
            error.is_some(),
            "{attached} {error:?}"
        );
        let optmem = std::fs::read_to_string("/proc/sys/net/core/optmem_max").unwrap_or_default();
        eprintln!(
            "optmem_max {}: {attached} of {} attached",
            optmem.trim(),
            addrs.len()
        );
        detach_all(&filtered).unwrap();
    }

    /// A list that had to shrink is applied again at the next change, and
    /// an empty list after it lifts the filter.
    #[test]
    fn after_a_shrink_the_next_change_applies_even_an_empty_list() {
        let [a, b] = by_address(&["198.18.0.2".parse().unwrap(), "198.18.0.3".parse().unwrap()])
            .try_into()
            .unwrap();
        let mut holding = Some(Vec::new());
        let mut calls = Vec::new();
        let mut step = |holding: &mut Option<Vec<Entry>>, over: Vec<Entry>, shrink: bool| {
            reconcile(holding, over, |l| {
                calls.push(l.to_vec());
                if shrink {
                    (
                        l.len() / 2,
                        Some(io::Error::from_raw_os_error(libc::ENOMEM)),
                    )
                } else {
                    (l.len(), None)
                }
            })
        };
        assert!(step(&mut holding, vec![], false).is_none(), "nothing to do");
        assert_eq!(
            step(&mut holding, vec![a.clone(), b.clone()], true).map(|r| r.0),
            Some(1)
        );
        assert_eq!(step(&mut holding, vec![], false).map(|r| r.0), Some(0));
        assert!(step(&mut holding, vec![], false).is_none(), "held now");
        assert_eq!(
            step(&mut holding, vec![a.clone()], false).map(|r| r.0),
            Some(1)
        );
        assert!(step(&mut holding, vec![a.clone()], false).is_none());
        assert_eq!(calls, vec![vec![a.clone(), b], vec![], vec![a]]);
    }
}
