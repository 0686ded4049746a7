//! A classic BPF socket filter for the public listeners that drops a new
//! connection's first packet (a bare SYN) from tenants over their
//! connection share: by the interface it arrives on where that is the
//! tenant's own (a routed pod's veth), and by the address it came from.
//!
//! Why: a source beyond its share of connections used to be accepted and
//! closed at once. A flooding client reconnects at once, so each refusal
//! cost the agent a handshake, an accept and a close, and the storm took
//! half a core from everyone else. A dropped SYN costs the kernel a few
//! instructions, and the client's TCP stack backs off by itself (SYN
//! retransmits after 1 s, 3 s, 7 s, ...). Packets of connections already
//! open are never dropped: only a SYN without ACK matches.
//!
//! The program runs from `tcp_v4_rcv`/`tcp_v6_rcv` (`tcp_filter`), where
//! the packet's data begins at the TCP header; the IP header is reached
//! through `SKF_NET_OFF`.
//!
//! The interface is what holds a routed pod, whatever source address it
//! picks next: only that pod sends into the host through its veth. A
//! bridged pod's packets arrive on the bridge, which all its pods share, so
//! for it only the address that floods is dropped; a new address of its
//! own gets through to the accept, where it is closed (the README says so).
//! Addresses that many tenants share never are dropped (see
//! [`filterable`]).

use std::net::IpAddr;

use socket2::SockFilter;

/// At most this many tenants in one program (an IPv6 address takes 9
/// instructions, an interface 2: far below the kernel's 4096 in all). The
/// kernel also charges a program to the socket's option memory
/// (`net.core.optmem_max`, 20 KiB on older kernels): the keeper shrinks
/// the list when it does not fit. Tenants left out are still refused at
/// accept.
pub const MAX_FILTERED: usize = 128;

/// At most this many interfaces of one tenant.
pub const MAX_INTERFACES: usize = 8;

/// What the filter drops the new connections of, for one tenant over its
/// share.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// The host-side interfaces (indexes) its packets arrive on: a routed
    /// pod's veths.
    pub interfaces: Vec<u32>,
    /// The address it tried to go beyond its share from, if filterable.
    pub address: Option<IpAddr>,
}

impl Entry {
    pub fn is_empty(&self) -> bool {
        self.interfaces.is_empty() && self.address.is_none()
    }
}

/// Whether new connections from `addr` may be dropped in the kernel. Not
/// loopback, link-local or unspecified addresses: host processes and
/// host-network pods share them (as they share the host's own addresses,
/// which the caller checks).
pub fn filterable(addr: IpAddr) -> bool {
    match addr.to_canonical() {
        IpAddr::V4(a) => !(a.is_loopback() || a.is_link_local() || a.is_unspecified()),
        IpAddr::V6(a) => !(a.is_loopback() || a.is_unicast_link_local() || a.is_unspecified()),
    }
}

const LD_B_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const RSH_K: u16 = (libc::BPF_ALU | libc::BPF_RSH | libc::BPF_K) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

/// Offsets into the network (IP) header, as the kernel's negative
/// "ancillary" offsets spell them.
const NET: u32 = libc::SKF_NET_OFF as u32;
const IP_VERSION: u32 = NET;
/// The interface the packet arrived on (`skb->dev->ifindex`).
const IFINDEX: u32 = (libc::SKF_AD_OFF + libc::SKF_AD_IFINDEX) as u32;
const IPV4_SOURCE: u32 = NET + 12;
const IPV6_SOURCE: u32 = NET + 8;
/// The TCP flags byte, from the start of the TCP header.
const TCP_FLAGS: u32 = 13;
const SYN: u32 = 0x02;
const ACK: u32 = 0x10;

/// Return values: the bytes to keep (all of them), or none (drop).
const KEEP: u32 = u32::MAX;
const DROP: u32 = 0;

/// One classic BPF instruction (`struct sock_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
    Insn { code, jt, jf, k }
}

/// The filter for `SO_ATTACH_FILTER`: see [`program`].
pub fn socket_filter(entries: &[Entry]) -> Vec<SockFilter> {
    program(entries)
        .into_iter()
        .map(|i| SockFilter::new(i.code, i.jt, i.jf, i.k))
        .collect()
}

/// The program that drops bare SYNs arriving on the entries' interfaces or
/// from their addresses, and keeps every other packet. Every jump is short
/// and forward, so the program is valid for any number of entries up to
/// [`MAX_FILTERED`] of [`MAX_INTERFACES`] each.
fn program(entries: &[Entry]) -> Vec<Insn> {
    let entries = &entries[..entries.len().min(MAX_FILTERED)];
    let (mut interfaces, mut v4, mut v6) = (Vec::new(), Vec::new(), Vec::new());
    for e in entries {
        interfaces.extend(e.interfaces.iter().copied().take(MAX_INTERFACES));
        match e.address.map(|a| a.to_canonical()) {
            Some(IpAddr::V4(a)) => v4.push(u32::from(a)),
            Some(IpAddr::V6(a)) => v6.push(u128::from(a)),
            None => {}
        }
    }
    interfaces.sort_unstable();
    interfaces.dedup();
    let mut p = vec![
        // Only a SYN without ACK opens a connection.
        insn(LD_B_ABS, 0, 0, TCP_FLAGS),
        insn(AND_K, 0, 0, SYN | ACK),
        insn(JEQ_K, 1, 0, SYN),
        insn(RET_K, 0, 0, KEEP),
    ];
    if !interfaces.is_empty() {
        p.push(insn(LD_W_ABS, 0, 0, IFINDEX));
        for i in interfaces {
            p.push(insn(JEQ_K, 0, 1, i));
            p.push(insn(RET_K, 0, 0, DROP));
        }
    }
    p.extend([
        insn(LD_B_ABS, 0, 0, IP_VERSION),
        insn(RSH_K, 0, 0, 4),
        insn(JEQ_K, 1, 0, 4),
    ]);
    // Not IPv4: past the IPv4 section (its load, its entries, its return).
    let v4_section = 1 + 2 * v4.len() + 1;
    p.push(insn(JA, 0, 0, v4_section as u32));
    p.push(insn(LD_W_ABS, 0, 0, IPV4_SOURCE));
    for addr in v4 {
        p.push(insn(JEQ_K, 0, 1, addr));
        p.push(insn(RET_K, 0, 0, DROP));
    }
    p.push(insn(RET_K, 0, 0, KEEP));
    for addr in v6 {
        // Word by word; a mismatch skips to the next entry (whose first
        // instruction reloads).
        for word in 0..4u8 {
            let value = (addr >> (96 - 32 * u32::from(word))) as u32;
            p.push(insn(LD_W_ABS, 0, 0, IPV6_SOURCE + 4 * u32::from(word)));
            p.push(insn(JEQ_K, 0, 7 - 2 * word, value));
        }
        p.push(insn(RET_K, 0, 0, DROP));
    }
    p.push(insn(RET_K, 0, 0, KEEP));
    p
}

#[cfg(test)]
mod tests {
    //! The program run by a small model of the kernel's classic BPF
    //! interpreter (the instructions it uses only). The integration test
    //! `isolation.rs` runs it in the real kernel.

    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;

    /// A packet as `tcp_filter` sees it: the IP header, then TCP's, and
    /// the interface it arrived on.
    struct Packet {
        ip: Vec<u8>,
        tcp: Vec<u8>,
        ifindex: u32,
    }

    /// A packet that arrived on interface 1.
    fn packet(src: IpAddr, flags: u8) -> Packet {
        packet_on(src, flags, 1)
    }

    fn packet_on(src: IpAddr, flags: u8, ifindex: u32) -> Packet {
        let ip = match src {
            IpAddr::V4(a) => {
                let mut h = vec![0x45u8; 20];
                h[12..16].copy_from_slice(&a.octets());
                h
            }
            IpAddr::V6(a) => {
                let mut h = vec![0x60u8; 40];
                h[8..24].copy_from_slice(&a.octets());
                h
            }
        };
        let mut tcp = vec![0u8; 20];
        tcp[13] = flags;
        Packet { ip, tcp, ifindex }
    }

    fn load(p: &Packet, k: u32, width: usize) -> Option<u32> {
        if k == IFINDEX {
            return Some(p.ifindex);
        }
        let (bytes, at) = if k >= NET {
            (&p.ip, (k - NET) as usize)
        } else {
            (&p.tcp, k as usize)
        };
        let b = bytes.get(at..at + width)?;
        Some(b.iter().fold(0u32, |a, x| (a << 8) | u32::from(*x)))
    }

    /// What the program returns for `p` (`None`: it ran off its end or
    /// loaded out of bounds, which the kernel treats as a drop).
    fn run(prog: &[Insn], p: &Packet) -> Option<u32> {
        let (mut pc, mut a) = (0usize, 0u32);
        loop {
            let i = prog.get(pc)?;
            pc += 1;
            match i.code {
                LD_B_ABS => a = load(p, i.k, 1)?,
                LD_W_ABS => a = load(p, i.k, 4)?,
                AND_K => a &= i.k,
                RSH_K => a >>= i.k,
                JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
                JA => pc += i.k as usize,
                RET_K => return Some(i.k),
                other => panic!("instruction {other:#x} is not modelled"),
            }
        }
    }

    const SYN_ONLY: u8 = 0x02;
    const SYN_ACK: u8 = 0x12;
    const ACK_ONLY: u8 = 0x10;
    const PSH_ACK: u8 = 0x18;

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse::<Ipv4Addr>().unwrap())
    }
    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
    }

    fn addresses(addrs: &[IpAddr]) -> Vec<Entry> {
        addrs
            .iter()
            .map(|a| Entry {
                interfaces: Vec::new(),
                address: Some(*a),
            })
            .collect()
    }

    #[test]
    fn only_new_connections_of_listed_addresses_are_dropped() {
        let listed = [
            v4("198.18.0.2"),
            v6("fd12:3456:789a:1::5"),
            v4("198.18.0.10"),
            v6("fd12:3456:789a:3::1"),
        ];
        let prog = program(&addresses(&listed));
        let verdict = |src: &str, flags| {
            let ip = src.parse::<IpAddr>().unwrap();
            run(&prog, &packet(ip, flags))
        };
        for src in [
            "198.18.0.2",
            "198.18.0.10",
            "fd12:3456:789a:1::5",
            "fd12:3456:789a:3::1",
        ] {
            assert_eq!(verdict(src, SYN_ONLY), Some(DROP), "{src}");
            for flags in [SYN_ACK, ACK_ONLY, PSH_ACK, 0x04, 0x11] {
                assert_eq!(verdict(src, flags), Some(KEEP), "{src} {flags:#x}");
            }
        }
        // Exact addresses: a neighbour in the same /64 passes, and so do
        // addresses that differ in any one word.
        for src in [
            "198.18.0.3",
            "198.18.0.1",
            "127.0.0.1",
            "fd12:3456:789a:1::6",
            "fd12:3456:789a:1:1::5",
            "fd12:3456:789b:1::5",
            "fd13:3456:789a:1::5",
            "fd12:3456:789a:2::5",
            "::1",
        ] {
            assert_eq!(verdict(src, SYN_ONLY), Some(KEEP), "{src}");
        }
    }

    #[test]
    fn an_empty_list_and_a_full_one_are_valid_programs() {
        let empty = program(&[]);
        assert_eq!(empty, program(&[Entry::default()]));
        for src in ["198.18.0.2", "fd12::1"] {
            let p = packet(src.parse().unwrap(), SYN_ONLY);
            assert_eq!(run(&empty, &p), Some(KEEP));
        }
        // More than the cap: the first MAX_FILTERED are listed, in order.
        let addrs: Vec<IpAddr> = (0..300u32)
            .map(|i| {
                if i % 2 == 0 {
                    IpAddr::V4(Ipv4Addr::from(0xc612_0000 + i))
                } else {
                    IpAddr::V6(Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(i)))
                }
            })
            .collect();
        // Each with as many interfaces as an entry may hold, and more.
        let entries: Vec<Entry> = addresses(&addrs)
            .into_iter()
            .enumerate()
            .map(|(i, mut e)| {
                let first = 100 + 10 * i as u32;
                e.interfaces = (first..first + MAX_INTERFACES as u32 + 1).collect();
                e
            })
            .collect();
        let prog = program(&entries);
        assert!(prog.len() < 4096, "{}", prog.len());
        for (i, (a, e)) in addrs.iter().zip(&entries).enumerate() {
            let want = if i < MAX_FILTERED { DROP } else { KEEP };
            assert_eq!(run(&prog, &packet(*a, SYN_ONLY)), Some(want), "{a}");
            let (last_held, beyond) = (
                e.interfaces[MAX_INTERFACES - 1],
                e.interfaces[MAX_INTERFACES],
            );
            let other = v4("198.19.255.1");
            assert_eq!(
                run(&prog, &packet_on(other, SYN_ONLY, last_held)),
                Some(want),
                "{i}"
            );
            assert_eq!(
                run(&prog, &packet_on(other, SYN_ONLY, beyond)),
                Some(KEEP),
                "{i}"
            );
        }
    }

    /// A routed pod over its share: its new connections are dropped on
    /// its interface whatever address they come from; established ones
    /// pass, and so does every other interface's SYN from its address
    /// (unless the address is listed too).
    #[test]
    fn an_interface_is_dropped_whatever_the_address() {
        let prog = program(&[
            Entry {
                interfaces: vec![7, 9],
                address: None,
            },
            Entry {
                interfaces: vec![9],
                address: Some(v6("fd12::5")),
            },
        ]);
        for src in ["198.18.0.2", "198.18.7.7", "fd12::5", "fd99::1"] {
            let ip: IpAddr = src.parse().unwrap();
            for on in [7, 9] {
                assert_eq!(
                    run(&prog, &packet_on(ip, SYN_ONLY, on)),
                    Some(DROP),
                    "{src} {on}"
                );
                for flags in [SYN_ACK, ACK_ONLY, PSH_ACK] {
                    assert_eq!(run(&prog, &packet_on(ip, flags, on)), Some(KEEP), "{src}");
                }
            }
            let want = if src == "fd12::5" { DROP } else { KEEP };
            assert_eq!(run(&prog, &packet_on(ip, SYN_ONLY, 8)), Some(want), "{src}");
        }
    }

    #[test]
    fn shared_addresses_are_not_filterable() {
        for a in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "fe80::1",
            "169.254.1.1",
            "0.0.0.0",
            "::",
            "::ffff:127.0.0.1",
        ] {
            assert!(!filterable(a.parse().unwrap()), "{a}");
        }
        for a in ["198.18.0.2", "fd12::5", "::ffff:198.18.0.2"] {
            assert!(filterable(a.parse().unwrap()), "{a}");
        }
    }
}
