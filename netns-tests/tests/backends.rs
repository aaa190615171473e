//! The backends across two underlay subnets: four Weft nodes, two on 192.168.77.0/24 (`ul0`) and
//! two on 192.168.78.0/24 (`ul1`), the underlay namespace routing between them, a pod on every
//! node. For VXLAN Always, IP-in-IP Always, IP-in-IP CrossSubnet, VXLAN CrossSubnet and host-gw,
//! every pair of pods that should reach each other does (ping and a byte-exact TCP transfer), and
//! captures on both bridges, decoded by tshark, show how each pair crossed the wire: protocol 4
//! or VXLAN on UDP 8472 carrying the pods' own addresses, or plain pod-to-pod packets. host-gw
//! refuses the peers behind the router (log line, counter, no route); malformed protocol-4
//! packets are dropped and counted by reason.
//!
//! One lab per backend; every check of a backend shares it (CI time).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use control::ctl::request_show;
use control::tooling::lab::{Lab, NodeKind, PingResult};
use netns_tests::capture::{Capture, Encap, IpHeader, Packet};
use netns_tests::{require_root, weftd_path};

/// Bytes of each verified TCP transfer.
const TRANSFER: usize = 1 << 20;

/// The TOS byte (DSCP CS1, ECN 0) of every TCP transfer's sender: IP-in-IP must copy it into the
/// outer header.
const TOS: u8 = 0x20;

/// Node numbers and their underlay segments: 1 and 2 on `ul0`, 3 and 4 on `ul1`.
const NODES: [(u8, u8); 4] = [(1, 0), (2, 0), (3, 1), (4, 1)];

/// How a pod-to-pod packet should cross the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    /// IP-in-IP between the nodes' public addresses.
    Ipip,
    /// VXLAN (UDP 8472, VNI 1) between the nodes' public addresses.
    Vxlan,
    /// Plain, pod address to pod address, routed natively.
    Plain,
}

/// A deterministic byte pattern, different per (src, dst) so crossed streams would show.
fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Four Weft nodes with `[backend]` body `backend`, two per segment, a pod (`.2`) on each.
fn four_nodes(backend: &str) -> Lab {
    require_root();
    let mut lab = Lab::new(&weftd_path()).expect("lab");
    lab.backend = backend.to_string();
    for (i, segment) in NODES {
        lab.add_node_on(i, NodeKind::Weft, segment)
            .unwrap_or_else(|e| panic!("node-{i} on segment {segment}: {e}"));
    }
    lab.start()
        .unwrap_or_else(|e| panic!("agents with [backend] {backend:?}: {e}"));
    for idx in 0..NODES.len() {
        lab.add_pod(idx, 2).expect("pod");
    }
    lab
}

fn pod_ip(lab: &Lab, idx: usize) -> Ipv4Addr {
    lab.nodes[idx].pods[0].ip
}

fn logs(lab: &Lab) -> String {
    lab.nodes
        .iter()
        .map(|n| {
            let log = std::fs::read_to_string(&n.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("--- {} ---\n{}\n", n.name, tail.join("\n"))
        })
        .collect()
}

fn ping_ok(lab: &Lab, src: Ipv4Addr, dst: Ipv4Addr) {
    let pod = lab.pod(src).expect("pod");
    // The first packet of a pair may wait for ARP on the bridges; give it three tries.
    let mut last = PingResult::Timeout;
    for _ in 0..3 {
        last = pod.ping(dst, 56, false, Duration::from_secs(1));
        if last.is_reply() {
            return;
        }
    }
    panic!("ping {src} -> {dst}: {last:?}\n{}", logs(lab));
}

fn tcp_exact(lab: &Lab, src: Ipv4Addr, dst: Ipv4Addr, port: u16) {
    let data = pattern(u32::from(src) ^ u32::from(dst).rotate_left(7), TRANSFER);
    let listener = lab.pod(dst).expect("pod").listen(port).expect("listen");
    let expect = data.clone();
    let rx = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().expect("accept");
        c.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut got = Vec::with_capacity(TRANSFER);
        c.read_to_end(&mut got).expect("read");
        got == expect
    });
    let mut c = lab
        .pod(src)
        .expect("pod")
        .connect(SocketAddrV4::new(dst, port), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {src} -> {dst}: {e}\n{}", logs(lab)));
    socket2::SockRef::from(&c)
        .set_tos_v4(u32::from(TOS))
        .expect("IP_TOS");
    c.write_all(&data).expect("send");
    drop(c);
    assert!(
        rx.join().expect("receiver"),
        "TCP {src} -> {dst}: bytes differ"
    );
}

/// Captures of every IPv4 packet on both underlay bridges, from the underlay namespace (the
/// router): a packet between the segments shows on both, one within a segment on its own.
struct Wires {
    caps: [Capture; 2],
}

impl Wires {
    fn start(lab: &Lab, tag: &str) -> Wires {
        let cap = |bridge: &str| {
            let file = lab.dir().join(format!("{tag}-{bridge}.pcapng"));
            Capture::start(lab.underlay(), bridge, "ip", &file)
                .unwrap_or_else(|e| panic!("capture on {bridge}: {e}"))
        };
        Wires {
            caps: [cap("ul0"), cap("ul1")],
        }
    }

    /// Stops both captures: the decoded packets of `ul0` and of `ul1`. First a ping from the
    /// router to a node on each segment, which each capture must hold: proof that it ran to the
    /// end, so a packet missing from it is missing from the wire.
    fn stop(self, lab: &Lab) -> [Vec<Packet>; 2] {
        let targets: Vec<Ipv4Addr> = (0..2u8)
            .map(|seg| {
                lab.nodes
                    .iter()
                    .find(|n| n.segment == seg)
                    .expect("a node on each segment")
                    .public_ip
            })
            .collect();
        for &t in &targets {
            let r = lab
                .underlay()
                .run(move || control::tooling::ping::ping(t, 8, false, Duration::from_secs(1)))
                .expect("enter underlay namespace");
            assert!(r.is_reply(), "router -> {t}: {r:?}");
        }
        let [c0, c1] = self.caps;
        let seen = std::thread::scope(|s| {
            let h0 = s.spawn(|| c0.stop());
            let h1 = s.spawn(|| c1.stop());
            [
                h0.join().expect("ul0 capture").expect("decode ul0 capture"),
                h1.join().expect("ul1 capture").expect("decode ul1 capture"),
            ]
        });
        for (bridge, packets) in seen.iter().enumerate() {
            assert!(
                packets
                    .iter()
                    .any(|p| p.outer.dst == targets[bridge] && p.outer.protocol == 1),
                "ul{bridge}: the capture misses the closing ping to {}: incomplete",
                targets[bridge]
            );
        }
        seen
    }
}

/// Is `p` pod packet `src -> dst` with IP protocol `proto`, sent as `wire` from node public IP
/// `from` to `to`?
fn carried(
    p: &Packet,
    wire: Wire,
    pods: (Ipv4Addr, Ipv4Addr),
    nodes: (Ipv4Addr, Ipv4Addr),
) -> bool {
    let pod = |h: &IpHeader| h.src == pods.0 && h.dst == pods.1;
    let outer_nodes = p.outer.src == nodes.0 && p.outer.dst == nodes.1;
    match wire {
        Wire::Plain => p.encap == Encap::None && pod(&p.outer),
        Wire::Ipip => {
            p.encap == Encap::Ipip
                && p.outer.protocol == 4
                && outer_nodes
                && p.inner.as_ref().is_some_and(pod)
        }
        Wire::Vxlan => {
            p.encap == (Encap::Vxlan { vni: 1 })
                && p.outer.protocol == 17
                && p.udp_dst == Some(8472)
                && outer_nodes
                && p.inner.as_ref().is_some_and(pod)
        }
    }
}

/// Checks that pod traffic from node `a`'s pod to node `b`'s crossed every bridge on its path as
/// `wire` — ICMP and TCP both, in both directions — and never in another form.
fn check_wire(lab: &Lab, seen: &[Vec<Packet>; 2], a: usize, b: usize, wire: Wire) {
    let (na, nb) = (&lab.nodes[a], &lab.nodes[b]);
    let bridges: Vec<usize> = if na.segment == nb.segment {
        vec![usize::from(na.segment)]
    } else {
        vec![0, 1]
    };
    for (pods, nodes) in [
        (
            (pod_ip(lab, a), pod_ip(lab, b)),
            (na.public_ip, nb.public_ip),
        ),
        (
            (pod_ip(lab, b), pod_ip(lab, a)),
            (nb.public_ip, na.public_ip),
        ),
    ] {
        for &bridge in &bridges {
            let packets = &seen[bridge];
            for proto in [1u8, 6] {
                let n = packets
                    .iter()
                    .filter(|p| carried(p, wire, pods, nodes) && p.pod_header().protocol == proto)
                    .count();
                assert!(
                    n > 0,
                    "ul{bridge}: no {wire:?} packet of protocol {proto} {} -> {} (nodes {} -> {}); \
                     pod packets seen: {:?}",
                    pods.0,
                    pods.1,
                    nodes.0,
                    nodes.1,
                    pod_packets(packets, pods)
                );
            }
            let other: Vec<&Packet> = packets
                .iter()
                .filter(|p| {
                    let h = p.pod_header();
                    h.src == pods.0 && h.dst == pods.1 && !carried(p, wire, pods, nodes)
                })
                .collect();
            assert!(
                other.is_empty(),
                "ul{bridge}: {} -> {} expected only as {wire:?}, also saw {:?}",
                pods.0,
                pods.1,
                &other[..other.len().min(3)]
            );
        }
    }
}

/// The packets between two pods, for failure messages: (encapsulation, outer header), counted.
fn pod_packets(packets: &[Packet], pods: (Ipv4Addr, Ipv4Addr)) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for p in packets {
        let h = p.pod_header();
        if h.src == pods.0 && h.dst == pods.1 {
            *m.entry(format!("{:?} {:?}", p.encap, p.outer)).or_default() += 1;
        }
    }
    m
}

/// Every ordered pod pair among `pairs` pings and transfers while both bridges are captured;
/// then each pair's packets are checked against `wire_of(a, b)`. Returns the captures (`ul0`,
/// `ul1`).
fn every_pair(
    lab: &Lab,
    tag: &str,
    pairs: &[(usize, usize)],
    wire_of: impl Fn(usize, usize) -> Wire,
) -> [Vec<Packet>; 2] {
    let wires = Wires::start(lab, tag);
    for (port, &(a, b)) in (7100..).zip(pairs) {
        ping_ok(lab, pod_ip(lab, a), pod_ip(lab, b));
        tcp_exact(lab, pod_ip(lab, a), pod_ip(lab, b), port);
    }
    let seen = wires.stop(lab);
    for &(a, b) in pairs {
        check_wire(lab, &seen, a, b, wire_of(a, b));
    }
    seen
}

/// RFC 2003 §3.1 on every IP-in-IP packet captured: the outer TOS is the inner one, the outer DF
/// is the inner one (Weft copies it), and the tunnel's own TTL, 64, leaves the sender (seen on
/// the sender's own segment, before the router decrements it).
fn check_ipip_outer(lab: &Lab, seen: &[Vec<Packet>; 2]) {
    let mut tos_seen = 0;
    for (bridge, packets) in seen.iter().enumerate() {
        for p in packets.iter().filter(|p| p.encap == Encap::Ipip) {
            let inner = p.inner.expect("decoded inner header");
            assert_eq!(p.outer.tos, inner.tos, "ul{bridge}: outer TOS of {p:?}");
            assert_eq!(p.outer.df, inner.df, "ul{bridge}: outer DF of {p:?}");
            let sender = lab.nodes.iter().find(|n| n.public_ip == p.outer.src);
            if sender.is_some_and(|n| usize::from(n.segment) == bridge) {
                assert_eq!(p.outer.ttl, 64, "ul{bridge}: outer TTL of {p:?}");
            }
            if inner.tos == TOS {
                tos_seen += 1;
            }
        }
    }
    assert!(
        tos_seen > 0,
        "no IP-in-IP packet carried the TCP sender's TOS {TOS:#x}"
    );
}

/// The kernel routes of node `idx` to the other nodes' pod subnets: routed natively (`<subnet>
/// via <peer public IP> dev eth0`) exactly to the peers `native(peer)` names, no such route to
/// the others.
fn check_native_routes(lab: &Lab, idx: usize, native: impl Fn(usize) -> bool) {
    let mut routes = Vec::new();
    control::tooling::lab::in_ns(&lab.nodes[idx].ns, |nl| {
        routes = nl.routes()?;
        Ok(())
    })
    .expect("routes");
    let n = &lab.nodes[idx];
    for (p, peer) in lab.nodes.iter().enumerate().filter(|(p, _)| *p != idx) {
        let via_peer = routes.iter().find(|r| {
            r.dst == peer.subnet
                && r.gateway == Some(peer.public_ip)
                && r.dev.as_deref() == Some("eth0")
        });
        if native(p) {
            assert!(
                via_peer.is_some(),
                "{}: no route {} via {} dev eth0; routes: {routes:?}",
                n.name,
                peer.subnet,
                peer.public_ip
            );
        } else {
            assert!(
                via_peer.is_none(),
                "{}: {} is routed natively via {}, expected not",
                n.name,
                peer.subnet,
                peer.public_ip
            );
        }
    }
}

/// Checks every node's native routes: to the peers on its own segment under CrossSubnet and
/// host-gw (`same_segment`), to none under Always.
fn check_all_native_routes(lab: &Lab, same_segment: bool) {
    for idx in 0..lab.nodes.len() {
        check_native_routes(lab, idx, |p| {
            same_segment && lab.nodes[p].segment == lab.nodes[idx].segment
        });
    }
}

/// Every ordered pair of the four nodes.
fn all_pairs() -> Vec<(usize, usize)> {
    let n = NODES.len();
    (0..n)
        .flat_map(|a| (0..n).map(move |b| (a, b)))
        .filter(|(a, b)| a != b)
        .collect()
}

/// `encapsulated` across the router, plain within a segment: CrossSubnet.
fn cross_subnet(lab: &Lab, encapsulated: Wire) -> impl Fn(usize, usize) -> Wire + '_ {
    move |a, b| {
        if lab.nodes[a].segment == lab.nodes[b].segment {
            Wire::Plain
        } else {
            encapsulated
        }
    }
}

/// The node's TUN device and its MTU, as `weftd show` reports them.
fn check_tun(lab: &Lab, name: &str, mtu: Option<u16>) {
    for n in &lab.nodes {
        let show = request_show(&n.ctl_socket).expect("show");
        assert_eq!(show.node.tun, name, "{}: TUN device", n.name);
        if let Some(mtu) = mtu {
            assert_eq!(show.node.tun_mtu, mtu, "{}: TUN MTU", n.name);
        }
    }
}

/// A DF ping filling the pod MTU exactly, across the router: the tunnel MTU is what the lab
/// gives the pods, no less.
fn full_size_ping(lab: &Lab, a: usize, b: usize) {
    let payload = lab.pod_mtu(a) as usize - 28;
    let pod = lab.pod(pod_ip(lab, a)).expect("pod");
    let r = pod.ping(pod_ip(lab, b), payload, true, Duration::from_secs(2));
    assert!(
        r.is_reply(),
        "DF ping of {payload} data bytes {} -> {}: {r:?}",
        pod_ip(lab, a),
        pod_ip(lab, b)
    );
}

#[test]
fn vxlan_always_carries_every_pair_across_two_subnets() {
    let lab = four_nodes("type = \"vxlan\"\n");
    every_pair(&lab, "vxlan-always", &all_pairs(), |_, _| Wire::Vxlan);
    check_all_native_routes(&lab, false);
    full_size_ping(&lab, 0, 2);
}

#[test]
fn vxlan_cross_subnet_encapsulates_only_across_the_router() {
    let lab = four_nodes("type = \"vxlan\"\nencapsulation = \"CrossSubnet\"\n");
    every_pair(
        &lab,
        "vxlan-cross",
        &all_pairs(),
        cross_subnet(&lab, Wire::Vxlan),
    );
    check_tun(&lab, "weft.1", Some(1450));
    check_all_native_routes(&lab, true);
    full_size_ping(&lab, 0, 2);
}

#[test]
fn ipip_always_carries_every_pair_as_protocol_4() {
    let lab = four_nodes("type = \"ipip\"\n");
    check_tun(&lab, "weft.ipip", Some(1480));
    let seen = every_pair(&lab, "ipip-always", &all_pairs(), |_, _| Wire::Ipip);
    check_ipip_outer(&lab, &seen);
    check_all_native_routes(&lab, false);
    full_size_ping(&lab, 0, 2);
    full_size_ping(&lab, 3, 1);
    malformed_protocol_4_is_dropped_and_counted(&lab);
}

#[test]
fn ipip_cross_subnet_encapsulates_only_across_the_router() {
    let lab = four_nodes("type = \"ipip\"\nencapsulation = \"CrossSubnet\"\n");
    check_tun(&lab, "weft.ipip", Some(1480));
    let seen = every_pair(
        &lab,
        "ipip-cross",
        &all_pairs(),
        cross_subnet(&lab, Wire::Ipip),
    );
    check_ipip_outer(&lab, &seen);
    check_all_native_routes(&lab, true);
    full_size_ping(&lab, 0, 2);
}

/// The value of the OpenMetrics sample `sample` (name with labels), if present.
fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(sample)
            .filter(|v| v.starts_with(' '))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    })
}

#[test]
fn host_gw_routes_within_a_subnet_and_refuses_peers_behind_the_router() {
    let lab = four_nodes("type = \"host-gw\"\n");
    check_tun(&lab, "weft.hostgw", None);
    // Same segment: 1 <-> 2 on ul0, 3 <-> 4 on ul1; plain packets, full underlay MTU.
    let same = [(0, 1), (1, 0), (2, 3), (3, 2)];
    every_pair(&lab, "host-gw", &same, |_, _| Wire::Plain);
    // Kernel routes to the adjacent peer only; none to the refused ones.
    check_all_native_routes(&lab, true);
    assert_eq!(lab.pod_mtu(0), lab.underlay_mtu);
    let pod = lab.pod(pod_ip(&lab, 0)).expect("pod");
    let payload = lab.underlay_mtu as usize - 28;
    let r = pod.ping(pod_ip(&lab, 1), payload, true, Duration::from_secs(2));
    assert!(r.is_reply(), "full-MTU DF ping within ul0: {r:?}");

    // Across the router: refused, not black-holed silently.
    let wires = Wires::start(&lab, "host-gw-refused");
    for (a, b) in [(0, 2), (0, 3), (1, 2), (2, 0), (3, 1)] {
        let r = lab.pod(pod_ip(&lab, a)).expect("pod").ping(
            pod_ip(&lab, b),
            56,
            false,
            Duration::from_millis(300),
        );
        assert!(
            !r.is_reply(),
            "{} -> {} crossed the router under host-gw: {r:?}",
            pod_ip(&lab, a),
            pod_ip(&lab, b)
        );
    }
    let seen = wires.stop(&lab);
    for (bridge, packets) in seen.iter().enumerate() {
        let leaked: Vec<&Packet> = packets
            .iter()
            .filter(|p| {
                let h = p.pod_header();
                let seg = |ip: Ipv4Addr| {
                    lab.nodes
                        .iter()
                        .find(|n| n.subnet.contains(&ip))
                        .map(|n| n.segment)
                };
                h.src.octets()[..2] == [10, 244] && seg(h.src) != seg(h.dst)
            })
            .collect();
        assert!(
            leaked.is_empty(),
            "ul{bridge}: pod packets between segments: {:?}",
            &leaked[..leaked.len().min(3)]
        );
    }

    for (idx, n) in lab.nodes.iter().enumerate() {
        let (code, body) = lab.http_get(idx, "/metrics").expect("GET /metrics");
        assert_eq!(code, 200, "{}: /metrics", n.name);
        let sample = r#"weft_peers_refused_total{reason="not_adjacent"}"#;
        let refused = metric(&body, sample)
            .unwrap_or_else(|| panic!("{}: {sample} missing in /metrics:\n{body}", n.name));
        assert!(refused >= 1.0, "{}: {sample} = {refused}", n.name);
        let log = std::fs::read_to_string(&n.log).expect("agent log");
        for peer in lab.nodes.iter().filter(|p| p.segment != n.segment) {
            let line = log.lines().find(|l| {
                let l = l.to_ascii_lowercase();
                (l.contains(&peer.name) || l.contains(&peer.public_ip.to_string()))
                    && (l.contains("adjacent") || l.contains("refus"))
            });
            assert!(
                line.is_some(),
                "{}: no log line refusing {} ({}):\n{log}",
                n.name,
                peer.name,
                peer.public_ip
            );
        }
    }
}

/// Sends crafted protocol-4 datagrams from the underlay namespace to node-1, with node-2's
/// address as the outer source (a known peer, so only the inner packet is at fault), and checks
/// each kind is dropped and counted by reason; the agent keeps forwarding.
fn malformed_protocol_4_is_dropped_and_counted(lab: &Lab) {
    let target = &lab.nodes[0];
    let from = lab.nodes[1].public_ip;
    let pod = pod_ip(lab, 0);
    let inner = |total_len: u16, payload: usize| {
        let mut h = ipv4_header(Ipv4Addr::new(10, 244, 2, 2), pod, 17, total_len);
        h.resize(20 + payload, 0x5a);
        h
    };
    let mut v6 = vec![0u8; 48];
    v6[0] = 0x60;
    let cases: [(&str, Vec<u8>, &[&str]); 4] = [
        (
            "truncated (8 bytes)",
            vec![0x45, 0, 0, 8, 0, 0, 0, 0],
            &["truncated"],
        ),
        (
            "inner total length 200, 28 bytes",
            inner(200, 8),
            &["ipip_malformed"],
        ),
        (
            "inner total length 20, 48 bytes",
            inner(20, 28),
            &["ipip_malformed"],
        ),
        ("inner IPv6", v6, &["ipip_malformed", "not_ipv4"]),
    ];
    let sock = lab
        .underlay()
        .run(|| {
            let s = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::RAW,
                Some(socket2::Protocol::from(4)),
            )?;
            s.set_header_included_v4(true)?;
            Ok::<_, std::io::Error>(s)
        })
        .expect("enter underlay namespace")
        .expect("raw protocol-4 socket in the underlay namespace");
    let drops = |reasons: &[&str]| -> u64 {
        let show = request_show(&target.ctl_socket).expect("agent answers");
        reasons
            .iter()
            .map(|r| show.counters.drops.get(*r).copied().unwrap_or(0))
            .sum()
    };
    for (what, payload, reasons) in &cases {
        let before = drops(reasons);
        let mut datagram = ipv4_header(from, target.public_ip, 4, 20 + payload.len() as u16);
        datagram.extend_from_slice(payload);
        let to = SocketAddrV4::new(target.public_ip, 0);
        for _ in 0..3 {
            sock.send_to(&datagram, &to.into())
                .unwrap_or_else(|e| panic!("send {what}: {e}"));
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let now = drops(reasons);
            if now >= before + 3 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: drops {reasons:?} {before} -> {now} after 3 datagrams\n{}",
                logs(lab)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Still forwarding, both ways.
    ping_ok(lab, pod_ip(lab, 0), pod_ip(lab, 2));
    ping_ok(lab, pod_ip(lab, 2), pod_ip(lab, 0));
}

/// A 20-byte IPv4 header with a correct checksum (DF clear, TTL 64).
fn ipv4_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, total_len: u16) -> Vec<u8> {
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total_len.to_be_bytes());
    h.extend_from_slice(&[0x12, 0x34, 0, 0, 64, protocol, 0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let sum: u32 = h
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    let csum = !(((folded & 0xffff) + (folded >> 16)) as u16);
    h[10..12].copy_from_slice(&csum.to_be_bytes());
    h
}
