//! Three nodes in network namespaces: two run `weftd`, one uses the Linux kernel VXLAN device
//! configured exactly as flannel configures `flannel.1`. Pods on every node reach each other in
//! both directions (ping, a byte-exact multi-megabyte TCP transfer, UDP); a DF ping above the path
//! MTU gets fragmentation-needed; an unknown remote subnet is dropped and counted; bad frames on
//! the VXLAN port are dropped by reason and never crash the agent; SIGKILL and restart resume
//! traffic within a second without touching the pods; SIGTERM shuts down cleanly.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use control::ctl::request_show;
use control::tooling::lab::{Lab, NodeKind, PingResult};
use dataplane::wire::{Ipv4Packet, Ipv4Repr};
use netns_tests::{ping_ok, require_root, weftd_path};

const TRANSFER: usize = 4 << 20;

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

fn three_node_lab() -> Lab {
    require_root();
    let mut lab = Lab::new(&weftd_path()).expect("lab");
    lab.add_node(1, NodeKind::Weft).expect("node-1");
    lab.add_node(2, NodeKind::Weft).expect("node-2");
    lab.add_node(3, NodeKind::KernelVxlan)
        .expect("node-3 (kernel flannel.1)");
    lab.start().expect("agents start");
    for idx in 0..3 {
        lab.add_pod(idx, 2).expect("pod");
    }
    lab
}

fn pods(lab: &Lab) -> Vec<Ipv4Addr> {
    lab.nodes
        .iter()
        .flat_map(|n| n.pods.iter().map(|p| p.ip))
        .collect()
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
        .unwrap_or_else(|e| panic!("connect {src} -> {dst}: {e}"));
    c.write_all(&data).expect("send");
    drop(c);
    assert!(
        rx.join().expect("receiver"),
        "TCP {src} -> {dst}: bytes differ"
    );
}

fn udp_ok(lab: &Lab, src: Ipv4Addr, dst: Ipv4Addr, port: u16) {
    let rx = lab.pod(dst).expect("pod").udp(port).expect("bind");
    rx.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let tx = lab.pod(src).expect("pod").udp(0).expect("bind");
    let msg = pattern(u32::from(src), 1200);
    let mut buf = [0u8; 2048];
    for _ in 0..5 {
        tx.send_to(&msg, SocketAddrV4::new(dst, port))
            .expect("send");
        if let Ok((n, from)) = rx.recv_from(&mut buf) {
            assert_eq!(&buf[..n], &msg[..], "UDP payload {src} -> {dst}");
            assert_eq!(from.ip(), std::net::IpAddr::V4(src));
            return;
        }
    }
    panic!("UDP {src} -> {dst}: nothing arrived");
}

#[test]
fn weft_and_kernel_vxlan_nodes_carry_every_pair() {
    let lab = three_node_lab();
    let pods = pods(&lab);
    let mut port = 6000;
    for &src in &pods {
        for &dst in &pods {
            if src == dst {
                continue;
            }
            ping_ok(&lab, src, dst);
            udp_ok(&lab, src, dst, port);
            tcp_exact(&lab, src, dst, port);
            port += 1;
        }
    }
    // Weft's own counters saw both directions.
    let show = request_show(&lab.nodes[0].ctl_socket).expect("show node-1");
    assert!(show.counters.tx_underlay.packets > 0 && show.counters.rx_underlay.packets > 0);
}

#[test]
fn df_ping_above_path_mtu_gets_frag_needed_and_unknown_subnet_is_counted() {
    let lab = three_node_lab();
    let pods = pods(&lab);
    // 1422 data bytes + 28 = 1450 fits the tunnel MTU; one more byte does not fit the pod's link.
    let pod = lab.pod(pods[0]).expect("pod");
    assert!(pod
        .ping(pods[1], 1422, true, Duration::from_secs(2))
        .is_reply());
    match pod.ping(pods[1], 1423, true, Duration::from_secs(2)) {
        // The pod's own link MTU is the tunnel MTU, so its kernel refuses locally (EMSGSIZE) —
        // the path MTU is enforced before the packet leaves the pod.
        PingResult::Error(e) => assert!(e.contains("too long") || e.contains("Message"), "{e}"),
        PingResult::FragNeeded { mtu, .. } => assert_eq!(mtu, 1450),
        other => panic!("oversized DF ping: {other:?}"),
    }

    // A pod whose link MTU (1500) is above the tunnel's: its node answers frag-needed with 1450.
    let mut lab = lab;
    let big = lab.add_pod(0, 3).expect("pod");
    control::tooling::lab::in_ns(&lab.pod(big).expect("pod").ns, |nl| {
        nl.set_mtu("eth0", 1500)
    })
    .expect("mtu");
    let host_veth = lab.pod(big).expect("pod").host_veth.clone();
    control::tooling::lab::in_ns(&lab.nodes[0].ns, move |nl| nl.set_mtu(&host_veth, 1500))
        .expect("mtu");
    match lab
        .pod(big)
        .expect("pod")
        .ping(pods[1], 1472, true, Duration::from_secs(2))
    {
        PingResult::FragNeeded { mtu, .. } => assert_eq!(mtu, 1450),
        other => panic!("expected fragmentation-needed, got {other:?}"),
    }

    // An unknown remote subnet inside the cluster network: dropped by Weft and counted.
    let before = request_show(&lab.nodes[0].ctl_socket)
        .expect("show")
        .counters
        .drops["no_route"];
    let r = lab.pod(pods[0]).expect("pod").ping(
        Ipv4Addr::new(10, 244, 99, 2),
        56,
        false,
        Duration::from_millis(500),
    );
    assert!(!r.is_reply(), "{r:?}");
    std::thread::sleep(Duration::from_millis(200));
    let after = request_show(&lab.nodes[0].ctl_socket)
        .expect("show")
        .counters
        .drops["no_route"];
    assert!(after > before, "no_route {before} -> {after}");
}

#[test]
fn bad_frames_on_the_vxlan_port_are_dropped_by_reason() {
    let lab = three_node_lab();
    let sock = lab.underlay_udp().expect("underlay socket");
    let to = SocketAddrV4::new(lab.nodes[0].public_ip, 8472);
    let vtep = control::config::vtep_mac_for("node-1");
    let good_inner = {
        // VXLAN header + inner Ethernet to node-1's VTEP + a minimal IPv4 header to a local pod.
        let mut f = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        f.extend_from_slice(&vtep.0);
        f.extend_from_slice(&[0x0e, 0, 0, 0, 0, 9, 0x08, 0x00]);
        f
    };
    let mut no_flag = good_inner.clone();
    no_flag[0] = 0;
    let mut wrong_vni = good_inner.clone();
    wrong_vni[6] = 7;
    let mut v6 = good_inner.clone();
    v6[20..22].copy_from_slice(&[0x86, 0xdd]);
    v6.extend_from_slice(&[0x60; 40]);
    // A well-formed inner packet to a local pod far above the tunnel MTU, DF clear. (Merged
    // receives, UDP GRO, hold any datagram whole, so size is judged on the inner packet.)
    let mut oversized = good_inner.clone();
    let inner = Ipv4Repr {
        src_addr: Ipv4Addr::new(10, 244, 2, 2),
        dst_addr: lab.nodes[0].pods[0].ip,
        protocol: 17,
        payload_len: 12_000,
        ttl: 64,
        tos: 0,
        ident: 1,
        dont_frag: false,
    };
    let at = oversized.len();
    oversized.resize(at + inner.buffer_len() + inner.payload_len, 0x5a);
    inner.emit(&mut Ipv4Packet::new_unchecked(&mut oversized[at..]));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", vec![0x08, 0, 0]),
        ("vxlan_flags", no_flag),
        ("vxlan_vni", wrong_vni),
        ("not_ipv4", v6),
        ("too_big", oversized),
    ];
    for (reason, frame) in &cases {
        let before = request_show(&lab.nodes[0].ctl_socket)
            .expect("show")
            .counters
            .drops[*reason];
        for _ in 0..3 {
            sock.send_to(frame, to).expect("send");
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let now = request_show(&lab.nodes[0].ctl_socket)
                .expect("agent still answers")
                .counters
                .drops[*reason];
            if now >= before + 3 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{reason}: counter {before} -> {now}"
            );
            std::thread::sleep(Duration::from_millis(60));
        }
    }
    // Still forwarding.
    let pods = pods(&lab);
    ping_ok(&lab, pods[0], pods[1]);
}

#[test]
fn sigkill_and_restart_resume_within_a_second_and_sigterm_is_clean() {
    let mut lab = three_node_lab();
    let pods = pods(&lab);
    ping_ok(&lab, pods[0], pods[1]);
    lab.stop_agent(0, libc::SIGKILL);
    let restarted = Instant::now();
    lab.start_agent(0).expect("restart");
    let pod = lab.pod(pods[0]).expect("pod");
    let resumed = loop {
        if pod
            .ping(pods[1], 56, false, Duration::from_millis(100))
            .is_reply()
        {
            break restarted.elapsed();
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "no traffic 5 s after restart"
        );
    };
    assert!(
        resumed < Duration::from_secs(1),
        "traffic resumed after {resumed:?}"
    );
    ping_ok(&lab, pods[1], pods[0]);
    ping_ok(&lab, pods[2], pods[0]);

    // SIGTERM: exit status 0, control socket removed.
    let sock = lab.nodes[0].ctl_socket.clone();
    let mut child = lab.nodes[0].agent.take().expect("agent running");
    let pid = i32::try_from(child.id()).expect("pid");
    control::sys::kill(pid, libc::SIGTERM);
    let status = child.wait().expect("wait");
    assert!(
        status.success(),
        "weftd exit status after SIGTERM: {status:?}"
    );
    assert!(!sock.exists(), "control socket left behind");
}
