//! Weft nodes on the etcd datastore, in namespaces, with a real etcd in the underlay namespace:
//! a mixed cluster with a kernel flannel.1 node programmed from the leases; leave and join within
//! a second; etcd stopped for 10 s under continuous pod traffic, with a node joining meanwhile;
//! lease renewal with a short TTL; subnet.env, /readyz and /metrics on real agents.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use control::ctl::request_show;
use control::datastore::flannel;
use control::tooling::lab::{Lab, NodeKind};
use ipnet::Ipv4Net;
use netns_tests::{ping_ok, require_root, weftd_path};

/// Whether node `idx`'s agent programs `subnet` (route, neighbour and FDB entry).
fn programs(lab: &Lab, idx: usize, subnet: Ipv4Net) -> bool {
    let show = request_show(&lab.nodes[idx].ctl_socket).expect("show");
    let route = show.routes.iter().any(|r| r.dst == subnet.to_string());
    let neigh = show.neighbors.iter().find(|n| n.ip == subnet.network());
    let fdb = neigh.is_some_and(|n| show.fdb.iter().any(|f| f.mac == n.lladdr));
    route && neigh.is_some() && fdb
}

/// Polls until `cond` holds; returns how long it took, failing after `limit`.
fn until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
}

#[test]
fn mixed_cluster_programmed_from_etcd_with_renewals_subnet_env_and_readyz() {
    require_root();
    let mut lab = Lab::new(&weftd_path()).expect("lab");
    // TTL 4 s, renewed when 2 s remain: renewals are observable within the test.
    lab.start_etcd(4, 2)
        .expect("etcd in the underlay namespace");
    for i in 1..=3 {
        lab.add_node(i, NodeKind::Weft).expect("weft node");
    }
    lab.add_node(4, NodeKind::KernelVxlan)
        .expect("kernel flannel.1 node");
    lab.start().expect("agents start from etcd");
    for idx in 0..4 {
        lab.add_pod(idx, 2).expect("pod");
    }
    let etcd = lab.etcd().expect("etcd");
    let prefix = flannel::DEFAULT_PREFIX;
    let leases = etcd.list(&flannel::subnets_prefix(prefix)).expect("list");
    assert_eq!(leases.len(), 4, "{leases:?}");
    // Every Weft lease is flannel's value byte for byte, on an etcd lease.
    for n in lab.nodes.iter().filter(|n| n.kind == NodeKind::Weft) {
        let key = flannel::lease_key(prefix, n.subnet);
        let (_, value, lease) = leases
            .iter()
            .find(|(k, _, _)| *k == key)
            .unwrap_or_else(|| panic!("no lease {key} for {}", n.name));
        assert_eq!(
            *value,
            flannel::vxlan_lease_value(n.public_ip, 1, control::config::vtep_mac_for(&n.name))
        );
        assert_ne!(*lease, 0, "{key} has no TTL");
        // subnet.env, flannel's keys and order.
        let env = std::fs::read_to_string(&n.subnet_file).expect("subnet.env");
        let first = Ipv4Addr::from(u32::from(n.subnet.network()) + 1);
        assert_eq!(
            env,
            format!(
                "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET={first}/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
            )
        );
    }
    let pods: Vec<Ipv4Addr> = lab
        .nodes
        .iter()
        .flat_map(|n| n.pods.iter().map(|p| p.ip))
        .collect();
    for &src in &pods {
        for &dst in &pods {
            if src != dst {
                ping_ok(&lab, src, dst);
            }
        }
    }
    for idx in 0..3 {
        let (status, body) = lab.http_get(idx, "/readyz").expect("readyz");
        assert_eq!(status, 200, "node {idx}: {body}");
        let (_, m) = lab.http_get(idx, "/metrics").expect("metrics");
        assert_eq!(metric(&m, "weft_peers "), 3.0, "{m}");
        assert!(m.contains("weft_drops_total{reason=\"no_route\"}"), "{m}");
        // Workers publish their counters every 50 ms or so: poll briefly.
        until(
            Duration::from_secs(3),
            "tx_underlay packets counted",
            || {
                let (_, m) = lab.http_get(idx, "/metrics").expect("metrics");
                metric(&m, "weft_packets_total{direction=\"tx_underlay\"} ") > 0.0
            },
        );
    }
    // Renewal: after more than a TTL every Weft key is still there, on a new etcd lease.
    std::thread::sleep(Duration::from_secs(5));
    let later = etcd.list(&flannel::subnets_prefix(prefix)).expect("list");
    for n in lab.nodes.iter().filter(|n| n.kind == NodeKind::Weft) {
        let key = flannel::lease_key(prefix, n.subnet);
        let old = leases.iter().find(|e| e.0 == key).expect("old").2;
        let new = later
            .iter()
            .find(|e| e.0 == key)
            .unwrap_or_else(|| panic!("{key} expired: renewal failed"))
            .2;
        assert_ne!(old, new, "{key} was not renewed");
    }
    let (_, m) = lab.http_get(0, "/metrics").expect("metrics");
    assert!(metric(&m, "weft_lease_renewals_total ") >= 1.0, "{m}");
    ping_ok(&lab, pods[0], pods[3]);
}

#[test]
fn leave_and_join_reach_every_node_within_a_second() {
    require_root();
    let mut lab = Lab::new(&weftd_path()).expect("lab");
    lab.start_etcd(3600, 600).expect("etcd");
    for i in 1..=3 {
        lab.add_node(i, NodeKind::Weft).expect("node");
    }
    lab.start().expect("start");
    for idx in 0..3 {
        lab.add_pod(idx, 2).expect("pod");
    }
    let leaving = lab.nodes[2].subnet;
    assert!(programs(&lab, 0, leaving) && programs(&lab, 1, leaving));

    // Leave: the node is gone and its lease deleted (by an operator or by expiry).
    lab.stop_agent(2, libc::SIGKILL);
    let etcd = lab.etcd().expect("etcd");
    etcd.delete(&flannel::lease_key(flannel::DEFAULT_PREFIX, leaving))
        .expect("delete lease");
    let took = until(Duration::from_secs(3), "leave propagated", || {
        !programs(&lab, 0, leaving) && !programs(&lab, 1, leaving)
    });
    eprintln!("leave propagated to both nodes in {took:?}");
    assert!(took < Duration::from_secs(1), "leave took {took:?}");
    // Nothing of the peer is left: no route, no neighbour on <subnet>.0, no FDB entry.
    for idx in 0..2 {
        let show = request_show(&lab.nodes[idx].ctl_socket).expect("show");
        assert!(show.routes.iter().all(|r| r.dst != leaving.to_string()));
        assert!(show.neighbors.iter().all(|n| n.ip != leaving.network()));
        assert_eq!(show.fdb.len(), 1, "{:?}", show.fdb);
    }

    // Join: a new node's lease reaches both nodes within a second, and its pod is reachable.
    let new = lab.add_node(4, NodeKind::Weft).expect("node-4");
    lab.launch_agent(new).expect("start node-4");
    let etcd = lab.etcd().expect("etcd");
    let prefix = flannel::subnets_prefix(flannel::DEFAULT_PREFIX);
    let before: Vec<String> = etcd
        .list(&prefix)
        .expect("list")
        .into_iter()
        .map(|e| e.0)
        .collect();
    let mut joined = None;
    until(Duration::from_secs(15), "node-4's lease", || {
        joined = etcd
            .list(&prefix)
            .expect("list")
            .into_iter()
            .map(|e| e.0)
            .find(|k| !before.contains(k));
        joined.is_some()
    });
    let subnet =
        flannel::subnet_of_key(flannel::DEFAULT_PREFIX, &joined.expect("key")).expect("lease key");
    let took = until(Duration::from_secs(3), "join propagated", || {
        programs(&lab, 0, subnet) && programs(&lab, 1, subnet)
    });
    eprintln!("join propagated to both nodes in {took:?}");
    assert!(took < Duration::from_secs(1), "join took {took:?}");
    lab.wait_agent(new, Duration::from_secs(10))
        .expect("node-4 up");
    lab.refresh_subnet(new).expect("subnet");
    let pod = lab.add_pod(new, 2).expect("pod on node-4");
    let src = lab.nodes[0].pods[0].ip;
    let reach = until(Duration::from_secs(3), "pod on node-4 reachable", || {
        lab.pod(src)
            .expect("pod")
            .ping(pod, 56, false, Duration::from_millis(200))
            .is_reply()
    });
    assert!(
        reach < Duration::from_secs(1),
        "new pod reachable after {reach:?}"
    );
}

#[test]
fn etcd_down_for_ten_seconds_keeps_traffic_and_converges_after() {
    require_root();
    let mut lab = Lab::new(&weftd_path()).expect("lab");
    lab.start_etcd(3600, 600).expect("etcd");
    lab.add_node(1, NodeKind::Weft).expect("node");
    lab.add_node(2, NodeKind::Weft).expect("node");
    lab.start().expect("start");
    let a = lab.add_pod(0, 2).expect("pod");
    let b = lab.add_pod(1, 2).expect("pod");
    ping_ok(&lab, a, b);

    lab.etcd_mut().expect("etcd").stop();
    // A node joins while etcd is down: it waits for etcd (the change made meanwhile).
    let new = lab.add_node(3, NodeKind::Weft).expect("node-3");
    lab.launch_agent(new).expect("start node-3");
    let outage = Instant::now();
    let (mut sent, mut lost) = (0, 0);
    while outage.elapsed() < Duration::from_secs(10) {
        sent += 1;
        let r = lab
            .pod(a)
            .expect("pod")
            .ping(b, 56, false, Duration::from_millis(500));
        if !r.is_reply() {
            lost += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("etcd down 10 s: {sent} pings, {lost} lost");
    assert_eq!(lost, 0, "{lost} of {sent} pings lost while etcd was down");
    let (status, _) = lab.http_get(0, "/readyz").expect("readyz");
    assert_eq!(status, 200, "a running node stays ready while etcd is down");

    lab.etcd_mut().expect("etcd").restart().expect("etcd back");
    lab.wait_agent(new, Duration::from_secs(20))
        .expect("node-3 acquires once etcd is back");
    lab.refresh_subnet(new).expect("subnet");
    let subnet = lab.nodes[new].subnet;
    let t = Instant::now();
    while !(programs(&lab, 0, subnet) && programs(&lab, 1, subnet)) {
        if t.elapsed() > Duration::from_secs(10) {
            for n in &lab.nodes {
                eprintln!(
                    "--- {} log:\n{}",
                    n.name,
                    std::fs::read_to_string(&n.log).unwrap_or_default()
                );
            }
            panic!("node-3 ({subnet}) not programmed on node-1 and node-2 within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let c = lab.add_pod(new, 2).expect("pod on node-3");
    ping_ok(&lab, a, c);
    ping_ok(&lab, c, b);
    let (_, m) = lab.http_get(0, "/metrics").expect("metrics");
    assert!(metric(&m, "weft_datastore_reconnects_total ") >= 1.0, "{m}");
}

#[test]
fn bench_control_runs_and_prints_its_figures() {
    require_root();
    let out = std::process::Command::new(weftd_path())
        .args(["bench-control", "--leases", "50", "--changes", "10"])
        .output()
        .expect("run weftd bench-control");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "start to ready (lease held, 50 peers programmed",
        "resident memory with 50 peers",
        "10 changes: p50",
    ] {
        assert!(stdout.contains(want), "{want} missing in\n{stdout}");
    }
}
