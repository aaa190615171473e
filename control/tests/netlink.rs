//! Netlink plumbing in real network namespaces: the node plumbing (run twice), veth pairs moved
//! between namespaces, and a kernel VXLAN device programmed the way flannel programs `flannel.1`,
//! checked with iproute2's own output. Needs root (fails otherwise).
#![allow(clippy::unwrap_used)] // a failed unwrap in a test is the test failing

mod common;

use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use common::{ip, require_root, run, unique_name};
use control::config::vtep_mac_for;
use control::netlink::{plumb_node, LinkAddress, Netlink, NetlinkError, NodePlan};
use control::netns::NetNs;
use ipnet::Ipv4Net;

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn addrs_of(addrs: &[LinkAddress], ifname: &str) -> Vec<Ipv4Net> {
    addrs
        .iter()
        .filter(|a| a.ifname == ifname)
        .map(|a| a.addr)
        .collect()
}

#[test]
fn plumb_node_configures_tun_route_and_bridge_idempotently() {
    require_root();
    let ns = NetNs::create(&unique_name()).unwrap();
    let plan = NodePlan::new(1, net("10.244.1.0/24"), net("10.244.0.0/16"), "weft0", 1450);
    assert_eq!(plan.tun_name, "weft.1");
    assert_eq!(plan.tun_addr, net("10.244.1.0/32"));
    assert_eq!(plan.bridge_addr, net("10.244.1.1/24"));

    // Without the TUN, plumbing says who must create it.
    let missing = ns
        .run(|| plumb_node(&Netlink::new().unwrap(), &plan))
        .unwrap();
    assert!(
        matches!(missing, Err(NetlinkError::TunMissing(_))),
        "{missing:?}"
    );

    // The dataplane creates the TUN; a persistent one stands in for it here.
    ip(
        ns.name(),
        &["tuntap", "add", "dev", "weft.1", "mode", "tun"],
    );

    let (links, addrs, routes) = ns
        .run(|| {
            let nl = Netlink::new().unwrap();
            plumb_node(&nl, &plan).unwrap();
            plumb_node(&nl, &plan).unwrap(); // a restart on a plumbed node
            (
                nl.links().unwrap(),
                nl.addresses().unwrap(),
                nl.routes().unwrap(),
            )
        })
        .unwrap();

    let tun = links.iter().find(|l| l.name == "weft.1").unwrap();
    assert_eq!(tun.mtu, 1450);
    assert_eq!(tun.txqlen, control::netlink::TUN_TXQUEUELEN);
    let shown = ip(ns.name(), &["link", "show", "weft.1"]);
    assert!(shown.contains("qlen 1000"), "{shown}");
    assert!(tun.up);
    assert_eq!(tun.kind.as_deref(), Some("tun"));
    let bridge = links.iter().find(|l| l.name == "weft0").unwrap();
    assert_eq!(bridge.mtu, 1450);
    assert!(bridge.up);
    assert_eq!(bridge.kind.as_deref(), Some("bridge"));

    assert_eq!(addrs_of(&addrs, "weft.1"), [net("10.244.1.0/32")]);
    assert_eq!(addrs_of(&addrs, "weft0"), [net("10.244.1.1/24")]);

    let cluster: Vec<_> = routes
        .iter()
        .filter(|r| r.dst == net("10.244.0.0/16"))
        .collect();
    assert_eq!(cluster.len(), 1, "{routes:?}");
    assert_eq!(cluster[0].dev.as_deref(), Some("weft.1"));
    assert_eq!(cluster[0].gateway, None);
    assert!(cluster[0].scope_link);
    let local = routes
        .iter()
        .find(|r| r.dst == net("10.244.1.0/24"))
        .expect("connected route of the bridge");
    assert_eq!(local.dev.as_deref(), Some("weft0"));

    // iproute2 agrees.
    let shown = ip(ns.name(), &["-4", "route", "show"]);
    assert!(shown.contains("10.244.0.0/16 dev weft.1"), "{shown}");
    assert!(shown.contains("10.244.1.0/24 dev weft0"), "{shown}");
    // A different MTU on a re-run is applied, not ignored.
    let plan2 = NodePlan {
        tun_mtu: 1400,
        ..plan.clone()
    };
    let mtu = ns
        .run(|| {
            let nl = Netlink::new().unwrap();
            plumb_node(&nl, &plan2).unwrap();
            nl.link_mtu("weft.1").unwrap()
        })
        .unwrap();
    assert_eq!(mtu, 1400);
}

#[test]
fn veth_pair_is_created_configured_and_moved() {
    require_root();
    let a = NetNs::create(&unique_name()).unwrap();
    let b = NetNs::create(&unique_name()).unwrap();
    let mac = vtep_mac_for("veth-test");

    a.run(|| {
        let nl = Netlink::new().unwrap();
        nl.create_veth("va", "vb").unwrap();
        nl.create_veth("va", "vb").unwrap(); // exists as a veth: nothing to do
        nl.create_bridge("br0").unwrap();
        nl.create_bridge("br0").unwrap();
        let wrong = nl.create_bridge("va").unwrap_err();
        assert!(matches!(wrong, NetlinkError::WrongKind { .. }), "{wrong}");
        assert!(wrong.to_string().contains("\"va\""), "{wrong}");

        nl.set_mac("va", mac).unwrap();
        nl.set_mtu("va", 1400).unwrap();
        nl.set_master("va", "br0").unwrap();
        nl.set_up("va").unwrap();
        let va = nl.link("va").unwrap().unwrap();
        assert_eq!(va.mac, Some(mac));
        assert_eq!(va.mtu, 1400);
        assert_eq!(va.kind.as_deref(), Some("veth"));
        assert_eq!(va.master, nl.link_index("br0").unwrap());
        assert!(va.up);

        nl.move_to_netns("vb", b.file().as_fd()).unwrap();
        assert_eq!(nl.link_index("vb").unwrap(), None);

        // Errors name the link.
        let e = nl.set_up("nope0").unwrap_err();
        assert!(e.to_string().contains("nope0"), "{e}");
        nl.delete_link("nope0").unwrap(); // missing is fine
    })
    .unwrap();

    let vb = b
        .run(|| Netlink::new().unwrap().link("vb").unwrap())
        .unwrap()
        .expect("vb moved into b");
    assert_eq!(vb.kind.as_deref(), Some("veth"));
    assert!(ip(b.name(), &["-o", "link", "show", "vb"]).contains("vb@"));

    b.run(|| {
        let nl = Netlink::new().unwrap();
        nl.delete_link("vb").unwrap();
        assert_eq!(nl.link_index("vb").unwrap(), None);
    })
    .unwrap();
    // Deleting one end removes the pair.
    a.run(|| assert_eq!(Netlink::new().unwrap().link_index("va").unwrap(), None))
        .unwrap();
}

#[test]
fn kernel_vxlan_peer_is_programmed_like_flannel() {
    require_root();
    let ns = NetNs::create(&unique_name()).unwrap();
    let local = Ipv4Addr::new(192, 168, 77, 1);
    let remote = Ipv4Addr::new(192, 168, 77, 2);
    let peer_mac = vtep_mac_for("node-b");
    let own_mac = vtep_mac_for("node-a");
    let gw = Ipv4Addr::new(10, 244, 2, 0);

    let routes = ns
        .run(|| {
            let nl = Netlink::new().unwrap();
            nl.create_veth("ul0", "ul1").unwrap();
            nl.add_address("ul0", net("192.168.77.1/24")).unwrap();
            nl.add_address("ul0", net("192.168.77.1/24")).unwrap(); // EEXIST is fine
            nl.set_up("ul0").unwrap();
            nl.set_up("ul1").unwrap();
            let ul0 = nl.link_index("ul0").unwrap();

            nl.create_vxlan("flannel.1", 1, 8472, local, ul0, false)
                .unwrap();
            nl.create_vxlan("flannel.1", 1, 8472, local, ul0, false)
                .unwrap();
            nl.set_mac("flannel.1", own_mac).unwrap();
            nl.set_mtu("flannel.1", 1450).unwrap();
            nl.set_up("flannel.1").unwrap();
            nl.add_address("flannel.1", net("10.244.1.0/32")).unwrap();

            // flannel's order: neighbour, FDB, route.
            nl.replace_neighbor_permanent(gw, peer_mac, "flannel.1")
                .unwrap();
            nl.replace_neighbor_permanent(gw, peer_mac, "flannel.1")
                .unwrap();
            nl.append_fdb(peer_mac, "flannel.1", remote).unwrap();
            nl.append_fdb(peer_mac, "flannel.1", remote).unwrap();
            nl.replace_route(net("10.244.2.0/24"), "flannel.1", Some(gw), true)
                .unwrap();
            nl.replace_route(net("10.244.2.0/24"), "flannel.1", Some(gw), true)
                .unwrap();
            nl.routes().unwrap()
        })
        .unwrap();

    let details = ip(ns.name(), &["-d", "link", "show", "flannel.1"]);
    for part in [
        "vxlan id 1 ",
        "local 192.168.77.1",
        "dev ul0",
        "dstport 8472",
        "nolearning",
        &own_mac.to_string(),
        "mtu 1450",
    ] {
        assert!(details.contains(part), "{part:?} missing from:\n{details}");
    }

    let fdb = run(
        "bridge",
        &["-n", ns.name(), "fdb", "show", "dev", "flannel.1"],
    );
    let entries: Vec<_> = fdb
        .lines()
        .filter(|l| l.starts_with(&peer_mac.to_string()))
        .collect();
    assert_eq!(entries.len(), 1, "one FDB entry expected:\n{fdb}");
    assert!(
        entries[0].contains("dst 192.168.77.2") && entries[0].contains("self permanent"),
        "{fdb}"
    );

    let neigh = ip(ns.name(), &["neigh", "show", "dev", "flannel.1"]);
    assert!(
        neigh.contains(&format!("10.244.2.0 lladdr {peer_mac} PERMANENT")),
        "{neigh}"
    );

    let route = routes
        .iter()
        .find(|r| r.dst == net("10.244.2.0/24"))
        .expect("peer route");
    assert_eq!(route.gateway, Some(gw));
    assert_eq!(route.dev.as_deref(), Some("flannel.1"));
    let shown = ip(ns.name(), &["-4", "route", "show", "10.244.2.0/24"]);
    assert!(
        shown.contains("via 10.244.2.0 dev flannel.1") && shown.contains("onlink"),
        "{shown}"
    );

    ns.run(|| {
        let nl = Netlink::new().unwrap();
        nl.delete_route(net("10.244.2.0/24")).unwrap();
        nl.delete_route(net("10.244.2.0/24")).unwrap(); // gone is fine
        assert!(!nl
            .routes()
            .unwrap()
            .iter()
            .any(|r| r.dst == net("10.244.2.0/24")));
        nl.delete_link("flannel.1").unwrap();
        nl.delete_link("flannel.1").unwrap();
    })
    .unwrap();
}
