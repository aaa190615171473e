//! Criterion benches of the forwarding core on pod (L2) ports, switch mode's path, on fixed
//! inputs: answering a pod's ARP for its gateway, a 1400-byte frame switched to a pod on the same
//! node, the same frame encapsulated to a pod on another node, and a frame with a forged source
//! dropped. `forward` rewrites the frame in place (ARP reply, TTL, headers), so each iteration
//! first copies the fixed frame back into the buffer: the figures include that copy of 42 or
//! 1414 bytes.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dataplane::drop::DropReason;
use dataplane::fib::NextHop;
use dataplane::forward::{forward, Action, Ingress, Verdict, HEADROOM};
use dataplane::snapshot::{NodeConfig, PodAddr, Port, PortKind, Snapshot, Tables};
use dataplane::time::Instant;
use dataplane::wire::EthernetAddress;
use dataplane::PortId;
use ipnet::Ipv4Net;

const GATEWAY_MAC: EthernetAddress = EthernetAddress([0xee; 6]);
const TUN: PortId = PortId(0);
const POD_A: PortId = PortId(1);
const POD_B: PortId = PortId(2);
const IP_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const IP_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const IP_REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
const MAC_A: EthernetAddress = EthernetAddress([0x0a, 0x58, 10, 244, 1, 2]);
const MAC_B: EthernetAddress = EthernetAddress([0x0a, 0x58, 10, 244, 1, 3]);
const PAYLOAD: usize = 1400 - 28;

/// Node 10.244.1.0/24 in switch mode with pods A and B on ports 1 and 2 and one VXLAN peer,
/// 10.244.2.0/24, as `datastore::reconcile_with_pods` builds it.
fn snapshot() -> Snapshot {
    let mut t = Tables::new(NodeConfig::flannel_defaults(
        EthernetAddress([0x0e, 0x57, 0x65, 0x66, 0x74, 1]),
        Ipv4Addr::new(192, 168, 50, 1),
        Ipv4Addr::new(10, 244, 1, 0),
    ));
    t.set_port(
        TUN,
        Port {
            kind: PortKind::L3,
            mtu: 1450,
        },
    );
    for (port, ip, mac) in [(POD_A, IP_A, MAC_A), (POD_B, IP_B, MAC_B)] {
        t.set_port(
            port,
            Port {
                kind: PortKind::L2 {
                    mac: GATEWAY_MAC,
                    pod: Some(PodAddr::new(ip, mac)),
                },
                mtu: 1450,
            },
        );
        t.fib.insert(Ipv4Net::from(ip), NextHop::Local { port });
        t.neigh.insert_permanent(ip, mac, Some(port));
    }
    t.fib.insert(
        Ipv4Net::new(Ipv4Addr::new(10, 244, 1, 0), 24).expect("valid"),
        NextHop::Blackhole,
    );
    t.add_vxlan_peer(
        Ipv4Net::new(Ipv4Addr::new(10, 244, 2, 0), 24).expect("valid"),
        Ipv4Addr::new(192, 168, 50, 2),
        EthernetAddress([0x0e, 0x57, 0x65, 0x66, 0x74, 2]),
    );
    t.snapshot()
}

/// An IPv4/UDP frame from pod A's MAC (`src_ip` as its source) to the gateway MAC.
fn udp_frame(src_ip: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let payload: Vec<u8> = (0..PAYLOAD).map(|i| i as u8).collect();
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(MAC_A.0, GATEWAY_MAC.0)
        .ipv4(src_ip.octets(), dst.octets(), 64)
        .udp(40000, 9000)
        .write(&mut f, &payload)
        .expect("build");
    f
}

/// Pod A's ARP request for its gateway 169.254.1.1.
fn arp_request() -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&MAC_A.0);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&MAC_A.0);
    f.extend_from_slice(&IP_A.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&[169, 254, 1, 1]);
    f
}

/// Benches `frame` from pod A's port through `forward`, checking the verdict once first.
fn bench_frame(
    c: &mut Criterion,
    name: &str,
    snap: &Snapshot,
    frame: &[u8],
    check: impl Fn(&Verdict) -> bool,
) {
    let mut buf = vec![0u8; HEADROOM + frame.len()];
    let now = Instant::from_micros(1);
    buf[HEADROOM..].copy_from_slice(frame);
    let v = forward(
        snap,
        Ingress::Local(POD_A),
        &mut buf,
        HEADROOM,
        frame.len(),
        now,
    );
    assert!(check(&v), "{name}: unexpected verdict {v:?}");
    let mut g = c.benchmark_group("switch");
    g.throughput(Throughput::Elements(1));
    g.bench_function(name, |b| {
        b.iter(|| {
            buf[HEADROOM..].copy_from_slice(frame);
            black_box(forward(
                snap,
                Ingress::Local(POD_A),
                black_box(&mut buf),
                HEADROOM,
                frame.len(),
                now,
            ))
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let snap = snapshot();
    bench_frame(c, "arp_answer", &snap, &arp_request(), |v| {
        matches!(
            v,
            Verdict::Reply {
                cause: None,
                action: Action::Deliver { port: POD_A, .. }
            }
        )
    });
    bench_frame(
        c,
        "l2_forward_same_node_1400",
        &snap,
        &udp_frame(IP_A, IP_B),
        |v| matches!(v, Verdict::Forward(Action::Deliver { port: POD_B, .. })),
    );
    bench_frame(
        c,
        "l2_to_vxlan_1400",
        &snap,
        &udp_frame(IP_A, IP_REMOTE),
        |v| matches!(v, Verdict::Forward(Action::Transmit { .. })),
    );
    bench_frame(
        c,
        "spoofed_dropped",
        &snap,
        &udp_frame(Ipv4Addr::new(10, 244, 1, 99), IP_B),
        |v| *v == Verdict::Drop(DropReason::Spoofed),
    );
}

/// A pod's bandwidth limit per frame: one compare-and-swap on a bucket that always has tokens
/// (the pass path), and on one that is empty (the drop path: a load, no store).
fn police(c: &mut Criterion) {
    use dataplane::police::Policer;
    let mut g = c.benchmark_group("police");
    g.throughput(Throughput::Elements(1));
    // 1 Tbit/s with a huge burst: every 1500-byte frame passes.
    let open = Policer::new(1_000_000_000_000, u64::MAX / 2).expect("limited");
    let mut t = 0u64;
    g.bench_function("admit_pass_1500", |b| {
        b.iter(|| {
            t += 1;
            black_box(open.admit(Instant::from_micros(black_box(t)), 1_500))
        })
    });
    // 1 kbit/s, emptied once: every frame is refused.
    let shut = Policer::new(1_000, 8).expect("limited");
    assert!(shut.admit(Instant::from_micros(0), 1_000_000));
    g.bench_function("admit_drop_1500", |b| {
        b.iter(|| black_box(shut.admit(Instant::from_micros(black_box(1)), 1_500)))
    });
    g.finish();
}

criterion_group!(switch, benches, police);
criterion_main!(switch);
