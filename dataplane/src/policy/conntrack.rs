//! Connection tracking for policy: a bounded flow table the workers share without locks on the
//! lookup path, so that the replies of allowed connections pass.
//!
//! # What this module promises
//!
//! - A flow is a 5-tuple (source, destination, protocol, source port, destination port; for ICMP
//!   echo the caller puts the echo identifier in both ports, for protocols without ports zeros).
//!   The stored key is direction-normalised (the lower (address, port) end first) so the reply
//!   finds the entry of the original direction; [`Tracked::direction`] says which one a packet
//!   went.
//! - States and timeouts follow Linux's conntrack (`nf_conntrack_proto_tcp.c`, `_udp.c`,
//!   `_icmp.c`, `_generic.c`), simplified where policy does not need the detail:
//!   TCP SYN_SENT → SYN_RECV (the reply's SYN) → ESTABLISHED (the originator's ACK) →
//!   FIN_WAIT (one side's FIN) → TIME_WAIT (both sides' FINs); an RST from either side → CLOSE.
//!   A SYN meeting a TIME_WAIT or CLOSE entry is a new connection on an old tuple: the entry is
//!   dropped and the packet is a miss, decided by policy again. A TCP packet other than SYN or RST
//!   with no entry is picked up as ESTABLISHED (Linux's default `nf_conntrack_tcp_loose=1`), so
//!   restarting the agent does not cut connections. UDP, SCTP, ICMP and other protocols are
//!   UNREPLIED until a packet goes the other way, then REPLIED. Weft tracks SCTP like a datagram
//!   protocol, without its INIT/COOKIE/SHUTDOWN states; its heartbeats (30 s by default, RFC 9260
//!   §8.3) keep an idle association's entry alive.
//! - [`Timeouts::default`] is Linux's defaults except TCP ESTABLISHED: 6 hours instead of 5 days.
//!   The table is bounded and shared, and an entry left behind by a peer that vanished holds its
//!   slot until it times out; 6 hours is Cilium's choice too and stays above Linux's 2-hour TCP
//!   keepalive, so an idle connection with keepalives survives. UDP: 30 s unreplied, 120 s once
//!   replied (`nf_conntrack_udp_timeout_stream`); ICMP 30 s; other protocols 30 s unreplied,
//!   600 s replied (`nf_conntrack_generic_timeout`).
//! - Bounded: [`ConntrackConfig::capacity`] entries, in buckets of [`BUCKET_SLOTS`]; each flow
//!   may live in one of two buckets (two-choice hashing, so the table fills evenly). When both
//!   are full an insert replaces, in this order, an expired entry, a CLOSE or TIME_WAIT one, a
//!   FIN_WAIT one, then an unconfirmed one (SYN_SENT, SYN_RECV, UNREPLIED), each time the one
//!   closest to expiry. A live ESTABLISHED or REPLIED entry is never evicted: like Linux's
//!   `early_drop`, the insert is refused instead and counted ([`ConntrackStats::refused`]).
//! - Time is an argument ([`Instant`]); the table stores expiry to the millisecond and refreshes
//!   an entry's expiry at most once a second, so a steady established flow's packets only read.
//! - Each entry records the policy generation it was admitted under ([`Tracked::generation`]),
//!   so the caller can re-decide established flows after a policy change (see
//!   [`filter`](mod@super::filter)).
//!
//! # Why a shared table over atomics with a per-slot seqlock
//!
//! The two directions of a connection reach Weft on different ports (a pod's veth and the TUN or
//! another pod's veth), which different workers read, so per-worker tables would miss every
//! reply unless flows were steered to one worker by a symmetric hash, which AF_PACKET fanout on
//! several devices cannot do. Sharding by flow with an owning thread would put a cross-thread
//! hop on the packet path. So the table is one array of slots of four `AtomicU64`s: a version
//! word (a seqlock's sequence in its low half, the policy generation in its high half), the two
//! key words and a state word. A reader loads the version, the fields, then the version again
//! and retries if it changed or was odd: no lock, no write, and no `unsafe` (every field is an
//! atomic, so a torn read is a retried read, never undefined behaviour). A writer takes a slot by
//! compare-and-swapping the version from the even value it read to odd, so an update applies
//! only if nobody touched the slot since its read; contention costs a retry, never a wait for a
//! descheduled thread on the lookup path. Slots are 32 bytes and buckets 256 bytes aligned to
//! cache lines; beside the buckets, one tag word per bucket holds a byte of each slot's key
//! hash, so a lookup reads the tag words of its two buckets and, as a rule, the one slot whose
//! byte matches. A hit that changes nothing (an established flow's data, within the refresh
//! granularity) is recognised from the state bits without the state machine and writes
//! nothing: about 14 ns (`conntrack/hit_established` in `benches/benches/policy.rs`).
//!
//! Two threads inserting the same new flow at the same instant may both succeed, leaving a
//! duplicate that simply expires; lookups return the first.

use core::hint::spin_loop;
use core::sync::atomic::{fence, AtomicU64, Ordering};
use std::net::Ipv4Addr;

use super::portset::Protocol;
use crate::time::{Duration, Instant};
use crate::wire::tcp::flags as tcp_flags;

/// Slots per bucket; a flow may live in one of two buckets.
pub const BUCKET_SLOTS: usize = 8;

/// A packet's 5-tuple as it travels (not normalised).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// IP protocol.
    pub protocol: Protocol,
    /// Source port; the echo identifier for ICMP echo; 0 for protocols without ports.
    pub src_port: u16,
    /// Destination port; the echo identifier for ICMP echo; 0 for protocols without ports.
    pub dst_port: u16,
}

impl FlowKey {
    /// The key of a packet going the other way.
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            protocol: self.protocol,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

/// Which way a packet went relative to the packet that created its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowDirection {
    /// The same way as the first packet.
    Original,
    /// The other way: a reply.
    Reply,
}

/// The state of a tracked flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FlowState {
    /// TCP: the originator's SYN seen.
    TcpSynSent = 1,
    /// TCP: the reply's SYN seen.
    TcpSynRecv = 2,
    /// TCP: the handshake completed (or a connection picked up mid-stream).
    TcpEstablished = 3,
    /// TCP: one side's FIN seen.
    TcpFinWait = 4,
    /// TCP: both sides' FINs seen.
    TcpTimeWait = 5,
    /// TCP: an RST seen.
    TcpClose = 6,
    /// Not TCP: packets seen one way only.
    Unreplied = 7,
    /// Not TCP: packets seen both ways.
    Replied = 8,
}

impl FlowState {
    const ALL: [FlowState; 8] = [
        FlowState::TcpSynSent,
        FlowState::TcpSynRecv,
        FlowState::TcpEstablished,
        FlowState::TcpFinWait,
        FlowState::TcpTimeWait,
        FlowState::TcpClose,
        FlowState::Unreplied,
        FlowState::Replied,
    ];

    fn from_bits(bits: u64) -> Option<FlowState> {
        Some(match bits {
            1 => FlowState::TcpSynSent,
            2 => FlowState::TcpSynRecv,
            3 => FlowState::TcpEstablished,
            4 => FlowState::TcpFinWait,
            5 => FlowState::TcpTimeWait,
            6 => FlowState::TcpClose,
            7 => FlowState::Unreplied,
            8 => FlowState::Replied,
            _ => return None,
        })
    }

    /// How willingly an insert replaces a live entry in this state: lower goes first;
    /// [`ASSURED`] never.
    fn eviction_class(self) -> u8 {
        match self {
            FlowState::TcpClose | FlowState::TcpTimeWait => 1,
            FlowState::TcpFinWait => 2,
            FlowState::TcpSynSent | FlowState::TcpSynRecv | FlowState::Unreplied => 3,
            FlowState::TcpEstablished | FlowState::Replied => ASSURED,
        }
    }

    /// The name `conntrack -L` would print.
    pub fn name(self) -> &'static str {
        match self {
            FlowState::TcpSynSent => "SYN_SENT",
            FlowState::TcpSynRecv => "SYN_RECV",
            FlowState::TcpEstablished => "ESTABLISHED",
            FlowState::TcpFinWait => "FIN_WAIT",
            FlowState::TcpTimeWait => "TIME_WAIT",
            FlowState::TcpClose => "CLOSE",
            FlowState::Unreplied => "UNREPLIED",
            FlowState::Replied => "REPLIED",
        }
    }
}

/// The eviction class of entries an insert never replaces while they live.
const ASSURED: u8 = 4;

/// How long an entry lives after its last packet, per state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP SYN_SENT (Linux: 120 s).
    pub tcp_syn_sent: Duration,
    /// TCP SYN_RECV (Linux: 60 s).
    pub tcp_syn_recv: Duration,
    /// TCP ESTABLISHED (Linux: 5 days; Weft: 6 hours, see the module docs).
    pub tcp_established: Duration,
    /// TCP FIN_WAIT (Linux: 120 s).
    pub tcp_fin_wait: Duration,
    /// TCP TIME_WAIT (Linux: 120 s).
    pub tcp_time_wait: Duration,
    /// TCP CLOSE (Linux: 10 s).
    pub tcp_close: Duration,
    /// UDP, packets one way only (Linux `udp_timeout`: 30 s).
    pub udp_unreplied: Duration,
    /// UDP, packets both ways (Linux `udp_timeout_stream`: 120 s).
    pub udp_replied: Duration,
    /// ICMP (Linux: 30 s).
    pub icmp: Duration,
    /// Other protocols (SCTP included), one way only (30 s, as UDP).
    pub other_unreplied: Duration,
    /// Other protocols, both ways (Linux `generic_timeout`: 600 s).
    pub other_replied: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn_sent: Duration::from_secs(120),
            tcp_syn_recv: Duration::from_secs(60),
            tcp_established: Duration::from_secs(6 * 3600),
            tcp_fin_wait: Duration::from_secs(120),
            tcp_time_wait: Duration::from_secs(120),
            tcp_close: Duration::from_secs(10),
            udp_unreplied: Duration::from_secs(30),
            udp_replied: Duration::from_secs(120),
            icmp: Duration::from_secs(30),
            other_unreplied: Duration::from_secs(30),
            other_replied: Duration::from_secs(600),
        }
    }
}

impl Timeouts {
    /// The timeout of an entry of `protocol` in `state`.
    pub fn of(&self, protocol: Protocol, state: FlowState) -> Duration {
        match (state, protocol) {
            (FlowState::TcpSynSent, _) => self.tcp_syn_sent,
            (FlowState::TcpSynRecv, _) => self.tcp_syn_recv,
            (FlowState::TcpEstablished, _) => self.tcp_established,
            (FlowState::TcpFinWait, _) => self.tcp_fin_wait,
            (FlowState::TcpTimeWait, _) => self.tcp_time_wait,
            (FlowState::TcpClose, _) => self.tcp_close,
            (_, Protocol::ICMP) => self.icmp,
            (FlowState::Unreplied, Protocol::UDP) => self.udp_unreplied,
            (FlowState::Replied, Protocol::UDP) => self.udp_replied,
            (FlowState::Unreplied, _) => self.other_unreplied,
            (FlowState::Replied, _) => self.other_replied,
        }
    }
}

/// How to build a [`Conntrack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConntrackConfig {
    /// The number of entries, rounded up to a power-of-two number of buckets.
    pub capacity: usize,
    /// Per-state timeouts.
    pub timeouts: Timeouts,
    /// Hash seed. The agent should pass a random one: with a known seed a sender can aim many
    /// flows at one pair of buckets and have their inserts refused.
    pub seed: u64,
}

impl Default for ConntrackConfig {
    /// 262,144 entries (8 MiB), Linux-like timeouts, seed 0.
    fn default() -> Self {
        ConntrackConfig {
            capacity: 1 << 18,
            timeouts: Timeouts::default(),
            seed: 0,
        }
    }
}

/// What a lookup found: the entry's state after this packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracked {
    /// The way the packet went relative to the entry's first packet.
    pub direction: FlowDirection,
    /// The entry's state.
    pub state: FlowState,
    /// The low 32 bits of the policy generation the entry was admitted (or last re-checked)
    /// under; compare with [`generation_tag`].
    pub generation: u32,
}

impl Tracked {
    /// The 5-tuple of the entry's first packet, given the key of the packet looked up.
    /// (Not stored in `Tracked`, which stays small enough to return in registers.)
    pub fn original(&self, key: &FlowKey) -> FlowKey {
        match self.direction {
            FlowDirection::Original => *key,
            FlowDirection::Reply => key.reversed(),
        }
    }
}

/// The result of [`Conntrack::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// A new entry; `evicted` when it replaced a live one.
    Inserted {
        /// True when a live entry (closing or unconfirmed) was evicted to make room.
        evicted: bool,
    },
    /// A live entry for the flow exists already (another worker inserted it).
    Exists,
    /// Both buckets hold only live ESTABLISHED or REPLIED entries (or stayed contended): not
    /// tracked, counted in [`ConntrackStats::refused`].
    Refused,
    /// A packet that creates no entry: a TCP RST.
    NotTracked,
}

/// Counters of the table's slow path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConntrackStats {
    /// Entries created.
    pub inserted: u64,
    /// Live entries replaced to make room.
    pub evicted: u64,
    /// Inserts refused because the table was full of live established entries.
    pub refused: u64,
}

/// The low 32 bits of a policy generation, as entries store it.
#[inline]
pub const fn generation_tag(generation: u64) -> u32 {
    generation as u32
}

// The state word: expiry in milliseconds (low 40 bits), then the state, which end sent the first
// packet, and which ends sent a FIN.
const EXPIRY_BITS: u32 = 40;
const EXPIRY_MASK: u64 = (1 << EXPIRY_BITS) - 1;
const STATE_SHIFT: u32 = 40;
const STATE_MASK: u64 = 0xf;
const ORIG_IS_LOW: u64 = 1 << 44;
const FIN_LOW: u64 = 1 << 45;
const FIN_HIGH: u64 = 1 << 46;
// The second key word's lowest bit: set in every occupied slot, so a zeroed slot matches no key.
const VALID: u64 = 1;
/// An entry's expiry is written again only when it moves by more than this.
const REFRESH_MS: u64 = 1000;
/// Reads of a slot a writer holds before the reader gives up on it.
const READ_SPINS: usize = 64;
/// Attempts of an insert or update that lost a race.
const WRITE_TRIES: usize = 4;

#[derive(Debug, Default)]
struct Slot {
    /// Sequence (low 32 bits; odd while written) and policy generation tag (high 32 bits).
    version: AtomicU64,
    /// High end's port (bits 48..64), low end's address (16..48) and port (0..16).
    key0: AtomicU64,
    /// High end's address (bits 32..64), protocol (8..16), [`VALID`].
    key1: AtomicU64,
    /// See the `EXPIRY_*`/`STATE_*` constants.
    state: AtomicU64,
}

#[derive(Debug, Default)]
#[repr(align(64))]
struct Bucket {
    slots: [Slot; BUCKET_SLOTS],
}

/// A consistent copy of a slot.
#[derive(Debug, Clone, Copy)]
struct Snap {
    version: u64,
    key0: u64,
    key1: u64,
    state: u64,
}

impl Snap {
    fn expiry_ms(&self) -> u64 {
        self.state & EXPIRY_MASK
    }

    fn flow_state(&self) -> Option<FlowState> {
        FlowState::from_bits((self.state >> STATE_SHIFT) & STATE_MASK)
    }

    fn occupied(&self) -> bool {
        self.key1 & VALID != 0
    }

    fn live(&self, now_ms: u64) -> bool {
        self.occupied() && self.expiry_ms() > now_ms
    }
}

impl Slot {
    /// A consistent copy, or `None` if a writer held the slot through every try.
    #[inline]
    fn read(&self) -> Option<Snap> {
        // One try inline; a slot a writer holds is rare, and the retries are out of line.
        self.try_read().or_else(|| self.read_contended())
    }

    /// A consistent copy, if no writer held or changed the slot while it was read.
    #[inline(always)]
    fn try_read(&self) -> Option<Snap> {
        let version = self.version.load(Ordering::Acquire);
        if version & 1 == 1 {
            return None;
        }
        let key0 = self.key0.load(Ordering::Relaxed);
        let key1 = self.key1.load(Ordering::Relaxed);
        let state = self.state.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        (self.version.load(Ordering::Relaxed) == version).then_some(Snap {
            version,
            key0,
            key1,
            state,
        })
    }

    /// [`Slot::read`] after a first try that met a writer.
    #[cold]
    #[inline(never)]
    fn read_contended(&self) -> Option<Snap> {
        (1..READ_SPINS).find_map(|_| {
            spin_loop();
            self.try_read()
        })
    }

    /// Writes the fields if the slot is still as `seen` left it; false if it changed. The
    /// generation tag becomes `generation`; `key_tag`, when the key changes, is the slot's byte
    /// in its bucket's tag word and its new value, written while the slot is held so that tag
    /// updates land in the order of the writes they describe.
    fn write(
        &self,
        seen: &Snap,
        (key0, key1, state): (u64, u64, u64),
        generation: u32,
        key_tag: Option<(&AtomicU64, usize, u8)>,
    ) -> bool {
        let locked = seen.version.wrapping_add(1);
        if self
            .version
            .compare_exchange(seen.version, locked, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return false;
        }
        // Readers that see any of the stores below must also see the odd version.
        fence(Ordering::Release);
        self.key0.store(key0, Ordering::Relaxed);
        self.key1.store(key1, Ordering::Relaxed);
        self.state.store(state, Ordering::Relaxed);
        if let Some((tags, index, tag)) = key_tag {
            let shift = 8 * index as u32;
            let mut word = tags.load(Ordering::Relaxed);
            loop {
                let next = (word & !(0xff << shift)) | (u64::from(tag) << shift);
                match tags.compare_exchange_weak(word, next, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => break,
                    Err(seen) => word = seen,
                }
            }
        }
        let seq = (seen.version as u32).wrapping_add(2);
        self.version.store(
            u64::from(seq) | (u64::from(generation) << 32),
            Ordering::Release,
        );
        true
    }
}

/// A flow's key as stored: normalised so both directions give the same words.
#[derive(Debug, Clone, Copy)]
struct Normal {
    key0: u64,
    key1: u64,
    /// True when the packet went from the low end to the high end.
    from_low: bool,
}

impl Normal {
    #[inline]
    fn of(k: &FlowKey) -> Normal {
        // Each end as one 48-bit number, address then port, so the comparison is one
        // instruction, and the words a few shifts of the two.
        let a = (u64::from(u32::from(k.src)) << 16) | u64::from(k.src_port);
        let b = (u64::from(u32::from(k.dst)) << 16) | u64::from(k.dst_port);
        let from_low = a <= b;
        let (low, high) = (a.min(b), a.max(b));
        Normal {
            key0: (high << 48) | low,
            key1: ((high >> 16) << 32) | (u64::from(k.protocol.0) << 8) | VALID,
            from_low,
        }
    }
}

/// Where a slot is.
#[derive(Debug, Clone, Copy)]
struct Loc {
    bucket: usize,
    slot: usize,
}

/// A mask with the high bit of every byte of `word` equal to `tag` set (and possibly, rarely,
/// of a byte above one that is: a false candidate the key comparison then rejects).
#[inline]
fn byte_matches(word: u64, tag: u8) -> u64 {
    const LOW: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let x = word ^ (LOW * u64::from(tag));
    x.wrapping_sub(LOW) & !x & HIGH
}

/// The two halves of the 128-bit product, xored: one multiplication that mixes every bit of
/// both words into every output bit (wyhash's and aHash's mixing step). `b` is never 0 here
/// because every stored key has [`VALID`] set and the constant it is xored with does not.
#[inline]
fn folded_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

fn millis(t: Instant) -> u64 {
    (t.as_micros() / 1000).min(EXPIRY_MASK)
}

fn pack_state(state: FlowState, orig_is_low: bool, fins: u64, expiry_ms: u64) -> u64 {
    expiry_ms.min(EXPIRY_MASK)
        | ((state as u64) << STATE_SHIFT)
        | if orig_is_low { ORIG_IS_LOW } else { 0 }
        | (fins & (FIN_LOW | FIN_HIGH))
}

/// The row of [`Conntrack::timeout_ms`] for `protocol`: TCP, UDP, ICMP, other.
#[inline]
fn protocol_class(protocol: Protocol) -> usize {
    match protocol {
        Protocol::TCP => 0,
        Protocol::UDP => 1,
        Protocol::ICMP => 2,
        _ => 3,
    }
}

/// What a packet does to the entry it was found in.
#[derive(Debug, PartialEq, Eq)]
enum Advance {
    /// Nothing to write: the same state, and the expiry within [`REFRESH_MS`] of the stored one.
    Unchanged(Tracked),
    /// The entry's state word becomes this.
    Write(Tracked, u64),
    /// A SYN on a closed tuple: the entry goes, and the packet is a miss.
    Reopen,
    /// The state bits name no state, which no write leaves: treated as a miss.
    Invalid,
}

/// What a TCP packet does to an entry.
enum TcpStep {
    To(FlowState, u64),
    /// A SYN on a closed tuple: a new connection, to be decided afresh.
    Reopen,
}

fn tcp_step(state: FlowState, fins: u64, from_low: bool, from_orig: bool, flags: u8) -> TcpStep {
    let has = |f: u8| flags & f != 0;
    if has(tcp_flags::RST) {
        return TcpStep::To(FlowState::TcpClose, fins);
    }
    let syn_only = has(tcp_flags::SYN) && !has(tcp_flags::ACK);
    let closing = |fins: u64| {
        let fins = if has(tcp_flags::FIN) {
            fins | if from_low { FIN_LOW } else { FIN_HIGH }
        } else {
            fins
        };
        let state = if fins == FIN_LOW | FIN_HIGH {
            FlowState::TcpTimeWait
        } else if fins != 0 {
            FlowState::TcpFinWait
        } else {
            FlowState::TcpEstablished
        };
        TcpStep::To(state, fins)
    };
    match state {
        FlowState::TcpTimeWait | FlowState::TcpClose if syn_only => TcpStep::Reopen,
        FlowState::TcpSynSent if !from_orig && has(tcp_flags::SYN) => {
            TcpStep::To(FlowState::TcpSynRecv, fins)
        }
        FlowState::TcpSynRecv if from_orig && has(tcp_flags::ACK) && !has(tcp_flags::SYN) => {
            closing(fins)
        }
        FlowState::TcpEstablished | FlowState::TcpFinWait => closing(fins),
        other => TcpStep::To(other, fins),
    }
}

/// The shared, bounded flow table (see the module docs).
#[derive(Debug)]
pub struct Conntrack {
    buckets: Box<[Bucket]>,
    /// Per bucket, one byte per slot: a fragment of the hash of the slot's key (never 0), or 0
    /// for an empty slot. Lookups read only the slots whose byte matches: one cache line for
    /// the tags and, usually, one for the entry.
    tags: Box<[AtomicU64]>,
    mask: usize,
    timeouts: Timeouts,
    /// `timeouts` in milliseconds, by protocol class ([`protocol_class`]) and state bits (16
    /// rows, so any four bits index it without a bounds check).
    timeout_ms: [[u64; 16]; 4],
    seed: u64,
    inserted: AtomicU64,
    evicted: AtomicU64,
    refused: AtomicU64,
}

impl Conntrack {
    /// An empty table.
    pub fn new(config: ConntrackConfig) -> Conntrack {
        let buckets = config
            .capacity
            .div_ceil(BUCKET_SLOTS)
            .max(2)
            .next_power_of_two();
        Conntrack {
            buckets: (0..buckets).map(|_| Bucket::default()).collect(),
            tags: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
            mask: buckets - 1,
            timeouts: config.timeouts,
            timeout_ms: [Protocol::TCP, Protocol::UDP, Protocol::ICMP, Protocol(0)].map(|p| {
                let mut row = [0; 16];
                for state in FlowState::ALL {
                    row[state as usize] = config.timeouts.of(p, state).as_micros() / 1000;
                }
                row
            }),
            seed: config.seed,
            inserted: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// The number of entries the table holds at most.
    pub fn capacity(&self) -> usize {
        self.buckets.len() * BUCKET_SLOTS
    }

    /// The timeouts in force.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// The slow-path counters.
    pub fn stats(&self) -> ConntrackStats {
        ConntrackStats {
            inserted: self.inserted.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    /// How long an entry of `protocol` in `state` lives after its last packet, in ms.
    #[inline]
    fn timeout_ms(&self, protocol: Protocol, state: FlowState) -> u64 {
        self.timeout_ms[protocol_class(protocol)][state as usize]
    }

    /// The two buckets a flow may live in, and its tag.
    #[inline]
    fn place(&self, n: &Normal) -> ([usize; 2], u8) {
        let h = folded_mul(n.key0 ^ self.seed, n.key1 ^ 0x9e37_79b9_7f4a_7c14);
        let first = (h as usize) & self.mask;
        let mut second = ((h >> 32) as usize) & self.mask;
        if second == first {
            second = first ^ 1;
        }
        ([first, second], (h >> 56) as u8 | 1)
    }

    #[inline]
    fn slot(&self, at: Loc) -> &Slot {
        &self.buckets[at.bucket].slots[at.slot]
    }

    /// The tag word of `at`'s bucket, `at`'s byte in it and the byte's new value.
    fn key_tag(&self, at: Loc, tag: u8) -> Option<(&AtomicU64, usize, u8)> {
        Some((&self.tags[at.bucket], at.slot, tag))
    }

    /// The live entry for `n`, with a consistent copy of it.
    #[inline(always)]
    fn find(&self, n: &Normal, now_ms: u64) -> Option<(Loc, Snap)> {
        let (buckets, tag) = self.place(n);
        // Both tag words first: two independent loads, so a flow in its second bucket does not
        // wait for one cache miss after another.
        let words = buckets.map(|b| self.tags[b].load(Ordering::Acquire));
        for (bucket, word) in buckets.into_iter().zip(words) {
            let mut candidates = byte_matches(word, tag);
            while candidates != 0 {
                let slot = candidates.trailing_zeros() as usize / 8;
                candidates &= candidates - 1;
                let at = Loc { bucket, slot };
                // A slot a writer holds too long is skipped: a lookup never waits for one.
                let Some(s) = self.slot(at).read() else {
                    continue;
                };
                if s.key0 == n.key0 && s.key1 == n.key1 && s.expiry_ms() > now_ms {
                    return Some((at, s));
                }
            }
        }
        None
    }

    fn tracked(n: &Normal, s: &Snap, state: FlowState) -> Tracked {
        let from_orig = n.from_low == (s.state & ORIG_IS_LOW != 0);
        Tracked {
            direction: if from_orig {
                FlowDirection::Original
            } else {
                FlowDirection::Reply
            },
            state,
            generation: (s.version >> 32) as u32,
        }
    }

    /// The live entry for the flow of `key` (either direction) at `now`, changing nothing.
    pub fn get(&self, key: &FlowKey, now: Instant) -> Option<Tracked> {
        let n = Normal::of(key);
        let (_, s) = self.find(&n, millis(now))?;
        Some(Self::tracked(&n, &s, s.flow_state()?))
    }

    /// Looks up the flow of a packet with `key` and TCP `flags` (ignored for other protocols) at
    /// `now` and advances its entry: the per-packet call. `None` is a miss: no live entry, or a
    /// SYN reopening a closed tuple (whose entry this removes), to be decided by policy.
    // Always inlined into the worker's loop, with `find`: the call and its register saves were
    // a tenth of a hit's cost (`conntrack/hit_established` in benches/benches/policy.rs), and a
    // found entry handed back through memory cost a stalled load on top. What writes the entry
    // (a state change, a refresh) is out of line.
    #[inline(always)]
    pub fn track(&self, key: &FlowKey, flags: u8, now: Instant) -> Option<Tracked> {
        let n = Normal::of(key);
        let now_ms = millis(now);
        let (at, s) = self.find(&n, now_ms)?;
        if let Some(tracked) = self.unchanged(&n, &s, key.protocol, flags, now_ms) {
            return Some(tracked);
        }
        self.track_write(&n, key.protocol, flags, now_ms, (at, s))
    }

    /// The entry `s` as a packet that leaves it as it is finds it, or `None` when the packet
    /// may change its state or is due to refresh its expiry: then [`Conntrack::advance`]
    /// decides. The state machine's common case on the state's bits: a TCP segment without SYN,
    /// FIN or RST changes no state but SYN_RECV (the originator's ACK completes the handshake);
    /// a datagram changes none when it goes the original way or the entry is REPLIED already.
    /// (`unchanged_agrees_with_advance` checks this against the state machine.)
    #[inline(always)]
    fn unchanged(
        &self,
        n: &Normal,
        s: &Snap,
        protocol: Protocol,
        flags: u8,
        now_ms: u64,
    ) -> Option<Tracked> {
        let bits = (s.state >> STATE_SHIFT) & STATE_MASK;
        let from_orig = n.from_low == (s.state & ORIG_IS_LOW != 0);
        let (same, class) = if protocol == Protocol::TCP {
            let changing = tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST;
            let same = flags & changing == 0 && bits != FlowState::TcpSynRecv as u64;
            (same, 0)
        } else {
            let same = from_orig || bits == FlowState::Replied as u64;
            (same, protocol_class(protocol))
        };
        let expiry = now_ms + self.timeout_ms[class][bits as usize];
        if !same || expiry > s.expiry_ms() + REFRESH_MS {
            return None;
        }
        Some(Tracked {
            direction: if from_orig {
                FlowDirection::Original
            } else {
                FlowDirection::Reply
            },
            state: FlowState::from_bits(bits)?,
            generation: (s.version >> 32) as u32,
        })
    }

    /// What a packet with `flags` of `protocol`, found in entry `s`, does to it at `now_ms`.
    fn advance(&self, n: &Normal, s: &Snap, protocol: Protocol, flags: u8, now_ms: u64) -> Advance {
        let Some(state) = s.flow_state() else {
            return Advance::Invalid;
        };
        let orig_is_low = s.state & ORIG_IS_LOW != 0;
        let from_orig = n.from_low == orig_is_low;
        let fins = s.state & (FIN_LOW | FIN_HIGH);
        let (next, next_fins) = if protocol == Protocol::TCP {
            match tcp_step(state, fins, n.from_low, from_orig, flags) {
                TcpStep::To(st, f) => (st, f),
                TcpStep::Reopen => return Advance::Reopen,
            }
        } else if !from_orig {
            (FlowState::Replied, fins)
        } else {
            (state, fins)
        };
        let expiry = now_ms + self.timeout_ms(protocol, next);
        let tracked = Self::tracked(n, s, next);
        if next == state && next_fins == fins && expiry <= s.expiry_ms() + REFRESH_MS {
            Advance::Unchanged(tracked)
        } else {
            Advance::Write(tracked, pack_state(next, orig_is_low, next_fins, expiry))
        }
    }

    /// [`Conntrack::track`] for a packet that changes its entry, found at `found`: writes it,
    /// finding it again after each race lost to another writer.
    #[cold]
    #[inline(never)]
    fn track_write(
        &self,
        n: &Normal,
        protocol: Protocol,
        flags: u8,
        now_ms: u64,
        mut found: (Loc, Snap),
    ) -> Option<Tracked> {
        let mut last = None;
        for _ in 0..WRITE_TRIES {
            let (at, s) = found;
            let slot = self.slot(at);
            let generation = (s.version >> 32) as u32;
            match self.advance(n, &s, protocol, flags, now_ms) {
                Advance::Unchanged(tracked) => return Some(tracked),
                Advance::Write(tracked, word) => {
                    if slot.write(&s, (s.key0, s.key1, word), generation, None) {
                        return Some(tracked);
                    }
                    last = Some(tracked);
                }
                Advance::Reopen => {
                    slot.write(&s, (0, 0, 0), generation, self.key_tag(at, 0));
                    return None;
                }
                Advance::Invalid => return None,
            }
            found = self.find(n, now_ms)?;
        }
        // Lost every race to other writers of this entry: the packet still belongs to the flow.
        last
    }

    /// Creates the entry for a new flow whose first packet has `key` and TCP `flags`, admitted
    /// under policy `generation`, at `now` (see [`Insert`] and the module docs for eviction).
    pub fn insert(&self, key: &FlowKey, flags: u8, generation: u64, now: Instant) -> Insert {
        let n = Normal::of(key);
        let protocol = key.protocol;
        let (state, fins) = if protocol == Protocol::TCP {
            if flags & tcp_flags::RST != 0 {
                return Insert::NotTracked;
            }
            if flags & tcp_flags::SYN != 0 && flags & tcp_flags::ACK == 0 {
                (FlowState::TcpSynSent, 0)
            } else {
                // Mid-stream pickup; a FIN already counts.
                match tcp_step(FlowState::TcpEstablished, 0, n.from_low, true, flags) {
                    TcpStep::To(st, f) => (st, f),
                    TcpStep::Reopen => (FlowState::TcpSynSent, 0),
                }
            }
        } else {
            (FlowState::Unreplied, 0)
        };
        let now_ms = millis(now);
        let expiry = now_ms + self.timeout_ms(protocol, state);
        let word = pack_state(state, n.from_low, fins, expiry);
        for _ in 0..WRITE_TRIES {
            // The best victim: (eviction class, expiry); an empty or expired slot is class 0,
            // taken from the emptier bucket (two-choice hashing keeps buckets even).
            let mut best: Option<(Loc, Snap, (u8, u64))> = None;
            let mut emptier = usize::MAX;
            let (buckets, tag) = self.place(&n);
            for bucket in buckets {
                let mut live = 0;
                let mut free: Option<(Loc, Snap)> = None;
                for slot in 0..BUCKET_SLOTS {
                    let at = Loc { bucket, slot };
                    let Some(s) = self.slot(at).read() else {
                        continue;
                    };
                    if !s.live(now_ms) {
                        free = free.or(Some((at, s)));
                        continue;
                    }
                    if s.key0 == n.key0 && s.key1 == n.key1 {
                        return Insert::Exists;
                    }
                    live += 1;
                    let class = s.flow_state().map_or(0, FlowState::eviction_class);
                    let rank = (class, s.expiry_ms());
                    if best.as_ref().is_none_or(|b| b.2 .0 != 0 && rank < b.2) {
                        best = Some((at, s, rank));
                    }
                }
                if let Some((at, s)) = free {
                    if live < emptier {
                        emptier = live;
                        best = Some((at, s, (0, 0)));
                    }
                }
            }
            let Some((at, s, rank)) = best else { break };
            if rank.0 >= ASSURED {
                break;
            }
            let fields = (n.key0, n.key1, word);
            let generation = generation_tag(generation);
            if self
                .slot(at)
                .write(&s, fields, generation, self.key_tag(at, tag))
            {
                self.inserted.fetch_add(1, Ordering::Relaxed);
                let evicted = s.live(now_ms);
                if evicted {
                    self.evicted.fetch_add(1, Ordering::Relaxed);
                }
                return Insert::Inserted { evicted };
            }
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        Insert::Refused
    }

    /// Removes the entry of the flow of `key` (either direction); true if there was one.
    pub fn remove(&self, key: &FlowKey) -> bool {
        let n = Normal::of(key);
        for _ in 0..WRITE_TRIES {
            let Some((at, s)) = self.find(&n, 0) else {
                return false;
            };
            let generation = (s.version >> 32) as u32;
            if self
                .slot(at)
                .write(&s, (0, 0, 0), generation, self.key_tag(at, 0))
            {
                return true;
            }
        }
        false
    }

    /// Records that the entry of the flow of `key` is allowed under policy `generation`; false
    /// if there is no live entry (or it kept changing under us).
    pub fn set_generation(&self, key: &FlowKey, generation: u64, now: Instant) -> bool {
        let n = Normal::of(key);
        for _ in 0..WRITE_TRIES {
            let Some((at, s)) = self.find(&n, millis(now)) else {
                return false;
            };
            let slot = self.slot(at);
            // One word holds both the sequence and the tag: bump the sequence by two (even to
            // even) so readers that copied the old tag retry.
            let seq = (s.version as u32).wrapping_add(2);
            let next = u64::from(seq) | (u64::from(generation_tag(generation)) << 32);
            if slot
                .version
                .compare_exchange(s.version, next, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return true;
            }
        }
        false
    }

    /// The number of live entries at `now`. Walks the whole table: for metrics, not packets.
    pub fn len(&self, now: Instant) -> usize {
        let now_ms = millis(now);
        self.buckets
            .iter()
            .flat_map(|b| b.slots.iter())
            .filter(|slot| slot.read().is_some_and(|s| s.live(now_ms)))
            .count()
    }

    /// True when no entry is live at `now`.
    pub fn is_empty(&self, now: Instant) -> bool {
        self.len(now) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const SYN: u8 = tcp_flags::SYN;
    const ACK: u8 = tcp_flags::ACK;
    const FIN: u8 = tcp_flags::FIN;
    const RST: u8 = tcp_flags::RST;

    fn key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, protocol: Protocol) -> FlowKey {
        FlowKey {
            src: Ipv4Addr::from(src),
            dst: Ipv4Addr::from(dst),
            protocol,
            src_port: sport,
            dst_port: dport,
        }
    }

    fn tcp() -> FlowKey {
        key([10, 0, 0, 2], 40000, [10, 0, 1, 3], 80, Protocol::TCP)
    }

    fn at(secs: u64) -> Instant {
        Instant::from_secs(secs)
    }

    fn small(capacity: usize) -> Conntrack {
        Conntrack::new(ConntrackConfig {
            capacity,
            ..ConntrackConfig::default()
        })
    }

    #[test]
    fn tag_bytes_match() {
        let word = 0x0033_0000_0000_3300_u64 | 0x11;
        let m = byte_matches(word, 0x33);
        assert_eq!(m & (0x80 << 8), 0x80 << 8);
        assert_eq!(m & (0x80 << 48), 0x80 << 48);
        // Only candidates: every real match is in the mask; false ones only above a real one.
        assert_eq!(
            m & !((0x80 << 8) | (0x80 << 48) | (0x80 << 16) | (0x80 << 56)),
            0
        );
        assert_eq!(byte_matches(word, 0x55), 0);
    }

    #[test]
    fn tcp_state_walk() {
        let ct = small(64);
        let k = tcp();
        let r = k.reversed();
        assert_eq!(ct.track(&k, SYN, at(0)), None);
        assert_eq!(
            ct.insert(&k, SYN, 3, at(0)),
            Insert::Inserted { evicted: false }
        );
        assert_eq!(ct.insert(&k, SYN, 3, at(0)), Insert::Exists);
        let step =
            |key: &FlowKey, flags, t| ct.track(key, flags, at(t)).map(|t| (t.direction, t.state));
        use FlowDirection::*;
        use FlowState::*;
        assert_eq!(
            step(&k, SYN, 1),
            Some((Original, TcpSynSent)),
            "SYN retransmit"
        );
        assert_eq!(step(&r, SYN | ACK, 1), Some((Reply, TcpSynRecv)));
        assert_eq!(step(&k, ACK, 1), Some((Original, TcpEstablished)));
        assert_eq!(step(&r, ACK, 2), Some((Reply, TcpEstablished)));
        assert_eq!(step(&r, FIN | ACK, 3), Some((Reply, TcpFinWait)));
        assert_eq!(
            step(&r, FIN | ACK, 3),
            Some((Reply, TcpFinWait)),
            "FIN retransmit"
        );
        assert_eq!(step(&k, FIN | ACK, 4), Some((Original, TcpTimeWait)));
        assert_eq!(step(&r, ACK, 4), Some((Reply, TcpTimeWait)));
        let t = ct.get(&r, at(4)).expect("tracked");
        assert_eq!(t.original(&r), k);
        assert_eq!(t.generation, 3);
        // TIME_WAIT lasts 120 s after the last packet.
        assert!(ct.get(&k, at(4 + 119)).is_some());
        assert!(ct.get(&k, at(4 + 120)).is_none());
    }

    #[test]
    fn unchanged_agrees_with_advance() {
        // The quick test of the per-packet path against the state machine: whenever it says a
        // packet changes nothing, the state machine agrees, for every state (with the FINs it
        // can hold), flag byte, direction and protocol class, just inside and outside the
        // refresh granularity. And it says so for the steady case, an established flow's ACKs.
        let ct = small(64);
        let now_ms = 1_000_000;
        let fins_of = |state| match state {
            FlowState::TcpFinWait => vec![FIN_LOW, FIN_HIGH],
            FlowState::TcpTimeWait => vec![FIN_LOW | FIN_HIGH],
            FlowState::TcpClose => vec![0, FIN_LOW, FIN_HIGH, FIN_LOW | FIN_HIGH],
            _ => vec![0],
        };
        let mut quick = 0;
        for protocol in [Protocol::TCP, Protocol::UDP, Protocol::ICMP, Protocol(47)] {
            for state in FlowState::ALL {
                let timeout = ct.timeout_ms(protocol, state);
                for fins in fins_of(state) {
                    for (orig_is_low, from_low) in [(true, true), (true, false), (false, true)] {
                        for slack in [0, REFRESH_MS - 1, REFRESH_MS, REFRESH_MS + 1] {
                            let expiry = now_ms + timeout - slack;
                            let snap = Snap {
                                version: (7 << 32) | 2,
                                key0: 1,
                                key1: VALID,
                                state: pack_state(state, orig_is_low, fins, expiry),
                            };
                            let n = Normal {
                                key0: 1,
                                key1: VALID,
                                from_low,
                            };
                            for flags in 0..=u8::MAX {
                                let Some(t) = ct.unchanged(&n, &snap, protocol, flags, now_ms)
                                else {
                                    continue;
                                };
                                quick += 1;
                                assert_eq!(
                                    ct.advance(&n, &snap, protocol, flags, now_ms),
                                    Advance::Unchanged(t),
                                    "{protocol:?} {state:?} fins {fins:x} flags {flags:#x}"
                                );
                            }
                        }
                    }
                }
            }
        }
        assert!(quick > 0);
        let n = Normal::of(&tcp());
        let snap = Snap {
            version: 2,
            key0: n.key0,
            key1: n.key1,
            state: pack_state(FlowState::TcpEstablished, true, 0, now_ms + 6 * 3600 * 1000),
        };
        for flags in [ACK, ACK | tcp_flags::PSH] {
            assert!(ct
                .unchanged(&n, &snap, Protocol::TCP, flags, now_ms)
                .is_some());
        }
    }

    #[test]
    fn rst_closes_and_syn_reopens_afresh() {
        let ct = small(64);
        let k = tcp();
        ct.insert(&k, SYN, 1, at(0));
        ct.track(&k.reversed(), SYN | ACK, at(0));
        ct.track(&k, ACK, at(0));
        let t = ct.track(&k.reversed(), RST, at(1)).expect("tracked");
        assert_eq!(t.state, FlowState::TcpClose);
        assert!(ct.get(&k, at(10)).is_some(), "CLOSE lasts 10 s");
        // A new SYN on the closed tuple is a miss, and the old entry is gone.
        assert_eq!(ct.track(&k, SYN, at(2)), None);
        assert_eq!(ct.get(&k, at(2)), None);
        // An RST with no entry creates none.
        assert_eq!(ct.insert(&k, RST, 1, at(3)), Insert::NotTracked);
        assert!(ct.is_empty(at(3)));
    }

    #[test]
    fn mid_stream_pickup_is_established() {
        let ct = small(64);
        let k = tcp();
        assert_eq!(
            ct.insert(&k, ACK, 1, at(0)),
            Insert::Inserted { evicted: false }
        );
        let t = ct.track(&k.reversed(), ACK, at(2)).expect("tracked");
        assert_eq!(
            (t.direction, t.state),
            (FlowDirection::Reply, FlowState::TcpEstablished)
        );
        assert!(ct.get(&k, at(2 + 6 * 3600 - 1)).is_some());
        assert!(ct.get(&k, at(2 + 6 * 3600)).is_none(), "established: 6 h");
    }

    #[test]
    fn established_timeout_refreshes_with_traffic() {
        let ct = small(64);
        let k = tcp();
        ct.insert(&k, ACK, 1, at(0));
        let hours = |h: u64| h * 3600;
        ct.track(&k, ACK, at(hours(5)));
        assert!(ct.get(&k, at(hours(10))).is_some(), "refreshed at 5 h");
        assert!(ct.get(&k, at(hours(11))).is_none());
        // Within the refresh granularity nothing is written, and the expiry barely moves.
        let ct = small(64);
        ct.insert(&k, ACK, 1, Instant::from_millis(0));
        ct.track(&k, ACK, Instant::from_millis(900));
        assert!(ct
            .get(&k, Instant::from_millis(6 * 3600 * 1000 - 1))
            .is_some());
        assert!(ct.get(&k, Instant::from_millis(6 * 3600 * 1000)).is_none());
    }

    #[test]
    fn udp_and_icmp_timeouts() {
        let ct = small(64);
        let u = key([10, 0, 0, 2], 5353, [10, 0, 1, 3], 53, Protocol::UDP);
        ct.insert(&u, 0, 1, at(0));
        assert_eq!(
            ct.get(&u, at(29)).map(|t| t.state),
            Some(FlowState::Unreplied)
        );
        assert!(ct.get(&u, at(30)).is_none(), "unreplied UDP: 30 s");
        ct.insert(&u, 0, 1, at(100));
        let t = ct.track(&u.reversed(), 0, at(101)).expect("tracked");
        assert_eq!(
            (t.direction, t.state),
            (FlowDirection::Reply, FlowState::Replied)
        );
        assert!(ct.get(&u, at(101 + 119)).is_some());
        assert!(ct.get(&u, at(101 + 120)).is_none(), "replied UDP: 120 s");

        // ICMP echo: the identifier in both ports, so request and reply share the key.
        let ping = key([10, 0, 0, 2], 77, [10, 0, 1, 3], 77, Protocol::ICMP);
        ct.insert(&ping, 0, 1, at(0));
        let t = ct.track(&ping.reversed(), 0, at(1)).expect("tracked");
        assert_eq!(t.direction, FlowDirection::Reply);
        assert!(ct.get(&ping, at(30)).is_some());
        assert!(ct.get(&ping, at(31)).is_none(), "ICMP: 30 s");

        let gre = key([10, 0, 0, 2], 0, [10, 0, 1, 3], 0, Protocol(47));
        ct.insert(&gre, 0, 1, at(0));
        ct.track(&gre.reversed(), 0, at(0));
        assert!(ct.get(&gre, at(599)).is_some());
        assert!(ct.get(&gre, at(600)).is_none(), "other, replied: 600 s");
    }

    /// A table of one pair of buckets: 16 slots every flow shares.
    fn one_pair() -> Conntrack {
        small(16)
    }

    fn udp_flow(i: u16) -> FlowKey {
        key([10, 0, 0, 2], 1000 + i, [10, 0, 1, 3], 53, Protocol::UDP)
    }

    fn tcp_flow(i: u16) -> FlowKey {
        key([10, 0, 0, 2], 1000 + i, [10, 0, 1, 3], 80, Protocol::TCP)
    }

    #[test]
    fn full_table_evicts_expired_then_closing_then_unconfirmed() {
        let ct = one_pair();
        assert_eq!(ct.capacity(), 16);
        // 16 established flows, then flow 0 closes (RST) and flow 1 starts closing (FIN).
        for i in 0..16 {
            assert_eq!(
                ct.insert(&tcp_flow(i), ACK, 1, at(0)),
                Insert::Inserted { evicted: false }
            );
        }
        ct.track(&tcp_flow(0), RST, at(1));
        ct.track(&tcp_flow(1), FIN | ACK, at(1));
        let fresh = udp_flow(100);
        assert_eq!(
            ct.insert(&fresh, 0, 1, at(2)),
            Insert::Inserted { evicted: true }
        );
        assert!(
            ct.get(&tcp_flow(0), at(2)).is_none(),
            "the CLOSE entry went first"
        );
        let next = udp_flow(101);
        assert_eq!(
            ct.insert(&next, 0, 1, at(3)),
            Insert::Inserted { evicted: true }
        );
        assert!(
            ct.get(&tcp_flow(1), at(3)).is_none(),
            "then the FIN_WAIT one"
        );
        // Now 14 established and 2 unreplied UDP: the one closer to expiry goes.
        assert_eq!(
            ct.insert(&udp_flow(102), 0, 1, at(4)),
            Insert::Inserted { evicted: true }
        );
        assert!(ct.get(&fresh, at(4)).is_none());
        assert!(ct.get(&next, at(4)).is_some());
        // Replies confirm the UDP flows; only live assured entries remain: refused.
        ct.track(&next.reversed(), 0, at(4));
        ct.track(&udp_flow(102).reversed(), 0, at(4));
        assert_eq!(ct.insert(&udp_flow(103), 0, 1, at(5)), Insert::Refused);
        assert_eq!(ct.stats().refused, 1);
        for i in 2..16 {
            assert!(
                ct.get(&tcp_flow(i), at(5)).is_some(),
                "no established flow was evicted"
            );
        }
        // Once the UDP flows expire (120 s after their replies), their slots are reused.
        assert_eq!(
            ct.insert(&udp_flow(103), 0, 1, at(4 + 120)),
            Insert::Inserted { evicted: false }
        );
        let stats = ct.stats();
        assert_eq!((stats.inserted, stats.evicted, stats.refused), (20, 3, 1));
        assert_eq!(ct.len(at(4 + 120)), 15);
    }

    #[test]
    fn three_quarters_full_refuses_nothing() {
        // Flows as a busy server sees them: one address and port, many clients. Two-choice
        // buckets take 75% of the capacity in established flows without a refusal.
        let ct = small(1 << 12);
        let server = Ipv4Addr::new(10, 244, 1, 10);
        let n = ct.capacity() * 3 / 4;
        for i in 0..n as u32 {
            let k = FlowKey {
                src: Ipv4Addr::from(0x0af4_0000 | (i >> 6)),
                dst: server,
                protocol: Protocol::TCP,
                src_port: 30_000 + (i & 63) as u16,
                dst_port: 80,
            };
            assert!(matches!(
                ct.insert(&k, ACK, 1, at(0)),
                Insert::Inserted { evicted: false }
            ));
        }
        assert_eq!(ct.stats().refused, 0);
        assert_eq!(ct.len(at(0)), n);
    }

    #[test]
    fn remove_and_generation() {
        let ct = small(64);
        let k = tcp();
        ct.insert(&k, ACK, 5, at(0));
        assert_eq!(ct.get(&k, at(0)).map(|t| t.generation), Some(5));
        assert!(ct.set_generation(&k.reversed(), 6, at(0)));
        assert_eq!(ct.get(&k, at(0)).map(|t| t.generation), Some(6));
        assert_eq!(generation_tag(u64::from(u32::MAX) + 7), 6);
        assert!(ct.remove(&k.reversed()));
        assert!(!ct.remove(&k));
        assert!(!ct.set_generation(&k, 7, at(0)));
    }

    #[test]
    fn threads_insert_and_look_up_concurrently() {
        let ct = Arc::new(small(1 << 14));
        let threads = 4u8;
        let per = 2000u16;
        let flow = |t: u8, i: u16| key([10, 1, t, 1], i, [10, 2, 0, 1], 80, Protocol::TCP);
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let ct = ct.clone();
                std::thread::spawn(move || {
                    let mut seen = 0usize;
                    for i in 0..per {
                        let k = flow(t, i);
                        assert!(matches!(
                            ct.insert(&k, SYN, 1, at(0)),
                            Insert::Inserted { .. }
                        ));
                        // The reply, as another worker would see it: SYN-ACK, then the ACK.
                        let r = ct.track(&k.reversed(), SYN | ACK, at(0)).expect("own flow");
                        assert_eq!(r.original(&k.reversed()), k);
                        ct.track(&k, ACK, at(0)).expect("own flow");
                        // Other threads' flows, possibly mid-write: a hit is always consistent.
                        let other = flow((t + 1) % threads, i);
                        if let Some(o) = ct.get(&other, at(0)) {
                            assert_eq!(o.original(&other), other);
                            seen += 1;
                        }
                    }
                    seen
                })
            })
            .collect();
        for h in handles {
            h.join().expect("worker");
        }
        for t in 0..threads {
            for i in 0..per {
                let got = ct
                    .get(&flow(t, i).reversed(), at(1))
                    .expect("every flow tracked");
                assert_eq!(got.state, FlowState::TcpEstablished);
                assert_eq!(got.direction, FlowDirection::Reply);
            }
        }
        assert_eq!(ct.stats().refused, 0);
        assert_eq!(ct.len(at(1)), usize::from(threads) * usize::from(per));
    }

    #[test]
    fn readers_never_see_torn_entries_under_writes() {
        // One flow updated over and over (its state flips through FIN/RST/reopen) by two
        // writers while two readers look it up and a second flow in the same buckets: every
        // hit has a valid state, and the steady flow is always found. The writers' clock stays
        // within the steady flow's 30 s (unreplied UDP): past it, its slot is free to them.
        let ct = Arc::new(small(16));
        let k = tcp();
        let steady = udp_flow(7);
        ct.insert(&steady, 0, 9, at(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let (ct, stop) = (ct.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut t = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        t += 1;
                        let k = if w == 0 { k } else { k.reversed() };
                        if ct.track(&k, SYN, at(t % 20)).is_none() {
                            ct.insert(&k, SYN, t, at(t % 20));
                        }
                        ct.track(&k.reversed(), SYN | ACK, at(t % 20));
                        ct.track(&k, FIN | ACK, at(t % 20));
                        ct.track(&k, RST, at(t % 20));
                    }
                })
            })
            .collect();
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let ct = ct.clone();
                std::thread::spawn(move || {
                    for _ in 0..100_000 {
                        if let Some(t) = ct.get(&k, at(1)) {
                            assert!(FlowState::ALL.contains(&t.state));
                            assert!(
                                t.state != FlowState::Unreplied && t.state != FlowState::Replied
                            );
                        }
                        let s = ct
                            .get(&steady, at(1))
                            .expect("the steady flow is always found");
                        assert_eq!((s.state, s.generation), (FlowState::Unreplied, 9));
                    }
                })
            })
            .collect();
        for r in readers {
            r.join().expect("reader");
        }
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().expect("writer");
        }
    }
}
