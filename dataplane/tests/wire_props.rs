//! Property tests of `dataplane::wire` against itself and against an independent decoder.
//!
//! - Round trips: every `Repr` emitted from arbitrary field values parses back to the same value.
//! - Independence: everything we emit is decoded by etherparse and its fields (and checksums,
//!   recomputed by etherparse) are compared, so a mistake shared by our emitter and our parser
//!   cannot hide.
//! - Robustness: every checked constructor and `Repr::parse` is fed every truncation of real
//!   packets, mutated packets and random buffers, and every accessor of a successfully checked
//!   view is called. The contract under test is "malformed input is an error, never a panic".

use std::hint::black_box;
use std::net::Ipv4Addr;

use dataplane::wire::icmpv4::{dst_unreachable, msg_type, time_exceeded};
use dataplane::wire::ipv4::{protocol, DEFAULT_TTL};
use dataplane::wire::udp::UdpChecksum;
use dataplane::wire::{
    arp, ethernet, icmpv4, ipip, ipv4, udp, vxlan, ArpOperation, ArpPacket, ArpRepr, EtherType,
    EthernetAddress, EthernetFrame, EthernetRepr, Icmpv4Packet, Icmpv4Repr, Ipv4Packet, Ipv4Repr,
    UdpPacket, UdpRepr, VxlanPacket, VxlanRepr,
};
use proptest::collection::vec;
use proptest::prelude::*;

fn mac() -> impl Strategy<Value = EthernetAddress> {
    any::<[u8; 6]>().prop_map(EthernetAddress)
}

fn addr() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

fn ipv4_repr(max_payload: usize) -> impl Strategy<Value = Ipv4Repr> {
    (
        addr(),
        addr(),
        any::<u8>(),
        0..=max_payload,
        any::<u8>(),
        any::<u8>(),
        any::<u16>(),
        any::<bool>(),
    )
        .prop_map(
            |(src_addr, dst_addr, protocol, payload_len, ttl, tos, ident, dont_frag)| Ipv4Repr {
                src_addr,
                dst_addr,
                protocol,
                payload_len,
                ttl,
                tos,
                ident,
                dont_frag,
            },
        )
}

/// Emits `repr` followed by `payload` as one datagram.
fn ipv4_datagram(repr: &Ipv4Repr, payload: &[u8]) -> Vec<u8> {
    assert_eq!(repr.payload_len, payload.len());
    let mut buf = vec![0u8; repr.buffer_len() + payload.len()];
    buf[ipv4::HEADER_LEN..].copy_from_slice(payload);
    repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
    buf
}

/// Checks an IPv4 header we emitted with etherparse: fields, checksum recomputed independently.
fn check_ipv4_with_etherparse(buf: &[u8], repr: &Ipv4Repr) {
    let (h, rest) = etherparse::Ipv4Header::from_slice(buf).expect("etherparse reads our IPv4");
    assert_eq!(h.source, repr.src_addr.octets());
    assert_eq!(h.destination, repr.dst_addr.octets());
    assert_eq!(h.protocol.0, repr.protocol);
    assert_eq!(
        usize::from(h.total_len),
        ipv4::HEADER_LEN + repr.payload_len
    );
    assert_eq!(h.identification, repr.ident);
    assert_eq!(h.dont_fragment, repr.dont_frag);
    assert!(!h.more_fragments);
    assert_eq!(h.fragment_offset.value(), 0);
    assert_eq!(h.time_to_live, repr.ttl);
    assert_eq!((h.dscp.value() << 2) | h.ecn.value(), repr.tos);
    assert!(h.options[..].is_empty());
    assert_eq!(h.header_checksum, h.calc_header_checksum());
    assert_eq!(rest.len(), repr.payload_len);
}

/// An ICMP message with owned data, so proptest can generate it.
#[derive(Debug, Clone)]
enum IcmpCase {
    Echo {
        reply: bool,
        ident: u16,
        seq_no: u16,
        data: Vec<u8>,
    },
    DstUnreachable {
        code: u8,
        next_hop_mtu: u16,
        original: Vec<u8>,
    },
    TimeExceeded {
        code: u8,
        original: Vec<u8>,
    },
}

impl IcmpCase {
    fn repr(&self) -> Icmpv4Repr<'_> {
        match self {
            IcmpCase::Echo {
                reply: false,
                ident,
                seq_no,
                data,
            } => Icmpv4Repr::EchoRequest {
                ident: *ident,
                seq_no: *seq_no,
                data,
            },
            IcmpCase::Echo {
                reply: true,
                ident,
                seq_no,
                data,
            } => Icmpv4Repr::EchoReply {
                ident: *ident,
                seq_no: *seq_no,
                data,
            },
            IcmpCase::DstUnreachable {
                code,
                next_hop_mtu,
                original,
            } => Icmpv4Repr::DstUnreachable {
                code: *code,
                next_hop_mtu: *next_hop_mtu,
                original,
            },
            IcmpCase::TimeExceeded { code, original } => Icmpv4Repr::TimeExceeded {
                code: *code,
                original,
            },
        }
    }
}

fn icmp_case() -> impl Strategy<Value = IcmpCase> {
    prop_oneof![
        (
            any::<bool>(),
            any::<u16>(),
            any::<u16>(),
            vec(any::<u8>(), 0..128)
        )
            .prop_map(|(reply, ident, seq_no, data)| IcmpCase::Echo {
                reply,
                ident,
                seq_no,
                data
            }),
        // Codes 0..=15 are the ones etherparse names. The MTU field is only meaningful (and only
        // non-zero, as Weft's callers write it) for Fragmentation Needed.
        (0u8..=15, any::<u16>(), vec(any::<u8>(), 0..128)).prop_map(|(code, mtu, original)| {
            let next_hop_mtu = if code == dst_unreachable::FRAG_NEEDED {
                mtu
            } else {
                0
            };
            IcmpCase::DstUnreachable {
                code,
                next_hop_mtu,
                original,
            }
        }),
        (0u8..=1, vec(any::<u8>(), 0..128))
            .prop_map(|(code, original)| IcmpCase::TimeExceeded { code, original }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn ethernet_round_trip(
        src_addr in mac(),
        dst_addr in mac(),
        ethertype in any::<u16>(),
        payload in vec(any::<u8>(), 0..64),
    ) {
        let repr = EthernetRepr { src_addr, dst_addr, ethertype: EtherType::from(ethertype) };
        let mut buf = vec![0u8; repr.buffer_len() + payload.len()];
        buf[ethernet::HEADER_LEN..].copy_from_slice(&payload);
        repr.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));

        let frame = EthernetFrame::new_checked(&buf[..]).expect("valid");
        prop_assert_eq!(EthernetRepr::parse(&frame), Ok(repr));
        prop_assert_eq!(frame.payload(), &payload[..]);

        let (h, rest) = etherparse::Ethernet2Header::from_slice(&buf).expect("etherparse");
        prop_assert_eq!(h.source, src_addr.0);
        prop_assert_eq!(h.destination, dst_addr.0);
        prop_assert_eq!(h.ether_type.0, ethertype);
        prop_assert_eq!(rest, &payload[..]);
    }

    #[test]
    fn arp_round_trip(
        operation in any::<u16>(),
        sha in mac(),
        spa in addr(),
        tha in mac(),
        tpa in addr(),
    ) {
        let repr = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::from(operation),
            source_hardware_addr: sha,
            source_protocol_addr: spa,
            target_hardware_addr: tha,
            target_protocol_addr: tpa,
        };
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
        prop_assert_eq!(buf.len(), arp::HEADER_LEN);
        prop_assert_eq!(ArpRepr::parse(&ArpPacket::new_checked(&buf[..]).expect("valid")), Ok(repr));

        let theirs = etherparse::ArpPacket::from_slice(&buf)
            .expect("etherparse")
            .try_eth_ipv4()
            .expect("Ethernet/IPv4 ARP");
        prop_assert_eq!(theirs.operation.0, operation);
        prop_assert_eq!(theirs.sender_mac, sha.0);
        prop_assert_eq!(theirs.sender_ipv4, spa.octets());
        prop_assert_eq!(theirs.target_mac, tha.0);
        prop_assert_eq!(theirs.target_ipv4, tpa.octets());
    }

    #[test]
    fn ipv4_round_trip(repr in ipv4_repr(1480), fill in any::<u8>()) {
        let payload = vec![fill; repr.payload_len];
        let mut buf = ipv4_datagram(&repr, &payload);
        let packet = Ipv4Packet::new_checked(&buf[..]).expect("valid");
        prop_assert!(packet.verify_checksum());
        prop_assert!(!packet.is_fragment());
        prop_assert_eq!(packet.payload(), &payload[..]);
        prop_assert_eq!(Ipv4Repr::parse(&packet), Ok(repr));
        check_ipv4_with_etherparse(&buf, &repr);

        // Forwarding: the incremental TTL update must agree with etherparse's full recompute.
        if repr.ttl > 0 {
            let mut packet = Ipv4Packet::new_checked(&mut buf[..]).expect("valid");
            prop_assert_eq!(packet.decrement_ttl(), repr.ttl - 1);
            prop_assert!(packet.verify_checksum());
            let (h, _) = etherparse::Ipv4Header::from_slice(&buf).expect("etherparse");
            prop_assert_eq!(h.time_to_live, repr.ttl - 1);
            prop_assert_eq!(h.header_checksum, h.calc_header_checksum());
        }
    }

    #[test]
    fn icmpv4_round_trip(case in icmp_case()) {
        let repr = case.repr();
        let mut buf = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Icmpv4Packet::new_unchecked(&mut buf[..]));
        let packet = Icmpv4Packet::new_checked(&buf[..]).expect("valid");
        prop_assert!(packet.verify_checksum());
        prop_assert_eq!(Icmpv4Repr::parse(&packet), Ok(repr));

        let theirs = etherparse::Icmpv4Slice::from_slice(&buf).expect("etherparse");
        let ty = theirs.icmp_type();
        prop_assert_eq!(theirs.checksum(), ty.calc_checksum(theirs.payload()));
        use etherparse::Icmpv4Type as T;
        match (&case, ty) {
            (IcmpCase::Echo { reply: false, ident, seq_no, data }, T::EchoRequest(h))
            | (IcmpCase::Echo { reply: true, ident, seq_no, data }, T::EchoReply(h)) => {
                prop_assert_eq!((h.id, h.seq), (*ident, *seq_no));
                prop_assert_eq!(theirs.payload(), &data[..]);
            }
            (IcmpCase::DstUnreachable { code, next_hop_mtu, original }, T::DestinationUnreachable(h)) => {
                prop_assert_eq!(h.code_u8(), *code);
                if let etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: theirs_mtu } = h {
                    prop_assert_eq!(theirs_mtu, *next_hop_mtu);
                }
                prop_assert_eq!(theirs.payload(), &original[..]);
            }
            (IcmpCase::TimeExceeded { code, original }, T::TimeExceeded(c)) => {
                prop_assert_eq!(c.code_u8(), *code);
                prop_assert_eq!(theirs.payload(), &original[..]);
            }
            (case, ty) => prop_assert!(false, "we emitted {:?}, etherparse read {:?}", case, ty),
        }
    }

    #[test]
    fn udp_round_trip(
        src_port in any::<u16>(),
        dst_port in any::<u16>(),
        src in addr(),
        dst in addr(),
        payload in vec(any::<u8>(), 0..600),
        compute in any::<bool>(),
    ) {
        let repr = UdpRepr { src_port, dst_port };
        let mode = if compute { UdpChecksum::Compute } else { UdpChecksum::Zero };
        let mut buf = vec![0u8; repr.buffer_len(payload.len())];
        buf[udp::HEADER_LEN..].copy_from_slice(&payload);
        repr.emit(&mut UdpPacket::new_unchecked(&mut buf[..]), src, dst, payload.len(), mode);

        let packet = UdpPacket::new_checked(&buf[..]).expect("valid");
        prop_assert_eq!(packet.payload(), &payload[..]);
        prop_assert!(packet.verify_checksum(src, dst));
        prop_assert_eq!(UdpRepr::parse(&packet, src, dst), Ok(repr));

        let (h, rest) = etherparse::UdpHeader::from_slice(&buf).expect("etherparse");
        prop_assert_eq!((h.source_port, h.destination_port), (src_port, dst_port));
        prop_assert_eq!(usize::from(h.length), udp::HEADER_LEN + payload.len());
        prop_assert_eq!(rest, &payload[..]);
        if compute {
            let theirs = h.calc_checksum_ipv4_raw(src.octets(), dst.octets(), rest).expect("fits");
            prop_assert_eq!(h.checksum, theirs);
            prop_assert_ne!(h.checksum, 0);
        } else {
            prop_assert_eq!(h.checksum, 0);
        }
    }

    #[test]
    fn vxlan_round_trip(vni in 0..=vxlan::VNI_MAX, noise in any::<[u8; 5]>()) {
        let repr = VxlanRepr { vni };
        let mut buf = [0xffu8; vxlan::HEADER_LEN];
        repr.emit(&mut VxlanPacket::new_unchecked(&mut buf[..]));
        let packet = VxlanPacket::new_checked(&buf[..]).expect("valid");
        prop_assert_eq!((packet.flags(), packet.reserved1(), packet.reserved2()), (0x08, 0, 0));
        prop_assert_eq!(VxlanRepr::parse(&packet), Ok(repr));

        // Receive ignores every reserved bit and flag but I (RFC 7348 §5).
        let mut noisy = buf;
        noisy[0] = noise[0] | vxlan::FLAG_I;
        noisy[1..4].copy_from_slice(&noise[1..4]);
        noisy[7] = noise[4];
        prop_assert_eq!(VxlanRepr::parse(&VxlanPacket::new_unchecked(&noisy[..])), Ok(repr));
        noisy[0] &= !vxlan::FLAG_I;
        prop_assert_eq!(
            VxlanRepr::parse(&VxlanPacket::new_unchecked(&noisy[..])),
            Err(dataplane::wire::Error::Malformed)
        );
    }

    /// The whole VXLAN encapsulation as the forwarding core builds it: inner frame first, then
    /// VXLAN, UDP (checksum over what is already in place) and the outer IPv4 header.
    #[test]
    fn vxlan_stack_round_trip(
        inner in ipv4_repr(256),
        inner_fill in any::<u8>(),
        vtep_src in mac(),
        vtep_dst in mac(),
        node_src in addr(),
        node_dst in addr(),
        sport in 49152u16..=65535,
        flannel in any::<bool>(),
        vni in 0..=vxlan::VNI_MAX,
        compute in any::<bool>(),
        ident in any::<u16>(),
    ) {
        let inner_ip = ipv4_datagram(&inner, &vec![inner_fill; inner.payload_len]);
        let eth = EthernetRepr { src_addr: vtep_src, dst_addr: vtep_dst, ethertype: EtherType::Ipv4 };
        let dport = if flannel { vxlan::FLANNEL_PORT } else { vxlan::IANA_PORT };
        let mode = if compute { UdpChecksum::Compute } else { UdpChecksum::Zero };
        let frame_len = ethernet::HEADER_LEN + inner_ip.len();
        let udp_payload_len = vxlan::HEADER_LEN + frame_len;
        let udp_len = udp::HEADER_LEN + udp_payload_len;
        let outer = Ipv4Repr {
            src_addr: node_src,
            dst_addr: node_dst,
            protocol: protocol::UDP,
            payload_len: udp_len,
            ttl: DEFAULT_TTL,
            tos: 0,
            ident,
            dont_frag: false,
        };
        let mut buf = vec![0u8; ipv4::HEADER_LEN + udp_len];
        prop_assert_eq!(buf.len() - inner_ip.len(), vxlan::OVERHEAD_V4);
        {
            let (_, rest) = buf.split_at_mut(ipv4::HEADER_LEN + udp::HEADER_LEN);
            let mut vx = VxlanPacket::new_unchecked(rest);
            VxlanRepr { vni }.emit(&mut vx);
            let mut frame = EthernetFrame::new_unchecked(vx.payload_mut());
            eth.emit(&mut frame);
            frame.payload_mut().copy_from_slice(&inner_ip);
        }
        UdpRepr { src_port: sport, dst_port: dport }.emit(
            &mut UdpPacket::new_unchecked(&mut buf[ipv4::HEADER_LEN..]),
            node_src,
            node_dst,
            udp_payload_len,
            mode,
        );
        outer.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));

        // etherparse, up to UDP.
        let sliced = etherparse::SlicedPacket::from_ip(&buf).expect("etherparse");
        let Some(etherparse::NetSlice::Ipv4(ip)) = sliced.net else {
            return Err(TestCaseError::fail("no IPv4 layer"));
        };
        let h = ip.header().to_header();
        prop_assert_eq!(h.header_checksum, h.calc_header_checksum());
        prop_assert_eq!((h.source, h.destination), (node_src.octets(), node_dst.octets()));
        let Some(etherparse::TransportSlice::Udp(u)) = sliced.transport else {
            return Err(TestCaseError::fail("no UDP layer"));
        };
        prop_assert_eq!((u.source_port(), u.destination_port()), (sport, dport));
        prop_assert_eq!(usize::from(u.length()), udp_len);
        prop_assert_eq!(u.payload(), &buf[ipv4::HEADER_LEN + udp::HEADER_LEN..]);
        if compute {
            let theirs = u
                .to_header()
                .calc_checksum_ipv4_raw(node_src.octets(), node_dst.octets(), u.payload())
                .expect("fits");
            prop_assert_eq!(u.checksum(), theirs);
        } else {
            prop_assert_eq!(u.checksum(), 0);
        }
        // etherparse, the inner frame.
        let inner_frame = &u.payload()[vxlan::HEADER_LEN..];
        // (Header by header: the inner payload is random bytes, not a transport etherparse could
        // be asked to decode.)
        let (e, rest) = etherparse::Ethernet2Header::from_slice(inner_frame).expect("inner eth");
        prop_assert_eq!((e.source, e.destination), (vtep_src.0, vtep_dst.0));
        prop_assert_eq!(e.ether_type, etherparse::EtherType::IPV4);
        prop_assert_eq!(rest, &inner_ip[..]);
        check_ipv4_with_etherparse(rest, &inner);

        // Our own decapsulation chain.
        let ip = Ipv4Packet::new_checked(&buf[..]).expect("outer");
        prop_assert_eq!(Ipv4Repr::parse(&ip), Ok(outer));
        let udp_packet = UdpPacket::new_checked(ip.payload()).expect("udp");
        prop_assert_eq!(
            UdpRepr::parse(&udp_packet, node_src, node_dst),
            Ok(UdpRepr { src_port: sport, dst_port: dport })
        );
        let vx = VxlanPacket::new_checked(udp_packet.payload()).expect("vxlan");
        prop_assert_eq!(VxlanRepr::parse(&vx), Ok(VxlanRepr { vni }));
        let frame = EthernetFrame::new_checked(vx.payload()).expect("frame");
        prop_assert_eq!(EthernetRepr::parse(&frame), Ok(eth));
        let inner_packet = Ipv4Packet::new_checked(frame.payload()).expect("inner");
        prop_assert_eq!(Ipv4Repr::parse(&inner_packet), Ok(inner));
    }

    #[test]
    fn ipip_round_trip(
        inner in ipv4_repr(512),
        fill in any::<u8>(),
        src in addr(),
        dst in addr(),
        ttl in 1u8..=255,
        ident in any::<u16>(),
    ) {
        let inner_bytes = ipv4_datagram(&inner, &vec![fill; inner.payload_len]);
        let inner_view = Ipv4Packet::new_checked(&inner_bytes[..]).expect("inner");
        let repr = ipip::IpipRepr::for_inner(&inner_view, src, dst, ttl, ident);
        prop_assert_eq!((repr.tos, repr.dont_frag, repr.ttl), (inner.tos, inner.dont_frag, ttl));
        let mut buf = vec![0u8; repr.buffer_len()];
        buf[ipip::OVERHEAD..].copy_from_slice(&inner_bytes);
        repr.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));

        let outer = Ipv4Packet::new_checked(&buf[..]).expect("outer");
        prop_assert_eq!(ipip::parse_outer(&outer), Ok(repr));
        let decapsulated = ipip::inner(&outer).expect("inner");
        prop_assert_eq!(decapsulated.into_inner(), &inner_bytes[..]);

        check_ipv4_with_etherparse(&buf, &Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            protocol: protocol::IPIP,
            payload_len: inner_bytes.len(),
            ttl,
            tos: inner.tos,
            ident,
            dont_frag: inner.dont_frag,
        });
        check_ipv4_with_etherparse(&buf[ipip::OVERHEAD..], &inner);
    }
}

// ---------------------------------------------------------------------------------------------
// Robustness: no parser panics, whatever the bytes.

/// Runs every checked constructor and `Repr::parse` over `buf`, both on checked views and on
/// unchecked ones (the `Repr`s re-check), calls every accessor of each view that checked out, and
/// every setter on a copy.
fn exercise(buf: &[u8]) {
    let a = Ipv4Addr::new(192, 168, 64, 2);
    let b = Ipv4Addr::new(192, 168, 64, 3);

    if let Ok(f) = EthernetFrame::new_checked(buf) {
        black_box((f.dst_addr(), f.src_addr(), f.ethertype(), f.payload()));
        black_box(EthernetRepr::parse(&f).expect("a checked frame always parses"));
    }
    black_box(EthernetRepr::parse(&EthernetFrame::new_unchecked(buf)).ok());

    if let Ok(p) = ArpPacket::new_checked(buf) {
        black_box((
            p.hardware_type(),
            p.protocol_type(),
            p.hardware_len(),
            p.protocol_len(),
        ));
        black_box((
            p.operation(),
            p.source_hardware_addr(),
            p.source_protocol_addr(),
        ));
        black_box((p.target_hardware_addr(), p.target_protocol_addr()));
        black_box(ArpRepr::parse(&p).ok());
    }
    black_box(ArpRepr::parse(&ArpPacket::new_unchecked(buf)).ok());

    if let Ok(p) = Ipv4Packet::new_checked(buf) {
        black_box((
            p.version(),
            p.header_len(),
            p.tos(),
            p.total_len(),
            p.ident(),
        ));
        black_box((
            p.dont_frag(),
            p.more_frags(),
            p.frag_offset(),
            p.is_fragment(),
            p.ttl(),
        ));
        black_box((p.protocol(), p.checksum(), p.src_addr(), p.dst_addr()));
        black_box((p.verify_checksum(), p.payload()));
        black_box(Ipv4Repr::parse(&p).ok());
        black_box(ipip::parse_outer(&p).ok());
        if let Ok(inner) = ipip::inner(&p) {
            black_box((inner.ttl(), inner.payload(), inner.verify_checksum()));
            black_box(ipip::IpipRepr::for_inner(&inner, a, b, DEFAULT_TTL, 1));
        }
    }
    black_box(Ipv4Repr::parse(&Ipv4Packet::new_unchecked(buf)).ok());
    black_box(ipip::parse_outer(&Ipv4Packet::new_unchecked(buf)).ok());
    black_box(ipip::inner(&Ipv4Packet::new_unchecked(buf)).ok());

    if let Ok(p) = Icmpv4Packet::new_checked(buf) {
        black_box((
            p.msg_type(),
            p.msg_code(),
            p.checksum(),
            p.echo_ident(),
            p.echo_seq_no(),
        ));
        black_box((p.next_hop_mtu(), p.data(), p.verify_checksum()));
        black_box(Icmpv4Repr::parse(&p).ok());
    }
    black_box(Icmpv4Repr::parse(&Icmpv4Packet::new_unchecked(buf)).ok());

    if let Ok(p) = UdpPacket::new_checked(buf) {
        black_box((
            p.src_port(),
            p.dst_port(),
            p.len(),
            p.checksum(),
            p.payload(),
        ));
        black_box(p.verify_checksum(a, b));
        black_box(UdpRepr::parse(&p, a, b).ok());
    }
    black_box(UdpRepr::parse(&UdpPacket::new_unchecked(buf), a, b).ok());

    if let Ok(p) = VxlanPacket::new_checked(buf) {
        black_box((
            p.flags(),
            p.has_vni(),
            p.vni(),
            p.reserved1(),
            p.reserved2(),
            p.payload(),
        ));
        black_box(VxlanRepr::parse(&p).ok());
    }
    black_box(VxlanRepr::parse(&VxlanPacket::new_unchecked(buf)).ok());

    // Setters never panic on a checked view either.
    let mut copy = buf.to_vec();
    if let Ok(mut p) = Ipv4Packet::new_checked(&mut copy[..]) {
        if p.ttl() > 0 {
            black_box(p.decrement_ttl());
        }
        p.fill_checksum();
        black_box(p.payload_mut());
    }
    let mut copy = buf.to_vec();
    if let Ok(mut p) = UdpPacket::new_checked(&mut copy[..]) {
        p.fill_checksum(a, b);
        black_box(p.payload_mut());
    }
    let mut copy = buf.to_vec();
    if let Ok(mut p) = Icmpv4Packet::new_checked(&mut copy[..]) {
        p.clear_rest_of_header();
        p.fill_checksum();
        black_box(p.data_mut());
    }
    let mut copy = buf.to_vec();
    if let Ok(mut p) = VxlanPacket::new_checked(&mut copy[..]) {
        p.clear_reserved();
        p.set_vni(vxlan::VNI_MAX);
        black_box(p.payload_mut());
    }
    let mut copy = buf.to_vec();
    if let Ok(mut p) = EthernetFrame::new_checked(&mut copy[..]) {
        p.set_ethertype(EtherType::Unknown(0));
        black_box(p.payload_mut());
    }
}

/// Real packets, each at the layer its parser expects.
fn fixtures() -> Vec<Vec<u8>> {
    let arp_request: Vec<u8> = vec![
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08,
        0x06, // eth
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // ARP request
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 10, 244, 1, 2, // sender
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 169, 254, 1, 1, // target
    ];
    // ping 10.244.1.2 -> 10.244.2.3 (see ipv4::tests), checksums valid.
    let ping: Vec<u8> = vec![
        0x45, 0x00, 0x00, 0x24, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x01, 0x05, 0xa7, 10, 244, 1, 2, 10,
        244, 2, 3, 0x08, 0x00, 0x71, 0x12, 0x12, 0x34, 0x00, 0x01, b'w', b'e', b'f', b't', b'-',
        b'p', b'i', b'n',
    ];
    // The ping, IPIP-encapsulated between 192.168.64.2 and 192.168.64.3.
    let mut ipip_ping: Vec<u8> = vec![
        0x45, 0x00, 0x00, 0x38, 0xbe, 0xef, 0x40, 0x00, 0x40, 0x04, 0x7a, 0x7c, 192, 168, 64, 2,
        192, 168, 64, 3,
    ];
    ipip_ping.extend_from_slice(&ping);
    // UDP datagram 192.168.64.2:40000 -> 192.168.64.3:8472 (see udp::tests).
    let udp_datagram: Vec<u8> = vec![
        0x9c, 0x40, 0x21, 0x18, 0x00, 0x14, 0x03, 0x1a, b'h', b'e', b'l', b'l', b'o', b',', b' ',
        b'w', b'e', b'f', b't', b'!',
    ];
    // The ping inside flannel's VXLAN (VNI 1), built by our emitters: outer IPv4, UDP, VXLAN,
    // inner Ethernet, inner IPv4, ICMP.
    let inner_frame_len = ethernet::HEADER_LEN + ping.len();
    let udp_payload_len = vxlan::HEADER_LEN + inner_frame_len;
    let mut vxlan_ping = vec![0u8; ipv4::HEADER_LEN + udp::HEADER_LEN + udp_payload_len];
    let off = ipv4::HEADER_LEN + udp::HEADER_LEN;
    VxlanRepr { vni: 1 }.emit(&mut VxlanPacket::new_unchecked(&mut vxlan_ping[off..]));
    let off = off + vxlan::HEADER_LEN;
    EthernetRepr {
        src_addr: EthernetAddress([0x9a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]),
        dst_addr: EthernetAddress([0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44]),
        ethertype: EtherType::Ipv4,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut vxlan_ping[off..]));
    vxlan_ping[off + ethernet::HEADER_LEN..].copy_from_slice(&ping);
    let (a, b) = (
        Ipv4Addr::new(192, 168, 64, 2),
        Ipv4Addr::new(192, 168, 64, 3),
    );
    UdpRepr {
        src_port: 40000,
        dst_port: vxlan::FLANNEL_PORT,
    }
    .emit(
        &mut UdpPacket::new_unchecked(&mut vxlan_ping[ipv4::HEADER_LEN..]),
        a,
        b,
        udp_payload_len,
        UdpChecksum::Compute,
    );
    Ipv4Repr {
        src_addr: a,
        dst_addr: b,
        protocol: protocol::UDP,
        payload_len: udp::HEADER_LEN + udp_payload_len,
        ttl: 64,
        tos: 0,
        ident: 7,
        dont_frag: false,
    }
    .emit(&mut Ipv4Packet::new_unchecked(&mut vxlan_ping[..]));
    // A Fragmentation Needed quoting the ping.
    let quote = &ping[..28];
    let frag_needed = Icmpv4Repr::DstUnreachable {
        code: dst_unreachable::FRAG_NEEDED,
        next_hop_mtu: 1450,
        original: quote,
    };
    let mut icmp_error = vec![0u8; frag_needed.buffer_len()];
    frag_needed.emit(&mut Icmpv4Packet::new_unchecked(&mut icmp_error[..]));
    let time_exc = Icmpv4Repr::TimeExceeded {
        code: time_exceeded::TTL_EXCEEDED,
        original: quote,
    };
    let mut icmp_time = vec![0u8; time_exc.buffer_len()];
    time_exc.emit(&mut Icmpv4Packet::new_unchecked(&mut icmp_time[..]));

    vec![
        arp_request,
        ping,
        ipip_ping,
        udp_datagram,
        vxlan_ping,
        icmp_error,
        icmp_time,
    ]
}

#[test]
fn fixtures_decode_as_expected() {
    let f = fixtures();
    let frame = EthernetFrame::new_checked(&f[0][..]).expect("arp frame");
    assert!(ArpRepr::parse(&ArpPacket::new_checked(frame.payload()).expect("arp")).is_ok());
    let ping = Ipv4Packet::new_checked(&f[1][..]).expect("ping");
    let icmp = Icmpv4Packet::new_checked(ping.payload()).expect("icmp");
    assert!(matches!(
        Icmpv4Repr::parse(&icmp),
        Ok(Icmpv4Repr::EchoRequest { .. })
    ));
    let outer = Ipv4Packet::new_checked(&f[2][..]).expect("ipip");
    assert_eq!(ipip::inner(&outer).map(|p| p.into_inner()), Ok(&f[1][..]));
    let a = Ipv4Addr::new(192, 168, 64, 2);
    let b = Ipv4Addr::new(192, 168, 64, 3);
    assert!(UdpRepr::parse(&UdpPacket::new_checked(&f[3][..]).expect("udp"), a, b).is_ok());
    let vx = Ipv4Packet::new_checked(&f[4][..]).expect("vxlan outer");
    assert!(Ipv4Repr::parse(&vx).is_ok());
    let u = UdpPacket::new_checked(vx.payload()).expect("udp");
    assert!(UdpRepr::parse(&u, a, b).is_ok() && u.checksum() != 0);
    assert_eq!(
        VxlanRepr::parse(&VxlanPacket::new_checked(u.payload()).expect("vx")),
        Ok(VxlanRepr { vni: 1 })
    );
    for icmp in [&f[5], &f[6]] {
        let p = Icmpv4Packet::new_checked(&icmp[..]).expect("icmp");
        assert!(Icmpv4Repr::parse(&p).is_ok());
        assert_eq!(
            p.msg_type() == msg_type::DST_UNREACHABLE,
            p.next_hop_mtu() == 1450
        );
    }
}

#[test]
fn every_truncation_of_every_fixture_at_every_layer() {
    let mut slices = 0usize;
    for fixture in fixtures() {
        // Every start offset reaches every inner layer; every end offset truncates it.
        for start in 0..=fixture.len() {
            for end in start..=fixture.len() {
                exercise(&fixture[start..end]);
                slices += 1;
            }
        }
    }
    assert!(slices > 5_000, "only {slices} slices");
}

/// xorshift64*: enough randomness to explore parsers, reproducible without a dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_buffers_never_panic() {
    let mut rng = XorShift(0x5eed_0f3e_f7a1_u64);
    let mut buf = Vec::with_capacity(128);
    for i in 0..100_000 {
        buf.clear();
        let len = rng.below(97);
        buf.extend((0..len).map(|_| rng.next() as u8));
        // Half the time look like IPv4 with a plausible IHL and a total length that fits, so the
        // deeper checks are reached rather than all buffers failing on the version nibble.
        if i % 2 == 0 && len >= 4 {
            buf[0] = 0x40 | (buf[0] & 0x0f);
            let total = rng.below(len + 8) as u16;
            buf[2..4].copy_from_slice(&total.to_be_bytes());
        }
        exercise(&buf);
    }
}

#[test]
fn mutated_fixtures_never_panic() {
    let fixtures = fixtures();
    let mut rng = XorShift(0x0dd_ba11_u64);
    for _ in 0..100_000 {
        let fixture = &fixtures[rng.below(fixtures.len())];
        let mut buf = fixture.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(buf.len());
            buf[at] = rng.next() as u8;
        }
        let start = if rng.below(4) == 0 {
            rng.below(buf.len())
        } else {
            0
        };
        let end = if rng.below(4) == 0 {
            start + rng.below(buf.len() - start + 1)
        } else {
            buf.len()
        };
        exercise(&buf[start..end]);
    }
}

#[test]
fn icmp_codes_are_the_rfc_values() {
    // Cross-check the constants against etherparse's names for them.
    assert_eq!(msg_type::ECHO_REPLY, etherparse::icmpv4::TYPE_ECHO_REPLY);
    assert_eq!(
        msg_type::DST_UNREACHABLE,
        etherparse::icmpv4::TYPE_DEST_UNREACH
    );
    assert_eq!(
        msg_type::ECHO_REQUEST,
        etherparse::icmpv4::TYPE_ECHO_REQUEST
    );
    assert_eq!(
        msg_type::TIME_EXCEEDED,
        etherparse::icmpv4::TYPE_TIME_EXCEEDED
    );
    assert_eq!(
        dst_unreachable::FRAG_NEEDED,
        etherparse::icmpv4::CODE_DST_UNREACH_NEED_FRAG
    );
    assert_eq!(
        dst_unreachable::PORT_UNREACHABLE,
        etherparse::icmpv4::CODE_DST_UNREACH_PORT
    );
    assert_eq!(icmpv4::HEADER_LEN, 8);
}
