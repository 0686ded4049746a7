//! A process's view of its network namespace's TCP sockets, from
//! `/proc/PID/net/tcp` and `tcp6`.

/// `st` of an established connection.
pub const ESTABLISHED: u8 = 0x01;
/// `st` of a connection the peer closed and the owner has not.
pub const CLOSE_WAIT: u8 = 0x08;

/// One line of the tables.
pub struct TcpSocket {
    pub local_port: u16,
    pub remote_port: u16,
    pub state: u8,
    /// The socket's inode, as `/proc/PID/fd` links name it (`socket:[N]`).
    pub inode: String,
}

/// Every TCP socket (IPv4 and IPv6) of `pid`'s network namespace; none
/// when the process is gone.
pub fn tcp_sockets(pid: u32) -> Vec<TcpSocket> {
    let port = |field: Option<&&str>| {
        field
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|t| std::fs::read_to_string(format!("/proc/{pid}/net/{t}")).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    Some(TcpSocket {
                        local_port: port(f.get(1))?,
                        remote_port: port(f.get(2))?,
                        state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                        inode: (*f.get(9)?).to_owned(),
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `pid`'s own TCP connections to `port` (those of its namespace that
/// its file descriptors hold).
pub fn connections_to(pid: u32, port: u16) -> usize {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .filter_map(|l| {
                    let l = l.to_string_lossy().into_owned();
                    l.strip_prefix("socket:[")?
                        .strip_suffix(']')
                        .map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    tcp_sockets(pid)
        .iter()
        .filter(|s| s.remote_port == port && inodes.contains(&s.inode))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accepted_connection_is_seen_at_both_ends() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _server = listener.accept().unwrap();
        let sockets = tcp_sockets(std::process::id());
        let server_ends = sockets
            .iter()
            .filter(|s| s.local_port == port && s.state == ESTABLISHED)
            .count();
        let client_ends = sockets.iter().filter(|s| s.remote_port == port).count();
        assert_eq!((server_ends, client_ends), (1, 1));
    }
}
