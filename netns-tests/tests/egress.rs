//! Egress masquerade (`[network] ip_masq`, flannel's `--ip-masq`) on lab nodes, against an
//! "outside" host on the underlay that is not in the cluster network and has no route to it:
//!
//! - pods on two nodes reach its TCP and UDP echo services, seen there (by the servers and in a
//!   capture) with their node's underlay address;
//! - pod↔pod traffic between the nodes crosses the underlay with pod addresses untranslated, and
//!   traffic from outside to a pod arrives with the outside address;
//! - flushing Weft's chain, or deleting its jump, by hand is repaired within 5 s and counted;
//! - `ip_masq = false` removes the rules, and subnet.env's `FLANNEL_IPMASQ` follows;
//! - the nftables backend does the same with a table of its own;
//! - a host without the tool fails start-up naming it, with nothing changed.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use control::netns::{spawn_in_netns, NetNs};
use control::tooling::lab::{sysctl, Lab, LabPod, NodeKind};
use netns_tests::capture::{Capture, Encap};
use netns_tests::{ns_command, ping_ok, require_root, weftd_path};

const OUTSIDE_OCTET: u8 = 200;
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 168, 77, OUTSIDE_OCTET);
const TCP_PORT: u16 = 7007;
const UDP_PORT: u16 = 7008;
/// How long a repair may take (the bound; the reconciler looks every 2 s).
const REPAIR_BOUND: Duration = Duration::from_secs(5);

/// The peers the outside host's echo servers saw, TCP and UDP.
#[derive(Clone, Default)]
struct Seen {
    tcp: Arc<Mutex<Vec<SocketAddr>>>,
    udp: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Seen {
    fn tcp_ips(&self) -> BTreeSet<std::net::IpAddr> {
        self.tcp
            .lock()
            .expect("lock")
            .iter()
            .map(SocketAddr::ip)
            .collect()
    }
    fn udp_ips(&self) -> BTreeSet<std::net::IpAddr> {
        self.udp
            .lock()
            .expect("lock")
            .iter()
            .map(SocketAddr::ip)
            .collect()
    }
}

/// TCP and UDP echo servers in `ns`, recording who reached them.
fn echo_servers(ns: &NetNs) -> Seen {
    let seen = Seen::default();
    let tcp = ns
        .run(|| TcpListener::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, TCP_PORT)))
        .expect("enter the outside namespace")
        .expect("bind the TCP echo server");
    let udp = ns
        .run(|| UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, UDP_PORT)))
        .expect("enter the outside namespace")
        .expect("bind the UDP echo server");
    let t = seen.tcp.clone();
    std::thread::spawn(move || {
        for conn in tcp.incoming() {
            let Ok(mut c) = conn else { return };
            if let Ok(peer) = c.peer_addr() {
                t.lock().expect("lock").push(peer);
            }
            let mut buf = [0u8; 64];
            if let Ok(n) = c.read(&mut buf) {
                let _ = c.write_all(&buf[..n]);
            }
        }
    });
    let u = seen.udp.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, peer)) = udp.recv_from(&mut buf) {
            u.lock().expect("lock").push(peer);
            let _ = udp.send_to(&buf[..n], peer);
        }
    });
    seen
}

fn tcp_echo(pod: &LabPod, to: Ipv4Addr) -> Result<(), String> {
    let mut s = pod
        .connect(SocketAddrV4::new(to, TCP_PORT), Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let msg = format!("tcp from {}\n", pod.ip);
    s.write_all(msg.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).map_err(|e| format!("read: {e}"))?;
    if got != msg.as_bytes() {
        return Err(format!("echo mangled: {got:?}"));
    }
    Ok(())
}

/// Sends one datagram from a fresh socket (a new flow, so a new NAT decision) and waits for the
/// echo; `Ok(false)` when none came.
fn udp_echo(pod: &LabPod, to: Ipv4Addr) -> Result<bool, String> {
    let s = pod.udp(0).map_err(|e| format!("udp socket: {e}"))?;
    s.set_read_timeout(Some(Duration::from_millis(700)))
        .map_err(|e| e.to_string())?;
    let msg = format!("udp from {}", pod.ip);
    for _ in 0..3 {
        s.send_to(msg.as_bytes(), SocketAddrV4::new(to, UDP_PORT))
            .map_err(|e| format!("send: {e}"))?;
        let mut buf = [0u8; 128];
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            return if &buf[..n] == msg.as_bytes() {
                Ok(true)
            } else {
                Err(format!("echo mangled: {:?}", &buf[..n]))
            };
        }
    }
    Ok(false)
}

/// Runs `program args` in `ns`: whether it succeeded, and its stdout.
fn ns_try(ns: &NetNs, program: &str, args: &[&str]) -> (bool, String) {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = spawn_in_netns(&mut cmd, ns)
        .and_then(|c| c.wait_with_output())
        .unwrap_or_else(|e| panic!("{program} (install it; scripts/deps.sh does): {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Polls `ok` every 100 ms for up to `bound`; how long it took, or `None`.
fn within(bound: Duration, mut ok: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() <= bound {
        if ok() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn metric(lab: &Lab, idx: usize, name: &str) -> Option<f64> {
    let (code, body) = lab.http_get(idx, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn subnet_env(lab: &Lab, idx: usize) -> String {
    std::fs::read_to_string(&lab.nodes[idx].subnet_file).expect("subnet.env")
}

fn masq_chain(ns: &NetNs) -> (bool, String) {
    ns_try(ns, "iptables", &["-w", "-t", "nat", "-S", "WEFT-POSTRTG"])
}

#[test]
fn pods_reach_outside_with_the_node_address_and_flushed_rules_come_back() {
    require_root();
    let mut lab = Lab::new(&weftd_path()).expect("lab");
    lab.ip_masq = true;
    lab.workers = 1;
    for i in 1..=2 {
        lab.add_node(i, NodeKind::Weft).expect("weft node");
    }
    lab.start().expect("agents start");
    for idx in 0..2 {
        lab.add_pod(idx, 2).expect("pod");
    }
    let outside = lab.add_outside_host(OUTSIDE_OCTET).expect("outside host");
    let seen = echo_servers(&outside);
    let dir = lab.dir().to_path_buf();
    let out_cap = Capture::start(
        &outside,
        "eth0",
        &format!("tcp port {TCP_PORT} or udp port {UDP_PORT}"),
        &dir.join("outside.pcapng"),
    )
    .expect("capture outside");
    let ul_cap = Capture::start(
        lab.underlay(),
        "ul0",
        "udp port 8472",
        &dir.join("ul0.pcapng"),
    )
    .expect("capture underlay");

    let nodes: Vec<Ipv4Addr> = lab.nodes.iter().map(|n| n.public_ip).collect();
    let pods: Vec<Ipv4Addr> = lab.nodes.iter().map(|n| n.pods[0].ip).collect();
    for idx in 0..2 {
        let pod = &lab.nodes[idx].pods[0];
        tcp_echo(pod, OUTSIDE).unwrap_or_else(|e| panic!("pod {} -> outside TCP: {e}", pod.ip));
        assert!(
            udp_echo(pod, OUTSIDE).expect("udp"),
            "pod {} -> outside UDP: no echo",
            pod.ip
        );
    }
    // Pod to pod across the nodes: through VXLAN, untranslated.
    ping_ok(&lab, pods[0], pods[1]);
    ping_ok(&lab, pods[1], pods[0]);

    // From outside to a pod: not translated. The outside host routes node-1's pod subnet to it.
    ns_command(
        &outside,
        "ip",
        &[
            "route",
            "add",
            "10.244.1.0/24",
            "via",
            &nodes[0].to_string(),
        ],
    );
    let listener = lab.nodes[0].pods[0].listen(8080).expect("pod listens");
    let to_pod = SocketAddrV4::new(pods[0], 8080);
    let conn = outside
        .run(move || std::net::TcpStream::connect_timeout(&to_pod.into(), Duration::from_secs(2)))
        .expect("enter the outside namespace")
        .expect("outside -> pod connect");
    let (_accepted, peer) = listener.accept().expect("accept");
    drop(conn);
    assert_eq!(
        peer.ip(),
        std::net::IpAddr::V4(OUTSIDE),
        "the pod sees the outside host's own address"
    );

    let out_packets = out_cap.stop().expect("decode outside capture");
    let ul_packets = ul_cap.stop().expect("decode underlay capture");

    // The servers saw exactly the nodes' underlay addresses, and so did the wire.
    let want: BTreeSet<std::net::IpAddr> = nodes.iter().map(|&a| a.into()).collect();
    assert_eq!(seen.tcp_ips(), want, "TCP peers at the outside host");
    assert_eq!(seen.udp_ips(), want, "UDP peers at the outside host");
    assert!(!out_packets.is_empty(), "the outside capture saw nothing");
    for p in &out_packets {
        let h = p.outer;
        let other = if h.src == OUTSIDE { h.dst } else { h.src };
        assert!(
            nodes.contains(&other),
            "packet {} at the outside host: {} -> {} (a pod address leaked)",
            p.number,
            h.src,
            h.dst
        );
    }
    let inner: BTreeSet<(Ipv4Addr, Ipv4Addr)> = ul_packets
        .iter()
        .filter(|p| matches!(p.encap, Encap::Vxlan { .. }))
        .filter_map(|p| p.inner.map(|h| (h.src, h.dst)))
        .collect();
    for pair in [(pods[0], pods[1]), (pods[1], pods[0])] {
        assert!(
            inner.contains(&pair),
            "no VXLAN packet {} -> {} on the underlay; inner pairs seen: {inner:?}",
            pair.0,
            pair.1
        );
    }
    for (src, dst) in &inner {
        let cluster: ipnet::Ipv4Net = control::tooling::lab::NETWORK.parse().expect("valid");
        assert!(
            cluster.contains(src) && cluster.contains(dst),
            "VXLAN carried a translated packet {src} -> {dst}"
        );
    }

    for idx in 0..2 {
        assert!(
            subnet_env(&lab, idx).contains("FLANNEL_IPMASQ=true\n"),
            "{}",
            subnet_env(&lab, idx)
        );
        assert_eq!(metric(&lab, idx, "weft_masq_enabled"), Some(1.0));
    }
    let status = control::ctl::request_status(&lab.nodes[0].ctl_socket).expect("status");
    assert!(
        status.masq.enabled && status.masq.backend == "iptables",
        "{status:?}"
    );

    // Someone flushes Weft's chain: back within the bound, and egress works again.
    let ns0 = &lab.nodes[0].ns;
    let (ok, before) = masq_chain(ns0);
    assert!(ok && before.contains("MASQUERADE"), "{before}");
    ns_command(ns0, "iptables", &["-w", "-t", "nat", "-F", "WEFT-POSTRTG"]);
    let took = within(REPAIR_BOUND, || masq_chain(ns0).1 == before)
        .unwrap_or_else(|| panic!("flushed chain not repaired within {REPAIR_BOUND:?}"));
    eprintln!("flushed WEFT-POSTRTG repaired after {took:?}");
    // ... and deletes the jump to it.
    let jump = [
        "-w",
        "-t",
        "nat",
        "-D",
        "POSTROUTING",
        "-m",
        "comment",
        "--comment",
        "weft masq",
        "-j",
        "WEFT-POSTRTG",
    ];
    ns_command(ns0, "iptables", &jump);
    let mut check = jump;
    check[3] = "-C";
    let took = within(REPAIR_BOUND, || ns_try(ns0, "iptables", &check).0).unwrap_or_else(|| {
        panic!(
            "deleted jump not repaired within {REPAIR_BOUND:?}; agent log:\n{}",
            std::fs::read_to_string(&lab.nodes[0].log).unwrap_or_default()
        )
    });
    eprintln!("deleted POSTROUTING jump repaired after {took:?}");
    assert!(
        metric(&lab, 0, "weft_masq_repairs_total").unwrap_or(0.0) >= 2.0,
        "repairs not counted"
    );
    seen.udp.lock().expect("lock").clear();
    assert!(udp_echo(&lab.nodes[0].pods[0], OUTSIDE).expect("udp"));
    assert_eq!(
        seen.udp_ips(),
        BTreeSet::from([std::net::IpAddr::V4(nodes[0])])
    );

    // A restart adds nothing twice.
    lab.stop_agent(0, libc::SIGTERM);
    lab.start_agent(0).expect("restart");
    lab.wait_agent(0, Duration::from_secs(20))
        .expect("agent up");
    let ns0 = &lab.nodes[0].ns;
    assert_eq!(masq_chain(ns0).1, before, "rules after a restart");
    let (_, post) = ns_try(ns0, "iptables", &["-w", "-t", "nat", "-S", "POSTROUTING"]);
    assert_eq!(
        post.matches("-j WEFT-POSTRTG").count(),
        1,
        "one jump after a restart:\n{post}"
    );

    // Masquerade turned off: the rules go, pods reach outside with their own address (and get no
    // answer: the outside host has no route back), subnet.env says so.
    lab.stop_agent(0, libc::SIGTERM);
    lab.ip_masq = false;
    lab.launch_agent(0).expect("restart with ip_masq = false");
    lab.wait_agent(0, Duration::from_secs(20))
        .expect("agent up");
    let ns0 = &lab.nodes[0].ns;
    let (present, listing) = masq_chain(ns0);
    assert!(!present, "WEFT-POSTRTG still there:\n{listing}");
    let (_, post) = ns_try(ns0, "iptables", &["-w", "-t", "nat", "-S", "POSTROUTING"]);
    assert!(!post.contains("WEFT"), "{post}");
    let (fwd, _) = ns_try(ns0, "iptables", &["-w", "-t", "filter", "-S", "WEFT-FWD"]);
    assert!(!fwd, "WEFT-FWD still there");
    assert!(subnet_env(&lab, 0).contains("FLANNEL_IPMASQ=false\n"));
    assert_eq!(metric(&lab, 0, "weft_masq_enabled"), Some(0.0));
    // The outside route to node-1's pods would let the echo come back: remove it first.
    ns_command(&outside, "ip", &["route", "del", "10.244.1.0/24"]);
    seen.udp.lock().expect("lock").clear();
    let pod0 = &lab.nodes[0].pods[0];
    assert!(!udp_echo(pod0, OUTSIDE).expect("udp"), "an echo came back");
    assert_eq!(
        seen.udp_ips(),
        BTreeSet::from([std::net::IpAddr::V4(pod0.ip)]),
        "untranslated, the outside host sees the pod's address"
    );
}

#[test]
fn the_nftables_backend_masquerades_and_is_repaired() {
    require_root();
    let mut lab = Lab::new(&weftd_path()).expect("lab");
    lab.ip_masq = true;
    lab.network_extra = "masq_backend = \"nftables\"\n".into();
    lab.workers = 1;
    lab.add_node(1, NodeKind::Weft).expect("weft node");
    lab.start().expect("agent starts");
    lab.add_pod(0, 2).expect("pod");
    let outside = lab.add_outside_host(OUTSIDE_OCTET).expect("outside host");
    let seen = echo_servers(&outside);
    let pod = &lab.nodes[0].pods[0];
    tcp_echo(pod, OUTSIDE).unwrap_or_else(|e| panic!("pod -> outside TCP: {e}"));
    assert!(udp_echo(pod, OUTSIDE).expect("udp"), "pod -> outside UDP");
    let node: std::net::IpAddr = lab.nodes[0].public_ip.into();
    assert_eq!(seen.tcp_ips(), BTreeSet::from([node]));
    assert_eq!(seen.udp_ips(), BTreeSet::from([node]));

    let ns = &lab.nodes[0].ns;
    let table = || ns_try(ns, "nft", &["list", "table", "ip", "weft"]);
    let (ok, before) = table();
    assert!(ok && before.contains("masquerade"), "{before}");
    // Nothing in iptables' tables.
    assert!(
        !masq_chain(ns).0,
        "the nftables backend wrote iptables rules"
    );
    let status = control::ctl::request_status(&lab.nodes[0].ctl_socket).expect("status");
    assert_eq!(status.masq.backend, "nftables");

    ns_command(ns, "nft", &["delete", "table", "ip", "weft"]);
    let took = within(REPAIR_BOUND, || table().1 == before)
        .unwrap_or_else(|| panic!("deleted table not repaired within {REPAIR_BOUND:?}"));
    eprintln!("deleted nftables table repaired after {took:?}");
    seen.udp.lock().expect("lock").clear();
    assert!(udp_echo(pod, OUTSIDE).expect("udp"));
    assert_eq!(seen.udp_ips(), BTreeSet::from([node]));
    assert!(metric(&lab, 0, "weft_masq_repairs_total").unwrap_or(0.0) >= 1.0);

    // Off: the table goes.
    lab.stop_agent(0, libc::SIGTERM);
    lab.ip_masq = false;
    lab.launch_agent(0).expect("restart with ip_masq = false");
    lab.wait_agent(0, Duration::from_secs(20))
        .expect("agent up");
    let (present, _) = ns_try(&lab.nodes[0].ns, "nft", &["list", "table", "ip", "weft"]);
    assert!(!present, "table ip weft still there");
}

#[test]
fn a_host_without_the_firewall_tool_fails_start_up_naming_it_and_changes_nothing() {
    require_root();
    let mut lab = Lab::new(&weftd_path()).expect("lab");
    lab.ip_masq = true;
    lab.add_node(1, NodeKind::Weft).expect("weft node");
    let empty = lab.dir().join("empty-path");
    std::fs::create_dir_all(&empty).expect("mkdir");
    lab.agent_env = vec![("PATH".into(), empty.display().to_string())];
    sysctl(&lab.nodes[0].ns, "net/ipv4/ip_forward", "0").expect("sysctl");
    lab.launch_agent(0).expect("spawn weftd");
    let mut child = lab.nodes[0].agent.take().expect("agent child");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "weftd did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "weftd started without iptables or nft");
    let log = std::fs::read_to_string(&lab.nodes[0].log).unwrap_or_default();
    assert!(
        log.contains("iptables") && log.contains("nft") && log.contains("not found in PATH"),
        "the error names the missing tools:\n{log}"
    );
    assert!(
        log.contains("ip_masq"),
        "the error names the setting:\n{log}"
    );
    let ns = &lab.nodes[0].ns;
    let forward = ns
        .run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward"))
        .expect("enter")
        .expect("read");
    assert_eq!(forward.trim(), "0", "ip_forward changed before the refusal");
    let (tun, _) = ns_try(ns, "ip", &["link", "show", "weft.1"]);
    assert!(!tun, "weft.1 left behind");
    let (bridge, _) = ns_try(ns, "ip", &["link", "show", control::tooling::lab::BRIDGE]);
    assert!(!bridge, "the pod bridge left behind");
    assert!(
        !lab.nodes[0].subnet_file.exists(),
        "subnet.env written by a refused start"
    );
}
