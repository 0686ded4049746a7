//! The address space tests may use, and nothing else: 198.18.0.0/15
//! (routed pods' /30s, and bridges' /24s in 198.19.240.0/20) and a random
//! per-process ULA /48.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr},
    sync::OnceLock,
};

use crate::{netlink, plumbing, setup::step};

/// Bridges take their /24s from 198.19.240.0/20: 16 of them.
pub(crate) const BRIDGE_SPACE: Ipv4Addr = Ipv4Addr::new(198, 19, 240, 0);
pub(crate) const BRIDGE_SPACE_LEN: u32 = 20;

/// Whether `a` lies in the space bridges take their subnets from.
pub(crate) fn in_bridge_space(a: Ipv4Addr) -> bool {
    u32::from(a) >> (32 - BRIDGE_SPACE_LEN) == u32::from(BRIDGE_SPACE) >> (32 - BRIDGE_SPACE_LEN)
}

/// Every IPv4 address configured in the host namespace.
pub(crate) fn host_addresses() -> HashSet<Ipv4Addr> {
    step(
        "listing the host's addresses",
        netlink::in_own(|h| async move { plumbing::ipv4_addresses(&h).await }),
    )
}

/// Panics unless `addr/prefix_len` lies inside the ranges tests may use:
/// 198.18.0.0/15 and this process's ULA /48.
pub(crate) fn assert_test_range(addr: IpAddr, prefix_len: u8) {
    let inside = match addr {
        IpAddr::V4(a) => {
            (15..=32).contains(&prefix_len)
                && u32::from(a) >> 17 == u32::from(Ipv4Addr::new(198, 18, 0, 0)) >> 17
        }
        IpAddr::V6(a) => (48..=128).contains(&prefix_len) && a.segments()[..3] == ula_prefix()[..],
    };
    let p = ula_prefix();
    assert!(
        inside,
        "{addr}/{prefix_len} is outside the test ranges 198.18.0.0/15 and {:x}:{:x}:{:x}::/48",
        p[0], p[1], p[2]
    );
}

/// `fdXX:XXXX:XXXX::/48`, random per process.
pub(crate) fn ula_prefix() -> &'static [u16; 3] {
    static PREFIX: OnceLock<[u16; 3]> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let mut b = [0u8; 5];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            let _ = std::io::Read::read_exact(&mut f, &mut b);
        }
        [
            0xfd00 | b[0] as u16,
            u16::from_be_bytes([b[1], b[2]]),
            u16::from_be_bytes([b[3], b[4]]),
        ]
    })
}
