//! A netlink route socket inside a namespace, subscribed to some multicast
//! groups, that asks for dumps and decodes what it receives.
//!
//! Hand-written on `netlink-sys` rather than `rtnetlink`: see "Why not
//! rtnetlink" in the crate docs.

use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use tokio::io::unix::AsyncFd;

use crate::{run_in_async, Error, NetnsCookie, NetnsFile};

/// Kernel receive buffer for one socket: room for bursts of events (a pod
/// coming up adds a handful); overruns are handled anyway.
const RCVBUF: usize = 1 << 20;

/// Multicast groups of address changes (IPv4 and IPv6).
pub(crate) const ADDRESS_GROUPS: u32 = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;

/// One message or control event decoded from the socket.
#[derive(Debug)]
pub(crate) enum Received {
    /// A dump entry or an event.
    Message(RouteNetlinkMessage),
    /// The dump with this sequence number is complete.
    DumpDone { seq: u32, interrupted: bool },
    /// The dump with this sequence number failed.
    DumpFailed { seq: u32, errno: i32 },
}

/// A route netlink socket, registered with the tokio reactor.
pub(crate) struct RouteSocket {
    fd: AsyncFd<Socket>,
    /// Set when a dump message carried `NLM_F_DUMP_INTR`.
    interrupted: bool,
}

impl RouteSocket {
    /// Creates the socket inside `ns` on a helper thread, subscribed to
    /// `groups` before any dump is asked for, so no change between the dump
    /// and the subscription can be missed. Returns it with the cookie of
    /// the namespace it lives in, read from the socket itself: the cookie
    /// names the very instance the socket watches, whatever happens to
    /// `ns`'s path meanwhile.
    pub(crate) async fn open_in(ns: &NetnsFile, groups: u32) -> Result<(Self, NetnsCookie), Error> {
        let (socket, cookie) = run_in_async(ns, move || subscribed_socket(groups)).await??;
        Ok((Self::register(socket)?, cookie))
    }

    /// Like [`RouteSocket::open_in`], in the calling thread's namespace
    /// (the agent's own: runtime threads never enter another).
    pub(crate) fn open_here(groups: u32) -> Result<(Self, NetnsCookie), Error> {
        let (socket, cookie) = subscribed_socket(groups)?;
        Ok((Self::register(socket)?, cookie))
    }

    fn register(socket: Socket) -> Result<Self, Error> {
        // SAFETY: `Socket` owns its descriptor, never changes it and closes
        // it only on drop, so the fd stays valid and the same for as long as
        // the `AsyncFd` that owns the `Socket` lives.
        #[allow(unsafe_code)]
        let fd = unsafe { AsyncFd::register(socket) }.map_err(|e| Error::Netlink(e.into()))?;
        Ok(Self {
            fd,
            interrupted: false,
        })
    }

    /// Asks the kernel to dump every object of `request`'s kind (and
    /// family, where the message has one).
    pub(crate) async fn request_dump(
        &self,
        seq: u32,
        request: RouteNetlinkMessage,
    ) -> io::Result<()> {
        let bytes = encode(seq, NLM_F_REQUEST | NLM_F_DUMP, request);
        let kernel = SocketAddr::new(0, 0);
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|s| s.get_ref().send_to(&bytes, &kernel, 0)) {
                Ok(r) => return r.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }

    /// Waits for the next datagram and decodes it. `ENOBUFS` (events were
    /// dropped by the kernel) comes back as an `io::Error` with that errno.
    /// The buffer is sized per datagram (peeked): no watcher keeps a large
    /// idle buffer, which matters with hundreds of namespaces.
    pub(crate) async fn receive(&mut self) -> io::Result<Vec<Received>> {
        let datagram = loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|s| s.get_ref().recv_from_full()) {
                Ok(r) => break r?.0,
                Err(_would_block) => continue,
            }
        };
        let mut out = Vec::new();
        decode(&datagram, &mut self.interrupted, &mut out);
        Ok(out)
    }
}

/// A non-blocking route socket in the calling thread's namespace, bound to
/// `groups`, with the namespace's cookie.
fn subscribed_socket(groups: u32) -> Result<(Socket, NetnsCookie), Error> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(Error::Netlink)?;
    socket
        .bind(&SocketAddr::new(0, groups))
        .map_err(Error::Netlink)?;
    socket.set_rx_buf_sz(RCVBUF).map_err(Error::Netlink)?;
    socket.set_non_blocking(true).map_err(Error::Netlink)?;
    let cookie = NetnsCookie::of_socket(std::os::fd::AsFd::as_fd(&socket))?;
    Ok((socket, cookie))
}

/// One netlink request, serialized.
pub(crate) fn encode(seq: u32, flags: u16, message: RouteNetlinkMessage) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::from(message));
    msg.finalize();
    let mut bytes = vec![0; msg.buffer_len()];
    msg.serialize(&mut bytes);
    bytes
}

/// Decodes every netlink message of one datagram. Malformed messages are
/// skipped: the kernel does not send them, and a re-dump repairs any doubt.
pub(crate) fn decode(mut data: &[u8], interrupted: &mut bool, out: &mut Vec<Received>) {
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        if len < 16 || len > data.len() {
            break;
        }
        let aligned = (len + 3) & !3;
        if let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[..len]) {
            decode_one(msg, interrupted, out);
        }
        data = &data[aligned.min(data.len())..];
    }
}

fn decode_one(
    msg: NetlinkMessage<RouteNetlinkMessage>,
    interrupted: &mut bool,
    out: &mut Vec<Received>,
) {
    let (header, payload) = msg.into_parts();
    if header.flags & NLM_F_DUMP_INTR != 0 {
        *interrupted = true;
    }
    match payload {
        NetlinkPayload::InnerMessage(m) => out.push(Received::Message(m)),
        NetlinkPayload::Done(_) => out.push(Received::DumpDone {
            seq: header.sequence_number,
            interrupted: std::mem::take(interrupted),
        }),
        NetlinkPayload::Error(e) => {
            if let Some(code) = e.code {
                out.push(Received::DumpFailed {
                    seq: header.sequence_number,
                    errno: -code.get(),
                });
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::DoneMessage;
    use netlink_packet_route::address::{AddressAttribute, AddressMessage};

    fn encode_payload(
        flags: u16,
        seq: u32,
        payload: NetlinkPayload<RouteNetlinkMessage>,
    ) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(header, payload);
        msg.finalize();
        let mut bytes = vec![0; msg.buffer_len()];
        msg.serialize(&mut bytes);
        bytes
    }

    fn addr_msg(index: u32, attrs: Vec<AddressAttribute>) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.index = index;
        m.attributes = attrs;
        m
    }

    #[test]
    fn decodes_a_multipart_datagram() {
        let v4 = "198.18.0.2".parse().unwrap();
        let v6: std::net::IpAddr = "fd12::2".parse().unwrap();
        let mut dgram = encode(
            7,
            2,
            RouteNetlinkMessage::NewAddress(addr_msg(3, vec![AddressAttribute::Local(v4)])),
        );
        dgram.extend(encode(
            7,
            2 | NLM_F_DUMP_INTR,
            RouteNetlinkMessage::DelAddress(addr_msg(4, vec![AddressAttribute::Address(v6)])),
        ));
        dgram.extend(encode_payload(
            2,
            7,
            NetlinkPayload::Done(DoneMessage::default()),
        ));
        let mut interrupted = false;
        let mut out = Vec::new();
        decode(&dgram, &mut interrupted, &mut out);
        assert_eq!(out.len(), 3);
        assert!(
            matches!(&out[0], Received::Message(RouteNetlinkMessage::NewAddress(m)) if m.header.index == 3)
        );
        assert!(
            matches!(&out[1], Received::Message(RouteNetlinkMessage::DelAddress(m)) if m.header.index == 4)
        );
        assert!(matches!(
            out[2],
            Received::DumpDone {
                seq: 7,
                interrupted: true
            }
        ));
        assert!(!interrupted, "the flag is consumed by DumpDone");
    }

    #[test]
    fn truncated_input_is_ignored() {
        let bytes = encode_payload(2, 1, NetlinkPayload::Done(DoneMessage::default()));
        let mut out = Vec::new();
        decode(&bytes[..bytes.len() - 1], &mut false, &mut out);
        decode(&[1, 2, 3], &mut false, &mut out);
        assert!(out.is_empty());
    }
}
