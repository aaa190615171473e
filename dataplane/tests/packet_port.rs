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

#[test]
fn frames_cross_a_veth_with_vnet_headers_in_batches() {
    assert!(
        is_root(),
        "this test needs root (CAP_NET_ADMIN, CAP_NET_RAW); CI runs as root"
    );
    // Everything on a thread of its own, in a namespace that dies with it.
    std::thread::spawn(|| {
        dataplane::io::unshare_net().expect("unshare(CLONE_NEWNET)");
        ip(&["link", "add", "pa", "type", "veth", "peer", "name", "pb"]);
        ip(&["link", "set", "pa", "up"]);
        ip(&["link", "set", "pb", "up"]);
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
    })
    .join()
    .expect("test thread");
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
