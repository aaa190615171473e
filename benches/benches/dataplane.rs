//! Criterion benches of the forwarding core on fixed inputs: parsing, VXLAN and IP-in-IP encap
//! and decap, `forward` of a 1400-byte packet, and building a snapshot for 5,000 peers.
//! FIB lookups are in `tables.rs`.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dataplane::fib::NextHop;
use dataplane::forward::encap::{self, VxlanEncap};
use dataplane::forward::{forward, Ingress, Verdict, HEADROOM, VXLAN_UDP_PAYLOAD_OFFSET};
use dataplane::snapshot::{NodeConfig, Port, PortKind, Tables};
use dataplane::time::Instant;
use dataplane::wire::udp::UdpChecksum;
use dataplane::wire::{ipip, EthernetAddress, Ipv4Packet, UdpPacket, VxlanPacket};
use dataplane::PortId;
use ipnet::Ipv4Net;

const PACKET_LEN: usize = 1400;
const VTEP_A: EthernetAddress = EthernetAddress([0x0e, 0x57, 0x65, 0x66, 0x74, 1]);
const VTEP_B: EthernetAddress = EthernetAddress([0x0e, 0x57, 0x65, 0x66, 0x74, 2]);
const UNDERLAY_A: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
const UNDERLAY_B: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);

/// A buffer holding a 1400-byte IPv4/UDP packet from 10.244.1.2 to 10.244.2.2 after HEADROOM.
fn inner_packet() -> Vec<u8> {
    let mut buf = vec![0u8; HEADROOM + PACKET_LEN];
    let p = &mut buf[HEADROOM..];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(PACKET_LEN as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 244, 1, 2]);
    p[16..20].copy_from_slice(&[10, 244, 2, 2]);
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&9000u16.to_be_bytes());
    p[24..26].copy_from_slice(&((PACKET_LEN - 20) as u16).to_be_bytes());
    for (i, b) in p[28..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let mut ip = Ipv4Packet::new_unchecked(&mut buf[HEADROOM..]);
    ip.fill_checksum();
    buf
}

fn params() -> VxlanEncap {
    VxlanEncap {
        vni: 1,
        src_mac: VTEP_A,
        dst_mac: VTEP_B,
        src_addr: UNDERLAY_A,
        dst_addr: UNDERLAY_B,
        dst_port: 8472,
        ttl: 64,
        udp_checksum: UdpChecksum::Zero,
    }
}

/// A node with VTEP `vtep`, underlay `underlay` and pod subnet 10.244.`n`.0/24 behind its TUN
/// (port 0, MTU 1450), and no peers yet.
fn node_tables(vtep: EthernetAddress, underlay: Ipv4Addr, n: u8) -> Tables {
    let mut t = Tables::new(NodeConfig::flannel_defaults(
        vtep,
        underlay,
        Ipv4Addr::new(10, 244, n, 0),
    ));
    t.set_port(
        PortId(0),
        Port {
            kind: PortKind::L3,
            mtu: 1450,
        },
    );
    t.fib.insert(
        Ipv4Net::new(Ipv4Addr::new(10, 244, n, 0), 24).expect("valid prefix"),
        NextHop::Local { port: PortId(0) },
    );
    t
}

/// Node A's tables with `peers` remote VXLAN nodes in 10.0.0.0/8 and node B (10.244.2.0/24).
fn tables(peers: u32) -> Tables {
    let mut t = node_tables(VTEP_A, UNDERLAY_A, 1);
    for i in 0..peers {
        let subnet =
            Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (i + 1) << 8), 24).expect("valid prefix");
        let mac = EthernetAddress([0x0e, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8, 0xaa]);
        t.add_vxlan_peer(subnet, Ipv4Addr::from(0xc0a8_0000 | (i + 10)), mac);
    }
    t.add_vxlan_peer(
        "10.244.2.0/24".parse().expect("valid prefix"),
        UNDERLAY_B,
        VTEP_B,
    );
    t
}

fn bench_parse(c: &mut Criterion) {
    let mut buf = inner_packet();
    let (s, l) = encap::vxlan_encap(&mut buf, HEADROOM, PACKET_LEN, &params(), 40000)
        .expect("headroom is enough");
    let wire = buf[s..s + l].to_vec();
    c.bench_function("parse/outer_ipv4_udp_vxlan_inner_ipv4", |b| {
        b.iter(|| {
            let outer = Ipv4Packet::new_checked(black_box(&wire[..])).expect("valid");
            let udp = UdpPacket::new_checked(outer.payload()).expect("valid");
            let vx = VxlanPacket::new_checked(udp.payload()).expect("valid");
            let inner = Ipv4Packet::new_checked(&vx.payload()[14..]).expect("valid");
            black_box((
                outer.verify_checksum(),
                udp.dst_port(),
                vx.vni(),
                inner.dst_addr(),
            ))
        })
    });
}

fn bench_encap_decap(c: &mut Criterion) {
    let mut g = c.benchmark_group("encap");
    g.throughput(Throughput::Bytes(PACKET_LEN as u64));
    let p = params();
    let mut buf = inner_packet();
    g.bench_function("vxlan_encap_1400", |b| {
        b.iter(|| {
            let port = encap::flow_src_port(&buf[HEADROOM..HEADROOM + PACKET_LEN]);
            black_box(encap::vxlan_encap(
                black_box(&mut buf),
                HEADROOM,
                PACKET_LEN,
                &p,
                port,
            ))
        })
    });
    let (s, l) = encap::vxlan_encap(&mut buf, HEADROOM, PACKET_LEN, &p, 40000).expect("fits");
    let vx = buf[s + VXLAN_UDP_PAYLOAD_OFFSET..s + l].to_vec();
    g.bench_function("vxlan_decap_1400", |b| {
        b.iter(|| black_box(encap::vxlan_decap(black_box(&vx[..]), 1, VTEP_B)))
    });
    let mut buf = inner_packet();
    g.bench_function("ipip_encap_1400", |b| {
        b.iter(|| {
            black_box(encap::ipip_encap(
                black_box(&mut buf),
                HEADROOM,
                PACKET_LEN,
                UNDERLAY_A,
                UNDERLAY_B,
                64,
            ))
        })
    });
    let (s, l) = encap::ipip_encap(&mut buf, HEADROOM, PACKET_LEN, UNDERLAY_A, UNDERLAY_B, 64)
        .expect("fits");
    let wire = buf[s..s + l].to_vec();
    g.bench_function("ipip_decap_1400", |b| {
        b.iter(|| {
            let outer = Ipv4Packet::new_checked(black_box(&wire[..])).expect("valid");
            black_box(ipip::inner(&outer).map(|i| i.dst_addr()))
        })
    });
    g.finish();
}

fn bench_forward(c: &mut Criterion) {
    let snap = tables(100).snapshot();
    let mut g = c.benchmark_group("forward");
    g.throughput(Throughput::Bytes(PACKET_LEN as u64));
    let mut buf = inner_packet();
    let now = Instant::from_secs(1);
    g.bench_function("tun_to_vxlan_1400", |b| {
        b.iter(|| {
            let v = forward(
                &snap,
                Ingress::Local(PortId(0)),
                black_box(&mut buf),
                HEADROOM,
                PACKET_LEN,
                now,
            );
            debug_assert!(matches!(v, Verdict::Forward(_)));
            black_box(v)
        })
    });
    // The receive side: node B decapsulating what A sent, from a UDP socket's view.
    let mut tb = node_tables(VTEP_B, UNDERLAY_B, 2);
    tb.add_vxlan_peer("10.244.1.0/24".parse().expect("valid"), UNDERLAY_A, VTEP_A);
    let snap_b = tb.snapshot();
    let mut wire = inner_packet();
    let (s, l) =
        encap::vxlan_encap(&mut wire, HEADROOM, PACKET_LEN, &params(), 40000).expect("fits");
    let payload = wire[s + VXLAN_UDP_PAYLOAD_OFFSET..s + l].to_vec();
    let mut rx = vec![0u8; HEADROOM + payload.len()];
    rx[HEADROOM..].copy_from_slice(&payload);
    g.bench_function("vxlan_to_tun_1400", |b| {
        b.iter(|| {
            let v = forward(
                &snap_b,
                Ingress::VxlanUdp { src: UNDERLAY_A },
                black_box(&mut rx),
                HEADROOM,
                payload.len(),
                now,
            );
            debug_assert!(matches!(v, Verdict::Forward(_)));
            black_box(v)
        })
    });
    g.finish();
}

fn bench_snapshot(c: &mut Criterion) {
    let t = tables(5000);
    c.bench_function("snapshot/build_5000_peers", |b| {
        b.iter(|| black_box(t.snapshot()))
    });
}

criterion_group!(
    benches,
    bench_parse,
    bench_encap_decap,
    bench_forward,
    bench_snapshot
);
criterion_main!(benches);
