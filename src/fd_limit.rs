//! The open-file limit, as a busy public side needs it: one descriptor
//! per connection, one per watched namespace, and room to spare so the
//! registration socket always accepts. systemd's default soft limit (1024)
//! would let 1,100 connections from one pod starve `accept` everywhere.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Descriptors kept for everything but public connections: the listeners,
/// the registration socket's clients, namespace watchers, files.
pub const RESERVE: u64 = 1024;

/// What start-up made of the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft limit now (raised to the hard limit where it was lower).
    pub limit: u64,
    /// Public connections that fit beside the reserve.
    pub public_connections: usize,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard one and works out how many
/// public connections fit: `wanted`, or fewer if the limit is too low.
pub fn raise(wanted: usize) -> std::io::Result<FdBudget> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    let limit = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(_) => soft,
        }
    } else {
        soft
    };
    Ok(budget(limit, wanted))
}

fn budget(limit: u64, wanted: usize) -> FdBudget {
    let fits = limit.saturating_sub(RESERVE).max(64);
    FdBudget {
        limit,
        public_connections: wanted.min(usize::try_from(fits).unwrap_or(usize::MAX)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_the_reserve() {
        assert_eq!(budget(65536, 4096).public_connections, 4096);
        assert_eq!(budget(2048, 4096).public_connections, 1024);
        assert_eq!(budget(1024, 4096).public_connections, 64);
    }

    #[test]
    fn raising_never_fails_or_lowers() {
        let before = getrlimit(Resource::RLIMIT_NOFILE).unwrap().0;
        let b = raise(4096).unwrap();
        assert!(b.limit >= before);
    }
}
