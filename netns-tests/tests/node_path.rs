//! What a real node needs beyond the tunnel, checked on lab nodes: `weftd run` turns on
//! `net.ipv4.ip_forward` itself (a node namespace starts with it off here), and `weftctl status`
//! reports it.

use std::net::Ipv4Addr;
use std::time::Duration;

use control::lab::{sysctl, Lab, NodeKind, PingResult};
use netns_tests::{require_root, weftd_path};

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
    panic!("ping {src} -> {dst}: {last:?}");
}

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
