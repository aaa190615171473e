//! `PacketPort` on a real veth pair, in a network namespace of the test's own (needs root, as
//! CI is): frames sent on one end arrive on the other with a virtio-net header in front, in one
//! batch; our own sends are not looped back; statistics count what was queued.

use std::process::Command;

use dataplane::forward::HEADROOM;
use dataplane::io::packet::{PacketPort, PLAIN};
use dataplane::io::udp::RecvBatch;
use dataplane::offload::vnet::VNET_HDR_LEN;

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("ip {args:?} (install iproute2): {e}"));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn frame(dst: [u8; 6], src: [u8; 6], n: u8, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    // A local experimental ethertype: nothing in the kernel answers it.
    f.extend_from_slice(&0x88b5u16.to_be_bytes());
    f.extend((0..len - 14).map(|i| (i as u8).wrapping_add(n)));
    f
}

/// Runs `f` on a thread of its own, in a network namespace that dies with it, holding a veth pair
/// `pa`/`pb`, both up.
fn on_a_veth_pair(f: impl FnOnce() + Send + 'static) {
    assert!(
        is_root(),
        "this test needs root (CAP_NET_ADMIN, CAP_NET_RAW); CI runs as root"
    );
    std::thread::spawn(|| {
        dataplane::io::unshare_net().expect("unshare(CLONE_NEWNET)");
        ip(&["link", "add", "pa", "type", "veth", "peer", "name", "pb"]);
        ip(&["link", "set", "pa", "up"]);
        ip(&["link", "set", "pb", "up"]);
        f();
    })
    .join()
    .expect("test thread");
}

#[test]
fn frames_cross_a_veth_with_vnet_headers_in_batches() {
    on_a_veth_pair(|| {
        let a = PacketPort::open("pa", 1 << 20).expect("port on pa");
        let b = PacketPort::open("pb", 1 << 20).expect("port on pb");
        assert_ne!(a.ifindex(), b.ifindex());

        let (ma, mb) = ([2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb]);
        let frames: Vec<Vec<u8>> = (0..20u8)
            .map(|n| frame(mb, ma, n, 60 + usize::from(n) * 50))
            .collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        assert_eq!(a.send_batch(&PLAIN, &refs).expect("send"), 20);

        let mut batch = RecvBatch::new(32, HEADROOM + 2048);
        let mut got = Vec::new();
        for _ in 0..100 {
            let n = b.recv_batch(&mut batch).expect("recv");
            for i in 0..n {
                let (meta, slot) = batch.get(i).expect("slot");
                got.push(slot[HEADROOM..HEADROOM + meta.len].to_vec());
            }
            if got.len() >= 20 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(got.len(), 20, "frames received on pb");
        for (g, f) in got.iter().zip(&frames) {
            assert_eq!(
                &g[..VNET_HDR_LEN],
                &PLAIN,
                "a plain frame has a zero header"
            );
            assert_eq!(&g[VNET_HDR_LEN..], &f[..], "byte-exact");
        }
        // Our own sends are not looped back to the sender's socket.
        assert_eq!(
            a.recv_batch(&mut batch).expect("recv"),
            0,
            "pa saw its own sends"
        );
        let st = b.stats().expect("stats");
        assert!(st.packets >= 20 && st.drops == 0, "{st:?}");
    });
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// An IPv4/TCP frame `src:sport -> dst:dport` (checksums not filled: nothing checks them here).
fn tcp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 40];
    f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 0xb]);
    f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 0xa]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    ip[20..22].copy_from_slice(&sport.to_be_bytes());
    ip[22..24].copy_from_slice(&dport.to_be_bytes());
    ip[32] = 0x50;
    ip[33] = 0x10; // ACK
    f
}

/// A port opened for 2 workers has 2 sockets in one fanout group, and the kernel hands each frame
/// to the socket `steer::flow_worker` names for its flow, both directions of a flow to the same
/// one: what lets a reply find the worker its request went through.
#[test]
fn a_steered_port_hands_both_directions_of_a_flow_to_the_worker_the_hash_names() {
    use dataplane::io::steer::flow_worker;
    on_a_veth_pair(|| {
        let a = PacketPort::open("pa", 1 << 20).expect("port on pa");
        let b = PacketPort::open_steered("pb", 1 << 20, 2).expect("steered port on pb");
        assert_eq!(b.receivers(), 2);

        // 32 flows, each once in each direction, plus ICMP-like frames (addresses only).
        let mut frames = Vec::new();
        let mut want = Vec::new();
        for i in 0..32u16 {
            let (x, y) = ([10, 244, 1, 2 + i as u8], [10, 244, 2, 7]);
            let (px, py) = (40_000 + i * 7, 5201);
            frames.push(tcp_frame(x, y, px, py));
            frames.push(tcp_frame(y, x, py, px));
            let w = flow_worker(x, y, Some((px, py)), 2);
            assert_eq!(w, flow_worker(y, x, Some((py, px)), 2), "symmetric");
            want.push(w);
            want.push(w);
        }
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        assert_eq!(a.send_batch(&PLAIN, &refs).expect("send"), refs.len());

        let mut batch = RecvBatch::new(64, HEADROOM + 2048);
        let mut got: Vec<(usize, Vec<u8>)> = Vec::new();
        for _ in 0..100 {
            for sock in 0..2 {
                let n = b.recv_batch_on(sock, &mut batch).expect("recv");
                for i in 0..n {
                    let (meta, slot) = batch.get(i).expect("slot");
                    got.push((
                        sock,
                        slot[HEADROOM + VNET_HDR_LEN..HEADROOM + meta.len].to_vec(),
                    ));
                }
            }
            if got.len() >= frames.len() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(got.len(), frames.len(), "every frame exactly once");
        for (f, w) in frames.iter().zip(&want) {
            let on: Vec<usize> = got
                .iter()
                .filter(|(_, g)| g == f)
                .map(|(s, _)| *s)
                .collect();
            assert_eq!(on, vec![*w], "frame {:?} on socket(s) {on:?}", &f[26..38]);
        }
        assert!(
            want.contains(&0) && want.contains(&1),
            "32 flows use both workers"
        );
        let stats = b.stats().expect("stats");
        assert_eq!(stats.packets as usize, frames.len(), "{stats:?}");
    });
}
