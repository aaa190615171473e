//! Flow steering: which worker handles a packet, decided in the kernel by one classic BPF hash
//! that every receive path shares, so **both directions of a flow meet on one worker**.
//!
//! The hash is symmetric: `(src + dst + sport + dport) * GOLDEN >> 16 % workers`, over the inner
//! IPv4 header and, for unfragmented TCP and UDP without IPv4 options, the ports; anything else
//! hashes its addresses only. It is computed in three places:
//!
//! - a pod port's `AF_PACKET` sockets, one per worker, in a `PACKET_FANOUT_CBPF` group
//!   ([`packet`](super::packet)): the pod's frames, from their IPv4 header on;
//! - the workers' VXLAN sockets, one `SO_REUSEPORT` group with `SO_ATTACH_REUSEPORT_CBPF`
//!   ([`udp`](super::udp)): the inner header behind VXLAN and Ethernet;
//! - each worker's IP-in-IP raw socket, as a filter taking its share ([`ipip`](super::ipip)).
//!
//! A request from a pod and the reply that comes back over the underlay are thus handled by the
//! same worker on each node, which is awake (it just sent the request) instead of another worker
//! that must be woken; and one pod's flows spread over all workers instead of all landing on the
//! one that owned its port. One flow's packets stay on one worker, in order.

/// Fibonacci hashing's multiplier (2^32 / golden ratio): the product's high bits mix every input
/// bit.
pub const GOLDEN: u32 = 0x9e37_79b1;

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
pub(crate) const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const LD_H_ABS: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
const LD_B_ABS: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
pub(crate) const LD_W_LEN: u16 = 0x80; // BPF_LD | BPF_W | BPF_LEN
const LDX_IMM: u16 = 0x01; // BPF_LDX | BPF_W | BPF_IMM
const TAX: u16 = 0x07; // BPF_MISC | BPF_TAX
const ADD_X: u16 = 0x0c; // BPF_ALU | BPF_ADD | BPF_X
const MUL_K: u16 = 0x24; // BPF_ALU | BPF_MUL | BPF_K
const RSH_K: u16 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const MOD_K: u16 = 0x94; // BPF_ALU | BPF_MOD | BPF_K
pub(crate) const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
pub(crate) const RET_K: u16 = 0x06; // BPF_RET | BPF_K
const RET_A: u16 = 0x16; // BPF_RET | BPF_A

/// "Keep this many bytes": more than any datagram, so the whole packet.
pub(crate) const ACCEPT: u32 = 0x0010_0000;

/// `SKF_NET_OFF` (linux/filter.h): a load at `NET_OFF + k` reads byte `k` from the network
/// header, wherever the socket's data starts.
pub const NET_OFF: u32 = libc::SKF_NET_OFF as u32;

pub(crate) fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// What the program does with the worker index it computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// Returns it: a reuseport or fanout program, whose result picks the socket.
    Index,
    /// Accepts the packet (whole) when it is this worker's, else drops it: a socket filter.
    Accept(usize),
}

/// The steering program for `workers` workers over an IPv4 header whose first byte the program
/// loads at `ip` (an offset into the socket's data, or [`NET_OFF`] plus one). A load past the
/// packet's end makes a classic BPF program return 0 (socket 0, or "drop" for a filter), so a
/// filter caller checks the length first.
pub fn flow_program(ip: u32, workers: usize, tail: Tail) -> Vec<libc::sock_filter> {
    let n = workers.max(1) as u32;
    let at = |off: u32| ip.wrapping_add(off);
    let mut p = vec![
        insn(LDX_IMM, 0, 0, 0),       // 0: X = 0 (the port sum)
        insn(LD_B_ABS, 0, 0, at(9)),  // 1: A = protocol
        insn(JEQ_K, 1, 0, 6),         // 2: TCP -> 4
        insn(JEQ_K, 0, 9, 17),        // 3: not UDP -> 13 (X = 0)
        insn(LD_B_ABS, 0, 0, at(0)),  // 4: A = version, IHL
        insn(JEQ_K, 0, 7, 0x45),      // 5: options -> 13
        insn(LD_H_ABS, 0, 0, at(6)),  // 6: A = flags, fragment offset
        insn(JSET_K, 5, 0, 0x3fff),   // 7: a fragment -> 13
        insn(LD_H_ABS, 0, 0, at(20)), // 8: A = source port
        insn(TAX, 0, 0, 0),           // 9: X = A
        insn(LD_H_ABS, 0, 0, at(22)), // 10: A = destination port
        insn(ADD_X, 0, 0, 0),         // 11: A = sport + dport
        insn(TAX, 0, 0, 0),           // 12: X = the port sum
        insn(LD_W_ABS, 0, 0, at(12)), // 13: A = src
        insn(ADD_X, 0, 0, 0),         // 14: A += X
        insn(TAX, 0, 0, 0),           // 15: X = A
        insn(LD_W_ABS, 0, 0, at(16)), // 16: A = dst
        insn(ADD_X, 0, 0, 0),         // 17: A += X (the same both ways)
        insn(MUL_K, 0, 0, GOLDEN),    // 18
        insn(RSH_K, 0, 0, 16),        // 19
        insn(MOD_K, 0, 0, n),         // 20
    ];
    match tail {
        Tail::Index => p.push(insn(RET_A, 0, 0, 0)),
        Tail::Accept(w) => {
            p.push(insn(JEQ_K, 0, 1, w as u32));
            p.push(insn(RET_K, 0, 0, ACCEPT));
            p.push(insn(RET_K, 0, 0, 0));
        }
    }
    p
}

/// The worker [`flow_program`] picks for a packet with these inner addresses and, for
/// unfragmented TCP or UDP without options, ports: for tests, and to know where a flow lands.
pub fn flow_worker(src: [u8; 4], dst: [u8; 4], ports: Option<(u16, u16)>, workers: usize) -> usize {
    let (a, b) = ports.unwrap_or((0, 0));
    let sum = u32::from_be_bytes(src)
        .wrapping_add(u32::from_be_bytes(dst))
        .wrapping_add(u32::from(a) + u32::from(b));
    ((sum.wrapping_mul(GOLDEN) >> 16) % workers.max(1) as u32) as usize
}
