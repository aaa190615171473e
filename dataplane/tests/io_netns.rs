//! The I/O shell against the real kernel, in throwaway network namespaces. Needs root (CI runs as
//! root); without it every test fails saying so rather than skipping.
//!
//! Two "nodes" live in two namespaces joined by a veth pair (the underlay, 192.168.50.0/24). Each
//! has a Weft TUN device `wt.<i>` routed as flannel routes `flannel.1` (10.244.0.0/16 into the
//! tunnel), a "pod" address 10.244.<i>.5 on `lo` with a listening UDP socket, and Weft workers
//! with their own VXLAN sockets and raw senders. A datagram from pod A to pod B therefore goes:
//! A's kernel → TUN read → `forward` (encapsulate) → raw socket `sendmmsg` → veth → B's VXLAN
//! socket `recvmmsg` → `forward` (decapsulate) → TUN write → B's kernel → B's pod socket, and the
//! reply takes the mirror path. Receiving it byte-exact proves every hop; the counters prove the
//! worker counted it. Further tests check drops by reason on the VXLAN port, the stop latency,
//! that the TUN device is not persistent, and that the raw socket keeps the flow-hash source port.
//!
//! Each namespace is held by its own thread (`unshare(CLONE_NEWNET)` moves only that thread), as
//! in aya's netns tests; closures run there, so the sockets, devices and `ip` commands they create
//! belong to the namespace, and it disappears with its thread and sockets.

use std::io;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::panic::{self, AssertUnwindSafe};
use std::process::Command;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dataplane::drop::{Counters, DropReason};
use dataplane::fib::NextHop;
use dataplane::forward::{
    forward, Action, Encap, Ingress, Verdict, HEADROOM, VXLAN_UDP_PAYLOAD_OFFSET,
};
use dataplane::io::raw::{RawSender, SEND_CHUNK};
use dataplane::io::tun::{TunDevice, TunOffload};
use dataplane::io::udp::{RecvBatch, VxlanSocket};
use dataplane::io::worker::{spawn_workers, WorkerConfig, WorkerIo, WorkerShared};
use dataplane::io::{clock, unshare_net};
use dataplane::snapshot::{NodeConfig, Port, PortKind, Snapshot, SnapshotCell, Tables};
use dataplane::wire::EthernetAddress;
use dataplane::PortId;
use ipnet::Ipv4Net;

const TUN: PortId = PortId(0);
const POD_PORT: u16 = 9000;
const VXLAN_PORT: u16 = 8472;
const WAIT: Duration = Duration::from_secs(5);

fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .expect("a Uid: line with an effective uid");
    assert_eq!(
        euid, "0",
        "the io_netns tests need root (CAP_SYS_ADMIN for network namespaces, CAP_NET_ADMIN for \
         TUN devices, CAP_NET_RAW for raw sockets): run `cargo test` as root, as CI does"
    );
}

type Job = Box<dyn FnOnce() + Send>;

/// A fresh network namespace, held by a dedicated thread that runs the closures it is given.
struct Netns {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    /// The holding thread's id, which `ip ... netns <tid>` accepts.
    tid: u32,
}

/// The calling thread's kernel id, from `/proc/thread-self` (`<pid>/task/<tid>`).
fn current_tid() -> u32 {
    let link = std::fs::read_link("/proc/thread-self").expect("readlink /proc/thread-self");
    link.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .expect("/proc/thread-self ends in the tid")
}

impl Netns {
    fn new(label: &str) -> Netns {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("netns-{label}"))
            .spawn(move || {
                let entered = unshare_net().map(|()| current_tid());
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if ok {
                    for job in inbox {
                        job();
                    }
                }
            })
            .expect("spawn namespace thread");
        let tid = ready_rx
            .recv()
            .expect("namespace thread reports")
            .unwrap_or_else(|e| panic!("unshare(CLONE_NEWNET) failed: {e} (root needed)"));
        Netns {
            jobs: Some(jobs),
            thread: Some(thread),
            tid,
        }
    }

    /// Runs `f` inside the namespace and returns its result (re-raising its panic).
    fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(panic::catch_unwind(AssertUnwindSafe(f)));
        });
        self.jobs
            .as_ref()
            .expect("namespace alive")
            .send(job)
            .expect("namespace thread alive");
        match rx.recv().expect("namespace thread answers") {
            Ok(r) => r,
            Err(p) => panic::resume_unwind(p),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `ip <args>` in the calling thread's namespace; panics with its stderr on failure.
fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("run ip(8)");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether `ip link show dev <name>` finds the device in the calling thread's namespace.
fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .output()
        .expect("run ip(8)")
        .status
        .success()
}

/// Keeps IPv6 autoconfiguration traffic (router solicitations, MLD) off the TUN devices, so the
/// counters see only the test's packets. Fine to fail where IPv6 is compiled out.
fn disable_ipv6() {
    for which in ["all", "default"] {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{which}/disable_ipv6"), "1");
    }
}

fn underlay(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 50, i)
}

fn subnet(i: u8) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 244, i, 0), 24).expect("valid prefix")
}

fn pod(i: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 244, i, 5), POD_PORT)
}

fn vtep_mac(i: u8) -> EthernetAddress {
    EthernetAddress([0x0e, 0x57, 0x65, 0x66, 0x74, i])
}

/// Node `i`'s tables with node `peer` as its one VXLAN peer, as flannel would program them.
fn tables(i: u8, peer: u8) -> Snapshot {
    let mut t = Tables::new(NodeConfig::flannel_defaults(
        vtep_mac(i),
        underlay(i),
        subnet(i).network(),
    ));
    t.set_port(
        TUN,
        Port {
            kind: PortKind::L3,
            mtu: 1450,
        },
    );
    t.fib.insert(subnet(i), NextHop::Local { port: TUN });
    t.add_vxlan_peer(subnet(peer), underlay(peer), vtep_mac(peer));
    t.snapshot()
}

/// One node: its namespace, running workers and the pod socket.
struct Node {
    name: String,
    shared: Arc<WorkerShared>,
    workers: Vec<JoinHandle<io::Result<()>>>,
    pod: UdpSocket,
    /// Declared last: the namespace thread goes after the sockets and workers using it.
    ns: Netns,
}

impl Node {
    /// Waits until the merged counters satisfy `ok`, or panics showing them.
    fn wait_counters(&self, what: &str, ok: impl Fn(&Counters) -> bool) -> Counters {
        let deadline = Instant::now() + WAIT;
        loop {
            let c = self.shared.counters();
            if ok(&c) {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "{}: timed out waiting for {what}; counters: {c:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the workers, returning how long joining them took.
    fn stop(&mut self) -> Duration {
        let started = Instant::now();
        self.shared.request_stop();
        for h in self.workers.drain(..) {
            h.join()
                .expect("worker did not panic")
                .expect("worker returned Ok");
        }
        started.elapsed()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shared.request_stop();
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

/// Plumbs node `i` (already holding underlay veth `ul0` in `ns`) and starts `workers` workers,
/// its TUN opened with `offload`.
fn start_node(ns: Netns, i: u8, peer: u8, workers: usize, offload: TunOffload) -> Node {
    let name = format!("wt.{i}");
    let tun_name = name.clone();
    let (io, pod_sock) = ns.run(move || {
        ip("link set lo up");
        ip(&format!("addr add {}/24 dev ul0", underlay(i)));
        ip("link set ul0 up");
        let tun = TunDevice::create_with(&tun_name, workers, offload).expect("create TUN device");
        assert_eq!(
            tun.offload(),
            offload,
            "the kernel took the offloads asked for"
        );
        assert_eq!(tun.name(), tun_name);
        assert_eq!(tun.queues().len(), workers);
        assert!(tun.ifindex().expect("ifindex") > 0);
        // What flanneld and the agent do with netlink; `ip` stands in for it here.
        ip(&format!(
            "addr add {}/32 dev {tun_name}",
            subnet(i).network()
        ));
        ip(&format!("link set {tun_name} up mtu 1450"));
        ip(&format!("route add 10.244.0.0/16 dev {tun_name}"));
        ip(&format!("addr add {}/32 dev lo", pod(i).ip()));
        let pod_sock = UdpSocket::bind(pod(i)).expect("bind pod socket");
        pod_sock
            .set_read_timeout(Some(WAIT))
            .expect("set read timeout");
        let vxlan = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, VXLAN_PORT);
        let io: Vec<WorkerIo> = tun
            .into_queues()
            .into_iter()
            .map(|q| WorkerIo::open(q, vxlan, 1 << 20, 1 << 20).expect("open worker sockets"))
            .collect();
        (io, pod_sock)
    });
    let cell = Arc::new(SnapshotCell::new(tables(i, peer)));
    let shared = Arc::new(WorkerShared::new(cell, workers));
    let handles = spawn_workers(TUN, io, &shared, WorkerConfig::default()).expect("spawn workers");
    Node {
        name,
        shared,
        workers: handles,
        pod: pod_sock,
        ns,
    }
}

/// Two nodes, 1 and 2, joined by a veth pair; node 1 runs two workers (two TUN queues, two
/// SO_REUSEPORT sockets), node 2 one. Their TUNs use offloads, as the agent's do by default.
fn cluster() -> (Node, Node) {
    cluster_with(TunOffload::TSO4)
}

/// [`cluster`] with the TUNs opened with `offload`.
fn cluster_with(offload: TunOffload) -> (Node, Node) {
    require_root();
    let a = Netns::new("a");
    let b = Netns::new("b");
    b.run(disable_ipv6);
    let b_tid = b.tid;
    a.run(move || {
        disable_ipv6();
        ip(&format!(
            "link add ul0 type veth peer name ul0 netns {b_tid}"
        ));
    });
    (
        start_node(a, 1, 2, 2, offload),
        start_node(b, 2, 1, 1, offload),
    )
}

/// Receives one datagram on `sock`, panicking on timeout.
fn recv(sock: &UdpSocket, what: &str) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0; 65536];
    let (n, from) = sock
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("{what}: nothing arrived: {e}"));
    buf.truncate(n);
    (buf, from)
}

#[test]
fn pod_to_pod_round_trip_through_tun_vxlan_and_raw_socket() {
    let (a, b) = cluster();

    // Small and near-MTU payloads (1400 + 28 = 1428 of the TUN's 1450), both ways.
    for len in [4, 1400] {
        let ping: Vec<u8> = (0..len).map(|i| (i * 13 + 1) as u8).collect();
        a.pod.send_to(&ping, pod(2)).expect("send ping");
        let (got, from) = recv(&b.pod, "ping at pod B");
        assert_eq!(got, ping, "ping arrives byte-exact");
        assert_eq!(from, SocketAddr::V4(pod(1)));

        let pong: Vec<u8> = ping.iter().rev().copied().collect();
        b.pod.send_to(&pong, from).expect("send pong");
        let (got, from) = recv(&a.pod, "pong at pod A");
        assert_eq!(got, pong, "pong arrives byte-exact");
        assert_eq!(from, SocketAddr::V4(pod(2)));
    }

    // Both nodes read from the TUN and sent into the underlay, received from it and wrote to the
    // TUN, each at least twice, with no I/O failure.
    for node in [&a, &b] {
        let c = node.wait_counters("two packets each way", |c| {
            c.rx_local.packets >= 2
                && c.tx_underlay.packets >= 2
                && c.rx_underlay.packets >= 2
                && c.tx_local.packets >= 2
        });
        assert_eq!(c.drops(DropReason::IoError), 0, "{}: {c:?}", node.name);
        assert!(c.tx_underlay.bytes >= 1400 + 28 + 50);
    }

    // A subnet no node owns: the kernel routes it into wt.1, Weft has no route, counts the drop
    // and writes a net-unreachable error back into the TUN.
    a.pod
        .send_to(
            b"lost",
            SocketAddrV4::new(Ipv4Addr::new(10, 244, 3, 7), POD_PORT),
        )
        .expect("send to an unknown subnet");
    let c = a.wait_counters("a no_route drop", |c| c.drops(DropReason::NoRoute) == 1);
    assert_eq!(
        c.replies, 1,
        "the drop was answered with an ICMP error: {c:?}"
    );
}

/// Sends `len` bytes over TCP from pod A to pod B and back the other way at once, checking both
/// arrive byte-exact and that no packet was lost to an I/O or offload error.
fn tcp_transfer_both_ways(offload: TunOffload) {
    const LEN: usize = 8 << 20;
    let (a, b) = cluster_with(offload);
    let addr = SocketAddrV4::new(*pod(2).ip(), 9001);
    let listener =
        b.ns.run(move || TcpListener::bind(addr).expect("listen in pod B"));
    let data: Arc<Vec<u8>> = Arc::new((0..LEN).map(|i| (i * 31 + i / 4099) as u8).collect());
    let client = a.ns.run(move || {
        TcpStream::connect_timeout(&SocketAddr::V4(addr), WAIT).expect("connect to pod B")
    });
    let (server, _) = listener.accept().expect("accept");
    let mut threads = Vec::new();
    for (mut sock, what) in [(client, "A to B"), (server, "B to A")] {
        let data = Arc::clone(&data);
        threads.push(std::thread::spawn(move || {
            sock.set_read_timeout(Some(WAIT)).expect("timeout");
            let mut writer = sock.try_clone().expect("clone socket");
            let send = {
                let data = Arc::clone(&data);
                std::thread::spawn(move || {
                    writer.write_all(&data).expect("send");
                    writer
                        .shutdown(std::net::Shutdown::Write)
                        .expect("shutdown");
                })
            };
            let mut got = Vec::with_capacity(LEN);
            sock.read_to_end(&mut got)
                .unwrap_or_else(|e| panic!("{what}: receive: {e}"));
            send.join().expect("sender did not panic");
            assert!(
                got.len() == LEN && got == *data,
                "{what}: {} bytes, not byte-exact",
                got.len()
            );
        }));
    }
    for t in threads {
        t.join().expect("transfer thread did not panic");
    }
    for node in [&a, &b] {
        let c = node.wait_counters("the transfer counted", |c| {
            c.rx_local.bytes as usize >= LEN && c.tx_local.bytes as usize >= LEN
        });
        assert_eq!(c.drops(DropReason::IoError), 0, "{}: {c:?}", node.name);
        assert_eq!(
            c.drops(DropReason::OffloadMalformed),
            0,
            "{}: {c:?}",
            node.name
        );
        // Counters count inner packets, never super-frames: each fits the 1450-byte TUN MTU.
        assert!(
            c.rx_local.bytes <= c.rx_local.packets * 1450,
            "{}: {c:?}",
            node.name
        );
        assert!(
            c.tx_local.bytes <= c.tx_local.packets * 1450,
            "{}: {c:?}",
            node.name
        );
    }
}

#[test]
fn tcp_both_ways_byte_exact_with_tun_offloads() {
    tcp_transfer_both_ways(TunOffload::TSO4);
}

#[test]
fn tcp_both_ways_byte_exact_without_tun_offloads() {
    tcp_transfer_both_ways(TunOffload::NONE);
}

/// A VXLAN datagram for node 2 whose inner IPv4 packet (pod 1 to pod 2, DF clear, valid header)
/// is 10,000 bytes long.
fn oversized_vxlan() -> Vec<u8> {
    let inner_len: u16 = 10_000;
    let mut ip = etherparse::Ipv4Header::new(
        inner_len - 20,
        64,
        etherparse::IpNumber::UDP,
        pod(1).ip().octets(),
        pod(2).ip().octets(),
    )
    .expect("inner header");
    ip.dont_fragment = false;
    ip.header_checksum = ip.calc_header_checksum();
    let mut d = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    d.extend_from_slice(&vtep_mac(2).0);
    d.extend_from_slice(&vtep_mac(1).0);
    d.extend_from_slice(&[0x08, 0x00]);
    d.extend_from_slice(&ip.to_bytes());
    d.resize(8 + 14 + usize::from(inner_len), 0x5a);
    d
}

#[test]
fn garbage_on_the_vxlan_port_is_counted_by_reason() {
    let (a, b) = cluster();
    let sender = a
        .ns
        .run(|| UdpSocket::bind(SocketAddrV4::new(underlay(1), 0)).expect("bind underlay sender"));
    let dst = SocketAddrV4::new(underlay(2), VXLAN_PORT);
    let vxlan = |flags: u8, vni: u32, inner_dst: EthernetAddress| {
        let v = vni.to_be_bytes();
        let mut d = vec![flags, 0, 0, 0, v[1], v[2], v[3], 0];
        d.extend_from_slice(&inner_dst.0);
        d.extend_from_slice(&vtep_mac(1).0);
        d.extend_from_slice(&[0x08, 0x00]);
        d.extend_from_slice(&[0x45; 20]);
        d
    };
    let cases: [(DropReason, Vec<u8>); 5] = [
        // Shorter than a VXLAN header.
        (DropReason::Truncated, b"xyz".to_vec()),
        // The I flag clear (RFC 7348 §5).
        (DropReason::VxlanFlags, vxlan(0x00, 1, vtep_mac(2))),
        // Someone else's VNI.
        (DropReason::VxlanVni, vxlan(0x08, 42, vtep_mac(2))),
        // Not our VTEP MAC.
        (DropReason::VxlanInnerMac, vxlan(0x08, 1, vtep_mac(9))),
        // A well-formed inner packet far above the TUN MTU (with UDP GRO the receive slots hold
        // any datagram, so "oversized" is judged on the inner packet, DF clear).
        (DropReason::TooBig, oversized_vxlan()),
    ];
    for (_, d) in &cases {
        sender.send_to(d, dst).expect("send garbage");
    }
    let c = b.wait_counters("every garbage datagram counted", |c| {
        c.rx_underlay.packets >= cases.len() as u64
    });
    for (reason, _) in &cases {
        assert_eq!(c.drops(*reason), 1, "{reason}: {c:?}");
    }
    assert_eq!(c.total_drops(), cases.len() as u64, "{c:?}");
    assert_eq!(c.tx_local.packets + c.tx_underlay.packets, 0, "{c:?}");
    drop(a);
}

#[test]
fn workers_stop_promptly_and_the_tun_device_vanishes() {
    let (mut a, mut b) = cluster();
    // Let the workers settle into poll(2), where a stop is noticed last.
    std::thread::sleep(Duration::from_millis(250));
    for node in [&mut a, &mut b] {
        let took = node.stop();
        assert!(
            took < Duration::from_millis(200),
            "{}: workers took {took:?} to stop",
            node.name
        );
        // The workers owned the only queues; closing them removed the non-persistent device.
        let name = node.name.clone();
        assert!(
            !node.ns.run(move || link_exists(&name)),
            "{} outlived its queues",
            node.name
        );
    }
}

#[test]
fn raw_sender_keeps_the_flow_source_port_and_batches_past_one_chunk() {
    require_root();
    let ns = Netns::new("raw");
    let (raw, sock) = ns.run(|| {
        ip("link set lo up");
        ip(&format!("addr add {}/32 dev lo", underlay(1)));
        let raw = RawSender::new(1 << 20).expect("raw socket");
        let sock = VxlanSocket::bind(SocketAddrV4::new(underlay(1), VXLAN_PORT), 1 << 22, 0)
            .expect("bind VXLAN socket");
        (raw, sock)
    });
    assert!(sock.recv_buffer_size().expect("SO_RCVBUF") >= 1 << 22);

    // A node whose one peer is itself, so the core's transmits come back to our socket.
    let mut t = Tables::new(NodeConfig::flannel_defaults(
        vtep_mac(1),
        underlay(1),
        subnet(1).network(),
    ));
    t.set_port(
        TUN,
        Port {
            kind: PortKind::L3,
            mtu: 1450,
        },
    );
    t.add_vxlan_peer(subnet(2), underlay(1), vtep_mac(2));
    let snap = t.snapshot();

    // More flows than one sendmmsg carries, each its own source port, encapsulated by the core.
    let n = SEND_CHUNK * 2 + 7;
    let now = clock::now();
    let mut bufs: Vec<Vec<u8>> = Vec::new();
    let mut expected = Vec::new();
    for k in 0..n {
        let mut pkt = vec![0u8; HEADROOM];
        let builder = etherparse::PacketBuilder::ipv4([10, 244, 1, 5], [10, 244, 2, 5], 64)
            .udp(10_000 + k as u16, POD_PORT);
        let mut inner = Vec::new();
        builder
            .write(&mut inner, &(k as u32).to_be_bytes())
            .expect("write to a Vec");
        pkt.extend_from_slice(&inner);
        let verdict = forward(
            &snap,
            Ingress::Local(TUN),
            &mut pkt,
            HEADROOM,
            inner.len(),
            now,
        );
        let Verdict::Forward(Action::Transmit {
            next_hop,
            start,
            len,
            encap: Encap::Vxlan { src_port, .. },
        }) = verdict
        else {
            panic!("flow {k}: expected a VXLAN transmit, got {verdict:?}");
        };
        assert_eq!(next_hop, underlay(1));
        let datagram = pkt[start..start + len].to_vec();
        expected.push((
            SocketAddrV4::new(underlay(1), src_port),
            datagram[VXLAN_UDP_PAYLOAD_OFFSET..].to_vec(),
        ));
        bufs.push(datagram);
    }
    let msgs: Vec<(Ipv4Addr, &[u8])> = bufs.iter().map(|b| (underlay(1), &b[..])).collect();
    let report = raw.send_batch(&msgs);
    assert_eq!((report.sent, report.dropped), (n, 0), "{report:?}");
    assert_eq!(report.sent_bytes, bufs.iter().map(Vec::len).sum::<usize>());

    let mut batch = RecvBatch::new(64, WorkerConfig::default().slot_size);
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got.len() < n && Instant::now() < deadline {
        if sock.recv_batch(&mut batch).expect("recv_batch") == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        for i in 0..batch.len() {
            let (meta, slot) = batch.get(i).expect("received slot");
            assert!(!meta.truncated);
            got.push((meta.src, slot[HEADROOM..HEADROOM + meta.len].to_vec()));
        }
    }
    assert_eq!(got.len(), n, "every datagram arrived");
    got.sort();
    expected.sort();
    assert_eq!(
        got, expected,
        "each datagram arrives from its flow's source port"
    );

    // A datagram the kernel refuses (a destination without a route) is dropped alone, and the
    // rest of the batch still goes.
    let refused = [
        (Ipv4Addr::new(203, 0, 113, 1), &bufs[0][..]),
        (underlay(1), &bufs[1][..]),
    ];
    let report = raw.send_batch(&refused);
    assert_eq!((report.sent, report.dropped), (1, 1), "{report:?}");
    assert!(report.last_error.is_some());
}

#[test]
fn deleting_the_tun_device_ends_its_worker_with_an_error() {
    require_root();
    let ns = Netns::new("del");
    let io = ns.run(|| {
        ip("link set lo up");
        let tun = TunDevice::create("wt.del", 1).expect("create TUN device");
        ip("link set wt.del up");
        tun.into_queues()
            .into_iter()
            .map(|q| {
                WorkerIo::open(q, SocketAddrV4::new(Ipv4Addr::LOCALHOST, VXLAN_PORT), 0, 0)
                    .expect("open worker sockets")
            })
            .collect::<Vec<_>>()
    });
    let shared = Arc::new(WorkerShared::new(
        Arc::new(SnapshotCell::new(tables(1, 2))),
        1,
    ));
    let mut handles =
        spawn_workers(TUN, io, &shared, WorkerConfig::default()).expect("spawn workers");
    ns.run(|| ip("link del wt.del"));
    // The detached queue polls as an error and reads EBADFD: the worker must return, not spin.
    let deadline = Instant::now() + WAIT;
    while !handles[0].is_finished() {
        assert!(Instant::now() < deadline, "worker still running");
        std::thread::sleep(Duration::from_millis(5));
    }
    let err = handles
        .remove(0)
        .join()
        .expect("worker did not panic")
        .expect_err("worker reports the dead queue");
    assert_eq!(err.raw_os_error(), Some(libc::EBADFD), "{err}");
    shared.request_stop();
}
