//! The fast path's offloads, each forced off in turn (issue 7): a 100 MB TCP transfer pod to pod,
//! both directions, Weft ↔ Weft and Weft ↔ kernel-VXLAN node, compared byte for byte as it
//! arrives. With everything on, Weft ↔ Weft traffic crosses the underlay as UDP GSO trains and
//! arrives merged by UDP GRO; the kernel node takes our trains segmented by its stack and sends
//! plain VXLAN back. Each test builds its own three-node lab.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use control::ctl::request_show;
use control::tooling::lab::{Lab, NodeKind, PingResult, Underlay};
use dataplane::io::udp::{Datagram, VxlanSender};
use netns_tests::{require_root, weftd_path, TRANSFER};

fn lab(extra: &str) -> Lab {
    lab_on(extra, Underlay::Ideal)
}

fn lab_on(extra: &str, underlay: Underlay) -> Lab {
    require_root();
    let mut lab = Lab::new(&weftd_path()).expect("lab");
    lab.underlay_kind = underlay;
    lab.dataplane_extra = extra.to_string();
    lab.add_node(1, NodeKind::Weft).expect("node-1");
    lab.add_node(2, NodeKind::Weft).expect("node-2");
    lab.add_node(3, NodeKind::KernelVxlan)
        .expect("node-3 (kernel flannel.1)");
    lab.start().expect("agents start");
    for idx in 0..3 {
        lab.add_pod(idx, 2).expect("pod");
    }
    let pods = pods(&lab);
    for &(a, b) in &[(pods[0], pods[1]), (pods[0], pods[2]), (pods[1], pods[0])] {
        let pod = lab.pod(a).expect("pod");
        let reply = (0..3).any(|_| {
            matches!(
                pod.ping(b, 56, false, Duration::from_secs(1)),
                PingResult::Reply { .. }
            )
        });
        assert!(reply, "ping {a} -> {b} before the transfers");
    }
    lab
}

fn pods(lab: &Lab) -> Vec<Ipv4Addr> {
    lab.nodes
        .iter()
        .flat_map(|n| n.pods.iter().map(|p| p.ip))
        .collect()
}

/// Sends 100 MB from pod `src` to pod `dst`, checked byte for byte.
fn transfer(lab: &Lab, src: Ipv4Addr, dst: Ipv4Addr, port: u16) {
    netns_tests::transfer(lab, src, dst, port, TRANSFER);
}

/// Weft ↔ Weft and Weft ↔ kernel, both directions, then no malformed-offload drops anywhere and
/// the gathered (copy-free) paths used where the offloads allow them: sends whenever the TUN
/// gives super-frames, TUN writes only when UDP GRO merges datagrams too (which on veths takes
/// the peer's UDP GSO trains).
/// First each Weft agent's `/metrics` must report the offloads as `[tun_tso4, udp_gso, udp_gro]`
/// says (the kernel here has all three, so only the config turns one off).
fn all_directions(extra: &str, offloads: [u8; 3]) {
    let [tso, gso, gro] = offloads;
    let lab = lab(extra);
    check_offloads(
        &lab,
        &[("tun_tso4", tso), ("udp_gso", gso), ("udp_gro", gro)],
    );
    let p = pods(&lab);
    let pairs = [(p[0], p[1]), (p[1], p[0]), (p[0], p[2]), (p[2], p[0])];
    for (port, (a, b)) in (7000..).zip(pairs) {
        transfer(&lab, a, b, port);
    }
    for node in lab.nodes.iter().take(2) {
        let show = request_show(&node.ctl_socket).expect("show");
        let c = &show.counters;
        // (io_error may count congestion drops, which TCP recovers from; not checked.)
        let malformed = c.drops.get("offload_malformed").copied().unwrap_or(0);
        assert_eq!(malformed, 0, "{}: {c:?}", node.name);
        assert_eq!(c.gathered_sends > 0, tso == 1, "{}: {c:?}", node.name);
        // On veths only a sender's GSO train arrives merged: GRO needs GSO on the other side.
        let merged = tso == 1 && gso == 1 && gro == 1;
        assert_eq!(c.gathered_writes > 0, merged, "{}: {c:?}", node.name);
    }
    // The same counts on /metrics.
    for (idx, node) in lab.nodes.iter().enumerate().take(2) {
        let (_, body) = lab.http_get(idx, "/metrics").expect("GET /metrics");
        for (path, used) in [
            ("send", tso == 1),
            ("tun_write", tso == 1 && gso == 1 && gro == 1),
        ] {
            let prefix = format!("weft_gathered_total{{path=\"{path}\"}} ");
            let n: u64 = body
                .lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("{}: {prefix}missing in /metrics:\n{body}", node.name));
            assert_eq!(n > 0, used, "{}: {prefix}{n}", node.name);
        }
    }
}

/// Each Weft agent's `/metrics` reports `weft_offload_enabled` for each `(offload, 0 or 1)`.
fn check_offloads(lab: &Lab, want: &[(&str, u8)]) {
    for (idx, node) in lab.nodes.iter().enumerate().take(2) {
        let (code, body) = lab.http_get(idx, "/metrics").expect("GET /metrics");
        assert_eq!(code, 200, "{}: /metrics", node.name);
        for &(name, want) in want {
            let sample = format!("weft_offload_enabled{{offload=\"{name}\"}} {want}");
            assert!(
                body.lines().any(|l| l == sample),
                "{}: {sample} missing in /metrics:\n{body}",
                node.name
            );
        }
    }
}

/// Datagrams per UDP GSO send from the pod, and their size (the last of each send is shorter).
const UDP_TRAIN: usize = 40;
const UDP_DGRAM: usize = 1200;

#[test]
fn a_pods_udp_gso_sends_arrive_datagram_by_datagram() {
    udp_gso_sends("", true);
}

#[test]
fn a_pods_udp_gso_sends_arrive_without_uso_too() {
    udp_gso_sends("uso = false\n", false);
}

/// A pod's UDP GSO sends (`UDP_SEGMENT`, 40 datagrams per send), 50 sends to a Weft node's pod
/// and 50 to the kernel node's: with USO on the TUN each send reaches Weft as one UDP
/// super-frame, which it cuts into datagrams and sends gathered; without it the kernel cuts it
/// before the TUN. Either way every datagram must arrive once, in order and byte for byte, with
/// nothing counted malformed.
fn udp_gso_sends(extra: &str, uso: bool) {
    let lab = lab(extra);
    check_offloads(&lab, &[("tun_tso4", 1), ("tun_uso4", u8::from(uso))]);
    let p = pods(&lab);
    let src = lab.pod(p[0]).expect("pod");
    let mut tx = src
        .ns
        .run({
            let ip = p[0];
            move || VxlanSender::new(ip, 1, 4 << 20, true)
        })
        .expect("enter the pod")
        .expect("a UDP GSO sender in the pod");
    assert!(tx.gso(), "UDP_SEGMENT refused in the pod");
    for (port, dst) in [(9100u16, p[1]), (9101, p[2])] {
        let rx = lab.pod(dst).expect("pod").udp(port).expect("bind");
        rx.set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        let to = SocketAddrV4::new(dst, port);
        let mut buf = vec![0u8; 2048];
        for send in 0..50u8 {
            let dgrams: Vec<Vec<u8>> = (0..UDP_TRAIN)
                .map(|i| {
                    let len = if i + 1 == UDP_TRAIN { 333 } else { UDP_DGRAM };
                    (0..len)
                        .map(|j| (j as u8) ^ send ^ (i as u8).wrapping_mul(31))
                        .collect()
                })
                .collect();
            let report = tx.send_iter(dgrams.iter().map(|d| Datagram {
                dst: to,
                flow: 1,
                payload: d,
                tail: &[],
            }));
            assert_eq!((report.sent, report.dropped), (UDP_TRAIN, 0), "{report:?}");
            for (i, want) in dgrams.iter().enumerate() {
                let n = rx
                    .recv(&mut buf)
                    .unwrap_or_else(|e| panic!("{dst}: send {send}, datagram {i}: {e}"));
                assert_eq!(&buf[..n], &want[..], "{dst}: send {send}, datagram {i}");
            }
        }
    }
    let show = request_show(&lab.nodes[0].ctl_socket).expect("show");
    let c = &show.counters;
    assert_eq!(c.drops.get("offload_malformed").copied(), Some(0), "{c:?}");
    // No TCP crossed this lab: only UDP super-frames can have been sent gathered.
    assert_eq!(
        c.gathered_sends > 0,
        uso,
        "UDP super-frames reached Weft exactly when USO is on: {c:?}"
    );
}

#[test]
fn hundred_megabytes_each_way_with_every_offload_on() {
    all_directions("", [1, 1, 1]);
}

#[test]
fn hundred_megabytes_each_way_without_udp_gso() {
    all_directions("gso = false\n", [1, 0, 1]);
}

#[test]
fn hundred_megabytes_each_way_without_udp_gro() {
    all_directions("gro = false\n", [1, 1, 0]);
}

#[test]
fn hundred_megabytes_each_way_without_tun_offloads() {
    all_directions("offload = false\n", [0, 1, 1]);
}

/// The harness's segmenting underlay (`weftd bench --underlay segmenting`) behaves as NICs and a
/// switch do: what crosses it between nodes are frames of the MTU, however large the senders'
/// GSO packets, and GRO merges them again on receive, so Weft's UDP GRO path takes datagrams
/// the kernel merged rather than trains that crossed whole. 100 MB each way, Weft ↔ Weft and
/// Weft ↔ kernel, byte for byte.
#[test]
fn a_segmenting_underlay_carries_mtu_frames_and_weft_moves_100_megabytes_each_way() {
    let lab = lab_on("", Underlay::Segmenting);
    let p = pods(&lab);
    let pairs = [(p[0], p[1]), (p[1], p[0]), (p[0], p[2]), (p[2], p[0])];
    for (port, (a, b)) in (7100..).zip(pairs) {
        transfer(&lab, a, b, port);
    }
    for node in &lab.nodes {
        let out = netns_tests::ns_command(&node.ns, "ip", &["-s", "-j", "link", "show", "eth0"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j");
        let rx = &v[0]["stats64"]["rx"];
        let (bytes, packets) = (
            rx["bytes"].as_u64().expect("rx bytes"),
            rx["packets"].as_u64().expect("rx packets"),
        );
        assert!(packets > 0, "{}: nothing received", node.name);
        // The mean frame: on the ideal underlay it is several times the MTU (GSO packets whole).
        let mean_frame = bytes / packets;
        assert!(
            mean_frame <= 1514,
            "{}: eth0 received {bytes} bytes in {packets} frames: larger than the MTU on the wire",
            node.name
        );
        let features = netns_tests::ns_command(&node.ns, "ethtool", &["-k", "eth0"]);
        assert!(
            features.contains("generic-receive-offload: on"),
            "{}: GRO off on eth0:\n{features}",
            node.name
        );
    }
    // The underlay bridge forwards as a switch: no br_netfilter hooks, where the host loaded the
    // module (it turns them on in every new namespace).
    let calls = lab
        .underlay()
        .run(|| std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables").ok())
        .expect("run in the underlay namespace");
    if let Some(on) = calls {
        assert_eq!(
            on.trim(),
            "0",
            "the underlay bridge runs iptables on every frame"
        );
    }
    for node in lab.nodes.iter().take(2) {
        let show = request_show(&node.ctl_socket).expect("show");
        let c = &show.counters;
        let malformed = c.drops.get("offload_malformed").copied().unwrap_or(0);
        assert_eq!(malformed, 0, "{}: {c:?}", node.name);
        assert!(
            c.gathered_writes > 0,
            "{}: no datagrams arrived merged by GRO: {c:?}",
            node.name
        );
    }
}
