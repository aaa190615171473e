//! Node plumbing over rtnetlink: the links, addresses, routes, neighbours and FDB entries that
//! flannel programs with `ip` commands, done here without spawning `ip`.
//!
//! [`Netlink`] is a synchronous handle: it owns a current-thread tokio runtime and an rtnetlink
//! connection, and each method blocks on one request. A netlink socket belongs to the network
//! namespace of the thread that *created* it, for its whole life; so create the handle inside
//! [`crate::netns::NetNs::run`] to plumb another namespace. The handle can move between threads
//! afterwards without changing namespace.
//!
//! Because it blocks on its own runtime, do not create, call or drop a `Netlink` from inside an
//! async task of another tokio runtime (tokio panics: "Cannot start a runtime from within a
//! runtime"); call it from a plain thread or from `tokio::task::spawn_blocking`.
//!
//! Methods are idempotent where the operation allows it (adding an address that exists, deleting
//! a link or route that is gone, creating a link that exists with the same kind), so re-running the
//! agent on a plumbed node succeeds. [`plumb_node`] is the node's whole set-up.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use dataplane::wire::EthernetAddress;
use futures::TryStreamExt;
use ipnet::Ipv4Net;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST,
};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};

/// Why a netlink operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The runtime or the netlink socket could not be created.
    #[error("cannot open a netlink socket: {0}; check that the process may create NETLINK_ROUTE sockets")]
    Open(#[source] io::Error),
    /// A link the operation needs does not exist.
    #[error(
        "no network interface named {0:?}; check `ip link show` in the namespace weftd runs in"
    )]
    NoSuchLink(String),
    /// A link exists under the name but is of another kind than the one asked for.
    #[error("interface {name:?} exists but is a {found}, not a {wanted}; delete or rename it")]
    WrongKind {
        /// The interface name.
        name: String,
        /// The kind asked for, e.g. "bridge".
        wanted: &'static str,
        /// The kind found, e.g. "veth" or "device" when the kernel reports none.
        found: String,
    },
    /// The TUN device [`plumb_node`] configures has not been created yet.
    #[error("TUN device {0:?} does not exist; the dataplane must create it before plumbing (dataplane::io)")]
    TunMissing(String),
    /// The kernel refused a request.
    #[error("netlink: {op} failed: {source}; check that weftd has CAP_NET_ADMIN and that the interface and addresses are as expected")]
    Request {
        /// What was asked, naming the link and address, e.g. "add address 10.244.1.0/32 to weft.1".
        op: String,
        /// The error from rtnetlink (it carries the kernel's errno).
        #[source]
        source: rtnetlink::Error,
    },
}

impl NetlinkError {
    /// The kernel's errno, when the kernel refused a request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request { source, .. } => errno(source),
            _ => None,
        }
    }
}

/// A network interface as a dump reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface name.
    pub name: String,
    /// Interface index.
    pub index: u32,
    /// MTU in bytes.
    pub mtu: u32,
    /// Transmit queue length in packets (`qlen` in `ip link`).
    pub txqlen: u32,
    /// The `kind` of a virtual link (`bridge`, `veth`, `vxlan`, `tun`, ...); `None` for a
    /// physical device or loopback.
    pub kind: Option<String>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Hardware address, when the link has a six-byte one.
    pub mac: Option<EthernetAddress>,
    /// Index of the bridge (or bond) this link is a port of.
    pub master: Option<u32>,
    /// A loopback device.
    pub loopback: bool,
}

/// An IPv4 address assigned to an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkAddress {
    /// Interface name.
    pub ifname: String,
    /// Interface index.
    pub index: u32,
    /// The address with its prefix length, e.g. `10.244.1.1/24`.
    pub addr: Ipv4Net,
}

/// An IPv4 route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix.
    pub dst: Ipv4Net,
    /// Output interface name, when the route has one.
    pub dev: Option<String>,
    /// Gateway, when the route has one.
    pub gateway: Option<Ipv4Addr>,
    /// Scope link (a directly connected destination).
    pub scope_link: bool,
}

/// Synchronous rtnetlink handle, bound to the network namespace it was created in.
pub struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: Handle,
}

impl fmt::Debug for Netlink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netlink").finish_non_exhaustive()
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

fn request(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let op = op.into();
    move |source| NetlinkError::Request { op, source }
}

fn link_from_message(msg: &LinkMessage) -> Link {
    let mut link = Link {
        name: String::new(),
        index: msg.header.index,
        mtu: 0,
        txqlen: 0,
        kind: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        mac: None,
        master: None,
        loopback: msg.header.link_layer_type == LinkLayerType::Loopback
            || msg.header.flags.contains(LinkFlags::Loopback),
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => link.name = name.clone(),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::TxQueueLen(len) => link.txqlen = *len,
            LinkAttribute::Address(bytes) if bytes.len() == 6 => {
                link.mac = Some(EthernetAddress::from_bytes(bytes))
            }
            LinkAttribute::Controller(index) => link.master = Some(*index),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

impl Netlink {
    /// Opens a netlink socket in the calling thread's network namespace.
    pub fn new() -> Result<Netlink, NetlinkError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(NetlinkError::Open)?;
        let handle = rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(conn);
            Ok::<_, io::Error>(handle)
        });
        let handle = handle.map_err(NetlinkError::Open)?;
        Ok(Netlink { rt, handle })
    }

    /// The link named `name`, or `None` when there is none.
    pub fn link(&self, name: &str) -> Result<Option<Link>, NetlinkError> {
        let result = self.rt.block_on(
            self.handle
                .link()
                .get()
                .match_name(name.to_string())
                .execute()
                .try_next(),
        );
        match result {
            Ok(Some(msg)) => Ok(Some(link_from_message(&msg))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(request(format!("look up link {name}"))(e)),
        }
    }

    /// The index of link `name`, or `None` when there is none.
    pub fn link_index(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        Ok(self.link(name)?.map(|l| l.index))
    }

    fn require(&self, name: &str) -> Result<Link, NetlinkError> {
        self.link(name)?
            .ok_or_else(|| NetlinkError::NoSuchLink(name.to_string()))
    }

    /// The MTU of link `name`.
    pub fn link_mtu(&self, name: &str) -> Result<u32, NetlinkError> {
        Ok(self.require(name)?.mtu)
    }

    /// Every link of the namespace, in index order.
    pub fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let msgs: Vec<LinkMessage> = self
            .rt
            .block_on(self.handle.link().get().execute().try_collect())
            .map_err(request("dump links"))?;
        let mut links: Vec<Link> = msgs.iter().map(link_from_message).collect();
        links.sort_by_key(|l| l.index);
        Ok(links)
    }

    /// Every IPv4 address of the namespace, in link index order.
    pub fn addresses(&self) -> Result<Vec<LinkAddress>, NetlinkError> {
        use netlink_packet_route::address::{AddressAttribute, AddressMessage};
        let links = self.links()?;
        let msgs: Vec<AddressMessage> = self
            .rt
            .block_on(self.handle.address().get().execute().try_collect())
            .map_err(request("dump addresses"))?;
        let mut out = Vec::new();
        for msg in msgs {
            if msg.header.family != AddressFamily::Inet {
                continue;
            }
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point
            // links, so prefer LOCAL when both are present.
            let mut local = None;
            let mut address = None;
            for attr in &msg.attributes {
                match attr {
                    AddressAttribute::Local(IpAddr::V4(a)) => local = Some(*a),
                    AddressAttribute::Address(IpAddr::V4(a)) => address = Some(*a),
                    _ => {}
                }
            }
            let Some(ip) = local.or(address) else {
                continue;
            };
            let Ok(addr) = Ipv4Net::new(ip, msg.header.prefix_len) else {
                continue;
            };
            let ifname = links
                .iter()
                .find(|l| l.index == msg.header.index)
                .map(|l| l.name.clone())
                .unwrap_or_default();
            out.push(LinkAddress {
                ifname,
                index: msg.header.index,
                addr,
            });
        }
        out.sort_by_key(|a| a.index);
        Ok(out)
    }

    fn create_link(
        &self,
        name: &str,
        wanted: &'static str,
        msg: LinkMessage,
        op: String,
    ) -> Result<(), NetlinkError> {
        if let Some(link) = self.link(name)? {
            return match link.kind.as_deref() {
                Some(kind) if kind == wanted => Ok(()),
                other => Err(NetlinkError::WrongKind {
                    name: name.to_string(),
                    wanted,
                    found: other.unwrap_or("device").to_string(),
                }),
            };
        }
        self.rt
            .block_on(self.handle.link().add(msg).execute())
            .map_err(request(op))
    }

    /// Creates bridge `name` (down); nothing to do when a bridge of that name exists.
    pub fn create_bridge(&self, name: &str) -> Result<(), NetlinkError> {
        let msg = LinkBridge::new(name).down().build();
        self.create_link(name, "bridge", msg, format!("create bridge {name}"))
    }

    /// Creates the veth pair `name`/`peer`; nothing to do when `name` exists as a veth.
    pub fn create_veth(&self, name: &str, peer: &str) -> Result<(), NetlinkError> {
        let msg = LinkVeth::new(name, peer).build();
        self.create_link(name, "veth", msg, format!("create veth {name} peer {peer}"))
    }

    /// Creates a pod's veth pair in one request: the host end `host` in this handle's namespace
    /// (MTU `mtu`, up, a port of the bridge with index `bridge_index`) and its peer created
    /// directly inside the namespace open as `netns`, named `peer`, MTU `mtu`, still down (the
    /// kernel configures the peer before pairing it, and a veth without its pair refuses to come
    /// up: ENOTCONN; set it up from the container's side). This is
    /// `ip link add HOST mtu M master BR up type veth peer name PEER netns NS mtu M` (one round
    /// trip instead of create, move, rename and three sets), with the MACs given. Unlike the
    /// other creators it is not idempotent: an existing name fails with EEXIST
    /// ([`NetlinkError::errno`]).
    #[allow(clippy::too_many_arguments)] // one kernel request, one parameter per attribute
    pub fn create_pod_veth(
        &self,
        host: &str,
        host_mac: EthernetAddress,
        peer: &str,
        peer_mac: EthernetAddress,
        netns: BorrowedFd<'_>,
        mtu: u32,
        bridge_index: Option<u32>,
    ) -> Result<(), NetlinkError> {
        use netlink_packet_route::link::{InfoData, InfoVeth};
        let peer_msg = rtnetlink::LinkMessageBuilder::<LinkUnspec>::new()
            .name(peer.to_string())
            .address(peer_mac.as_bytes().to_vec())
            .mtu(mtu)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        let mut builder = LinkVeth::new(host, peer)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .address(host_mac.as_bytes().to_vec())
            .mtu(mtu);
        if let Some(b) = bridge_index {
            builder = builder.controller(b);
        }
        let msg = builder.up().build();
        self.rt
            .block_on(self.handle.link().add(msg).execute())
            .map_err(request(format!(
                "create veth {host} (master index {bridge_index:?}) peer {peer} in the container namespace"
            )))
    }

    /// Creates a kernel VXLAN device as flannel does: `ip link add NAME type vxlan id VNI local
    /// LOCAL dev DEV dstport PORT nolearning` (the learning flag chooses `learning`). Used to stand
    /// up a kernel flannel peer in tests; nothing to do when a vxlan device of that name exists.
    pub fn create_vxlan(
        &self,
        name: &str,
        vni: u32,
        port: u16,
        local: Ipv4Addr,
        dev: Option<u32>,
        learning: bool,
    ) -> Result<(), NetlinkError> {
        let mut builder = LinkVxlan::new(name, vni)
            .port(port)
            .local(local)
            .learning(learning);
        if let Some(dev) = dev {
            builder = builder.dev(dev);
        }
        let msg = builder.build();
        self.create_link(
            name,
            "vxlan",
            msg,
            format!("create vxlan {name} id {vni} dstport {port} local {local}"),
        )
    }

    fn set_link(&self, msg: LinkMessage, op: String) -> Result<(), NetlinkError> {
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(request(op))
    }

    /// Sets link `name` up.
    pub fn set_up(&self, name: &str) -> Result<(), NetlinkError> {
        let index = self.require(name)?.index;
        self.set_up_index(index, name)
    }

    /// Sets the link with index `index` (named `name`, for messages) up, without looking it up.
    pub fn set_up_index(&self, index: u32, name: &str) -> Result<(), NetlinkError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.set_link(msg, format!("set {name} up"))
    }

    /// Sets the MTU of link `name`.
    pub fn set_mtu(&self, name: &str, mtu: u32) -> Result<(), NetlinkError> {
        let link = self.require(name)?;
        if link.mtu == mtu {
            return Ok(());
        }
        let msg = LinkUnspec::new_with_index(link.index).mtu(mtu).build();
        self.set_link(msg, format!("set mtu {mtu} on {name}"))
    }

    /// Sets the transmit queue length of link `name` (`ip link set NAME txqueuelen LEN`).
    pub fn set_txqueuelen(&self, name: &str, len: u32) -> Result<(), NetlinkError> {
        let link = self.require(name)?;
        if link.txqlen == len {
            return Ok(());
        }
        let msg = LinkUnspec::new_with_index(link.index)
            .txqueuelen(len)
            .build();
        self.set_link(msg, format!("set txqueuelen {len} on {name}"))
    }

    /// Sets the hardware address of link `name`.
    pub fn set_mac(&self, name: &str, mac: EthernetAddress) -> Result<(), NetlinkError> {
        let index = self.require(name)?.index;
        let msg = LinkUnspec::new_with_index(index)
            .address(mac.as_bytes().to_vec())
            .build();
        self.set_link(msg, format!("set address {mac} on {name}"))
    }

    /// `ip link set dev NAME type bridge_slave hairpin on|off` for the bridge port with `index`:
    /// with hairpin on the bridge may send a frame back out of the port it came in on, so a pod
    /// whose connection to a Service address was DNAT'ed back to itself gets its own packets (the
    /// bridge CNI plugin's `hairpinMode`, which flannel's conflist turns on).
    pub fn set_hairpin_index(&self, index: u32, name: &str, on: bool) -> Result<(), NetlinkError> {
        use netlink_packet_route::link::InfoBridgePort;
        // RTM_NEWLINK on the existing link (`set_port`): RTM_SETLINK ignores port data.
        let msg = rtnetlink::LinkBridgePort::new(index)
            .append_info_data(InfoBridgePort::HairpinMode(on))
            .build();
        self.rt
            .block_on(self.handle.link().set_port(msg).execute())
            .map_err(request(format!(
                "set hairpin {} on bridge port {name}",
                if on { "on" } else { "off" }
            )))
    }

    /// [`Netlink::set_hairpin_index`] by name.
    pub fn set_hairpin(&self, name: &str, on: bool) -> Result<(), NetlinkError> {
        let index = self.require(name)?.index;
        self.set_hairpin_index(index, name, on)
    }

    /// Makes link `name` a port of bridge `bridge`.
    pub fn set_master(&self, name: &str, bridge: &str) -> Result<(), NetlinkError> {
        let index = self.require(name)?.index;
        let master = self.require(bridge)?.index;
        let msg = LinkUnspec::new_with_index(index).controller(master).build();
        self.set_link(msg, format!("set master {bridge} on {name}"))
    }

    /// Moves link `name` into the network namespace open as `netns` (for example
    /// [`crate::netns::NetNs::file`]). The link disappears from this handle's namespace.
    pub fn move_to_netns(&self, name: &str, netns: BorrowedFd<'_>) -> Result<(), NetlinkError> {
        let index = self.require(name)?.index;
        let msg = LinkUnspec::new_with_index(index)
            .setns_by_fd(netns.as_raw_fd())
            .build();
        self.set_link(msg, format!("move {name} to another network namespace"))
    }

    /// Deletes link `name`; nothing to do when it does not exist.
    pub fn delete_link(&self, name: &str) -> Result<(), NetlinkError> {
        let Some(index) = self.link_index(name)? else {
            return Ok(());
        };
        match self.rt.block_on(self.handle.link().del(index).execute()) {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
            Err(e) => Err(request(format!("delete link {name}"))(e)),
        }
    }

    /// Adds `addr` (address and prefix length) to link `name`; nothing to do when it is there.
    pub fn add_address(&self, name: &str, addr: Ipv4Net) -> Result<(), NetlinkError> {
        let index = self.require(name)?.index;
        self.add_address_index(index, name, addr)
    }

    /// [`Netlink::add_address`] on the link with index `index` (named `name`, for messages),
    /// without looking it up.
    pub fn add_address_index(
        &self,
        index: u32,
        name: &str,
        addr: Ipv4Net,
    ) -> Result<(), NetlinkError> {
        let result = self.rt.block_on(
            self.handle
                .address()
                .add(index, IpAddr::V4(addr.addr()), addr.prefix_len())
                .execute(),
        );
        match result {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(request(format!("add address {addr} to {name}"))(e)),
        }
    }

    /// Adds or replaces (`NLM_F_REPLACE`, `ip route replace`) the main-table route to `dst` through
    /// `dev`, via `gateway` when given (with `onlink`: the gateway need not be on a connected
    /// subnet, as flannel's `<subnet> via <subnet>.0 dev flannel.1 onlink`). A route without a
    /// gateway gets scope link, as `ip route` gives it.
    pub fn replace_route(
        &self,
        dst: Ipv4Net,
        dev: &str,
        gateway: Option<Ipv4Addr>,
        onlink: bool,
    ) -> Result<(), NetlinkError> {
        let index = self.require(dev)?.index;
        self.replace_route_index(dst, index, dev, gateway, onlink)
    }

    /// [`Netlink::replace_route`] through the link with index `index` (named `dev`, for
    /// messages), without looking it up.
    pub fn replace_route_index(
        &self,
        dst: Ipv4Net,
        index: u32,
        dev: &str,
        gateway: Option<Ipv4Addr>,
        onlink: bool,
    ) -> Result<(), NetlinkError> {
        let dst = dst.trunc();
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.network(), dst.prefix_len())
            .output_interface(index)
            .protocol(RouteProtocol::Boot);
        match gateway {
            Some(gw) => builder = builder.gateway(gw),
            None => builder = builder.scope(RouteScope::Link),
        }
        if onlink {
            builder = builder.onlink();
        }
        let via = gateway.map(|g| format!(" via {g}")).unwrap_or_default();
        self.rt
            .block_on(self.handle.route().add(builder.build()).replace().execute())
            .map_err(request(format!("replace route {dst}{via} dev {dev}")))
    }

    /// Deletes the main-table route to `dst`, whatever its device and gateway; nothing to do when
    /// there is none.
    pub fn delete_route(&self, dst: Ipv4Net) -> Result<(), NetlinkError> {
        let dst = dst.trunc();
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.destination_prefix_length = dst.prefix_len();
        // Protocol unspec, scope nowhere: match any route to dst (what `ip route del` sends).
        msg.header.protocol = RouteProtocol::Unspec;
        msg.header.scope = RouteScope::NoWhere;
        msg.header.kind = RouteType::Unicast;
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(
                dst.network(),
            )));
        match self.rt.block_on(self.handle.route().del(msg).execute()) {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(request(format!("delete route {dst}"))(e)),
        }
    }

    /// The IPv4 routes of the main table.
    pub fn routes(&self) -> Result<Vec<Route>, NetlinkError> {
        let links = self.links()?;
        let msgs: Vec<RouteMessage> = self
            .rt
            .block_on(
                self.handle
                    .route()
                    .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                    .execute()
                    .try_collect(),
            )
            .map_err(request("dump routes"))?;
        let mut out = Vec::new();
        for msg in msgs {
            if msg.header.address_family != AddressFamily::Inet
                || msg.header.table != RouteHeader::RT_TABLE_MAIN
            {
                continue;
            }
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut dev = None;
            let mut gateway = None;
            let mut table = None;
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
                    RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some(*a),
                    RouteAttribute::Oif(i) => {
                        dev = links.iter().find(|l| l.index == *i).map(|l| l.name.clone())
                    }
                    RouteAttribute::Table(t) => table = Some(*t),
                    _ => {}
                }
            }
            if table.is_some_and(|t| t != u32::from(RouteHeader::RT_TABLE_MAIN)) {
                continue;
            }
            let Ok(dst) = Ipv4Net::new(dst, msg.header.destination_prefix_length) else {
                continue;
            };
            out.push(Route {
                dst,
                dev,
                gateway,
                scope_link: msg.header.scope == RouteScope::Link,
            });
        }
        Ok(out)
    }

    /// Adds or replaces the permanent neighbour `ip lladdr mac dev dev` (`ip neigh replace ...
    /// nud permanent`), flannel's per-peer ARP entry for `<subnet>.0`.
    pub fn replace_neighbor_permanent(
        &self,
        ip: Ipv4Addr,
        mac: EthernetAddress,
        dev: &str,
    ) -> Result<(), NetlinkError> {
        let index = self.require(dev)?.index;
        self.rt
            .block_on(
                self.handle
                    .neighbours()
                    .add(index, IpAddr::V4(ip))
                    .link_layer_address(mac.as_bytes())
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute(),
            )
            .map_err(request(format!(
                "replace neighbour {ip} lladdr {mac} dev {dev}"
            )))
    }

    /// Appends the FDB entry `bridge fdb append MAC dev DEV dst DST self permanent` on a VXLAN
    /// device: frames to `mac` are sent to the VTEP at `dst`. Appending an entry that exists is a
    /// no-op.
    pub fn append_fdb(
        &self,
        mac: EthernetAddress,
        dev: &str,
        dst: Ipv4Addr,
    ) -> Result<(), NetlinkError> {
        let index = self.require(dev)?.index;
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.flags = NeighbourFlags::Own; // NTF_SELF: the device's own FDB, not a bridge's
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(
            mac.as_bytes().to_vec(),
        ));
        msg.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        let op = format!("append fdb {mac} dev {dev} dst {dst}");
        let mut handle = self.handle.clone();
        let result = self.rt.block_on(async move {
            let mut responses = handle.request(req)?;
            while let Some(msg) = futures::StreamExt::next(&mut responses).await {
                if let NetlinkPayload::Error(err) = msg.payload {
                    return Err(rtnetlink::Error::NetlinkError(err));
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(request(op)(e)),
        }
    }
}

/// What [`plumb_node`] sets up on a node (flannel's `flannel.<vni>` set-up, plus the pod bridge).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    /// The TUN device Weft reads and writes, `weft.<vni>`; the dataplane creates it.
    pub tun_name: String,
    /// The TUN's address, `<subnet>.0/32` as flannel gives `flannel.<vni>`.
    pub tun_addr: Ipv4Net,
    /// The TUN's MTU: the tunnel MTU (underlay MTU - 50 for VXLAN).
    pub tun_mtu: u32,
    /// The whole cluster network, routed into the TUN.
    pub cluster_network: Ipv4Net,
    /// The local pod bridge, `weft0` by default.
    pub bridge: String,
    /// The bridge's address, `<subnet>.1/<len>`: the pods' gateway.
    pub bridge_addr: Ipv4Net,
    /// The bridge's MTU (the tunnel MTU, so pods never send what the tunnel cannot carry).
    pub bridge_mtu: u32,
    /// Switch mode (`pod_ports = "switch"`): no bridge; one left by bridge mode is deleted.
    pub switch: bool,
}

impl NodePlan {
    /// The plan for a node owning `subnet` in `cluster_network`, with TUN `weft.<vni>`, bridge
    /// `bridge` and tunnel MTU `mtu` on both.
    pub fn new(
        vni: u32,
        subnet: Ipv4Net,
        cluster_network: Ipv4Net,
        bridge: &str,
        mtu: u32,
    ) -> Self {
        let subnet = subnet.trunc();
        let base = u32::from(subnet.network());
        let host = |n: u32, len: u8| {
            Ipv4Net::new(Ipv4Addr::from(base.wrapping_add(n)), len)
                .expect("prefix lengths 32 and a subnet's own length are valid")
        };
        NodePlan {
            tun_name: tun_name(vni),
            tun_addr: host(0, 32),
            tun_mtu: mtu,
            cluster_network: cluster_network.trunc(),
            bridge: bridge.to_string(),
            bridge_addr: host(1, subnet.prefix_len()),
            bridge_mtu: mtu,
            switch: false,
        }
    }
}

/// The name of Weft's TUN device for `vni`: `weft.<vni>`, as flannel names `flannel.<vni>`.
pub fn tun_name(vni: u32) -> String {
    format!("weft.{vni}")
}

/// Plumbs the node: configures the TUN (address, MTU, transmit queue, up), routes the cluster network into it
/// (so every packet to a remote pod reaches Weft; the local subnet stays on the bridge through its
/// more specific connected route), and creates the bridge with its address and MTU, up.
/// Idempotent: running it on a plumbed node changes nothing.
pub fn plumb_node(nl: &Netlink, plan: &NodePlan) -> Result<(), NetlinkError> {
    if nl.link_index(&plan.tun_name)?.is_none() {
        return Err(NetlinkError::TunMissing(plan.tun_name.clone()));
    }
    nl.set_mtu(&plan.tun_name, plan.tun_mtu)?;
    nl.set_txqueuelen(&plan.tun_name, TUN_TXQUEUELEN)?;
    nl.add_address(&plan.tun_name, plan.tun_addr)?;
    nl.set_up(&plan.tun_name)?;
    nl.replace_route(plan.cluster_network, &plan.tun_name, None, false)?;

    if plan.switch {
        // A bridge left by bridge mode would keep the local subnet's connected route, taking
        // host-to-pod traffic away from the TUN.
        if nl.link_index(&plan.bridge)?.is_some() {
            tracing::warn!(bridge = %plan.bridge, "switch mode: deleting the pod bridge bridge mode left");
            nl.delete_link(&plan.bridge)?;
        }
        return Ok(());
    }
    nl.create_bridge(&plan.bridge)?;
    pin_mac(nl, &plan.bridge)?;
    nl.set_mtu(&plan.bridge, plan.bridge_mtu)?;
    nl.add_address(&plan.bridge, plan.bridge_addr)?;
    nl.set_up(&plan.bridge)?;
    Ok(())
}

/// The TUN's transmit queue (packets the kernel holds for Weft to read): twice the TUN default
/// of 500, as an Ethernet NIC's, so a burst that arrives while a worker is busy waits instead of
/// being dropped. With TSO an entry is a whole super-frame.
pub const TUN_TXQUEUELEN: u32 = 1000;

/// Sets link `name`'s MAC to the one it has. A bridge whose address was never set explicitly takes
/// the smallest MAC of its ports, so each pod veth joining or leaving could change the pods'
/// gateway MAC and leave stale ARP entries in every pod; an explicitly set address (the kernel's
/// `NET_ADDR_SET`) stays. The CNI `bridge` plugin pins `cni0` the same way.
fn pin_mac(nl: &Netlink, name: &str) -> Result<(), NetlinkError> {
    match nl.link(name)?.and_then(|l| l.mac) {
        Some(mac) => nl.set_mac(name, mac),
        None => Ok(()),
    }
}
