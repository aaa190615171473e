//! The `weft` CNI plugin against real `weftd` agents in namespaces, driven the way a container
//! runtime drives it (netns_tests::cni, libcni's behaviour), chained with Debian's real `portmap`
//! and `bandwidth` plugins through the shipped conflist:
//! pods on two nodes reach each other, a hostPort reaches its pod, a bandwidth limit lands on the
//! host veth, CHECK passes, DEL twice succeeds and leaves nothing (no veth, address, allocation,
//! iptables rule). Then 100 concurrent ADDs and DELs, an agent SIGKILLed between ADDs, and every
//! bad input of the issue with its CNI error code and nothing leaked.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use control::cni::ipam::{read_allocations, Allocation};
use control::netlink::Netlink;
use control::netns::NetNs;
use control::tooling::lab::{Lab, LabNode, LabPod, NodeKind, PingResult};
use netns_tests::cni::{shipped_conflist_named, weft_only, Attachment, Driver};
use netns_tests::{cni_path, ns_command, require_root, weftd_path};
use serde_json::{json, Value};

fn lab_with(nodes: &[(u8, Option<&str>)]) -> Lab {
    require_root();
    let mut lab = Lab::new(&weftd_path()).expect("lab");
    // Two workers keep each agent light; the CNI path does not depend on them.
    lab.workers = 1;
    for (i, subnet) in nodes {
        match subnet {
            Some(s) => lab.add_node_with_subnet(*i, NodeKind::Weft, s.parse().expect("subnet")),
            None => lab.add_node(*i, NodeKind::Weft),
        }
        .expect("node");
    }
    lab.start().expect("agents start");
    lab
}

fn driver(node: &LabNode) -> Driver {
    Driver::new(node.ns.path(), cni_path())
}

/// The links of a namespace.
fn links(ns: &NetNs) -> Vec<control::netlink::Link> {
    ns.run(|| Netlink::new().and_then(|nl| nl.links()))
        .expect("enter ns")
        .expect("dump links")
}

fn weft_veths(node: &LabNode) -> Vec<String> {
    links(&node.ns)
        .into_iter()
        .filter(|l| l.name.starts_with("weft") && l.kind.as_deref() == Some("veth"))
        .map(|l| l.name)
        .collect()
}

/// The node agent's IPAM allocations as recorded on disk (snapshot and journal).
fn allocations(node: &LabNode) -> Vec<Allocation> {
    read_allocations(&node.cni_data_dir)
        .unwrap_or_else(|e| panic!("IPAM state of {}: {e}", node.name))
}

fn result_ip(result: &Value) -> Ipv4Addr {
    let addr = result["ips"][0]["address"]
        .as_str()
        .expect("ips[0].address");
    addr.split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .expect("IPv4/len")
}

fn ping_ok(pod: &LabPod, dst: Ipv4Addr) {
    let mut last = PingResult::Timeout;
    for _ in 0..4 {
        last = pod.ping(dst, 56, false, Duration::from_secs(1));
        if last.is_reply() {
            return;
        }
    }
    panic!("ping {} -> {dst}: {last:?}", pod.ip);
}

fn echo_server(pod: &LabPod, port: u16) -> std::thread::JoinHandle<()> {
    let listener = pod.listen(port).expect("listen in pod");
    std::thread::spawn(move || {
        let (mut c, _) = listener.accept().expect("accept");
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).expect("read");
        c.write_all(&buf[..n]).expect("echo");
    })
}

fn echo_through(mut c: TcpStream, what: &str) {
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    c.write_all(b"weft-cni").expect("send");
    let mut buf = [0u8; 8];
    c.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(&buf, b"weft-cni", "{what}");
}

/// CHECK of every plugin of the list, each with the ADD result. Weft's must pass. Debian
/// bookworm's reference plugins (1.1.1) have two CHECK bugs fixed upstream since, and exactly
/// those failures are let through, with a note: portmap looks for the IPv6 chain of an IPv4-only
/// pod (containernetworking/plugins#819), and bandwidth dereferences a nil limit when the pod has
/// none (containernetworking/plugins#1221). Any other failure fails the test.
fn check_list(d: &Driver, list: &Value, att: &Attachment, result: &Value) {
    for plugin in list["plugins"].as_array().expect("plugins") {
        let ty = plugin["type"].as_str().expect("type");
        let exec = d.check_one(list, ty, att, result);
        let known_bug = match ty {
            "portmap" => exec.msg().contains("could not check ipv6 dnat"),
            "bandwidth" => {
                !att.capability_args.contains_key("bandwidth")
                    && exec.stderr.contains("nil pointer dereference")
            }
            _ => false,
        };
        if known_bug {
            eprintln!(
                "note: {ty} CHECK hit a known upstream bug of the installed version: {}",
                exec.stdout.trim()
            );
        } else {
            assert!(exec.ok(), "CHECK {exec}");
        }
    }
}

/// Everything the issue's first test bullet asks, on two Weft nodes in bridge mode with the
/// shipped bridge-mode conflist (weft, portmap, the bandwidth plugin).
#[test]
fn bridge_conflist_with_portmap_and_bandwidth_across_two_nodes() {
    shipped_list_across_two_nodes(false);
}

/// The same in switch mode, the default, with the default conflist: weft takes the bandwidth
/// capability itself, portmap's hostPort reaches a pod through the switch.
#[test]
fn default_conflist_in_switch_mode_with_portmap_and_bandwidth() {
    shipped_list_across_two_nodes(true);
}

fn shipped_list_across_two_nodes(switch: bool) {
    require_root();
    let mut lab = Lab::new(&weftd_path()).expect("lab");
    lab.workers = 1;
    lab.switch = switch;
    lab.add_node(1, NodeKind::Weft).expect("node-1");
    lab.add_node(2, NodeKind::Weft).expect("node-2");
    lab.start().expect("agents start");
    let (n1, n2) = (&lab.nodes[0], &lab.nodes[1]);
    let (d1, d2) = (driver(n1), driver(n2));
    let name = if switch {
        "10-weft.conflist"
    } else {
        "10-weft-bridge.conflist"
    };
    let (list1, list2) = (
        shipped_conflist_named(name, &n1.cni_socket),
        shipped_conflist_named(name, &n2.cni_socket),
    );
    d1.status(&weft_only(&n1.cni_socket, "1.1.0"))
        .expect("STATUS: node 1 ready");

    let ns_a = lab.empty_pod_ns("pa").expect("pod ns");
    let ns_b = lab.empty_pod_ns("pb").expect("pod ns");
    let att_a = Attachment::new("pod-a", ns_a.path()).with_capability(
        "portMappings",
        json!([{"hostPort": 30080, "containerPort": 8080, "protocol": "tcp"}]),
    );
    let att_b = Attachment::new("pod-b", ns_b.path()).with_capability(
        "bandwidth",
        json!({"ingressRate": 8_000_000, "ingressBurst": 1_000_000, "egressRate": 8_000_000, "egressBurst": 1_000_000}),
    );
    let res_a = d1.add(&list1, &att_a).unwrap_or_else(|e| panic!("{e}"));
    let res_b = d2.add(&list2, &att_b).unwrap_or_else(|e| panic!("{e}"));

    // The result as the spec and the chained plugins need it.
    assert_eq!(res_a["cniVersion"], "1.0.0");
    let host_a = res_a["interfaces"][0]["name"].as_str().expect("host veth");
    assert!(host_a.starts_with("weft") && host_a.len() <= 15, "{res_a}");
    assert!(res_a["interfaces"][0].get("sandbox").is_none(), "{res_a}");
    assert_eq!(res_a["interfaces"][1]["name"], "eth0");
    assert_eq!(
        res_a["interfaces"][1]["sandbox"],
        ns_a.path().display().to_string()
    );
    assert_eq!(res_a["ips"][0]["interface"], 1);
    let gateway = if switch { "169.254.1.1" } else { "10.244.1.1" };
    assert_eq!(res_a["ips"][0]["gateway"], gateway);
    assert!(
        res_a["ips"][0].get("version").is_none(),
        "1.0.0 has no ips[].version"
    );
    let (ip_a, ip_b) = (result_ip(&res_a), result_ip(&res_b));
    assert!(n1.subnet.contains(&ip_a) && n2.subnet.contains(&ip_b));
    let host_b = res_b["interfaces"][0]["name"]
        .as_str()
        .expect("host veth")
        .to_string();
    let host_a = host_a.to_string();
    // Bridge mode: hairpin on the pod's bridge port, so the pod reaches itself through a Service
    // address (in switch mode that traffic comes back through the TUN).
    if !switch {
        let detail = ns_command(&n1.ns, "ip", &["-d", "link", "show", "dev", &host_a]);
        assert!(detail.contains("hairpin on"), "{host_a}: {detail}");
    }

    // The pod side: eth0 with the address, MTU 1450, default route via the gateway.
    let pod_links = links(&ns_a);
    let eth0 = pod_links.iter().find(|l| l.name == "eth0").expect("eth0");
    assert_eq!(eth0.mtu, 1450);
    assert!(eth0.up);

    let pod_a = LabPod {
        ns: ns_a,
        ip: ip_a,
        host_veth: host_a.clone(),
    };
    let pod_b = LabPod {
        ns: ns_b,
        ip: ip_b,
        host_veth: host_b.clone(),
    };

    // Across nodes, both ways: ping and TCP.
    ping_ok(&pod_a, ip_b);
    ping_ok(&pod_b, ip_a);
    let server = echo_server(&pod_b, 7000);
    echo_through(
        pod_a
            .connect(SocketAddrV4::new(ip_b, 7000), Duration::from_secs(3))
            .expect("TCP a -> b"),
        "TCP pod a -> pod b",
    );
    server.join().expect("server");

    // hostPort 30080 on node 1's address reaches pod a's 8080 (portmap's DNAT), from outside.
    let server = echo_server(&pod_a, 8080);
    let node_ip = n1.public_ip;
    let c = lab
        .underlay()
        .run(move || {
            TcpStream::connect_timeout(
                &SocketAddrV4::new(node_ip, 30080).into(),
                Duration::from_secs(3),
            )
        })
        .expect("enter underlay")
        .expect("connect to the hostPort");
    echo_through(c, "hostPort 30080 -> pod a:8080");
    server.join().expect("server");

    let qdisc = ns_command(&n2.ns, "tc", &["qdisc", "show", "dev", &host_b]);
    if switch {
        // Weft polices pod b's port itself (netns-tests/tests/switch.rs measures it); no tc.
        assert!(!qdisc.contains("tbf"), "tbf on {host_b}: {qdisc}");
        let allocs = allocations(n2);
        let b = allocs
            .iter()
            .find(|a| a.ip == ip_b)
            .expect("b's allocation");
        assert_eq!(
            b.bandwidth.map(|bw| (bw.ingress_rate, bw.egress_rate)),
            Some((8_000_000, 8_000_000)),
            "{allocs:?}"
        );
    } else {
        // The bandwidth plugin shaped pod b's host veth: tbf for ingress, an ingress qdisc
        // redirecting to its ifb device for egress.
        assert!(qdisc.contains("tbf"), "no tbf on {host_b}: {qdisc}");
        assert!(
            qdisc.contains("ingress"),
            "no ingress qdisc on {host_b}: {qdisc}"
        );
    }

    // CHECK, then DEL twice.
    check_list(&d1, &list1, &att_a, &res_a);
    check_list(&d2, &list2, &att_b, &res_b);
    for _ in 0..2 {
        d1.del(&list1, &att_a, Some(&res_a))
            .unwrap_or_else(|e| panic!("{e}"));
        d2.del(&list2, &att_b, Some(&res_b))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    // Nothing left: no veth (nor bandwidth's ifb), no address, no allocation, no rule.
    for (node, pod) in [(n1, &pod_a), (n2, &pod_b)] {
        assert!(weft_veths(node).is_empty(), "{:?}", weft_veths(node));
        let ifbs: Vec<String> = links(&node.ns)
            .into_iter()
            .filter(|l| l.kind.as_deref() == Some("ifb"))
            .map(|l| l.name)
            .collect();
        assert!(ifbs.is_empty(), "ifb devices left: {ifbs:?}");
        assert!(allocations(node).is_empty(), "{:?}", allocations(node));
        assert!(
            !links(&pod.ns).iter().any(|l| l.name == "eth0"),
            "eth0 left in the pod"
        );
        let rules = ns_command(&node.ns, "iptables-save", &[]);
        for needle in [pod.ip.to_string().as_str(), "30080", "CNI-DN-", "pod-a"] {
            let hits: Vec<&str> = rules
                .lines()
                .filter(|l| l.starts_with("-A") && l.contains(needle))
                .collect();
            assert!(
                hits.is_empty(),
                "iptables rules left for {needle}: {hits:?}"
            );
        }
    }
}

/// 100 concurrent ADDs on one node get 100 distinct addresses; 100 concurrent DELs leave zero
/// allocations and zero Weft veths.
#[test]
fn hundred_concurrent_adds_and_dels() {
    const PODS: usize = 100;
    let lab = lab_with(&[(1, None)]);
    let node = &lab.nodes[0];
    let d = driver(node);
    let list = weft_only(&node.cni_socket, "1.0.0");
    let nss: Vec<NetNs> = (0..PODS)
        .map(|i| lab.empty_pod_ns(&format!("c{i}")).expect("pod ns"))
        .collect();
    let atts: Vec<Attachment> = nss
        .iter()
        .enumerate()
        .map(|(i, ns)| Attachment::new(&format!("ctr{i}"), ns.path()))
        .collect();
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = atts
            .iter()
            .map(|att| {
                let (d, list) = (&d, &list);
                s.spawn(move || d.add(list, att))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread").unwrap_or_else(|e| panic!("{e}")))
            .collect()
    });
    let ips: HashSet<Ipv4Addr> = results.iter().map(result_ip).collect();
    assert_eq!(ips.len(), PODS, "addresses handed out twice");
    assert!(ips.iter().all(|ip| node.subnet.contains(ip)));
    assert!(!ips.contains(&Ipv4Addr::new(10, 244, 1, 1)), "the gateway");
    assert_eq!(allocations(node).len(), PODS);
    assert_eq!(weft_veths(node).len(), PODS);

    std::thread::scope(|s| {
        for (att, res) in atts.iter().zip(&results) {
            let (d, list) = (&d, &list);
            s.spawn(move || {
                d.del(list, att, Some(res))
                    .unwrap_or_else(|e| panic!("{e}"))
            });
        }
    });
    assert!(allocations(node).is_empty(), "{:?}", allocations(node));
    assert!(weft_veths(node).is_empty(), "{:?}", weft_veths(node));
}

fn pod_addresses(ns: &NetNs) -> Vec<String> {
    ns.run(|| Netlink::new().and_then(|nl| nl.addresses()))
        .expect("enter ns")
        .expect("dump addresses")
        .into_iter()
        .filter(|a| a.ifname == "eth0")
        .map(|a| a.addr.to_string())
        .collect()
}

/// SIGKILL between ADDs: the agent is unreachable (11, within a second) while down; restarted,
/// it keeps every pod's address and connectivity and never hands an address out twice.
#[test]
fn agent_sigkill_between_adds_keeps_addresses() {
    let mut lab = lab_with(&[(1, None), (2, None)]);
    let list1 = weft_only(&lab.nodes[0].cni_socket, "1.0.0");
    let list2 = weft_only(&lab.nodes[1].cni_socket, "1.0.0");
    let (d1, d2) = (driver(&lab.nodes[0]), driver(&lab.nodes[1]));
    let mut pods = Vec::new();
    for (tag, d, list) in [("p1", &d1, &list1), ("p2", &d1, &list1), ("q", &d2, &list2)] {
        let ns = lab.empty_pod_ns(tag).expect("pod ns");
        let att = Attachment::new(tag, ns.path());
        let res = d.add(list, &att).unwrap_or_else(|e| panic!("{e}"));
        let ip = result_ip(&res);
        pods.push((
            LabPod {
                ns,
                ip,
                host_veth: res["interfaces"][0]["name"].as_str().expect("veth").into(),
            },
            att,
            res,
        ));
    }
    ping_ok(&pods[0].0, pods[2].0.ip);
    let before: Vec<Vec<String>> = pods.iter().map(|p| pod_addresses(&p.0.ns)).collect();
    let allocs_before = allocations(&lab.nodes[0]);

    lab.stop_agent(0, libc::SIGKILL);
    let ns3 = lab.empty_pod_ns("p3").expect("pod ns");
    let att3 = Attachment::new("p3", ns3.path());
    let start = Instant::now();
    let err = d1.add(&list1, &att3).expect_err("agent is down");
    let took = start.elapsed();
    assert_eq!(err.exec.code(), Some(11), "{err}");
    assert!(
        took < Duration::from_secs(1),
        "unreachable agent took {took:?}"
    );
    assert!(err.exec.msg().contains("unreachable"), "{err}");
    assert!(
        err.exec.json()["details"]
            .as_str()
            .unwrap_or_default()
            .contains("weftd"),
        "{err}"
    );

    lab.start_agent(0).expect("restart");
    lab.wait_agent(0, Duration::from_secs(10))
        .expect("agent back");
    assert_eq!(
        allocations(&lab.nodes[0]),
        allocs_before,
        "allocations survive"
    );
    let res3 = d1.add(&list1, &att3).unwrap_or_else(|e| panic!("{e}"));
    let ip3 = result_ip(&res3);
    assert!(
        pods.iter().all(|p| p.0.ip != ip3),
        "{ip3} was handed out twice"
    );
    let after: Vec<Vec<String>> = pods.iter().map(|p| pod_addresses(&p.0.ns)).collect();
    assert_eq!(before, after, "pods keep their addresses");
    let pod3 = LabPod {
        ns: ns3,
        ip: ip3,
        host_veth: String::new(),
    };
    ping_ok(&pods[0].0, pods[2].0.ip);
    ping_ok(&pods[2].0, pods[1].0.ip);
    ping_ok(&pod3, pods[2].0.ip);
    for (pod, att, res) in &pods {
        let (d, list) = if pod.ip == pods[2].0.ip {
            (&d2, &list2)
        } else {
            (&d1, &list1)
        };
        d.del(list, att, Some(res))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    d1.del(&list1, &att3, Some(&res3))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(allocations(&lab.nodes[0]).is_empty());
    assert!(weft_veths(&lab.nodes[0]).is_empty());
}

/// One bad invocation: environment, stdin, expected code, words the message must contain.
type BadCase<'a> = (Vec<(&'static str, String)>, Vec<u8>, u64, Vec<&'a str>);

fn weft_conf(socket: &Path, version: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"cniVersion": version, "name": "weft", "type": "weft", "socket": socket.display().to_string()}))
        .expect("JSON")
}

fn bandwidth_conf(socket: &Path, bandwidth: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"cniVersion": "1.0.0", "name": "weft", "type": "weft", "socket": socket.display().to_string(), "runtimeConfig": {"bandwidth": bandwidth}}))
        .expect("JSON")
}

/// Every bad input of the issue gets the spec's error code and a message naming what is wrong,
/// and leaves nothing behind; plus DEL idempotency, STATUS, GC, CHECK catching a broken pod, the
/// result shapes of 0.3.1 and 1.1.0 through the real plugin, and a /29 running out of addresses.
#[test]
fn bad_input_gets_spec_errors_and_leaks_nothing() {
    let lab = lab_with(&[(1, Some("10.244.1.0/29"))]);
    let node = &lab.nodes[0];
    let d = driver(node);
    let sock = &node.cni_socket;
    let conf = weft_conf(sock, "1.0.0");
    let pod_ns = lab.empty_pod_ns("bad").expect("pod ns");
    let netns = pod_ns.path().display().to_string();
    let full_env = |cmd: &str| -> Vec<(&'static str, String)> {
        vec![
            ("CNI_COMMAND", cmd.into()),
            ("CNI_CONTAINERID", "bad1".into()),
            ("CNI_NETNS", netns.clone()),
            ("CNI_IFNAME", "eth0".into()),
            ("CNI_PATH", "/usr/lib/cni".into()),
        ]
    };
    let without = |cmd: &str, var: &str| -> Vec<(&'static str, String)> {
        full_env(cmd)
            .into_iter()
            .filter(|(k, _)| *k != var)
            .collect()
    };
    let with = |cmd: &str, var: &'static str, value: &str| -> Vec<(&'static str, String)> {
        let mut e = without(cmd, var);
        e.push((var, value.to_string()));
        e
    };
    let expect = |exec: netns_tests::cni::Exec, code: u64, words: &[&str]| {
        assert_eq!(exec.code(), Some(code), "{exec}");
        assert_ne!(exec.status, Some(0));
        let msg = exec.msg();
        for w in words {
            assert!(msg.contains(w), "{w:?} not in {msg:?}");
        }
    };
    let missing_ns = format!("{}/no-such-netns", lab.dir().display());
    let not_a_ns = node.config.display().to_string();
    let cases: Vec<BadCase<'_>> = vec![
        (
            full_env("ADD"),
            b"{\"cniVersion\": \"1.0.0\", ".to_vec(),
            6,
            vec!["not valid JSON"],
        ),
        (
            full_env("ADD"),
            b"[1, 2]".to_vec(),
            6,
            vec!["not a JSON object"],
        ),
        (
            without("ADD", "CNI_COMMAND"),
            conf.clone(),
            4,
            vec!["CNI_COMMAND"],
        ),
        (
            with("ADD", "CNI_COMMAND", "ATTACH"),
            conf.clone(),
            4,
            vec!["CNI_COMMAND", "ATTACH"],
        ),
        (
            without("ADD", "CNI_CONTAINERID"),
            conf.clone(),
            4,
            vec!["CNI_CONTAINERID"],
        ),
        (
            with("ADD", "CNI_CONTAINERID", "../etc"),
            conf.clone(),
            4,
            vec!["CNI_CONTAINERID", "../etc"],
        ),
        (
            without("ADD", "CNI_IFNAME"),
            conf.clone(),
            4,
            vec!["CNI_IFNAME"],
        ),
        (
            with("ADD", "CNI_IFNAME", "eth0:bad"),
            conf.clone(),
            4,
            vec!["CNI_IFNAME"],
        ),
        (
            without("ADD", "CNI_NETNS"),
            conf.clone(),
            4,
            vec!["CNI_NETNS"],
        ),
        (
            with("ADD", "CNI_NETNS", &missing_ns),
            conf.clone(),
            4,
            vec!["CNI_NETNS", "does not exist"],
        ),
        (
            with("ADD", "CNI_NETNS", &not_a_ns),
            conf.clone(),
            4,
            vec!["CNI_NETNS", "not a network namespace"],
        ),
        (
            full_env("ADD"),
            weft_conf(sock, "0.2.0"),
            1,
            vec!["cniVersion", "0.2.0"],
        ),
        (
            full_env("ADD"),
            weft_conf(sock, "2.0.0"),
            1,
            vec!["cniVersion", "2.0.0"],
        ),
        (
            full_env("ADD"),
            br#"{"name":"weft","type":"weft"}"#.to_vec(),
            7,
            vec!["cniVersion: missing"],
        ),
        (full_env("GC"), conf.clone(), 7, vec!["valid-attachments"]),
        // The bandwidth capability given to weft: malformed, and on a bridge-mode node (where
        // the bandwidth plugin shapes pods, not weft).
        (
            full_env("ADD"),
            bandwidth_conf(sock, json!({"ingressRate": 1_000_000})),
            7,
            vec!["runtimeConfig.bandwidth", "ingressBurst"],
        ),
        (
            full_env("ADD"),
            bandwidth_conf(
                sock,
                json!({"ingressRate": 1_000_000, "ingressBurst": 100_000}),
            ),
            7,
            vec!["runtimeConfig.bandwidth", "switch mode", "bridge mode"],
        ),
    ];
    for (env, stdin, code, words) in cases {
        expect(d.exec_raw("weft", &env, &stdin), code, &words);
    }
    // Nothing was created by any of them.
    assert!(allocations(node).is_empty());
    assert!(weft_veths(node).is_empty());
    assert!(!links(&pod_ns).iter().any(|l| l.name == "eth0"));

    // An unreachable agent: 11 at once, saying what to check.
    let start = Instant::now();
    let gone = format!("{}/nowhere/cni.sock", lab.dir().display());
    expect(
        d.exec_raw(
            "weft",
            &full_env("ADD"),
            &weft_conf(Path::new(&gone), "1.0.0"),
        ),
        11,
        &["unreachable", "does not exist"],
    );
    assert!(start.elapsed() < Duration::from_secs(1));

    // STATUS and VERSION.
    let status = d.exec_raw(
        "weft",
        &[("CNI_COMMAND", "STATUS".into())],
        &weft_conf(sock, "1.1.0"),
    );
    assert!(status.ok() && status.stdout.is_empty(), "{status}");
    let version = d.exec_raw("weft", &[("CNI_COMMAND", "VERSION".into())], b"");
    assert_eq!(version.json()["supportedVersions"][4], "1.1.0", "{version}");

    // Result shapes through the real plugin: 0.3.1 carries ips[].version, 1.1.0 interface MTUs.
    let ns1 = lab.empty_pod_ns("v031").expect("pod ns");
    let att1 = Attachment::new("v031", ns1.path());
    let res1 = d
        .add(&weft_only(sock, "0.3.1"), &att1)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res1["cniVersion"], "0.3.1");
    assert_eq!(res1["ips"][0]["version"], "4", "{res1}");
    assert!(res1["interfaces"][1].get("mtu").is_none());
    let ns2 = lab.empty_pod_ns("v110").expect("pod ns");
    let att2 = Attachment::new("v110", ns2.path());
    let list110 = weft_only(sock, "1.1.0");
    let res2 = d.add(&list110, &att2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(res2["interfaces"][1]["mtu"], 1450, "{res2}");
    assert!(res2["ips"][0].get("version").is_none());
    d.check(&list110, &att2, &res2)
        .unwrap_or_else(|e| panic!("{e}"));

    // CNI_IFNAME already present: a second container into ns1 as eth0.
    let mut clash = Attachment::new("clash", ns1.path());
    clash.ifname = "eth0".into();
    let e = d.add(&list110, &clash).expect_err("eth0 exists");
    assert_eq!(e.exec.code(), Some(100), "{e}");
    assert!(e.exec.msg().contains("already exists"), "{e}");
    assert_eq!(
        allocations(node).len(),
        2,
        "the failed ADD released its address"
    );
    assert_eq!(weft_veths(node).len(), 2, "the failed ADD left no veth");
    d.del(&list110, &clash, None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        pod_addresses(&ns1).len(),
        1,
        "DEL of the clash left ns1's eth0 alone"
    );

    // The /29 holds 5 pods (.2-.6): three more fit, the sixth gets 11 and leaks nothing.
    let mut extra = Vec::new();
    for i in 0..3 {
        let ns = lab.empty_pod_ns(&format!("fill{i}")).expect("pod ns");
        let att = Attachment::new(&format!("fill{i}"), ns.path());
        let res = d.add(&list110, &att).unwrap_or_else(|e| panic!("{e}"));
        extra.push((ns, att, res));
    }
    let ns6 = lab.empty_pod_ns("sixth").expect("pod ns");
    let att6 = Attachment::new("sixth", ns6.path());
    let e = d.add(&list110, &att6).expect_err("the /29 is full");
    assert_eq!(e.exec.code(), Some(11), "{e}");
    assert!(
        e.exec.msg().contains("no free address in 10.244.1.0/29"),
        "{e}"
    );
    assert_eq!(allocations(node).len(), 5);
    assert_eq!(weft_veths(node).len(), 5);
    assert!(!links(&ns6).iter().any(|l| l.name == "eth0"));
    d.del(&list110, &att6, None)
        .unwrap_or_else(|e| panic!("{e}"));

    // CHECK notices a pod whose default route was removed.
    ns2.run(|| Netlink::new().and_then(|nl| nl.delete_route("0.0.0.0/0".parse().expect("valid"))))
        .expect("enter ns")
        .expect("delete route");
    let e = d.check(&list110, &att2, &res2).expect_err("route gone");
    assert_eq!(e.exec.code(), Some(101), "{e}");
    assert!(e.exec.msg().contains("default route"), "{e}");

    // DEL: repeated, without netns, of a namespace that is gone, of an unknown container.
    d.del(&list110, &att1, Some(&res1))
        .unwrap_or_else(|e| panic!("{e}"));
    d.del(&list110, &att1, Some(&res1))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut no_netns = without("DEL", "CNI_NETNS");
    no_netns.retain(|(k, _)| *k != "CNI_CONTAINERID");
    no_netns.push(("CNI_CONTAINERID", "v110".into()));
    let exec = d.exec_raw("weft", &no_netns, &weft_conf(sock, "1.1.0"));
    assert!(exec.ok(), "DEL without CNI_NETNS: {exec}");
    let mut gone_ns = Attachment::new("fill0", Path::new(&missing_ns));
    gone_ns.ifname = "eth0".into();
    d.del(&list110, &gone_ns, None)
        .unwrap_or_else(|e| panic!("{e}"));
    d.del(
        &list110,
        &Attachment::new("never-added", Path::new(&missing_ns)),
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(allocations(node).len(), 2, "fill1 and fill2 remain");

    // GC keeps the listed attachment and releases the rest.
    d.gc(&list110, &[("fill2", "eth0")])
        .unwrap_or_else(|e| panic!("{e}"));
    let left = allocations(node);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].key.container_id, "fill2");
    assert_eq!(weft_veths(node).len(), 1);
    d.del(&list110, &extra[2].1, Some(&extra[2].2))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(allocations(node).is_empty());
    assert!(weft_veths(node).is_empty());
}
