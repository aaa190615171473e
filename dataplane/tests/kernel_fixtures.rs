//! Interop with the Linux kernel's VXLAN device, through frames it really sent.
//!
//! The fixtures (see `fixtures/README.md`) were captured from two `flannel.1`-style kernel VTEPs.
//! Weft must decapsulate every one of them to the kernel's inner packet, and encapsulating that inner
//! packet must give the kernel's bytes, apart from the fields that legitimately vary per packet
//! (outer IP identification and checksum, UDP source port and checksum).

use std::net::Ipv4Addr;

use dataplane::fib::NextHop;
use dataplane::forward::{forward, Action, Encap, Ingress, Verdict, HEADROOM};
use dataplane::snapshot::{NodeConfig, Port, PortKind, Snapshot, Tables};
use dataplane::time::Instant;
use dataplane::wire::udp::UdpChecksum;
use dataplane::wire::{EthernetAddress, Ipv4Packet, UdpPacket, VxlanPacket, VxlanRepr};
use dataplane::PortId;

const TUN: PortId = PortId(0);
const FIXTURES: &[(&str, &[u8])] = &[
    (
        "icmp_echo",
        include_bytes!("fixtures/kernel_vxlan_icmp_echo.bin"),
    ),
    ("udp", include_bytes!("fixtures/kernel_vxlan_udp.bin")),
    (
        "tcp_syn",
        include_bytes!("fixtures/kernel_vxlan_tcp_syn.bin"),
    ),
    (
        "icmp_1400_df",
        include_bytes!("fixtures/kernel_vxlan_icmp_1400_df.bin"),
    ),
];
const REPLY: &[u8] = include_bytes!("fixtures/kernel_vxlan_icmp_reply.bin");
const OUTER_ETH: usize = 14;
const INNER: usize = OUTER_ETH + 50;

/// Node `i` (1 = A, 2 = B) of the capture topology, with the other as its VXLAN peer.
fn node(i: u8, udp_checksum: UdpChecksum) -> Snapshot {
    let other = 3 - i;
    let mac = |n: u8| EthernetAddress([0x0e, 0x57, 0x65, 0x66, 0x74, n]);
    let mut t = Tables::new(NodeConfig {
        udp_checksum,
        ..NodeConfig::flannel_defaults(
            mac(i),
            Ipv4Addr::new(192, 168, 50, i),
            Ipv4Addr::new(10, 244, i, 0),
        )
    });
    t.set_port(
        TUN,
        Port {
            kind: PortKind::L3,
            mtu: 1450,
        },
    );
    t.fib.insert(
        format!("10.244.{i}.0/24").parse().expect("valid prefix"),
        NextHop::Local { port: TUN },
    );
    t.add_vxlan_peer(
        format!("10.244.{other}.0/24")
            .parse()
            .expect("valid prefix"),
        Ipv4Addr::new(192, 168, 50, other),
        mac(other),
    );
    t.snapshot()
}

fn run(snap: &Snapshot, ingress: Ingress, data: &[u8]) -> (Verdict, Vec<u8>) {
    let mut buf = vec![0u8; HEADROOM + data.len()];
    buf[HEADROOM..].copy_from_slice(data);
    let v = forward(
        snap,
        ingress,
        &mut buf,
        HEADROOM,
        data.len(),
        Instant::from_secs(1),
    );
    (v, buf)
}

fn delivered(v: Verdict, buf: &[u8]) -> Vec<u8> {
    match v {
        Verdict::Forward(Action::Deliver { port, start, len }) => {
            assert_eq!(port, TUN);
            buf[start..start + len].to_vec()
        }
        other => panic!("not delivered: {other:?}"),
    }
}

#[test]
fn fixtures_parse_as_flannel_vxlan() {
    for (name, frame) in FIXTURES.iter().chain([("reply", REPLY)].iter()) {
        let outer = Ipv4Packet::new_checked(&frame[OUTER_ETH..]).expect("outer IPv4 parses");
        assert!(outer.verify_checksum(), "{name}: outer IPv4 checksum");
        assert!(!outer.dont_frag(), "{name}: kernel sends outer DF clear");
        assert_eq!(outer.ttl(), 64, "{name}");
        let udp = UdpPacket::new_checked(outer.payload()).expect("UDP parses");
        assert_eq!(udp.dst_port(), 8472, "{name}");
        assert!(
            udp.verify_checksum(outer.src_addr(), outer.dst_addr()),
            "{name}: UDP checksum"
        );
        let vx = VxlanPacket::new_checked(udp.payload()).expect("VXLAN parses");
        assert_eq!(VxlanRepr::parse(&vx), Ok(VxlanRepr { vni: 1 }), "{name}");
    }
}

#[test]
fn weft_decapsulates_what_the_kernel_sends() {
    let b = node(2, UdpChecksum::Zero);
    for (name, frame) in FIXTURES {
        // Through a raw socket (outer IPv4 onward) and through a UDP socket (VXLAN header onward).
        let (v, buf) = run(&b, Ingress::Underlay, &frame[OUTER_ETH..]);
        assert_eq!(delivered(v, &buf), &frame[INNER..], "{name} (raw)");
        let (v, buf) = run(
            &b,
            Ingress::VxlanUdp {
                src: Ipv4Addr::new(192, 168, 50, 1),
            },
            &frame[OUTER_ETH + 28..],
        );
        assert_eq!(delivered(v, &buf), &frame[INNER..], "{name} (udp socket)");
    }
    let a = node(1, UdpChecksum::Zero);
    let (v, buf) = run(&a, Ingress::Underlay, &REPLY[OUTER_ETH..]);
    assert_eq!(delivered(v, &buf), &REPLY[INNER..], "echo reply on A");
}

#[test]
fn weft_encapsulates_like_the_kernel() {
    for checksum in [UdpChecksum::Zero, UdpChecksum::Compute] {
        let a = node(1, checksum);
        for (name, frame) in FIXTURES {
            let (v, buf) = run(&a, Ingress::Local(TUN), &frame[INNER..]);
            let Verdict::Forward(Action::Transmit {
                next_hop,
                start,
                len,
                encap: Encap::Vxlan { src_port, .. },
            }) = v
            else {
                panic!("{name}: not transmitted: {v:?}");
            };
            assert_eq!(next_hop, Ipv4Addr::new(192, 168, 50, 2));
            let ours = &buf[start..start + len];
            let kernel = &frame[OUTER_ETH..];
            assert_eq!(ours.len(), kernel.len(), "{name}: length");
            // Outer IPv4: same but identification (4..6) and checksum (10..12).
            assert_eq!(
                ours[..4],
                kernel[..4],
                "{name}: outer version..total length"
            );
            assert_eq!(
                ours[6..10],
                kernel[6..10],
                "{name}: outer flags, TTL, protocol"
            );
            assert_eq!(ours[12..20], kernel[12..20], "{name}: outer addresses");
            let outer = Ipv4Packet::new_checked(ours).expect("ours parses");
            assert!(outer.verify_checksum(), "{name}: our outer checksum");
            // UDP: same destination port and length; our own source port; checksum zero or right.
            assert_eq!(ours[22..26], kernel[22..26], "{name}: UDP port and length");
            assert_eq!(u16::from_be_bytes([ours[20], ours[21]]), src_port);
            assert!(
                (32768..61000).contains(&src_port),
                "{name}: source port range"
            );
            let udp = UdpPacket::new_checked(outer.payload()).expect("UDP parses");
            match checksum {
                UdpChecksum::Zero => assert_eq!(udp.checksum(), 0),
                UdpChecksum::Compute => {
                    assert_ne!(udp.checksum(), 0);
                    assert!(udp.verify_checksum(outer.src_addr(), outer.dst_addr()));
                }
            }
            // VXLAN header, inner Ethernet and inner packet: byte for byte.
            assert_eq!(
                ours[28..],
                kernel[28..],
                "{name}: VXLAN header and inner frame"
            );
        }
    }
}
