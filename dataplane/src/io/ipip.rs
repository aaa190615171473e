//! Receiving IP-in-IP (RFC 2003, IP protocol 4) without the kernel's `ipip` module.
//!
//! A raw socket for protocol 4 (`socket(AF_INET, SOCK_RAW, 4)`, `raw(7)`) is handed a copy of
//! every protocol-4 datagram delivered to this host, from its outer IPv4 header on; since a raw
//! socket took it, the kernel sends no "protocol unreachable" back even with no tunnel module
//! loaded. The kernel has already reassembled fragments; the outer header is checked again by the
//! core ([`Ingress::Underlay`](crate::forward::Ingress::Underlay)).
//!
//! Every raw socket of a protocol gets its own copy, so with several workers each socket carries
//! a classic BPF filter ([`fanout_filter`]) that accepts a packet in exactly one of them: the
//! flow hash of [`steer`] over the inner packet picks the worker, so one flow's packets stay on
//! one worker and in order, on the worker its pod port steers the other direction to. Sending
//! needs nothing special: the core writes the outer header and the raw sender ([`RawSender`](super::raw::RawSender)) sends it with `IP_HDRINCL`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::batch::{set_buffer, Buffer, RecvBatch};
use super::{steer, sys};

/// IP protocol number of IP-in-IP.
pub const IPPROTO_IPIP: i32 = 4;

/// A raw socket receiving IP-in-IP datagrams for one worker.
#[derive(Debug)]
pub struct IpipSocket {
    fd: OwnedFd,
}

impl IpipSocket {
    /// A nonblocking protocol-4 raw socket (needs `CAP_NET_RAW`) with a receive buffer of
    /// `rcvbuf` bytes (0: kernel default), taking the share of worker `worker` of `workers`.
    pub fn open(rcvbuf: usize, worker: usize, workers: usize) -> io::Result<IpipSocket> {
        if worker >= workers {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("worker {worker} of {workers}"),
            ));
        }
        let fd = sys::socket(libc::AF_INET, libc::SOCK_RAW, IPPROTO_IPIP)?;
        set_buffer(fd.as_fd(), Buffer::Receive, rcvbuf)?;
        if workers > 1 {
            sys::attach_filter(fd.as_fd(), &fanout_filter(worker, workers))?;
        }
        Ok(IpipSocket { fd })
    }

    /// Receives up to `batch.capacity()` waiting datagrams (each from its outer IPv4 header on)
    /// in one `recvmmsg(2)`, without waiting; how many arrived.
    pub fn recv_batch(&self, batch: &mut RecvBatch) -> io::Result<usize> {
        batch.recv_from(self.fd.as_fd())
    }
}

impl AsFd for IpipSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Outer (20, no options: what tunnel peers send) plus inner IPv4 header, plus the inner ports:
/// shorter datagrams all go to worker 0.
const MIN_HASHED: u32 = 44;

/// The filter for worker `worker` of `workers`: accepts a datagram when the flow hash of its
/// inner packet ([`steer::flow_program`], the hash the pod ports and the VXLAN sockets use too)
/// picks this worker; datagrams too short to hold the headers and ports all go to worker 0,
/// which drops and counts them. Each datagram is thus accepted by exactly one worker's socket.
pub fn fanout_filter(worker: usize, workers: usize) -> Vec<libc::sock_filter> {
    let body = steer::flow_program(20, workers, steer::Tail::Accept(worker));
    let short = if worker == 0 { steer::ACCEPT } else { 0 };
    let mut p = vec![
        steer::insn(steer::LD_W_LEN, 0, 0, 0),
        steer::insn(steer::JGE_K, 0, body.len() as u8, MIN_HASHED),
    ];
    p.extend(body);
    p.push(steer::insn(steer::RET_K, 0, 0, short));
    p
}

/// What [`fanout_filter`] computes for a datagram whose inner packet has no ports (ICMP, say),
/// for tests.
pub fn fanout_worker(inner_src: [u8; 4], inner_dst: [u8; 4], workers: usize) -> usize {
    steer::flow_worker(inner_src, inner_dst, None, workers)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::io::raw::RawSender;
    use crate::wire::ipv4;
    use std::net::Ipv4Addr;

    /// An IP-in-IP datagram 127.0.0.1 -> 127.0.0.1 around an inner header src -> dst (ICMP echo
    /// body), checksums left for the kernel (outer) and unchecked (inner).
    fn ipip(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0u8; 48];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&48u16.to_be_bytes());
        p[8] = 64;
        p[9] = ipv4::protocol::IPIP;
        p[12..16].copy_from_slice(&[127, 0, 0, 1]);
        p[16..20].copy_from_slice(&[127, 0, 0, 1]);
        p[20] = 0x45;
        p[22..24].copy_from_slice(&28u16.to_be_bytes());
        p[28] = 64;
        p[29] = 1;
        p[32..36].copy_from_slice(&src);
        p[36..40].copy_from_slice(&dst);
        p
    }

    fn drain(s: &IpipSocket, batch: &mut RecvBatch) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        for _ in 0..50 {
            let n = s.recv_batch(batch).unwrap();
            for i in 0..n {
                let (meta, slot) = batch.get(i).unwrap();
                got.push(slot[crate::forward::HEADROOM..][..meta.len].to_vec());
            }
            if n == 0 && !got.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        got
    }

    #[test]
    fn each_datagram_reaches_exactly_the_worker_its_inner_addresses_pick() {
        let socks: Vec<IpipSocket> = (0..2).map(|w| IpipSocket::open(0, w, 2).unwrap()).collect();
        let tx = RawSender::new(0).unwrap();
        let flows: Vec<([u8; 4], [u8; 4])> = (1..=16u8)
            .map(|i| ([10, 244, 1, i], [10, 244, 2, 3 * i]))
            .collect();
        let pkts: Vec<Vec<u8>> = flows.iter().map(|(s, d)| ipip(*s, *d)).collect();
        // A datagram too short to hash goes to worker 0.
        let mut short = ipip([10, 244, 1, 1], [10, 244, 2, 2]);
        short.truncate(30);
        short[2..4].copy_from_slice(&30u16.to_be_bytes());
        let mut all: Vec<(Ipv4Addr, &[u8])> = pkts
            .iter()
            .map(|p| (Ipv4Addr::LOCALHOST, p.as_slice()))
            .collect();
        all.push((Ipv4Addr::LOCALHOST, short.as_slice()));
        let report = tx.send_batch(&all);
        assert_eq!(report.sent, 17, "{:?}", report.last_error);

        let mut batch = RecvBatch::new(64, 2048);
        let got: Vec<Vec<Vec<u8>>> = socks.iter().map(|s| drain(s, &mut batch)).collect();
        assert_eq!(
            got[0].len() + got[1].len(),
            17,
            "every datagram exactly once"
        );
        assert!(
            got[0].iter().any(|p| p.len() == 30),
            "the short one on worker 0"
        );
        for (w, pkts) in got.iter().enumerate() {
            for p in pkts.iter().filter(|p| p.len() == 48) {
                let (src, dst) = (
                    <[u8; 4]>::try_from(&p[32..36]).unwrap(),
                    <[u8; 4]>::try_from(&p[36..40]).unwrap(),
                );
                assert_eq!(fanout_worker(src, dst, 2), w, "{src:?} -> {dst:?}");
                assert_eq!(fanout_worker(dst, src, 2), w, "both directions alike");
            }
        }
        assert!(!got[1].is_empty(), "16 flows spread over both workers");
    }
}
