//! A deterministic in-memory cluster: two nodes run the forwarding core over a simulated underlay.
//!
//! A packet from a pod on node A goes through `forward` on A, over the "wire" (the encapsulated
//! bytes copied into B's receive buffer, as a socket would), through `forward` on B, and must
//! arrive at the pod on B byte-exact apart from TTL and header checksum — for VXLAN and IP-in-IP,
//! for TUN (L3) and pod (L2) ports. ICMP errors are re-parsed with etherparse.

use std::net::Ipv4Addr;

use dataplane::drop::DropReason;
use dataplane::fib::NextHop;
use dataplane::forward::{
    forward, ipip_super_frame, plan_super_frame, Action, Encap, Ingress, IpipMerged,
    SuperFramePlan, Verdict, HEADROOM, VXLAN_UDP_PAYLOAD_OFFSET,
};
use dataplane::offload::{Gso, Ipv4Segments, VnetRepr, VNET_HDR_LEN};
use dataplane::snapshot::{NodeConfig, PodAddr, Port, PortKind, Snapshot, SourcePrefixes, Tables};
use dataplane::time::{Duration, Instant};
use dataplane::wire::{checksum, EthernetAddress};
use dataplane::PortId;
use etherparse::{Icmpv4Type, NetSlice, SlicedPacket, TransportSlice};
use ipnet::Ipv4Net;

const TUN: PortId = PortId(0);
const POD: PortId = PortId(1);
const POD_PORT_MAC: EthernetAddress = EthernetAddress([0xee; 6]);
const NOW: Instant = Instant::from_secs(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Vxlan,
    Ipip,
}

struct Node {
    underlay: Ipv4Addr,
    subnet: Ipv4Net,
    vtep_mac: EthernetAddress,
    pod_ip: Ipv4Addr,
    pod_mac: EthernetAddress,
}

fn node(i: u8) -> Node {
    Node {
        underlay: Ipv4Addr::new(192, 168, 50, i),
        subnet: format!("10.244.{i}.0/24").parse().expect("valid subnet"),
        vtep_mac: EthernetAddress([0x0e, 0x57, 0x65, 0x66, 0x74, i]),
        pod_ip: Ipv4Addr::new(10, 244, i, 2),
        pod_mac: EthernetAddress([0x02, 0, 0, 0, i, 2]),
    }
}

/// The tables of `me` with `peer` as its only remote node.
fn tables(me: &Node, peer: &Node, mode: Mode) -> Snapshot {
    let mut t = Tables::new(NodeConfig::flannel_defaults(
        me.vtep_mac,
        me.underlay,
        me.subnet.network(),
    ));
    t.set_port(
        TUN,
        Port {
            kind: PortKind::L3,
            mtu: 1450,
        },
    );
    t.set_port(
        POD,
        Port {
            kind: PortKind::L2 {
                mac: POD_PORT_MAC,
                pod: Some(PodAddr::new(me.pod_ip, me.pod_mac)),
            },
            mtu: 1450,
        },
    );
    t.fib.insert(me.subnet, NextHop::Local { port: TUN });
    t.fib
        .insert(Ipv4Net::from(me.pod_ip), NextHop::Local { port: POD });
    t.neigh.insert_permanent(me.pod_ip, me.pod_mac, Some(POD));
    match mode {
        Mode::Vxlan => t.add_vxlan_peer(peer.subnet, peer.underlay, peer.vtep_mac),
        Mode::Ipip => {
            t.fib.insert(
                peer.subnet,
                NextHop::Ipip {
                    remote: peer.underlay,
                },
            );
        }
    }
    t.snapshot()
}

/// An IPv4/UDP packet with correct checksums, built by etherparse.
fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, payload_len: usize, df: bool) -> Vec<u8> {
    let payload: Vec<u8> = (0..payload_len).map(|i| (i * 7 + 3) as u8).collect();
    let builder = etherparse::PacketBuilder::ipv4(src.octets(), dst.octets(), ttl).udp(40000, 9000);
    let mut out = Vec::new();
    builder.write(&mut out, &payload).expect("write to a Vec");
    // etherparse's builder sets DF itself; make the flag what the caller asked for.
    if df {
        out[6] |= 0x40;
    } else {
        out[6] &= !0x40;
    }
    {
        out[10] = 0;
        out[11] = 0;
        let c = checksum::checksum(&out[..20]);
        out[10..12].copy_from_slice(&c.to_be_bytes());
    }
    out
}

/// `ip` wrapped in an Ethernet header from `src` to `dst`.
fn ethernet(src: EthernetAddress, dst: EthernetAddress, ethertype: u16, ip: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + ip.len());
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(ip);
    f
}

/// A buffer with HEADROOM free bytes and `data` after them.
fn buffer(data: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; HEADROOM + data.len() + 64];
    buf[HEADROOM..HEADROOM + data.len()].copy_from_slice(data);
    buf
}

fn run(snap: &Snapshot, ingress: Ingress, data: &[u8]) -> (Verdict, Vec<u8>) {
    let mut buf = buffer(data);
    let v = forward(snap, ingress, &mut buf, HEADROOM, data.len(), NOW);
    (v, buf)
}

/// The bytes an action sends.
fn sent(buf: &[u8], action: Action) -> Vec<u8> {
    match action {
        Action::Deliver { start, len, .. } | Action::Transmit { start, len, .. } => {
            buf[start..start + len].to_vec()
        }
    }
}

/// Compares two IPv4 packets ignoring TTL and header checksum, and checks the checksum of `got`.
fn assert_same_but_ttl(got: &[u8], want: &[u8], ttl_drop: u8) {
    assert_eq!(got.len(), want.len(), "length");
    assert_eq!(got[8], want[8] - ttl_drop, "TTL");
    let mask = |p: &[u8]| {
        let mut p = p.to_vec();
        p[8] = 0;
        p[10] = 0;
        p[11] = 0;
        p
    };
    assert_eq!(mask(got), mask(want), "bytes other than TTL and checksum");
    assert_eq!(
        checksum::data(&got[..20]),
        0xffff,
        "header checksum of the delivered packet"
    );
}

/// Sends `frame` from node A's `from` port and carries it to node B, returning B's verdict and
/// buffer. `via_socket` receives on B as a UDP socket would (outer IPv4+UDP stripped).
fn a_to_b(mode: Mode, from: PortId, frame: &[u8], via_socket: bool) -> (Verdict, Vec<u8>, Vec<u8>) {
    let (a, b) = (node(1), node(2));
    let snap_a = tables(&a, &b, mode);
    let snap_b = tables(&b, &a, mode);
    let (va, buf_a) = run(&snap_a, Ingress::Local(from), frame);
    let Verdict::Forward(
        action @ Action::Transmit {
            next_hop, encap, ..
        },
    ) = va
    else {
        panic!("node A did not transmit: {va:?}");
    };
    assert_eq!(next_hop, b.underlay);
    let wire = sent(&buf_a, action);
    // Re-parse the outer packet independently.
    let sliced = SlicedPacket::from_ip(&wire).expect("etherparse parses the outer packet");
    let Some(NetSlice::Ipv4(outer)) = sliced.net else {
        panic!("outer is not IPv4")
    };
    assert_eq!(outer.header().source_addr(), a.underlay);
    assert_eq!(outer.header().destination_addr(), b.underlay);
    match (mode, encap) {
        (Mode::Vxlan, Encap::Vxlan { src_port, dst_port }) => {
            let Some(TransportSlice::Udp(udp)) = sliced.transport else {
                panic!("outer is not UDP")
            };
            assert_eq!(udp.destination_port(), 8472);
            assert_eq!(dst_port, 8472, "the verdict names the port the header says");
            assert_eq!(udp.source_port(), src_port);
            assert!((32768..61000).contains(&src_port));
            let vx = udp.payload();
            assert_eq!(vx[0], 0x08, "VXLAN I flag");
            assert_eq!(&vx[4..7], &[0, 0, 1], "VNI 1");
            assert_eq!(
                &vx[8..14],
                &b.vtep_mac.0,
                "inner destination = B's VTEP MAC"
            );
            assert_eq!(&vx[14..20], &a.vtep_mac.0, "inner source = A's VTEP MAC");
        }
        (Mode::Ipip, Encap::Ipip) => {
            assert_eq!(outer.header().protocol(), etherparse::IpNumber::IPV4);
        }
        other => panic!("unexpected encapsulation {other:?}"),
    }
    let (vb, buf_b) = if via_socket {
        run(
            &snap_b,
            Ingress::VxlanUdp { src: a.underlay },
            &wire[VXLAN_UDP_PAYLOAD_OFFSET..],
        )
    } else {
        run(&snap_b, Ingress::Underlay, &wire)
    };
    (vb, buf_b, wire.clone())
}

#[test]
fn tun_to_tun_vxlan_is_byte_exact() {
    let a = node(1);
    // A destination behind node B's TUN (its bridge), not its pod port.
    let ip = udp_packet(a.pod_ip, Ipv4Addr::new(10, 244, 2, 7), 63, 1000, true);
    for via_socket in [false, true] {
        let (v, buf, _) = a_to_b(Mode::Vxlan, TUN, &ip, via_socket);
        let Verdict::Forward(action @ Action::Deliver { port, .. }) = v else {
            panic!("node B did not deliver: {v:?}");
        };
        assert_eq!(port, TUN);
        // Behind TUN, Weft is the tunnel device: the packet is not routed, so not even TTL changes.
        assert_eq!(sent(&buf, action), ip);
    }
}

#[test]
fn pod_to_pod_vxlan_and_ipip() {
    let (a, b) = (node(1), node(2));
    let ip = udp_packet(a.pod_ip, b.pod_ip, 64, 1400, true);
    let frame = ethernet(a.pod_mac, POD_PORT_MAC, 0x0800, &ip);
    for (mode, via_socket) in [
        (Mode::Vxlan, false),
        (Mode::Vxlan, true),
        (Mode::Ipip, false),
    ] {
        let (v, buf, _) = a_to_b(mode, POD, &frame, via_socket);
        let Verdict::Forward(action @ Action::Deliver { port, .. }) = v else {
            panic!("node B did not deliver: {v:?}");
        };
        assert_eq!(port, POD);
        let got = sent(&buf, action);
        assert_eq!(&got[0..6], &b.pod_mac.0, "to the pod's MAC");
        assert_eq!(&got[6..12], &POD_PORT_MAC.0, "from the port's MAC");
        assert_eq!(&got[12..14], &[0x08, 0x00]);
        // Routed on A (from a pod port) and on B (to a pod port): TTL down by two.
        assert_same_but_ttl(&got[14..], &ip, 2);
    }
}

#[test]
fn encapsulated_packets_carry_a_valid_outer_checksum() {
    let (a, b) = (node(1), node(2));
    let ip = udp_packet(a.pod_ip, b.pod_ip, 64, 200, false);
    let (_, _, wire) = a_to_b(Mode::Vxlan, TUN, &ip, false);
    assert_eq!(checksum::data(&wire[..20]), 0xffff);
    assert_eq!(&wire[26..28], &[0, 0], "UDP checksum zero, RFC 7348 §5");
    assert_eq!(wire[6] & 0x40, 0, "outer DF clear, as flannel.1 sends");
    assert_eq!(wire[8], 64, "outer TTL");
    // One flow keeps one source port; another flow may get another.
    let (_, _, wire2) = a_to_b(Mode::Vxlan, TUN, &ip, false);
    assert_eq!(wire[20..22], wire2[20..22]);
}

#[test]
fn computed_udp_checksum_verifies() {
    let (a, b) = (node(1), node(2));
    let mut t = Tables::new(NodeConfig {
        udp_checksum: dataplane::wire::udp::UdpChecksum::Compute,
        ..NodeConfig::flannel_defaults(a.vtep_mac, a.underlay, a.subnet.network())
    });
    t.set_port(
        TUN,
        Port {
            kind: PortKind::L3,
            mtu: 1450,
        },
    );
    t.add_vxlan_peer(b.subnet, b.underlay, b.vtep_mac);
    let ip = udp_packet(a.pod_ip, b.pod_ip, 64, 333, false);
    let (v, buf) = run(&t.snapshot(), Ingress::Local(TUN), &ip);
    let wire = sent(&buf, v.action().expect("transmitted"));
    let sliced = SlicedPacket::from_ip(&wire).expect("parses");
    let Some(TransportSlice::Udp(udp)) = sliced.transport else {
        panic!("not UDP")
    };
    let Some(NetSlice::Ipv4(outer)) = sliced.net else {
        panic!("not IPv4")
    };
    let want = udp
        .to_header()
        .calc_checksum_ipv4(&outer.header().to_header(), udp.payload())
        .expect("checksum computes");
    assert_ne!(udp.checksum(), 0);
    assert_eq!(udp.checksum(), want);
}

fn icmp_from(buf: &[u8], action: Action, l2: bool) -> (Ipv4Addr, Ipv4Addr, Icmpv4Type, Vec<u8>) {
    let bytes = sent(buf, action);
    let ip = if l2 { &bytes[14..] } else { &bytes[..] };
    let sliced = SlicedPacket::from_ip(ip).expect("etherparse parses the ICMP error");
    let Some(NetSlice::Ipv4(v4)) = sliced.net else {
        panic!("not IPv4")
    };
    let Some(TransportSlice::Icmpv4(icmp)) = sliced.transport else {
        panic!("not ICMP")
    };
    // etherparse does not verify; check the ICMP checksum over the whole message ourselves.
    assert_eq!(
        checksum::data(v4.payload().payload),
        0xffff,
        "ICMP checksum"
    );
    assert_eq!(
        checksum::data(&ip[..20]),
        0xffff,
        "IPv4 checksum of the error"
    );
    (
        v4.header().source_addr(),
        v4.header().destination_addr(),
        icmp.icmp_type(),
        icmp.payload().to_vec(),
    )
}

#[test]
fn df_packet_above_tunnel_mtu_gets_frag_needed() {
    let (a, b) = (node(1), node(2));
    let snap = tables(&a, &b, Mode::Vxlan);
    // From a pod port: 1451 bytes does not fit the 1450-byte tunnel MTU.
    let ip = udp_packet(a.pod_ip, b.pod_ip, 64, 1451 - 28, true);
    let frame = ethernet(a.pod_mac, POD_PORT_MAC, 0x0800, &ip);
    let (v, buf) = run(&snap, Ingress::Local(POD), &frame);
    let Verdict::Reply {
        cause: Some(DropReason::FragNeeded),
        action,
    } = v
    else {
        panic!("expected a frag-needed reply, got {v:?}");
    };
    assert!(matches!(action, Action::Deliver { port: POD, .. }));
    let (src, dst, ty, quote) = icmp_from(&buf, action, true);
    assert_eq!(src, a.subnet.network(), "from the node's tunnel address");
    assert_eq!(dst, a.pod_ip);
    match ty {
        Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu },
        ) => assert_eq!(next_hop_mtu, 1450),
        other => panic!("wrong ICMP type {other:?}"),
    }
    assert_eq!(
        &quote[..],
        &ip[..548],
        "quotes the datagram as received, up to 576 bytes total"
    );

    // Without DF the packet is dropped, not fragmented.
    let ip = udp_packet(a.pod_ip, b.pod_ip, 64, 1451 - 28, false);
    let (v, _) = run(&snap, Ingress::Local(TUN), &ip);
    assert_eq!(v, Verdict::Drop(DropReason::TooBig));
}

#[test]
fn ttl_one_from_a_pod_gets_time_exceeded() {
    let (a, b) = (node(1), node(2));
    let snap = tables(&a, &b, Mode::Vxlan);
    let ip = udp_packet(a.pod_ip, b.pod_ip, 1, 100, false);
    let frame = ethernet(a.pod_mac, POD_PORT_MAC, 0x0800, &ip);
    let (v, buf) = run(&snap, Ingress::Local(POD), &frame);
    let Verdict::Reply {
        cause: Some(DropReason::TtlExceeded),
        action,
    } = v
    else {
        panic!("expected time exceeded, got {v:?}");
    };
    let (_, dst, ty, quote) = icmp_from(&buf, action, true);
    assert_eq!(dst, a.pod_ip);
    assert!(matches!(
        ty,
        Icmpv4Type::TimeExceeded(etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit)
    ));
    assert_eq!(quote, ip);
}

#[test]
fn unknown_subnet_gets_net_unreachable_and_counts_no_route() {
    let (a, b) = (node(1), node(2));
    let snap = tables(&a, &b, Mode::Vxlan);
    // A source behind the TUN port (the node's bridge), so the error goes back there.
    let src = Ipv4Addr::new(10, 244, 1, 50);
    let ip = udp_packet(src, Ipv4Addr::new(10, 244, 99, 2), 64, 100, false);
    let (v, buf) = run(&snap, Ingress::Local(TUN), &ip);
    assert_eq!(v.drop_reason(), Some(DropReason::NoRoute));
    let action = v.action().expect("an ICMP error");
    assert!(matches!(action, Action::Deliver { port: TUN, .. }));
    let (_, dst, ty, _) = icmp_from(&buf, action, false);
    assert_eq!(dst, src);
    assert!(matches!(
        ty,
        Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Network)
    ));
}

#[test]
fn no_error_about_an_icmp_error() {
    let (a, b) = (node(1), node(2));
    let snap = tables(&a, &b, Mode::Vxlan);
    let mut ip = udp_packet(a.pod_ip, Ipv4Addr::new(10, 244, 99, 2), 64, 100, false);
    ip[9] = 1; // ICMP
    ip[20] = 3; // destination unreachable
    ip[10] = 0;
    ip[11] = 0;
    let c = checksum::checksum(&ip[..20]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let (v, _) = run(&snap, Ingress::Local(TUN), &ip);
    assert_eq!(v, Verdict::Drop(DropReason::NoRoute));
}

#[test]
fn proxy_arp_answers_for_the_gateway() {
    let (a, b) = (node(1), node(2));
    let snap = tables(&a, &b, Mode::Vxlan);
    let gw = Ipv4Addr::new(169, 254, 1, 1);
    let mut arp = vec![0u8; 28];
    arp[..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp[8..14].copy_from_slice(&a.pod_mac.0);
    arp[14..18].copy_from_slice(&a.pod_ip.octets());
    arp[24..28].copy_from_slice(&gw.octets());
    let frame = ethernet(a.pod_mac, EthernetAddress::BROADCAST, 0x0806, &arp);
    let (v, buf) = run(&snap, Ingress::Local(POD), &frame);
    let Verdict::Reply {
        cause: None,
        action: action @ Action::Deliver { port: POD, .. },
    } = v
    else {
        panic!("expected an ARP reply, got {v:?}");
    };
    let reply = sent(&buf, action);
    let sliced = SlicedPacket::from_ethernet(&reply).expect("etherparse parses the reply");
    let Some(NetSlice::Arp(arp)) = sliced.net else {
        panic!("not ARP")
    };
    assert_eq!(arp.operation(), etherparse::ArpOperation::REPLY);
    assert_eq!(arp.sender_hw_addr(), &POD_PORT_MAC.0);
    assert_eq!(arp.sender_protocol_addr(), &gw.octets());
    assert_eq!(arp.target_hw_addr(), &a.pod_mac.0);
    assert_eq!(arp.target_protocol_addr(), &a.pod_ip.octets());
    assert_eq!(&reply[0..6], &a.pod_mac.0);
}

/// An ARP request from `mac`/`ip` for `target`, in an Ethernet frame from `eth_src`.
fn arp_request(
    eth_src: EthernetAddress,
    mac: EthernetAddress,
    ip: Ipv4Addr,
    target: Ipv4Addr,
) -> Vec<u8> {
    let mut arp = vec![0u8; 28];
    arp[..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp[8..14].copy_from_slice(&mac.0);
    arp[14..18].copy_from_slice(&ip.octets());
    arp[24..28].copy_from_slice(&target.octets());
    ethernet(eth_src, EthernetAddress::BROADCAST, 0x0806, &arp)
}

#[test]
fn frames_not_from_the_pods_own_addresses_are_dropped_as_spoofed() {
    let (a, b) = (node(1), node(2));
    let snap = tables(&a, &b, Mode::Vxlan);
    let forged_mac = EthernetAddress([0x02, 0xba, 0xd0, 0, 0, 1]);
    let forged_ip = Ipv4Addr::new(10, 244, 1, 99);
    let gw = Ipv4Addr::new(169, 254, 1, 1);
    let cases = [
        (
            "forged source MAC",
            ethernet(
                forged_mac,
                POD_PORT_MAC,
                0x0800,
                &udp_packet(a.pod_ip, b.pod_ip, 64, 100, false),
            ),
        ),
        (
            "forged source IP",
            ethernet(
                a.pod_mac,
                POD_PORT_MAC,
                0x0800,
                &udp_packet(forged_ip, b.pod_ip, 64, 100, false),
            ),
        ),
        (
            "ARP from a forged MAC",
            arp_request(forged_mac, forged_mac, a.pod_ip, gw),
        ),
        (
            "ARP with a forged sender MAC",
            arp_request(a.pod_mac, forged_mac, a.pod_ip, gw),
        ),
        (
            "ARP with a forged sender IP",
            arp_request(a.pod_mac, a.pod_mac, forged_ip, gw),
        ),
    ];
    for (what, frame) in cases {
        let (v, _) = run(&snap, Ingress::Local(POD), &frame);
        assert_eq!(v, Verdict::Drop(DropReason::Spoofed), "{what}");
    }
    // The pod's own addresses pass, and an ARP probe (sender 0.0.0.0) is not spoofing.
    let ok = ethernet(
        a.pod_mac,
        POD_PORT_MAC,
        0x0800,
        &udp_packet(a.pod_ip, b.pod_ip, 64, 100, false),
    );
    let (v, _) = run(&snap, Ingress::Local(POD), &ok);
    assert!(matches!(v, Verdict::Forward(_)), "{v:?}");
    let probe = arp_request(a.pod_mac, a.pod_mac, Ipv4Addr::UNSPECIFIED, a.pod_ip);
    let (v, _) = run(&snap, Ingress::Local(POD), &probe);
    assert_eq!(v, Verdict::Drop(DropReason::ArpIgnored));
    // A gratuitous ARP (a pod announcing its address after a restart) is not spoofing and gets
    // no answer: answering would claim the pod's own address.
    let gratuitous = arp_request(a.pod_mac, a.pod_mac, a.pod_ip, a.pod_ip);
    let (v, _) = run(&snap, Ingress::Local(POD), &gratuitous);
    assert_eq!(v, Verdict::Drop(DropReason::ArpIgnored));
    // Malformed ARP: dropped as truncated, not answered.
    let mut short = arp_request(a.pod_mac, a.pod_mac, a.pod_ip, gw);
    short.truncate(30);
    let (v, _) = run(&snap, Ingress::Local(POD), &short);
    assert_eq!(v, Verdict::Drop(DropReason::Truncated));
}

/// Every way a frame on the VXLAN port can be wrong is dropped with its own reason.
#[test]
fn bad_vxlan_frames_are_dropped_by_reason() {
    let (a, b) = (node(1), node(2));
    let snap_b = tables(&b, &a, Mode::Vxlan);
    let ip = udp_packet(a.pod_ip, b.pod_ip, 64, 100, false);
    let (_, _, wire) = a_to_b(Mode::Vxlan, TUN, &ip, true);
    let vx = &wire[VXLAN_UDP_PAYLOAD_OFFSET..];
    let udp_in = |bytes: &[u8]| run(&snap_b, Ingress::VxlanUdp { src: a.underlay }, bytes).0;

    let mut no_flag = vx.to_vec();
    no_flag[0] = 0;
    assert_eq!(udp_in(&no_flag), Verdict::Drop(DropReason::VxlanFlags));
    let mut reserved = vx.to_vec();
    reserved[0] = 0xff; // reserved bits are ignored on receipt (RFC 7348 §5)
    reserved[7] = 0xff;
    assert!(matches!(udp_in(&reserved), Verdict::Forward(_)));
    let mut vni = vx.to_vec();
    vni[6] = 2;
    assert_eq!(udp_in(&vni), Verdict::Drop(DropReason::VxlanVni));
    let mut mac = vx.to_vec();
    mac[8] ^= 0x80;
    assert_eq!(udp_in(&mac), Verdict::Drop(DropReason::VxlanInnerMac));
    let mut v6 = vx.to_vec();
    v6[20..22].copy_from_slice(&[0x86, 0xdd]);
    assert_eq!(udp_in(&v6), Verdict::Drop(DropReason::NotIpv4));
    assert_eq!(udp_in(&vx[..7]), Verdict::Drop(DropReason::Truncated));
    assert_eq!(udp_in(&vx[..20]), Verdict::Drop(DropReason::Truncated));
    assert_eq!(udp_in(&vx[..40]), Verdict::Drop(DropReason::Truncated));
    // The inner packet must be routed locally, not reflected into the tunnel again.
    let to_elsewhere = udp_packet(a.pod_ip, Ipv4Addr::new(10, 244, 1, 9), 64, 10, false);
    let mut reflect = vx[..22].to_vec();
    reflect.extend_from_slice(&to_elsewhere);
    assert_eq!(udp_in(&reflect), Verdict::Drop(DropReason::NotLocal));

    // Through the raw underlay path: other port, bad outer checksum.
    let mut port = wire.clone();
    port[22..24].copy_from_slice(&4789u16.to_be_bytes());
    assert_eq!(
        run(&snap_b, Ingress::Underlay, &port).0,
        Verdict::Drop(DropReason::UnderlayNotForUs)
    );
    let mut csum = wire.clone();
    csum[10] ^= 1;
    assert_eq!(
        run(&snap_b, Ingress::Underlay, &csum).0,
        Verdict::Drop(DropReason::Ipv4Checksum)
    );
    // Another underlay destination, with a valid checksum, so only the address can reject it.
    let mut other_dst = wire.clone();
    other_dst[19] = 77;
    other_dst[10..12].copy_from_slice(&[0, 0]);
    let c = checksum::checksum(&other_dst[..20]);
    other_dst[10..12].copy_from_slice(&c.to_be_bytes());
    assert_eq!(
        run(&snap_b, Ingress::Underlay, &other_dst).0,
        Verdict::Drop(DropReason::UnderlayNotForUs)
    );
}

#[test]
fn bad_ipip_packets_are_dropped() {
    let (a, b) = (node(1), node(2));
    let snap_b = tables(&b, &a, Mode::Ipip);
    let ip = udp_packet(a.pod_ip, b.pod_ip, 64, 100, false);
    let (_, _, wire) = a_to_b(Mode::Ipip, TUN, &ip, false);
    // The inner header lies about its length.
    let mut lie = wire.clone();
    lie[22..24].copy_from_slice(&((ip.len() + 10) as u16).to_be_bytes());
    assert!(matches!(
        run(&snap_b, Ingress::Underlay, &lie).0,
        Verdict::Drop(DropReason::IpipMalformed | DropReason::Truncated)
    ));
    // Inner is not IPv4.
    let mut v6 = wire.clone();
    v6[20] = 0x60;
    assert_eq!(
        run(&snap_b, Ingress::Underlay, &v6).0,
        Verdict::Drop(DropReason::IpipMalformed)
    );
    // Truncated everywhere: never a panic, always a drop.
    for cut in 0..wire.len() {
        let v = run(&snap_b, Ingress::Underlay, &wire[..cut]).0;
        assert!(matches!(v, Verdict::Drop(_)), "cut {cut}: {v:?}");
    }
}

#[test]
fn every_truncation_of_a_vxlan_frame_is_dropped_not_panicked() {
    let (a, b) = (node(1), node(2));
    let snap_b = tables(&b, &a, Mode::Vxlan);
    let ip = udp_packet(a.pod_ip, b.pod_ip, 64, 100, false);
    let (_, _, wire) = a_to_b(Mode::Vxlan, TUN, &ip, false);
    for cut in 0..wire.len() {
        let v = run(&snap_b, Ingress::Underlay, &wire[..cut]).0;
        assert!(matches!(v, Verdict::Drop(_)), "cut {cut}: {v:?}");
        if cut >= VXLAN_UDP_PAYLOAD_OFFSET {
            let v = run(
                &snap_b,
                Ingress::VxlanUdp { src: a.underlay },
                &wire[VXLAN_UDP_PAYLOAD_OFFSET..cut],
            )
            .0;
            assert!(matches!(v, Verdict::Drop(_)), "socket cut {cut}: {v:?}");
        }
    }
}

#[test]
fn random_buffers_never_panic_the_core() {
    let (a, b) = (node(1), node(2));
    let snap = tables(&a, &b, Mode::Vxlan);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..100_000u32 {
        let len = (next() % 200) as usize;
        let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Bias towards plausible headers so the deeper layers are reached too.
        if len > 0 && i % 2 == 0 {
            data[0] = 0x45;
        }
        if len > 28 && i % 4 == 0 {
            data[20] = 0x08;
            data[9] = 17;
        }
        let ingress = match i % 4 {
            0 => Ingress::Local(TUN),
            1 => Ingress::Local(POD),
            2 => Ingress::Underlay,
            _ => Ingress::VxlanUdp { src: b.underlay },
        };
        let _ = run(&snap, ingress, &data);
    }
}

#[test]
fn leave_removes_the_peer() {
    let (a, b) = (node(1), node(2));
    let mut t = Tables::new(NodeConfig::flannel_defaults(
        a.vtep_mac,
        a.underlay,
        a.subnet.network(),
    ));
    t.set_port(
        TUN,
        Port {
            kind: PortKind::L3,
            mtu: 1450,
        },
    );
    t.add_vxlan_peer(b.subnet, b.underlay, b.vtep_mac);
    assert_eq!((t.fib.len(), t.neigh.len(), t.fdb.len()), (1, 1, 1));
    assert!(t.remove_vxlan_peer(b.subnet));
    assert_eq!((t.fib.len(), t.neigh.len(), t.fdb.len()), (0, 0, 0));
    let ip = udp_packet(a.pod_ip, b.pod_ip, 64, 10, false);
    let (v, _) = run(&t.snapshot(), Ingress::Local(TUN), &ip);
    assert_eq!(v.drop_reason(), Some(DropReason::NoRoute));
}

/// The IPv4 header checksum of `h`, computed independently of the crate.
fn ipv4_header_checksum(h: &[u8]) -> u16 {
    let mut sum = 0u32;
    for (i, pair) in h.chunks(2).enumerate() {
        if i != 5 {
            sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `inner` in an RFC 2003 outer header from `src` to `dst` (DF set, TTL 64), as the kernel's GRO
/// leaves a merged datagram.
fn ipip_datagram(src: Ipv4Addr, dst: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    let mut outer = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 4, 0, 0];
    outer.extend_from_slice(&src.octets());
    outer.extend_from_slice(&dst.octets());
    let total = (20 + inner.len()) as u16;
    outer[2..4].copy_from_slice(&total.to_be_bytes());
    let c = ipv4_header_checksum(&outer);
    outer[10..12].copy_from_slice(&c.to_be_bytes());
    outer.extend_from_slice(inner);
    outer
}

#[test]
fn a_gro_merged_ipip_datagram_becomes_one_tso_write() {
    let (a, b) = (node(1), node(2));
    let snap_b = tables(&b, &a, Mode::Ipip);
    let mtu = usize::from(snap_b.port(TUN).expect("tun").mtu);
    // What the kernel's GRO leaves: one inner TCP packet of 3 MSS, TCP checksum partial.
    let payload: Vec<u8> = (0..3 * 1400).map(|i| (i * 13 + 1) as u8).collect();
    let mut inner = Vec::new();
    // To an address of b's subnet behind its TUN (b.pod_ip is on the L2 pod port).
    let dst = Ipv4Addr::from(u32::from(b.subnet.network()) + 200);
    etherparse::PacketBuilder::ipv4(a.pod_ip.octets(), dst.octets(), 63)
        .tcp(40000, 5201, 7, 65535)
        .write(&mut inner, &payload)
        .expect("build");
    let outer = ipip_datagram(a.underlay, b.underlay, &inner);

    let mut buf = buffer(&outer);
    let Some(IpipMerged::Tun(f)) =
        ipip_super_frame(&snap_b, &mut buf, HEADROOM, outer.len(), TUN).expect("deliverable")
    else {
        panic!("a super frame for the TUN");
    };
    assert_eq!(f.start, HEADROOM + 20 - VNET_HDR_LEN);
    assert_eq!(f.len, VNET_HDR_LEN + inner.len());
    assert_eq!(f.inner_len, inner.len());
    let vnet = VnetRepr::parse_bytes(&buf[f.start..f.start + VNET_HDR_LEN]).expect("header");
    assert_eq!(vnet.gso, Gso::TcpV4);
    assert!(vnet.needs_csum);
    assert_eq!(
        (vnet.csum_start, vnet.csum_offset, vnet.hdr_len),
        (20, 16, 40)
    );
    assert_eq!(usize::from(vnet.gso_size), mtu - 40);
    assert_eq!(f.segments, payload.len().div_ceil(mtu - 40));
    assert_eq!(&buf[f.start + VNET_HDR_LEN..f.start + f.len], &inner[..]);

    // An ordinary datagram is left to the normal path; one for another node is refused.
    let (_, _, small) = a_to_b(
        Mode::Ipip,
        TUN,
        &udp_packet(a.pod_ip, b.pod_ip, 64, 100, false),
        false,
    );
    let mut sb = buffer(&small);
    assert_eq!(
        ipip_super_frame(&snap_b, &mut sb, HEADROOM, small.len(), TUN),
        Ok(None)
    );
    // Not TCP: not deliverable as one.
    let mut not_tcp = outer.clone();
    not_tcp[20 + 9] = 17;
    let mut nb = buffer(&not_tcp);
    assert_eq!(
        ipip_super_frame(&snap_b, &mut nb, HEADROOM, not_tcp.len(), TUN),
        Err(DropReason::TooBig)
    );
}

/// A merged IP-in-IP datagram for a pod port (switch mode): cut as the pod's own TSO send would
/// be, the first segment delivered to the port by the core, the plan the whole super-frame.
#[test]
fn a_gro_merged_ipip_datagram_for_a_pod_port_is_cut_at_the_tunnel_mtu() {
    let (a, b) = (node(1), node(2));
    let snap_b = tables(&b, &a, Mode::Ipip);
    let mtu = usize::from(snap_b.port(TUN).expect("tun").mtu);
    let payload: Vec<u8> = (0..3 * 1400 + 77).map(|i| (i * 7 + 3) as u8).collect();
    let mut inner = Vec::new();
    etherparse::PacketBuilder::ipv4(a.pod_ip.octets(), b.pod_ip.octets(), 63)
        .tcp(40000, 5201, 7, 65535)
        .ack(99)
        .write(&mut inner, &payload)
        .expect("build");
    let outer = ipip_datagram(a.underlay, b.underlay, &inner);
    let mut buf = buffer(&outer);
    let Some(IpipMerged::Segment { inner: at, vnet }) =
        ipip_super_frame(&snap_b, &mut buf, HEADROOM, outer.len(), TUN).expect("deliverable")
    else {
        panic!("a super-packet to cut");
    };
    assert_eq!(at, HEADROOM + 20..HEADROOM + outer.len());
    assert_eq!(
        &buf[at.clone()],
        &inner[..],
        "the inner packet is left as it came"
    );
    assert_eq!(
        (
            vnet.gso,
            vnet.csum_start,
            vnet.csum_offset,
            usize::from(vnet.gso_size)
        ),
        (Gso::TcpV4, 20, 16, mtu - 40)
    );
    // The segments are what the sender's stack would have sent: each a valid TCP packet of at
    // most the tunnel MTU, the payload in order.
    let mut segs = Ipv4Segments::new(&buf[at.clone()], &vnet).expect("segments");
    let mut got = Vec::new();
    let mut first = None;
    let mut n = 0;
    loop {
        let mut seg = vec![0u8; HEADROOM + mtu];
        let Some(len) = segs.emit_next(&mut seg[HEADROOM..]) else {
            break;
        };
        let len = len.expect("fits");
        assert!(len <= mtu);
        let p = SlicedPacket::from_ip(&seg[HEADROOM..HEADROOM + len]).expect("parses");
        let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
            panic!("TCP");
        };
        let Some(NetSlice::Ipv4(ip)) = &p.net else {
            panic!("IPv4");
        };
        assert_eq!(
            tcp.to_header()
                .calc_checksum_ipv4_raw(
                    ip.header().source(),
                    ip.header().destination(),
                    tcp.payload()
                )
                .expect("checksum"),
            tcp.checksum(),
            "segment {n}: a complete TCP checksum"
        );
        got.extend_from_slice(tcp.payload());
        drop(p);
        if first.is_none() {
            first = Some((seg, len));
        }
        n += 1;
    }
    assert_eq!(got, payload);
    assert_eq!(n, payload.len().div_ceil(mtu - 40));
    // The first segment, through the core as a tunnelled packet: delivered to the pod port, and
    // the plan covers the whole super-frame.
    let (mut seg, len) = first.expect("a first segment");
    let v = forward(
        &snap_b,
        Ingress::IpipInner,
        &mut seg,
        HEADROOM,
        len,
        Instant::ZERO,
    );
    assert!(
        matches!(v, Verdict::Forward(Action::Deliver { port, .. }) if port == POD),
        "{v:?}"
    );
    assert_eq!(
        plan_super_frame(&snap_b, Ingress::IpipInner, &v, &buf[at], Instant::ZERO),
        SuperFramePlan::Whole { port: POD }
    );
}

/// Node A in switch mode with two pods that may both send from `extra` (a VIP they pass
/// between them, as keepalived does), and node B as a VXLAN peer.
fn vip_tables(extra: &str) -> (Tables, [(PortId, Ipv4Addr, EthernetAddress); 2]) {
    let (a, b) = (node(1), node(2));
    let mut t = Tables::new(NodeConfig::flannel_defaults(
        a.vtep_mac,
        a.underlay,
        a.subnet.network(),
    ));
    t.set_port(
        TUN,
        Port {
            kind: PortKind::L3,
            mtu: 1450,
        },
    );
    t.fib.insert(a.subnet, NextHop::Blackhole);
    let extra = SourcePrefixes::new(&[extra.parse().expect("prefix")]).expect("one prefix");
    let pods = [
        (POD, a.pod_ip, a.pod_mac),
        (
            PortId(2),
            Ipv4Addr::new(10, 244, 1, 3),
            EthernetAddress([0x02, 0, 0, 0, 1, 3]),
        ),
    ];
    for (port, ip, mac) in pods {
        t.set_port(
            port,
            Port {
                kind: PortKind::L2 {
                    mac: POD_PORT_MAC,
                    pod: Some(PodAddr { ip, mac, extra }),
                },
                mtu: 1450,
            },
        );
        t.fib.insert(Ipv4Net::from(ip), NextHop::Local { port });
        t.neigh.insert_permanent(ip, mac, Some(port));
    }
    t.add_vxlan_peer(b.subnet, b.underlay, b.vtep_mac);
    (t, pods)
}

/// Where a packet from the overlay to `dst` goes on node A at `now`: the port and the
/// Ethernet destination, or the drop reason.
fn from_overlay_to(
    snap: &Snapshot,
    dst: Ipv4Addr,
    now: Instant,
) -> Result<(PortId, [u8; 6]), DropReason> {
    from_overlay(snap, &udp_packet(node(2).pod_ip, dst, 64, 100, false), now)
}

/// [`from_overlay_to`] for any inner IPv4 packet from node B.
fn from_overlay(
    snap: &Snapshot,
    inner: &[u8],
    now: Instant,
) -> Result<(PortId, [u8; 6]), DropReason> {
    let (a, b) = (node(1), node(2));
    let mut frame = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    frame.extend(ethernet(b.vtep_mac, a.vtep_mac, 0x0800, inner));
    let mut buf = buffer(&frame);
    match forward(
        snap,
        Ingress::VxlanUdp { src: b.underlay },
        &mut buf,
        HEADROOM,
        frame.len(),
        now,
    ) {
        Verdict::Forward(Action::Deliver { port, start, .. }) => {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&buf[start..start + 6]);
            Ok((port, mac))
        }
        Verdict::Drop(reason) => Err(reason),
        other => panic!("unexpected verdict {other:?}"),
    }
}

#[test]
fn a_floating_address_is_learnt_from_the_pod_that_announces_it_and_ages_out() {
    let (tables, [(p1, ip1, mac1), (p2, _, mac2)]) = vip_tables("10.244.1.200/32");
    let snap = tables.snapshot();
    let vip = Ipv4Addr::new(10, 244, 1, 200);
    let b = node(2);
    // Nobody has announced it: the subnet's blackhole.
    assert_eq!(from_overlay_to(&snap, vip, NOW), Err(DropReason::Blackhole));
    // Pod 1 sends from the VIP: allowed, forwarded, and the VIP is learnt on its port.
    let from_vip = ethernet(
        mac1,
        POD_PORT_MAC,
        0x0800,
        &udp_packet(vip, b.pod_ip, 64, 100, false),
    );
    let (v, _) = run(&snap, Ingress::Local(p1), &from_vip);
    assert!(
        matches!(v, Verdict::Forward(Action::Transmit { .. })),
        "{v:?}"
    );
    assert_eq!(from_overlay_to(&snap, vip, NOW), Ok((p1, mac1.0)));
    // Pod 2 takes the VIP over with a gratuitous ARP: not answered, but learnt; a snapshot
    // published meanwhile shares the learnt table.
    let garp = arp_request(mac2, mac2, vip, vip);
    let (v, _) = run(&snap, Ingress::Local(p2), &garp);
    assert_eq!(v, Verdict::Drop(DropReason::ArpIgnored));
    let republished = tables.snapshot();
    assert_eq!(from_overlay_to(&republished, vip, NOW), Ok((p2, mac2.0)));
    let learnt = snap.learnt.entries(NOW);
    assert_eq!(learnt.len(), 1);
    assert_eq!((learnt[0].port, learnt[0].state), (p2, "REACHABLE"));
    // Other addresses are still spoofing.
    let forged = ethernet(
        mac2,
        POD_PORT_MAC,
        0x0800,
        &udp_packet(Ipv4Addr::new(10, 244, 1, 201), b.pod_ip, 64, 100, false),
    );
    assert_eq!(
        run(&snap, Ingress::Local(p2), &forged).0,
        Verdict::Drop(DropReason::Spoofed)
    );
    // Pods on the node reach the VIP too (routed, so one TTL less).
    let to_vip = ethernet(
        mac1,
        POD_PORT_MAC,
        0x0800,
        &udp_packet(ip1, vip, 64, 100, false),
    );
    let (v, _) = run(&snap, Ingress::Local(p1), &to_vip);
    assert!(
        matches!(v, Verdict::Forward(Action::Deliver { port, .. }) if port == p2),
        "{v:?}"
    );
    // Silent for 30 s: stale but used; 90 s: gone, and the blackhole again.
    let stale = NOW + Duration::from_secs(30);
    assert_eq!(snap.learnt.entries(stale)[0].state, "STALE");
    assert_eq!(from_overlay_to(&snap, vip, stale), Ok((p2, mac2.0)));
    let gone = NOW + Duration::from_secs(90);
    assert_eq!(
        from_overlay_to(&snap, vip, gone),
        Err(DropReason::Blackhole)
    );
    assert!(snap.learnt.entries(gone).is_empty());
}

#[test]
fn a_learnt_address_never_takes_a_pods_own_address() {
    // The allowed prefix covers pod 1's own address: pod 2 may announce it, but traffic to it
    // still goes to pod 1, whose /32 route is permanent.
    let (t, [(p1, ip1, mac1), (p2, _, mac2)]) = vip_tables("10.244.1.0/24");
    let snap = t.snapshot();
    let garp = arp_request(mac2, mac2, ip1, ip1);
    assert_eq!(
        run(&snap, Ingress::Local(p2), &garp).0,
        Verdict::Drop(DropReason::ArpIgnored)
    );
    assert_eq!(from_overlay_to(&snap, ip1, NOW), Ok((p1, mac1.0)));
    // And a node whose pods have no extra prefixes never looks at the learnt table.
    let plain = tables(&node(1), &node(2), Mode::Vxlan);
    plain
        .learnt
        .confirm(Ipv4Addr::new(10, 244, 1, 9), POD, mac1, NOW);
    assert_eq!(
        from_overlay_to(&plain, Ipv4Addr::new(10, 244, 1, 9), NOW).map(|(port, _)| port),
        Ok(TUN),
        "the subnet's route, not the learnt entry"
    );
}

#[test]
fn the_first_segments_verdict_plans_the_whole_super_frame() {
    let (a, b) = (node(1), node(2));
    let snap = tables(&a, &b, Mode::Vxlan);
    let pod_frame = ethernet(
        a.pod_mac,
        POD_PORT_MAC,
        0x0800,
        &udp_packet(a.pod_ip, b.pod_ip, 64, 100, false),
    );
    let (v, _) = run(&snap, Ingress::Local(POD), &pod_frame);
    assert_eq!(
        plan_super_frame(&snap, Ingress::Local(POD), &v, &pod_frame[14..], NOW),
        SuperFramePlan::AsTheFirst { routed: true },
        "from a pod Weft routes: each segment loses a hop"
    );
    let from_tun = udp_packet(a.pod_ip, b.pod_ip, 64, 100, false);
    let (v, _) = run(&snap, Ingress::Local(TUN), &from_tun);
    assert_eq!(
        plan_super_frame(&snap, Ingress::Local(TUN), &v, &from_tun, NOW),
        SuperFramePlan::AsTheFirst { routed: false }
    );
    let to_pod = udp_packet(Ipv4Addr::new(10, 244, 1, 1), a.pod_ip, 64, 100, false);
    let (v, _) = run(&snap, Ingress::Local(TUN), &to_pod);
    assert_eq!(
        plan_super_frame(&snap, Ingress::Local(TUN), &v, &to_pod, NOW),
        SuperFramePlan::Whole { port: POD }
    );
    let nowhere = udp_packet(a.pod_ip, Ipv4Addr::new(10, 99, 0, 1), 64, 100, false);
    let (v, _) = run(&snap, Ingress::Local(TUN), &nowhere);
    assert_eq!(
        plan_super_frame(&snap, Ingress::Local(TUN), &v, &nowhere, NOW),
        SuperFramePlan::EachItsOwn
    );
}

/// A TCP segment with `flags` (SYN 0x02, ACK 0x10), correct checksums.
fn tcp_packet(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut b =
        etherparse::PacketBuilder::ipv4(src.octets(), dst.octets(), 64).tcp(sport, dport, 1, 64000);
    if flags & 0x02 != 0 {
        b = b.syn();
    }
    if flags & 0x10 != 0 {
        b = b.ack(1);
    }
    let mut out = Vec::new();
    b.write(&mut out, &[]).expect("write to a Vec");
    out
}

#[test]
fn network_policy_admits_allowed_flows_and_their_replies_and_drops_the_rest() {
    use dataplane::policy::{
        Conntrack, ConntrackConfig, Direction, IpSet, OnPolicyChange, PolicySetBuilder, PortRange,
        PortSet, Protocol, Rule, RuleId,
    };
    use dataplane::snapshot::PolicyHook;
    use std::sync::Arc;
    let (a, b) = (node(1), node(2));
    let plain = tables(&a, &b, Mode::Vxlan);
    // Pod A is isolated for ingress: only TCP 80 from pod B.
    let mut pb = PolicySetBuilder::new(1);
    let rule = pb.rule_ref(RuleId::Policy {
        namespace: "x".into(),
        name: "web".into(),
        direction: Direction::Ingress,
        index: 0,
    });
    pb.isolate(
        a.pod_ip,
        Direction::Ingress,
        vec![Rule {
            rule,
            peers: IpSet::from_addrs([b.pod_ip]),
            ports: PortSet::ranges([PortRange::single(Protocol::TCP, 80)]),
        }],
    );
    let mut snap = plain.clone();
    snap.policy = Some(PolicyHook {
        set: Arc::new(pb.build()),
        conntrack: Arc::new(Conntrack::new(ConntrackConfig {
            capacity: 1024,
            ..ConntrackConfig::default()
        })),
        on_change: OnPolicyChange::Recheck,
    });
    let syn = |dport| tcp_packet(b.pod_ip, a.pod_ip, 40000, dport, 0x02);
    assert_eq!(
        from_overlay(&snap, &syn(80), NOW).map(|(p, _)| p),
        Ok(POD),
        "allowed by the rule"
    );
    assert_eq!(
        from_overlay(&snap, &syn(81), NOW),
        Err(DropReason::PolicyDenied)
    );
    assert_eq!(
        from_overlay(&snap, &udp_packet(b.pod_ip, a.pod_ip, 64, 10, false), NOW),
        Err(DropReason::PolicyDenied),
        "UDP is not TCP 80"
    );
    // The reply of the allowed connection leaves pod A.
    let syn_ack = ethernet(
        a.pod_mac,
        POD_PORT_MAC,
        0x0800,
        &tcp_packet(a.pod_ip, b.pod_ip, 80, 40000, 0x12),
    );
    let (v, _) = run(&snap, Ingress::Local(POD), &syn_ack);
    assert!(
        matches!(v, Verdict::Forward(Action::Transmit { .. })),
        "{v:?}"
    );
    let stats = snap.policy.as_ref().map(|p| p.conntrack.stats().inserted);
    assert_eq!(stats, Some(1), "one flow tracked");
    // A pod no policy selects is not held back, and without a hook nothing is looked at.
    assert_eq!(from_overlay(&plain, &syn(81), NOW).map(|(p, _)| p), Ok(POD));
}

/// `snap` with NetworkPolicy on (no pod isolated, so every flow is allowed and tracked).
fn with_policy(snap: &Snapshot) -> Snapshot {
    use dataplane::policy::{Conntrack, ConntrackConfig, OnPolicyChange, PolicySet};
    use dataplane::snapshot::PolicyHook;
    let mut snap = snap.clone();
    snap.policy = Some(PolicyHook {
        set: std::sync::Arc::new(PolicySet::empty(1)),
        conntrack: std::sync::Arc::new(Conntrack::new(ConntrackConfig {
            capacity: 1024,
            ..ConntrackConfig::default()
        })),
        on_change: OnPolicyChange::Recheck,
    });
    snap
}

/// The state of the tracked flow of `key` in `snap`, if any.
fn flow_state(snap: &Snapshot, key: &dataplane::policy::FlowKey) -> Option<&'static str> {
    let ct = &snap.policy.as_ref().expect("policy on").conntrack;
    ct.get(key, NOW).map(|t| t.state.name())
}

/// A TSO super-frame of TCP `flags` (0x01 FIN, 0x08 PSH, 0x10 ACK) from `src`:40000 to `dst`:80,
/// three segments of 1,400 bytes, as a pod's TSO send hands it to its veth.
fn tcp_super_frame(src: Ipv4Addr, dst: Ipv4Addr, flags: u8) -> (Vec<u8>, VnetRepr) {
    let mut b = etherparse::PacketBuilder::ipv4(src.octets(), dst.octets(), 64)
        .tcp(40000, 80, 1000, 64000)
        .ack(1);
    if flags & 0x01 != 0 {
        b = b.fin();
    }
    if flags & 0x08 != 0 {
        b = b.psh();
    }
    let payload: Vec<u8> = (0..3 * 1400).map(|i| (i * 7 + 3) as u8).collect();
    let mut frame = Vec::new();
    b.write(&mut frame, &payload).expect("write to a Vec");
    let vnet = VnetRepr {
        needs_csum: true,
        gso: Gso::TcpV4,
        ecn: false,
        hdr_len: 40,
        gso_size: 1400,
        csum_start: 20,
        csum_offset: 16,
    };
    (frame, vnet)
}

/// What a worker does with a TSO super-frame from pod port `ingress` behind Ethernet header
/// `eth`: the first segment through the core, the plan from its verdict, and through the core
/// again only the segments the plan leaves to their own decisions. Returns the plan.
fn through_the_core(
    snap: &Snapshot,
    ingress: Ingress,
    eth: &[u8],
    frame: &[u8],
    vnet: &VnetRepr,
) -> SuperFramePlan {
    use dataplane::offload::Ipv4Segments;
    let mut segs = Ipv4Segments::new(frame, vnet).expect("a valid super-frame");
    let mut first = None;
    while !segs.is_done() {
        let mut buf = vec![0u8; HEADROOM + 2000];
        buf[HEADROOM..HEADROOM + eth.len()].copy_from_slice(eth);
        let seg_len = segs
            .emit_next(&mut buf[HEADROOM + eth.len()..])
            .expect("one more")
            .expect("fits");
        let v = forward(snap, ingress, &mut buf, HEADROOM, eth.len() + seg_len, NOW);
        match first {
            None => {
                let plan = plan_super_frame(snap, ingress, &v, frame, NOW);
                first = Some(plan);
                if plan != SuperFramePlan::EachItsOwn {
                    // The rest leave as the first did, with no decision of their own.
                    break;
                }
            }
            Some(_) => assert!(matches!(v, Verdict::Forward(_)), "{v:?}"),
        }
    }
    first.expect("at least one segment")
}

#[test]
fn a_fin_on_a_super_frames_last_segment_reaches_conntrack() {
    use dataplane::policy::{FlowKey, Protocol};
    let (a, b) = (node(1), node(2));
    // Pod A's connection to pod B on the other node: handshake, then a TSO send that ends with
    // FIN (the segmentation leaves it on the last segment only; the rest follow the first into
    // VXLAN without a decision of their own).
    let snap = with_policy(&tables(&a, &b, Mode::Vxlan));
    let key = FlowKey {
        src: a.pod_ip,
        dst: b.pod_ip,
        protocol: Protocol::TCP,
        src_port: 40000,
        dst_port: 80,
    };
    let from_pod = |ip: &[u8]| ethernet(a.pod_mac, POD_PORT_MAC, 0x0800, ip);
    let syn = from_pod(&tcp_packet(a.pod_ip, b.pod_ip, 40000, 80, 0x02));
    assert!(matches!(
        run(&snap, Ingress::Local(POD), &syn).0,
        Verdict::Forward(Action::Transmit { .. })
    ));
    let syn_ack = tcp_packet(b.pod_ip, a.pod_ip, 80, 40000, 0x12);
    assert_eq!(from_overlay(&snap, &syn_ack, NOW).map(|(p, _)| p), Ok(POD));
    let ack = from_pod(&tcp_packet(a.pod_ip, b.pod_ip, 40000, 80, 0x10));
    run(&snap, Ingress::Local(POD), &ack);
    assert_eq!(flow_state(&snap, &key), Some("ESTABLISHED"));

    // Data without FIN changes nothing.
    let (frame, vnet) = tcp_super_frame(a.pod_ip, b.pod_ip, 0x10);
    let eth = &from_pod(&[])[..];
    let plan = through_the_core(&snap, Ingress::Local(POD), eth, &frame, &vnet);
    assert_eq!(plan, SuperFramePlan::AsTheFirst { routed: true });
    assert_eq!(flow_state(&snap, &key), Some("ESTABLISHED"));
    let (fin, vnet) = tcp_super_frame(a.pod_ip, b.pod_ip, 0x10 | 0x08 | 0x01);
    through_the_core(&snap, Ingress::Local(POD), eth, &fin, &vnet);
    assert_eq!(flow_state(&snap, &key), Some("FIN_WAIT"));
    // The peer's FIN closes it.
    let mut peer_fin = tcp_packet(b.pod_ip, a.pod_ip, 80, 40000, 0x10);
    peer_fin[20 + 13] |= 0x01;
    from_overlay(&snap, &peer_fin, NOW).expect("delivered");
    assert_eq!(flow_state(&snap, &key), Some("TIME_WAIT"));

    // Pod to pod on the node: the super-frame passes whole to the other pod's port.
    let (t, [(p1, ip1, mac1), (p2, ip2, mac2)]) = vip_tables("10.244.1.200/32");
    let snap = with_policy(&t.snapshot());
    let key = FlowKey {
        src: ip1,
        dst: ip2,
        ..key
    };
    let frame_from = |mac, ip: &[u8]| ethernet(mac, POD_PORT_MAC, 0x0800, ip);
    run(
        &snap,
        Ingress::Local(p1),
        &frame_from(mac1, &tcp_packet(ip1, ip2, 40000, 80, 0x02)),
    );
    run(
        &snap,
        Ingress::Local(p2),
        &frame_from(mac2, &tcp_packet(ip2, ip1, 80, 40000, 0x12)),
    );
    run(
        &snap,
        Ingress::Local(p1),
        &frame_from(mac1, &tcp_packet(ip1, ip2, 40000, 80, 0x10)),
    );
    assert_eq!(flow_state(&snap, &key), Some("ESTABLISHED"));
    let (fin, vnet) = tcp_super_frame(ip1, ip2, 0x10 | 0x01);
    let eth = &frame_from(mac1, &[])[..];
    let plan = through_the_core(&snap, Ingress::Local(p1), eth, &fin, &vnet);
    assert_eq!(plan, SuperFramePlan::Whole { port: p2 });
    assert_eq!(flow_state(&snap, &key), Some("FIN_WAIT"));
}
