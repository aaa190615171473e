//! Switch mode (`[dataplane] pod_ports = "switch"`): pod veths are ports of Weft's own switch
//! (AF_PACKET), attached through the agent's CNI server, with no kernel bridge.
//!
//! One lab: two Weft nodes in switch mode and a kernel flannel.1 node; pods a1, a2 on node-1, b on
//! node-2, k on the kernel node. Checked: no bridge on the Weft nodes; ping and 100 MB byte-exact
//! TCP same-node, cross-node and to/from the kernel node; the pod's gateway answered by Weft;
//! host→pod and pod→host; forged sources and an ARP flood dropped and counted without hurting the
//! other pods; a SIGKILLed agent's pods reachable again after a restart; pods added and removed
//! while a transfer runs.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use control::ctl::request_show;
use control::tooling::lab::{Lab, NodeKind};
use netns_tests::{ns_command, ping_ok, require_root, transfer, weftd_path, TRANSFER};

fn switch_lab() -> Lab {
    require_root();
    let mut lab = Lab::new(&weftd_path()).expect("lab");
    lab.switch = true;
    lab.add_node(1, NodeKind::Weft).expect("node-1");
    lab.add_node(2, NodeKind::Weft).expect("node-2");
    lab.add_node(3, NodeKind::KernelVxlan)
        .expect("node-3 (kernel flannel.1)");
    lab.start().expect("agents start");
    lab.add_pod(0, 2).expect("pod a1");
    lab.add_pod(0, 3).expect("pod a2");
    lab.add_pod(1, 2).expect("pod b");
    lab.add_pod(2, 2).expect("pod k");
    lab
}

/// Two Weft nodes in switch mode, two workers each, agents started, no pods.
fn two_switch_nodes() -> Lab {
    two_switch_nodes_with(|_| {})
}

/// [`two_switch_nodes`], with `configure` setting the lab's knobs before the agents start.
fn two_switch_nodes_with(configure: impl FnOnce(&mut Lab)) -> Lab {
    require_root();
    let mut lab = Lab::new(&weftd_path()).expect("lab");
    lab.switch = true;
    lab.workers = 2;
    configure(&mut lab);
    lab.add_node(1, NodeKind::Weft).expect("node-1");
    lab.add_node(2, NodeKind::Weft).expect("node-2");
    lab.start().expect("agents start");
    lab
}

fn drops(lab: &Lab, idx: usize, reason: &str) -> u64 {
    let show = request_show(&lab.nodes[idx].ctl_socket).expect("show");
    show.counters.drops.get(reason).copied().unwrap_or(0)
}

#[test]
fn pods_on_weft_ports_reach_everything_with_no_bridge() {
    let lab = switch_lab();
    let a1 = lab.nodes[0].pods[0].ip;
    let a2 = lab.nodes[0].pods[1].ip;
    let b = lab.nodes[1].pods[0].ip;
    let k = lab.nodes[2].pods[0].ip;

    for idx in 0..2 {
        let bridges = ns_command(
            &lab.nodes[idx].ns,
            "ip",
            &["-o", "link", "show", "type", "bridge"],
        );
        assert!(
            bridges.trim().is_empty(),
            "{}: bridges {bridges}",
            lab.nodes[idx].name
        );
    }
    // The pod's address is a /32 with a default route via 169.254.1.1 on the link.
    let pod = lab.pod(a1).expect("pod");
    let addr = ns_command(&pod.ns, "ip", &["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addr.contains(&format!("{a1}/32")), "{addr}");
    let routes = ns_command(&pod.ns, "ip", &["-4", "route"]);
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "{routes}"
    );

    for (x, y) in [
        (a1, a2),
        (a2, a1),
        (a1, b),
        (b, a1),
        (a1, k),
        (k, a1),
        (b, k),
    ] {
        ping_ok(&lab, x, y);
    }
    // The gateway was answered by Weft with its port MAC.
    let neigh = ns_command(&pod.ns, "ip", &["neigh", "show", "169.254.1.1"]);
    assert!(neigh.contains("lladdr ee:ee:ee:ee:ee:ee"), "{neigh}");

    for (port, (x, y)) in (7100..).zip([(a1, a2), (a2, a1), (a1, b), (b, a1), (a1, k), (k, a1)]) {
        transfer(&lab, x, y, port, TRANSFER);
    }

    // host -> pod: TCP from the node's own namespace (kubelet's probes), and pod -> node address.
    let listener = lab.pod(a1).expect("pod").listen(8080).expect("listen");
    let to = SocketAddrV4::new(a1, 8080);
    let conn = lab.nodes[0]
        .ns
        .run(move || std::net::TcpStream::connect_timeout(&to.into(), Duration::from_secs(3)))
        .expect("enter node")
        .expect("node -> pod TCP connect");
    let (_c, peer) = listener.accept().expect("accept");
    drop(conn);
    eprintln!("node -> pod connect seen from {peer}");
    ping_ok(&lab, a1, lab.nodes[0].public_ip);
    ping_ok(&lab, a1, lab.nodes[1].public_ip);

    // Same-node traffic went through Weft: the pod ports counted it.
    let show = request_show(&lab.nodes[0].ctl_socket).expect("show");
    assert!(
        show.counters.rx_local.packets > 100_000,
        "{:?}",
        show.counters
    );
    assert_eq!(drops(&lab, 0, "spoofed"), 0);
}

/// Sends `count` raw Ethernet frames from inside `ns` on `eth0` (an AF_PACKET socket there), built
/// by `frame(i)`.
fn send_raw(
    ns: &control::netns::NetNs,
    count: usize,
    frame: impl Fn(usize) -> Vec<u8> + Send + 'static,
) {
    ns.run(move || {
        dataplane::io::packet::PacketPort::open("eth0", 0).map(|p| {
            let frames: Vec<Vec<u8>> = (0..count).map(&frame).collect();
            let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
            let mut sent = 0;
            while sent < refs.len() {
                sent += p
                    .send_batch(&dataplane::io::packet::PLAIN, &refs[sent..])
                    .expect("send");
            }
        })
    })
    .expect("enter pod")
    .expect("AF_PACKET socket in the pod");
}

fn mac_of(ns: &control::netns::NetNs) -> [u8; 6] {
    // Not /sys/class/net: sysfs shows the namespace it was mounted in, not the caller's.
    let out = ns_command(ns, "ip", &["-o", "link", "show", "eth0"]);
    let mac = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("link/ether in ip link's output")
        .to_string();
    let v: Vec<u8> = mac
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).expect("hex"))
        .collect();
    v.try_into().expect("6 bytes")
}

fn udp_frame(src_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let builder = etherparse::PacketBuilder::ethernet2(src_mac, [0xee; 6])
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(4000, 9);
    let mut out = Vec::new();
    builder.write(&mut out, b"forged").expect("build");
    out
}

fn arp_request(src_mac: [u8; 6], src: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

#[test]
fn forged_sources_and_arp_floods_are_dropped_and_counted() {
    let lab = switch_lab();
    let a1 = lab.nodes[0].pods[0].ip;
    let a2 = lab.nodes[0].pods[1].ip;
    let b = lab.nodes[1].pods[0].ip;
    let ns = &lab.nodes[0].pods[0].ns;
    let mac = mac_of(ns);
    let forged_ip = Ipv4Addr::new(10, 244, 1, 250);

    send_raw(ns, 50, move |_| udp_frame(mac, forged_ip, b));
    send_raw(ns, 50, move |_| {
        udp_frame([0x02, 0xba, 0xd0, 0, 0, 1], a1, b)
    });
    send_raw(ns, 20, move |_| {
        arp_request(mac, forged_ip, Ipv4Addr::new(169, 254, 1, 1))
    });
    // Malformed ARP: a hardware address length of 9 (a frame cut short would not stay short:
    // it is padded to 60 bytes on the way).
    send_raw(ns, 20, move |_| {
        let mut f = arp_request(mac, a1, Ipv4Addr::new(169, 254, 1, 1));
        f[18] = 9;
        f
    });
    let deadline = Instant::now() + Duration::from_secs(3);
    let malformed = || drops(&lab, 0, "truncated") + drops(&lab, 0, "arp_ignored");
    while (drops(&lab, 0, "spoofed") < 120 || malformed() < 20) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        drops(&lab, 0, "spoofed") >= 120,
        "spoofed drops: {}",
        drops(&lab, 0, "spoofed")
    );
    assert!(
        drops(&lab, 0, "truncated") + drops(&lab, 0, "arp_ignored") >= 20,
        "malformed ARP not counted: {:?}",
        request_show(&lab.nodes[0].ctl_socket)
            .expect("show")
            .counters
            .drops
    );
    // An ARP flood from a1 (its own addresses): the other pods keep working.
    send_raw(ns, 20_000, move |i| {
        arp_request(mac, a1, Ipv4Addr::new(10, 244, 9, (i % 250) as u8))
    });
    ping_ok(&lab, a2, b);
    transfer(&lab, a2, b, 7200, 10 << 20);
    let deadline = Instant::now() + Duration::from_secs(3);
    while drops(&lab, 0, "rate_limited") < 10_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let limited = drops(&lab, 0, "rate_limited");
    assert!(
        limited >= 10_000,
        "of 20,000 ARP requests only {limited} were rate-limited"
    );
    // a1 itself still resolves its gateway once the flood is over.
    std::thread::sleep(Duration::from_millis(600));
    ping_ok(&lab, a1, b);
}

#[test]
fn a_killed_agent_restarts_and_its_pods_reach_each_other_again() {
    let mut lab = switch_lab();
    let a1 = lab.nodes[0].pods[0].ip;
    let a2 = lab.nodes[0].pods[1].ip;
    let b = lab.nodes[1].pods[0].ip;
    ping_ok(&lab, a1, b);
    lab.stop_agent(0, libc::SIGKILL);
    let t = Instant::now();
    lab.start_agent(0).expect("restart");
    lab.wait_agent(0, Duration::from_secs(20))
        .expect("agent up");
    let pod = lab.pod(a1).expect("pod");
    let mut back = None;
    while t.elapsed() < Duration::from_secs(10) {
        if pod
            .ping(a2, 56, false, Duration::from_millis(100))
            .is_reply()
            && pod
                .ping(b, 56, false, Duration::from_millis(100))
                .is_reply()
        {
            back = Some(t.elapsed());
            break;
        }
    }
    let back = back.expect("pods did not reach each other again within 10 s of the restart");
    eprintln!("pods reachable again {back:?} after SIGKILL + restart");
    // No address was handed out twice: a new pod gets a fresh one.
    let c = lab.add_pod(0, 4).expect("pod after restart");
    assert!(c != a1 && c != a2, "address {c} reused");
    ping_ok(&lab, c, a1);
    ping_ok(&lab, c, b);
}

#[test]
fn pods_come_and_go_while_a_transfer_runs_and_nothing_is_lost() {
    let mut lab = switch_lab();
    let a1 = lab.nodes[0].pods[0].ip;
    let a2 = lab.nodes[0].pods[1].ip;
    let b = lab.nodes[1].pods[0].ip;
    // 20 pods added and removed through the lab first ...
    let mut added = Vec::new();
    for host in 10..30 {
        added.push(lab.add_pod(0, host).expect("add"));
    }
    for ip in added.drain(..) {
        lab.del_pod(0, ip).expect("del");
    }
    // ... then 20 more come and go through node-1's CNI socket while a1 sends b 100 MB.
    let socket = lab.nodes[0].cni_socket.clone();
    let churner = std::thread::spawn(move || churn(&socket, 20));
    transfer(&lab, a1, b, 7301, TRANSFER);
    let made = churner.join().expect("churn thread");
    assert_eq!(made, 20, "pods added and removed during the transfer");
    ping_ok(&lab, a2, b);
    ping_ok(&lab, a1, a2);
}

/// Adds and removes `n` pods through the CNI socket, each in a namespace of its own; how many
/// round trips succeeded.
fn churn(socket: &std::path::Path, n: usize) -> usize {
    let mut ok = 0;
    for i in 0..n {
        let name = format!("wchurn{}x{i}", std::process::id() % 100_000);
        let Ok(ns) = control::netns::NetNs::create(&name) else {
            continue;
        };
        let req = |command: &str| cni_shim::wire::Request {
            env: cni_shim::spec::Invocation {
                command: cni_shim::spec::Command::parse(command).expect("verb"),
                container_id: Some(format!("churn-{i}")),
                netns: Some(ns.path().display().to_string()),
                ifname: Some("eth0".into()),
                args: None,
            },
            config: serde_json::json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft"}),
        };
        let ok_reply = |r| matches!(r, Ok(cni_shim::wire::Reply::Ok(_)));
        let added = ok_reply(cni_shim::wire::call(socket, &req("ADD")));
        let deleted = ok_reply(cni_shim::wire::call(socket, &req("DEL")));
        if added && deleted {
            ok += 1;
        }
    }
    ok
}

/// kubelet's default max-pods: 110 pods on one switch-mode node, every one reachable from the
/// first and from a pod on another node. The agent's resident memory is printed (a figure for
/// the note, not a pass/fail bound).
#[test]
fn a_node_with_110_pods_reaches_them_all() {
    let mut lab = two_switch_nodes();
    let far = lab.add_pod(1, 2).expect("pod on node-2");
    let rss = |lab: &Lab| -> u64 {
        let pid = lab.nodes[0].agent.as_ref().expect("agent").id();
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .expect("status")
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .expect("VmRSS")
    };
    let before = rss(&lab);
    let mut pods = Vec::new();
    for host in 10..120 {
        pods.push(lab.add_pod(0, host).expect("pod"));
    }
    let after = rss(&lab);
    eprintln!(
        "110 pods: weftd VmRSS {before} KiB -> {after} KiB ({:.1} KiB per pod)",
        after.saturating_sub(before) as f64 / 110.0
    );
    let first = pods[0];
    for &p in &pods[1..] {
        ping_ok(&lab, first, p);
    }
    for &p in pods.iter().step_by(10) {
        ping_ok(&lab, far, p);
    }
    let show = request_show(&lab.nodes[0].ctl_socket).expect("show");
    assert_eq!(
        show.routes
            .iter()
            .filter(|r| r.dst.ends_with("/32") && r.dev != "weft.1")
            .count(),
        110,
        "one /32 per pod port"
    );
}

/// Sends `bytes` from `src` to `dst` (TCP port `port`) and returns the rate the receiver saw,
/// in Mbit/s, after its first `skip` bytes (a full bucket's burst) up to its last.
fn rate_mbit(
    src: &control::tooling::lab::LabPod,
    dst: &control::tooling::lab::LabPod,
    port: u16,
    bytes: usize,
    skip: usize,
) -> f64 {
    use std::io::{Read, Write};
    let listener = dst.listen(port).expect("listen");
    let rx = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().expect("accept");
        c.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0usize;
        let mut from = None;
        loop {
            let n = c.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            got += n;
            if got >= skip && from.is_none() {
                from = Some((Instant::now(), got));
            }
        }
        let (secs, counted) =
            from.map_or((0.0, 0), |(t, at)| (t.elapsed().as_secs_f64(), got - at));
        (got, secs, counted)
    });
    let mut c = src
        .connect(SocketAddrV4::new(dst.ip, port), Duration::from_secs(5))
        .expect("connect");
    let chunk = vec![0x5au8; 64 * 1024];
    let mut sent = 0;
    while sent < bytes {
        let n = chunk.len().min(bytes - sent);
        c.write_all(&chunk[..n]).expect("send");
        sent += n;
    }
    drop(c);
    let (got, secs, counted) = rx.join().expect("receiver");
    assert_eq!(got, bytes, "{} -> {}", src.ip, dst.ip);
    counted as f64 * 8.0 / secs / 1e6
}

/// The `bandwidth` capability in switch mode, through the real `weft` plugin binary and a
/// runtime-like driver: Weft polices the pod's port both ways at the rate asked (the `bandwidth`
/// plugin's tbf and ifb cannot see AF_PACKET traffic), counts what it drops, leaves other pods
/// alone, and keeps the limits across an agent restart.
#[test]
fn pod_bandwidth_limits_are_enforced_by_the_switch() {
    use netns_tests::cni::{Attachment, Driver};
    use serde_json::json;
    let mut lab = two_switch_nodes();
    let q = lab.add_pod(0, 2).expect("pod q (unlimited, node-1)");
    let r = lab.add_pod(1, 2).expect("pod r (unlimited, node-2)");

    // Pod p on node-1 through the weft plugin, with the capability the runtime fills from the
    // pod's kubernetes.io/{ingress,egress}-bandwidth annotations.
    // 20 Mbit/s with a burst of 0.8 s worth (OVS's advice for policing TCP; Kubernetes' runtimes
    // pass far larger bursts).
    const RATE: u64 = 20_000_000;
    const BURST: u64 = 16_000_000;
    let list = json!({
        "cniVersion": "1.0.0",
        "name": "weft",
        "plugins": [{
            "type": "weft",
            "socket": lab.nodes[0].cni_socket.display().to_string(),
            "capabilities": {"bandwidth": true}
        }]
    });
    let d = Driver::new(lab.nodes[0].ns.path(), netns_tests::cni_path());
    let ns_p = lab.empty_pod_ns("pbw").expect("pod ns");
    let att = Attachment::new("pod-bw", ns_p.path()).with_capability(
        "bandwidth",
        json!({"ingressRate": RATE, "ingressBurst": BURST, "egressRate": RATE, "egressBurst": BURST}),
    );
    let (p, res) = netns_tests::cni::attach(&d, &list, &att, ns_p);
    // No tc anywhere: the limit lives in the switch.
    let qdisc = ns_command(
        &lab.nodes[0].ns,
        "tc",
        &["qdisc", "show", "dev", &p.host_veth],
    );
    assert!(!qdisc.contains("tbf"), "{qdisc}");

    let limit = RATE as f64 / 1e6;
    // 3 s at the rate after the burst; the rate is measured after the burst.
    let skip = BURST as usize / 8 + 256 * 1024;
    let bytes = skip + 3 * RATE as usize / 8;
    let check = |what: &str, mbit: f64| {
        eprintln!("{what}: {mbit:.1} Mbit/s (limit {limit} Mbit/s)");
        assert!(
            mbit <= limit * 1.15 && mbit >= limit * 0.7,
            "{what}: {mbit:.1} Mbit/s against a {limit} Mbit/s limit"
        );
    };
    let (q_pod, r_pod) = (lab.pod(q).expect("q"), lab.pod(r).expect("r"));
    check(
        "p -> q (p's egress, same node)",
        rate_mbit(&p, q_pod, 7300, bytes, skip),
    );
    check(
        "q -> p (p's ingress, same node)",
        rate_mbit(q_pod, &p, 7301, bytes, skip),
    );
    check(
        "r -> p (p's ingress, from node-2)",
        rate_mbit(r_pod, &p, 7302, bytes, skip),
    );
    let limited = drops(&lab, 0, "bandwidth_limited");
    assert!(limited > 0, "no drops counted as bandwidth_limited");
    // The pods without limits are not held back.
    let free = rate_mbit(q_pod, r_pod, 7303, 4 * bytes, 0);
    assert!(free > limit * 4.0, "q -> r unlimited: {free:.1} Mbit/s");

    // The limits are persisted with the address: a SIGKILLed agent's successor re-adopts the
    // pod with them.
    lab.stop_agent(0, libc::SIGKILL);
    lab.start_agent(0).expect("restart node-1's agent");
    lab.wait_agent(0, Duration::from_secs(20))
        .expect("agent up");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab
        .pod(q)
        .expect("q")
        .ping(p.ip, 56, false, Duration::from_millis(500))
        .is_reply()
    {
        assert!(Instant::now() < deadline, "p unreachable after the restart");
    }
    let q_pod = lab.pod(q).expect("q");
    check(
        "q -> p after a restart",
        rate_mbit(q_pod, &p, 7304, bytes, skip),
    );

    d.del(&list, &att, Some(&res))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// `weftd show`'s neighbour line for `ip` on node `idx`: (device, state), if listed.
fn neighbour(lab: &Lab, idx: usize, ip: Ipv4Addr) -> Option<(String, String)> {
    let show = request_show(&lab.nodes[idx].ctl_socket).expect("show");
    show.neighbors
        .into_iter()
        .find(|n| n.ip == ip)
        .map(|n| (n.dev, n.state))
}

/// Pings `dst` from `pod` until a reply or `within`.
fn reaches(pod: &control::tooling::lab::LabPod, dst: Ipv4Addr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if pod
            .ping(dst, 56, false, Duration::from_millis(300))
            .is_reply()
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
    }
}

#[test]
fn a_floating_address_follows_the_pod_that_announces_it_and_ages_out() {
    use netns_tests::cni::{Attachment, Driver};
    use serde_json::json;
    // Short aging, so the test sees an entry go: 1 s REACHABLE, 1 s more STALE.
    let mut lab = two_switch_nodes_with(|lab| {
        lab.dataplane_extra = "neigh_reachable_ms = 1000\nneigh_stale_ms = 1000\n".to_string();
    });
    let q = lab.add_pod(0, 2).expect("pod q (node-1, no extra sources)");
    let r = lab.add_pod(1, 2).expect("pod r (node-2)");
    let vip = Ipv4Addr::from(u32::from(lab.nodes[0].subnet.network()) + 200);
    let socket = lab.nodes[0].cni_socket.display().to_string();

    // Two pods that may both hold the VIP, as a keepalived pair: p1 through the network's
    // allowedSourcePrefixes, p2 through the attachment's args.cni (Multus' cni-args).
    let d = Driver::new(lab.nodes[0].ns.path(), netns_tests::cni_path());
    let list1 = json!({"cniVersion": "1.0.0", "name": "weft", "plugins": [
        {"type": "weft", "socket": socket, "allowedSourcePrefixes": [format!("{vip}/32")]}]});
    let list2 = json!({"cniVersion": "1.0.0", "name": "weft", "plugins": [
        {"type": "weft", "socket": socket, "args": {"cni": {"allowedSourcePrefixes": [vip.to_string()]}}}]});
    let ns1 = lab.empty_pod_ns("vip1").expect("pod ns");
    let att1 = Attachment::new("vip-1", ns1.path());
    let (p1, res1) = netns_tests::cni::attach(&d, &list1, &att1, ns1);
    let ns2 = lab.empty_pod_ns("vip2").expect("pod ns");
    let att2 = Attachment::new("vip-2", ns2.path());
    let (p2, res2) = netns_tests::cni::attach(&d, &list2, &att2, ns2);
    let announce = |pod: &control::tooling::lab::LabPod| {
        ns_command(
            &pod.ns,
            "ip",
            &["addr", "add", &format!("{vip}/32"), "dev", "eth0"],
        );
        let mac = mac_of(&pod.ns);
        send_raw(&pod.ns, 1, move |_| arp_request(mac, vip, vip));
    };
    let (q_pod, r_pod) = (lab.pod(q).expect("q"), lab.pod(r).expect("r"));

    // Nobody holds it yet.
    assert!(!reaches(q_pod, vip, Duration::from_millis(600)));
    assert_eq!(neighbour(&lab, 0, vip), None);

    // p1 announces it: same node and remote node reach it, and weftd show lists it.
    announce(&p1);
    assert!(
        reaches(q_pod, vip, Duration::from_secs(2)),
        "q -> VIP on p1"
    );
    assert!(
        reaches(r_pod, vip, Duration::from_secs(2)),
        "r (node-2) -> VIP on p1"
    );
    assert_eq!(
        neighbour(&lab, 0, vip),
        Some((p1.host_veth.clone(), "REACHABLE".to_string()))
    );

    // Failover: p1 lets go, p2 takes it with a gratuitous ARP; traffic follows at once.
    ns_command(
        &p1.ns,
        "ip",
        &["addr", "del", &format!("{vip}/32"), "dev", "eth0"],
    );
    announce(&p2);
    assert!(
        reaches(q_pod, vip, Duration::from_secs(2)),
        "q -> VIP on p2"
    );
    assert!(
        reaches(r_pod, vip, Duration::from_secs(2)),
        "r -> VIP on p2"
    );
    assert_eq!(
        neighbour(&lab, 0, vip).map(|(dev, _)| dev),
        Some(p2.host_veth.clone())
    );

    // Quiet for longer than reachable + stale: gone, and the VIP unreachable until announced.
    std::thread::sleep(Duration::from_millis(2300));
    assert_eq!(neighbour(&lab, 0, vip), None, "the learnt entry aged out");
    assert!(!reaches(q_pod, vip, Duration::from_millis(300)));

    // A pod without the prefix sending from the VIP is spoofing.
    let spoofed = drops(&lab, 0, "spoofed");
    let mac_q = mac_of(&q_pod.ns);
    send_raw(&q_pod.ns, 10, move |_| {
        udp_frame(mac_q, vip, Ipv4Addr::new(10, 244, 2, 2))
    });
    let deadline = Instant::now() + Duration::from_secs(2);
    while drops(&lab, 0, "spoofed") < spoofed + 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(drops(&lab, 0, "spoofed") >= spoofed + 10);

    // The allowance is recorded with the address: after a SIGKILL and restart, p2's next
    // announcement is honoured again.
    lab.stop_agent(0, libc::SIGKILL);
    lab.start_agent(0).expect("restart node-1's agent");
    lab.wait_agent(0, Duration::from_secs(20))
        .expect("agent up");
    let mac2 = mac_of(&p2.ns);
    send_raw(&p2.ns, 1, move |_| arp_request(mac2, vip, vip));
    let q_pod = lab.pod(q).expect("q");
    assert!(
        reaches(q_pod, vip, Duration::from_secs(3)),
        "q -> VIP after a restart"
    );

    d.del(&list1, &att1, Some(&res1))
        .unwrap_or_else(|e| panic!("{e}"));
    d.del(&list2, &att2, Some(&res2))
        .unwrap_or_else(|e| panic!("{e}"));
}

/// IP-in-IP between switch-mode nodes: pod TSO super-frames leave as IP-in-IP segments, and
/// what arrives (merged by the underlay's GRO or not) reaches the pod port whole and in order.
#[test]
fn ipip_between_switch_nodes_carries_a_byte_exact_transfer() {
    let mut lab = two_switch_nodes_with(|lab| lab.backend = "type = \"ipip\"\n".to_string());
    let a = lab.add_pod(0, 2).expect("pod a");
    let b = lab.add_pod(1, 2).expect("pod b");
    ping_ok(&lab, a, b);
    transfer(&lab, a, b, 7400, 32 << 20);
    transfer(&lab, b, a, 7401, 32 << 20);
    for idx in 0..2 {
        assert_eq!(
            drops(&lab, idx, "too_big"),
            0,
            "node-{}: too_big drops",
            idx + 1
        );
    }
}

/// A merged IP-in-IP datagram for a switch-mode pod, as the kernel's GRO hands one to the raw
/// socket on a NIC that merges IP-in-IP (the lab's veths do not): here the underlay sends an
/// 8000-byte TCP packet in IP-in-IP without DF, the kernel fragments it and node-1's kernel
/// reassembles it, so Weft's raw socket reads one datagram whose inner packet is far above the
/// tunnel MTU. It reaches the pod whole (one GSO frame: Ethernet header and the 8040-byte
/// packet) and byte-exact, counted as the segments it stands for, nothing dropped as too big.
#[test]
fn a_merged_ipip_datagram_reaches_a_switch_pod_whole() {
    let mut lab = two_switch_nodes_with(|lab| lab.backend = "type = \"ipip\"\n".to_string());
    let a = lab.add_pod(0, 2).expect("pod a");
    let b = lab.add_pod(1, 2).expect("pod b");
    ping_ok(&lab, b, a);
    // The pod's own capture: every frame its eth0 receives, GSO frames whole.
    let pod_ns = &lab.pod(a).expect("pod a").ns;
    let cap = pod_ns
        .run(|| dataplane::io::packet::PacketPort::open("eth0", 8 << 20))
        .expect("enter pod")
        .expect("AF_PACKET capture in the pod");
    let payload: Vec<u8> = (0..8000u32).map(|i| (i * 31 + 7) as u8).collect();
    let mut inner = Vec::new();
    etherparse::PacketBuilder::ipv4(b.octets(), a.octets(), 64)
        .tcp(40123, 5201, 1000, 65535)
        .ack(1)
        .write(&mut inner, &payload)
        .expect("build the inner packet");
    // The counters once the ping's are in (workers publish theirs when they next wake).
    let before = {
        let mut last = request_show(&lab.nodes[0].ctl_socket).expect("show");
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = request_show(&lab.nodes[0].ctl_socket).expect("show");
            if now.counters == last.counters {
                break now;
            }
            last = now;
        }
    };
    // From the underlay namespace: IP-in-IP without DF, so the kernel may fragment it.
    ns_command(
        lab.underlay(),
        "sysctl",
        &["-qw", "net.ipv4.ip_no_pmtu_disc=1"],
    );
    let node1 = lab.nodes[0].public_ip;
    lab.underlay()
        .run(|| {
            let s = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::RAW,
                Some(socket2::Protocol::from(4)),
            )?;
            s.send_to(&inner, &std::net::SocketAddrV4::new(node1, 0).into())
        })
        .expect("enter the underlay")
        .expect("send the IP-in-IP datagram");
    // Collect what the pod receives of that flow for a second.
    let mut rx = dataplane::io::batch::RecvBatch::new(16, dataplane::forward::HEADROOM + 70_000);
    let mut got = Vec::new();
    let mut frames = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while got.len() < payload.len() && Instant::now() < deadline {
        let n = cap.recv_batch(&mut rx).unwrap_or(0);
        for i in 0..n {
            let Some((meta, slot)) = rx.get(i) else { break };
            let at = dataplane::forward::HEADROOM + dataplane::offload::VNET_HDR_LEN;
            let frame = &slot[at..dataplane::forward::HEADROOM + meta.len];
            let Ok(p) = etherparse::SlicedPacket::from_ethernet(frame) else {
                continue;
            };
            if let Some(etherparse::TransportSlice::Tcp(t)) = &p.transport {
                if t.source_port() == 40123 {
                    frames.push(frame.len());
                    got.extend_from_slice(t.payload());
                }
            }
        }
        if n == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // Counted as one datagram in from the underlay and its segments out to the pod (the
    // workers publish their counters every few hundred milliseconds).
    let segments = payload
        .len()
        .div_ceil(usize::from(before.node.tun_mtu) - 40) as u64;
    let deadline = Instant::now() + Duration::from_secs(3);
    let after = loop {
        let after = request_show(&lab.nodes[0].ctl_socket).expect("show");
        if after.counters.tx_local.packets >= before.counters.tx_local.packets + segments
            || Instant::now() > deadline
        {
            break after;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "the pod received the 8000-byte packet as {} frame(s) of {frames:?} bytes",
        frames.len()
    );
    assert!(
        got == payload,
        "the pod received {} bytes of the packet's {}{}",
        got.len(),
        payload.len(),
        if got.len() == payload.len() {
            ", not the same"
        } else {
            ""
        }
    );
    assert_eq!(
        frames,
        [14 + inner.len()],
        "one frame: the whole packet behind its Ethernet header"
    );
    assert_eq!(drops(&lab, 0, "too_big"), 0, "nothing dropped as too big");
    assert_eq!(
        after.counters.rx_underlay.packets - before.counters.rx_underlay.packets,
        1,
        "one datagram in"
    );
    assert_eq!(
        after.counters.tx_local.packets - before.counters.tx_local.packets,
        segments,
        "its segments out to the pod"
    );
    assert!(
        after.counters.rx_local.packets - before.counters.rx_local.packets <= 1,
        "from the pods only its reset (no listener), not the segments"
    );
}
