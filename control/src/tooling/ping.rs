//! A minimal ICMP echo client for the demo, the tests and the harness: no external `ping` needed.
//!
//! It sends one echo request over a raw socket with its own IPv4 header (so DF can be set) and
//! waits for the matching echo reply, or for an ICMP error quoting the request.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use dataplane::wire::icmpv4::{self, Icmpv4Packet, Icmpv4Repr};
use dataplane::wire::ipv4::{self, Ipv4Packet, Ipv4Repr};
use socket2::{Domain, Protocol, Socket, Type};

/// What came back.
#[derive(Debug, Clone, PartialEq)]
pub enum PingResult {
    /// An echo reply, after this round-trip time.
    Reply(Duration),
    /// ICMP fragmentation needed, with the next-hop MTU it carried, from `from`.
    FragNeeded {
        /// Next-hop MTU.
        mtu: u16,
        /// Who sent the error.
        from: Ipv4Addr,
    },
    /// Another ICMP error (type, code) quoting our request, from `from`.
    Unreachable {
        /// ICMP type.
        ty: u8,
        /// ICMP code.
        code: u8,
        /// Who sent the error.
        from: Ipv4Addr,
    },
    /// Nothing within the timeout.
    Timeout,
    /// The request could not be sent (e.g. `EMSGSIZE`).
    Error(String),
}

impl PingResult {
    /// True for an echo reply.
    pub fn is_reply(&self) -> bool {
        matches!(self, PingResult::Reply(_))
    }
}

static SEQ: AtomicU16 = AtomicU16::new(1);

/// Pings `dst` once with `payload` data bytes, DF set if `df`, from the calling thread's namespace.
pub fn ping(dst: Ipv4Addr, payload: usize, df: bool, timeout: Duration) -> PingResult {
    match ping_inner(dst, payload, df, timeout) {
        Ok(r) => r,
        Err(e) => PingResult::Error(e.to_string()),
    }
}

fn ping_inner(
    dst: Ipv4Addr,
    payload: usize,
    df: bool,
    timeout: Duration,
) -> std::io::Result<PingResult> {
    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
    sock.set_header_included_v4(true)?;
    let ident = (std::process::id() as u16) ^ 0x5746;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let data: Vec<u8> = (0..payload).map(|i| i as u8).collect();
    let echo = Icmpv4Repr::EchoRequest {
        ident,
        seq_no: seq,
        data: &data,
    };
    let icmp_len = echo.buffer_len();
    let total = ipv4::HEADER_LEN + icmp_len;
    let mut pkt = vec![0u8; total];
    echo.emit(&mut Icmpv4Packet::new_unchecked(
        &mut pkt[ipv4::HEADER_LEN..],
    ));
    // Source 0.0.0.0: the kernel fills in the route's source address for raw sockets.
    Ipv4Repr {
        src_addr: Ipv4Addr::UNSPECIFIED,
        dst_addr: dst,
        protocol: ipv4::protocol::ICMP,
        payload_len: icmp_len,
        ttl: ipv4::DEFAULT_TTL,
        tos: 0,
        ident: seq,
        dont_frag: df,
    }
    .emit(&mut Ipv4Packet::new_unchecked(&mut pkt[..ipv4::HEADER_LEN]));
    let start = Instant::now();
    sock.send_to(&pkt, &SocketAddrV4::new(dst, 0).into())?;
    let mut buf = vec![0u8; 65536];
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Ok(PingResult::Timeout);
        }
        sock.set_read_timeout(Some(left))?;
        // socket2's `Read` impl takes an initialised buffer, so no `MaybeUninit` handling here.
        let n = match (&sock).read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(PingResult::Timeout)
            }
            Err(e) => return Err(e),
        };
        let bytes = &buf[..n];
        if let Some(r) = classify(bytes, dst, ident, seq, start.elapsed()) {
            return Ok(r);
        }
    }
}

/// Interprets one received IPv4 packet as the answer to our request, if it is one.
fn classify(
    bytes: &[u8],
    dst: Ipv4Addr,
    ident: u16,
    seq: u16,
    rtt: Duration,
) -> Option<PingResult> {
    let ip = Ipv4Packet::new_checked(bytes).ok()?;
    if ip.protocol() != ipv4::protocol::ICMP {
        return None;
    }
    let from = ip.src_addr();
    let icmp = Icmpv4Packet::new_checked(ip.payload()).ok()?;
    match icmp.msg_type() {
        icmpv4::msg_type::ECHO_REPLY
            if from == dst && icmp.echo_ident() == ident && icmp.echo_seq_no() == seq =>
        {
            Some(PingResult::Reply(rtt))
        }
        icmpv4::msg_type::DST_UNREACHABLE | icmpv4::msg_type::TIME_EXCEEDED => {
            // The quote: our IPv4 header and the first bytes of our echo request.
            let quoted = Ipv4Packet::new_unchecked(icmp.data());
            let q = icmp.data();
            if q.len() < ipv4::HEADER_LEN + 8 {
                return None;
            }
            let hl = usize::from(q[0] & 0x0f) * 4;
            if q.len() < hl + 8 || quoted.dst_addr() != dst {
                return None;
            }
            let q_ident = u16::from_be_bytes([q[hl + 4], q[hl + 5]]);
            let q_seq = u16::from_be_bytes([q[hl + 6], q[hl + 7]]);
            if q_ident != ident || q_seq != seq {
                return None;
            }
            if icmp.msg_type() == icmpv4::msg_type::DST_UNREACHABLE
                && icmp.msg_code() == icmpv4::dst_unreachable::FRAG_NEEDED
            {
                Some(PingResult::FragNeeded {
                    mtu: icmp.next_hop_mtu(),
                    from,
                })
            } else {
                Some(PingResult::Unreachable {
                    ty: icmp.msg_type(),
                    code: icmp.msg_code(),
                    from,
                })
            }
        }
        _ => None,
    }
}
