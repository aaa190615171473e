//! What a real node needs beyond the tunnel, checked on lab nodes: `weftd run` turns on
//! `net.ipv4.ip_forward` itself (a node namespace starts with it off here), and `weftctl status`
//! reports it.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use control::tooling::lab::{sysctl, Lab, NodeKind};
use netns_tests::{ns_command, ping_ok, require_root, weftd_path};

fn read_sysctl(lab: &Lab, idx: usize, key: &str) -> String {
    lab.nodes[idx]
        .ns
        .run(move || std::fs::read_to_string(format!("/proc/sys/{key}")))
        .expect("enter the node namespace")
        .expect("read the sysctl")
        .trim()
        .to_string()
}

#[test]
fn weftd_turns_forwarding_on_and_pods_reach_each_other() {
    require_root();
    let mut lab = Lab::new(&weftd_path()).expect("lab");
    for i in 1..=2 {
        lab.add_node(i, NodeKind::Weft).expect("weft node");
    }
    // The lab turns forwarding on for its nodes; undo that, as on a fresh host.
    for idx in 0..2 {
        sysctl(&lab.nodes[idx].ns, "net/ipv4/ip_forward", "0").expect("sysctl");
        assert_eq!(read_sysctl(&lab, idx, "net/ipv4/ip_forward"), "0");
    }
    lab.start().expect("agents start");
    for idx in 0..2 {
        lab.add_pod(idx, 2).expect("pod");
    }
    for idx in 0..2 {
        assert_eq!(
            read_sysctl(&lab, idx, "net/ipv4/ip_forward"),
            "1",
            "weftd on {} left ip_forward off",
            lab.nodes[idx].name
        );
        let log = std::fs::read_to_string(&lab.nodes[idx].log).unwrap_or_default();
        assert!(
            log.contains("net.ipv4.ip_forward"),
            "the change is not logged:\n{log}"
        );
    }
    let (a, b) = (lab.nodes[0].pods[0].ip, lab.nodes[1].pods[0].ip);
    ping_ok(&lab, a, b);
    ping_ok(&lab, b, a);
}

/// Connects from `pod` to `to` and reads back one echoed line; the error when that fails.
fn echo_through(pod: &control::tooling::lab::LabPod, to: SocketAddrV4) -> Result<(), String> {
    let mut s = pod
        .connect(to, Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"hairpin\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut got = [0u8; 8];
    s.read_exact(&mut got).map_err(|e| format!("read: {e}"))?;
    if &got != b"hairpin\n" {
        return Err(format!("echo mangled: {got:?}"));
    }
    Ok(())
}

#[test]
fn a_pod_reaches_itself_through_a_service_address() {
    require_root();
    let mut lab = Lab::new(&weftd_path()).expect("lab");
    lab.workers = 1;
    lab.add_node(1, NodeKind::Weft).expect("weft node");
    lab.start().expect("agent starts");
    let a = lab.add_pod(0, 2).expect("pod a");
    let b = lab.add_pod(0, 3).expect("pod b");
    // bridge-nf-call-iptables is on, as kube-proxy requires: the DNAT below happens as the frame
    // crosses the bridge, and a frame DNAT'ed back to its sender leaves by the port it came in on.
    sysctl(&lab.nodes[0].ns, "net/bridge/bridge-nf-call-iptables", "1")
        .expect("net.bridge.bridge-nf-call-iptables (the kernel needs br_netfilter)");

    // The rules kube-proxy writes for a ClusterIP Service with one endpoint: DNAT to the pod, and
    // masquerade when the endpoint is the client itself (KUBE-MARK-MASQ in its KUBE-SEP chain).
    let service = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
    let node_ns = &lab.nodes[0].ns;
    for rule in [
        format!(
            "-t nat -A PREROUTING -d {}/32 -p tcp --dport {} -j DNAT --to-destination {a}:8080",
            service.ip(),
            service.port()
        ),
        format!("-t nat -A POSTROUTING -s {a} -d {a} -j MASQUERADE"),
    ] {
        let args: Vec<&str> = rule.split_whitespace().collect();
        ns_command(node_ns, "iptables", &args);
    }

    let listener = lab.pod(a).expect("pod a").listen(8080).expect("listen");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { return };
            let mut buf = [0u8; 8];
            if c.read_exact(&mut buf).is_ok() {
                let _ = c.write_all(&buf);
            }
        }
    });

    let pod_a = lab.pod(a).expect("pod a");
    let pod_b = lab.pod(b).expect("pod b");
    echo_through(pod_b, service).unwrap_or_else(|e| panic!("pod b -> service -> pod a: {e}"));
    echo_through(pod_a, service)
        .unwrap_or_else(|e| panic!("pod a -> service -> pod a (hairpin): {e}"));

    // The proof that hairpin is what carries it: with hairpin off on a's port, a cannot reach
    // itself, while b still reaches a.
    let hv = lab.nodes[0].pods[0].host_veth.clone();
    node_ns
        .run(|| control::netlink::Netlink::new().and_then(|nl| nl.set_hairpin(&hv, false)))
        .expect("enter the node namespace")
        .expect("hairpin off");
    assert!(
        echo_through(pod_a, service).is_err(),
        "pod a reached itself with hairpin off: the test does not test hairpin"
    );
    echo_through(pod_b, service).unwrap_or_else(|e| panic!("pod b -> service -> pod a: {e}"));
}
