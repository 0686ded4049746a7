//! The rtnetlink requests that plumb pods: veth pairs, links up,
//! addresses, routes. Each acts on the namespace of its handle's socket,
//! which [`crate::netlink`] chooses.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::RawFd,
};

use futures::TryStreamExt;
use rtnetlink::{
    packet_route::{
        address::{AddressAttribute, AddressHeaderFlags, AddressMessage},
        link::{InfoData, InfoKind, InfoVeth},
        route::{RouteMessage, RouteProtocol, RouteScope},
        AddressFamily,
    },
    AddressMessageBuilder, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use crate::netlink::{Error, Handle};

/// A veth pair: `name` here, up, and `peer` created directly in the
/// namespace `peer_netns` refers to (`ip link add NAME up type veth peer
/// name PEER netns NS`), so the peer's name never meets the host's links.
pub async fn add_veth(h: &Handle, name: &str, peer: &str, peer_netns: RawFd) -> Result<(), Error> {
    let peer = LinkUnspec::new_with_name(peer)
        .setns_by_fd(peer_netns)
        .build();
    let veth = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(name)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .up()
        .build();
    Ok(h.link().add(veth).execute().await?)
}

/// `ip link del NAME` (a veth takes its peer along).
pub async fn del_link(h: &Handle, name: &str) -> Result<(), Error> {
    let link = LinkUnspec::new_with_name(name).build();
    Ok(h.link().del_with_message(link).execute().await?)
}

/// `ip link set NAME up`.
pub async fn set_up(h: &Handle, name: &str) -> Result<(), Error> {
    let link = LinkUnspec::new_with_name(name).up().build();
    Ok(h.link().change(link).execute().await?)
}

/// The interface index of link `name`.
pub async fn link_index(h: &Handle, name: &str) -> Result<u32, Error> {
    let link = h.link().get().match_name(name).execute().try_next().await?;
    link.map(|l| l.header.index)
        .ok_or_else(|| Error::NoLink(name.to_owned()))
}

/// `ip addr add ADDR/PREFIX dev INDEX`, with `nodad` for IPv6: the address
/// is usable at once instead of tentative for a second or more.
pub async fn add_address(
    h: &Handle,
    index: u32,
    addr: IpAddr,
    prefix_len: u8,
) -> Result<(), Error> {
    let mut request = h.address().add(index, addr, prefix_len);
    if addr.is_ipv6() {
        request.message_mut().header.flags = AddressHeaderFlags::Nodad;
    }
    Ok(request.execute().await?)
}

/// `ip addr del ADDR/PREFIX dev INDEX`.
pub async fn del_address(
    h: &Handle,
    index: u32,
    addr: IpAddr,
    prefix_len: u8,
) -> Result<(), Error> {
    let message: AddressMessage = match addr {
        IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(a, prefix_len)
            .build(),
        IpAddr::V6(a) => AddressMessageBuilder::<Ipv6Addr>::new()
            .index(index)
            .address(a, prefix_len)
            .build(),
    };
    Ok(h.address().del(message).execute().await?)
}

/// Every IPv4 address configured in the handle's namespace.
pub async fn ipv4_addresses(h: &Handle) -> Result<HashSet<Ipv4Addr>, Error> {
    let mut request = h.address().get();
    request.message_mut().header.family = AddressFamily::Inet;
    let mut dump = request.execute();
    let mut found = HashSet::new();
    while let Some(message) = dump.try_next().await? {
        for attribute in message.attributes {
            if let AddressAttribute::Local(IpAddr::V4(a))
            | AddressAttribute::Address(IpAddr::V4(a)) = attribute
            {
                found.insert(a);
            }
        }
    }
    Ok(found)
}

/// The route `ip route add DST/PREFIX dev INDEX` makes: on-link, protocol
/// boot. Deleting the same message removes exactly it.
pub fn device_route(dst: IpAddr, prefix_len: u8, index: u32) -> Result<RouteMessage, Error> {
    Ok(RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst, prefix_len)
        .map_err(|e| Error::Invalid(e.to_string()))?
        .output_interface(index)
        .scope(RouteScope::Link)
        .protocol(RouteProtocol::Boot)
        .build())
}

pub async fn add_route(h: &Handle, route: RouteMessage) -> Result<(), Error> {
    Ok(h.route().add(route).execute().await?)
}

pub async fn del_route(h: &Handle, route: RouteMessage) -> Result<(), Error> {
    Ok(h.route().del(route).execute().await?)
}
