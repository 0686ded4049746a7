//! Keeps the public listeners' SYN filter (`tenant::syn_filter`) in step
//! with the sources that went beyond their connection share.

use std::{io, sync::Arc, time::Duration};

use socket2::Socket;
use tokio::sync::watch;

use super::warn_refusal;
use crate::{
    state::AppState,
    tenant::{
        syn_filter::{socket_filter, MAX_FILTERED},
        SourceKey, Subject,
    },
};

/// At most one new program per this long: a source flapping at the edge
/// of its share cannot make the kernel compile a filter per connection.
/// Between changes, an over-share connection is still closed at accept.
const MIN_INTERVAL: Duration = Duration::from_millis(50);

/// Runs until `stop`. `listeners` are duplicates of the public listening
/// sockets (a filter set through one fd applies to the socket).
pub(super) async fn keep(
    state: Arc<AppState>,
    listeners: Vec<Socket>,
    mut stop: watch::Receiver<bool>,
) {
    let connections = state.tenancy.connections.clone();
    // Under socket activation the sockets outlive us: a filter a previous
    // agent left must not keep refusing sources that are no longer over.
    let _ = apply(&listeners, &[]);
    let mut attached: Vec<SourceKey> = Vec::new();
    loop {
        tokio::select! {
            () = connections.over_share_changed() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let over = connections.over_share(MAX_FILTERED);
        if over != attached {
            let applied = apply(&listeners, &over);
            if let Err(e) = &applied {
                warn_refusal(
                    &state,
                    Subject::Agent,
                    "syn-filter-failed",
                    &format!("cannot set the listeners' SYN filter (over-share connections are still closed at accept): {e}"),
                );
            }
            tracing::debug!(
                sources = over.len(),
                ok = applied.is_ok(),
                "SYN filter updated"
            );
            connections.set_filtered(if applied.is_ok() { over.len() } else { 0 });
            attached = over;
        }
        tokio::select! {
            () = tokio::time::sleep(MIN_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    let _ = apply(&listeners, &[]);
    connections.set_filtered(0);
}

fn apply(listeners: &[Socket], sources: &[SourceKey]) -> io::Result<()> {
    let program = (!sources.is_empty()).then(|| socket_filter(sources));
    let mut result = Ok(());
    for l in listeners {
        let r = match &program {
            Some(p) => l.attach_filter(p),
            None => detach(l),
        };
        if r.is_err() {
            result = r;
        }
    }
    result
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
        net::{IpAddr, SocketAddr, TcpListener},
        time::Duration,
    };

    use socket2::{Domain, Protocol, Socket, Type};

    use super::*;

    fn connect_from(src: &str, to: SocketAddr) -> io::Result<Socket> {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        s.bind(&SocketAddr::new(src.parse::<IpAddr>().unwrap(), 0).into())?;
        s.connect_timeout(&to.into(), Duration::from_millis(300))?;
        Ok(s)
    }

    #[test]
    fn the_kernel_drops_new_connections_of_listed_sources_until_lifted() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap();
        let filtered = vec![Socket::from(listener.try_clone().unwrap())];
        let open = connect_from("127.0.0.3", to).expect("before the filter");
        let listed = SourceKey::of("127.0.0.3".parse().unwrap());
        apply(&filtered, &[listed]).unwrap();
        let r = connect_from("127.0.0.3", to);
        assert!(
            matches!(&r, Err(e) if e.kind() == io::ErrorKind::TimedOut),
            "{r:?}"
        );
        assert!(connect_from("127.0.0.4", to).is_ok(), "another source");
        // A connection opened before is untouched.
        let (accepted, _) = listener.accept().unwrap();
        open.send(b"x").unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(
            accepted.peek(&mut buf).unwrap(),
            1,
            "data of an open connection passes"
        );
        // What `keep` does at start and at stop, and twice is no error.
        apply(&filtered, &[]).unwrap();
        apply(&filtered, &[]).unwrap();
        assert!(connect_from("127.0.0.3", to).is_ok(), "lifted");
    }
}
