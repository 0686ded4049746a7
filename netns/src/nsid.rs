//! The agent's namespace's id (nsid) for another namespace: what a veth's
//! `IFLA_LINK_NETNSID` names its peer's namespace by. Asked for with the
//! namespace's open descriptor, and assigned when it has none yet, so that
//! a veth added later reports the same id. Blocking: call from a thread in
//! the agent's own namespace that may block.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_route::{
    nsid::{NsidAttribute, NsidMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::{
    route_socket::{decode, encode, Received},
    NetnsFile,
};

/// `NETNSA_NSID_NOT_ASSIGNED`.
const NOT_ASSIGNED: i32 = -1;

/// The calling thread's namespace's id for the namespace `ns` names,
/// assigning one if there is none.
pub(crate) fn nsid_of(ns: &NetnsFile) -> io::Result<i32> {
    let socket = Socket::new(NETLINK_ROUTE)?;
    let fd = u32::try_from(ns.as_fd().as_raw_fd()).map_err(io::Error::other)?;
    let id = query(&socket, 1, fd)?;
    if id != NOT_ASSIGNED {
        return Ok(id);
    }
    // Let the kernel pick one (-1); another thread may have won the race
    // (EEXIST): either way, ask again.
    let assign = message(vec![NsidAttribute::Fd(fd), NsidAttribute::Id(NOT_ASSIGNED)]);
    let reply = exchange(
        &socket,
        encode(
            2,
            NLM_F_REQUEST | NLM_F_ACK,
            RouteNetlinkMessage::NewNsId(assign),
        ),
    )?;
    if let Some(errno) = reply.iter().find_map(|r| match r {
        Received::DumpFailed { errno, .. } if *errno != libc::EEXIST => Some(*errno),
        _ => None,
    }) {
        return Err(io::Error::from_raw_os_error(errno));
    }
    match query(&socket, 3, fd)? {
        NOT_ASSIGNED => Err(io::Error::other("the kernel assigned no nsid")),
        id => Ok(id),
    }
}

fn message(attributes: Vec<NsidAttribute>) -> NsidMessage {
    let mut m = NsidMessage::default();
    m.attributes = attributes;
    m
}

fn query(socket: &Socket, seq: u32, fd: u32) -> io::Result<i32> {
    let request = message(vec![NsidAttribute::Fd(fd)]);
    let reply = exchange(
        socket,
        encode(seq, NLM_F_REQUEST, RouteNetlinkMessage::GetNsId(request)),
    )?;
    for r in reply {
        match r {
            Received::Message(RouteNetlinkMessage::NewNsId(m)) => {
                for a in m.attributes {
                    if let NsidAttribute::Id(id) = a {
                        return Ok(id);
                    }
                }
            }
            Received::DumpFailed { errno, .. } => return Err(io::Error::from_raw_os_error(errno)),
            _ => {}
        }
    }
    Err(io::Error::other("no nsid in the kernel's answer"))
}

/// Sends one request and reads the one datagram that answers it.
fn exchange(socket: &Socket, request: Vec<u8>) -> io::Result<Vec<Received>> {
    socket.send_to(&request, &SocketAddr::new(0, 0), 0)?;
    let (datagram, _) = socket.recv_from_full()?;
    let mut out = Vec::new();
    decode(&datagram, &mut false, &mut out);
    Ok(out)
}
