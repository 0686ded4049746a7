//! The rtnetlink requests that plumb pods: veth pairs, bridges, links up,
//! addresses, routes, neighbour and FDB entries. Each acts on the
//! namespace of its handle's socket, which [`crate::netlink`] chooses.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::RawFd,
};

use futures::TryStreamExt;
use rtnetlink::{
    packet_route::{
        address::{AddressAttribute, AddressHeaderFlags, AddressMessage},
        link::{InfoData, InfoKind, InfoVeth, LinkAttribute},
        neighbour::{NeighbourFlags, NeighbourMessage, NeighbourState},
        route::{RouteMessage, RouteProtocol, RouteScope},
        AddressFamily,
    },
    AddressMessageBuilder, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
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

/// `ip route replace`: adds, or replaces an equal route (same
/// destination, table, metric).
pub async fn replace_route(h: &Handle, route: RouteMessage) -> Result<(), Error> {
    Ok(h.route().add(route).replace().execute().await?)
}

pub async fn del_route(h: &Handle, route: RouteMessage) -> Result<(), Error> {
    Ok(h.route().del(route).execute().await?)
}

/// `ip link add NAME address MAC type bridge mcast_snooping 0` and up.
/// A fixed MAC: a bridge otherwise takes the lowest of its ports' MACs,
/// and changes it as ports come and go, under its neighbours' feet.
/// Without multicast snooping, neighbour solicitations are flooded
/// whether or not anyone reported membership.
pub async fn add_bridge(h: &Handle, name: &str, mac: [u8; 6]) -> Result<(), Error> {
    let bridge = LinkBridge::new(name)
        .mcast_snooping(false)
        .address(mac.to_vec())
        .build();
    Ok(h.link().add(bridge).execute().await?)
}

/// `ip link set NAME master CONTROLLER`.
pub async fn set_controller(h: &Handle, name: &str, controller: u32) -> Result<(), Error> {
    let link = LinkUnspec::new_with_name(name)
        .controller(controller)
        .build();
    Ok(h.link().change(link).execute().await?)
}

/// `ip link set NAME address MAC` (veths change it while up).
pub async fn set_mac(h: &Handle, name: &str, mac: [u8; 6]) -> Result<(), Error> {
    let link = LinkUnspec::new_with_name(name)
        .address(mac.to_vec())
        .build();
    Ok(h.link().change(link).execute().await?)
}

/// The hardware address of link `name`.
pub async fn link_mac(h: &Handle, name: &str) -> Result<[u8; 6], Error> {
    let link = h.link().get().match_name(name).execute().try_next().await?;
    let link = link.ok_or_else(|| Error::NoLink(name.to_owned()))?;
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(mac) => <[u8; 6]>::try_from(&mac[..]).ok(),
            _ => None,
        })
        .ok_or_else(|| Error::Invalid(format!("{name} has no Ethernet address")))
}

/// `ip route add default via GATEWAY` (the family is the gateway's).
pub async fn add_default_route(h: &Handle, gateway: IpAddr) -> Result<(), Error> {
    let any = match gateway {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let route = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(any, 0)
        .and_then(|r| r.gateway(gateway))
        .map_err(|e| Error::Invalid(e.to_string()))?
        .build();
    add_route(h, route).await
}

/// `ip neigh replace ADDR lladdr MAC dev INDEX nud permanent`: what an
/// operator pins so that no ARP or neighbour advertisement moves `addr`.
pub async fn pin_neighbour(
    h: &Handle,
    index: u32,
    addr: IpAddr,
    mac: [u8; 6],
) -> Result<(), Error> {
    Ok(h.neighbours()
        .add(index, addr)
        .link_layer_address(&mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await?)
}

/// `bridge fdb replace MAC dev PORT master static sticky`: the bridge
/// forwards `mac` to `port` only, and never learns it elsewhere (static
/// alone is moved by learning; sticky is what holds it). `static` is
/// `NUD_NOARP`: `NUD_PERMANENT` would make the MAC the bridge's own.
pub async fn pin_fdb(h: &Handle, port: u32, mac: [u8; 6]) -> Result<(), Error> {
    Ok(h.neighbours()
        .add_bridge(port, &mac)
        .state(NeighbourState::Noarp)
        .flags(NeighbourFlags::Controller | NeighbourFlags::Sticky)
        .replace()
        .execute()
        .await?)
}

/// Every neighbour entry of `family` (`AddressFamily::Bridge`: the FDB).
pub async fn neighbours(h: &Handle, family: AddressFamily) -> Result<Vec<NeighbourMessage>, Error> {
    let mut dump = h.neighbours().get().set_address_family(family).execute();
    let mut found = Vec::new();
    while let Some(message) = dump.try_next().await? {
        found.push(message);
    }
    Ok(found)
}

/// `ip neigh flush dev INDEX` for IPv4 and IPv6: the next packet to a
/// neighbour asks for it again (ARP request, neighbour solicitation).
pub async fn flush_neighbours(h: &Handle, index: u32) -> Result<(), Error> {
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        for entry in neighbours(h, family).await? {
            let fixed = matches!(
                entry.header.state,
                NeighbourState::Permanent | NeighbourState::Noarp
            );
            if entry.header.ifindex != index || fixed {
                continue;
            }
            if let Err(e) = h.neighbours().del(entry).execute().await {
                let e = Error::from(e);
                // Gone meanwhile (garbage-collected): as good.
                if e.errno() != Some(nix::errno::Errno::ENOENT as i32) {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}
