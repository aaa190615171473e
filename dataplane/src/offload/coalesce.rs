//! Coalescing decapsulated TCP segments into one super-frame for a TUN write (receive offload).
//!
//! A [`Coalescer`] takes the inner packets of one receive batch in order. Consecutive segments of
//! one flow merge, as the kernel's `tcp_gro_receive` (Linux `net/ipv4/tcp_offload.c`) and
//! wireguard-go's `tcpGRO` merge them, when all of these hold:
//!
//! - both are unfragmented IPv4 without options, with DF set, the same addresses, TOS and TTL,
//!   and a valid IPv4 header checksum;
//! - both are TCP with the same ports, ACK number and options (byte for byte: timestamps differ
//!   between segments sent at different ticks, which ends a merge as in the kernel), ACK set, no
//!   SYN, RST, URG, FIN or CWR, and flags otherwise equal except PSH;
//! - the new segment starts where the merged payload ends (sequence numbers), carries at most the
//!   first segment's payload, and the super-frame stays within 65,535 bytes;
//! - the merge is still open: a PSH segment or one shorter than the first closes it (the kernel
//!   flushes there too; `gso_size` must describe every segment but the last);
//! - the new segment's TCP checksum is valid: the super-frame is written with a partial checksum
//!   (`CHECKSUM_PARTIAL`), which the kernel trusts, so a corrupt segment must not hide in it.
//!
//! The super-frame keeps the first segment's headers with the total length, IP header checksum,
//! the latest window and, if any segment had it, PSH; its TCP checksum field holds the folded
//! pseudo-header sum over the whole TCP length, and its virtio-net header says `GSO_TCPV4`,
//! `gso_size` = the first segment's payload, `NEEDS_CSUM` with `csum_start` at the TCP header
//! and `csum_offset` 16: what the kernel itself hands a TUN reader for a TSO packet. A merge of one
//! packet is written as it came, behind an all-zero header.

use super::tcp4::{self, addrs, Tcp4};
use super::vnet::{Gso, VnetHeader, VnetRepr, VNET_HDR_LEN};
use super::OffloadError;
use crate::wire::checksum;
use crate::wire::ipv4::{field as ip, Ipv4Packet};
use crate::wire::tcp::{self, flags, TcpPacket};

/// Bytes a [`Coalescer`] buffer needs: a virtio-net header and the largest IPv4 packet.
pub const SUPER_FRAME_BUF: usize = VNET_HDR_LEN + 65_535;

/// What [`Coalescer::push`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// The coalescer was empty and now holds this packet as the head of a merge.
    Started,
    /// Appended to the merge.
    Appended,
    /// Not taken: call [`Coalescer::finish`] to write out what is held (if anything), then push
    /// again or write the packet singly. A packet that cannot start a merge is rejected even by
    /// an empty coalescer.
    Rejected,
}

/// A finished merge, ready for one TUN write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coalesced<'a> {
    /// The virtio-net header followed by the packet.
    pub bytes: &'a [u8],
    /// How many packets were merged.
    pub packets: usize,
    /// Their lengths summed (the IPv4 total lengths as received).
    pub packet_bytes: usize,
}

/// The head of the merge being built.
#[derive(Debug, Clone, Copy)]
struct Head {
    ip_len: usize,
    hdr_len: usize,
    gso_size: usize,
    next_seq: u32,
    packets: usize,
    packet_bytes: usize,
    /// A PSH or short segment was appended: nothing more may follow.
    closed: bool,
}

/// Merges consecutive segments of one TCP flow into a buffer the caller provides (at least
/// [`SUPER_FRAME_BUF`] bytes), without allocating.
#[derive(Debug)]
pub struct Coalescer<B> {
    buf: B,
    /// Bytes of packet held at `buf[VNET_HDR_LEN..]`.
    len: usize,
    head: Option<Head>,
}

/// Checks a packet may take part in a merge at all; returns its layout.
fn eligible(pkt: &[u8]) -> Option<Tcp4> {
    let t = Tcp4::parse(pkt).ok()?;
    let f = t.tcp(pkt).flags();
    let forbidden = flags::SYN | flags::RST | flags::URG | flags::FIN | flags::CWR;
    let ok = t.ip_len == 20
        && t.ip(pkt).dont_frag()
        && f & forbidden == 0
        && f & flags::ACK != 0
        && t.payload_len() > 0
        && checksum::data(&pkt[..t.ip_len]) == 0xffff;
    ok.then_some(t)
}

/// Copies the TCP bytes `pkt[from..t.total]` to `out` (as long) and tells whether the segment's
/// TCP checksum is valid, in one pass over the payload: the bytes before `from` are summed where
/// they lie.
fn copy_checked(pkt: &[u8], t: &Tcp4, from: usize, out: &mut [u8]) -> bool {
    let (src, dst) = addrs(pkt);
    let acc = tcp4::pseudo(src, dst, t.total - t.ip_len);
    let acc = checksum::accumulate(acc, &pkt[t.ip_len..from]);
    checksum::fold(checksum::copy_and_accumulate(acc, &pkt[from..t.total], out)) == 0xffff
}

impl Head {
    /// The head of a merge that `pkt` (laid out as `t`) starts.
    fn start(pkt: &[u8], t: &Tcp4) -> Head {
        let payload = t.payload_len();
        Head {
            ip_len: t.ip_len,
            hdr_len: t.hdr_len(),
            gso_size: payload,
            next_seq: t.tcp(pkt).seq_number().wrapping_add(payload as u32),
            packets: 1,
            packet_bytes: t.total,
            closed: t.tcp(pkt).flags() & flags::PSH != 0,
        }
    }

    /// The head once `pkt` (laid out as `t`) is appended.
    fn appended(self, pkt: &[u8], t: &Tcp4) -> Head {
        let payload = t.payload_len();
        let tcp = t.tcp(pkt);
        Head {
            next_seq: tcp.seq_number().wrapping_add(payload as u32),
            packets: self.packets + 1,
            packet_bytes: self.packet_bytes + t.total,
            closed: tcp.flags() & flags::PSH != 0 || payload < self.gso_size,
            ..self
        }
    }
}

/// Whether `pkt` (laid out as `t`) continues the merge of `len` bytes whose head is `head` and
/// whose headers are `held`: the rules of the module doc, but the checksum's.
fn continues(held: &[u8], head: &Head, len: usize, pkt: &[u8], t: &Tcp4) -> bool {
    let th = head.ip_len;
    if head.hdr_len != t.hdr_len() || head.closed {
        return false;
    }
    // Compared as byte ranges of wire's fields, of lengths known at compile time, so each is one
    // or two integer comparisons.
    let (ports, ack) = (
        th + tcp::field::SRC_PORT.start..th + tcp::field::DST_PORT.end,
        th + tcp::field::ACK_NUM.start..th + tcp::field::ACK_NUM.end,
    );
    const ADDRS: core::ops::Range<usize> = ip::SRC_ADDR.start..ip::DST_ADDR.end;
    t.tcp(pkt).seq_number() == head.next_seq
        && t.payload_len() <= head.gso_size
        && len + t.payload_len() <= 65_535
        && held[ip::TOS] == pkt[ip::TOS]
        && held[ip::TTL] == pkt[ip::TTL]
        && held[ADDRS] == pkt[ADDRS]
        && held[ports.clone()] == pkt[ports]
        && held[ack.clone()] == pkt[ack]
        && (held[th + tcp::field::FLAGS] ^ pkt[th + tcp::field::FLAGS]) & !flags::PSH == 0
        // Options.
        && held[th + tcp::HEADER_LEN..head.hdr_len] == pkt[th + tcp::HEADER_LEN..head.hdr_len]
}

/// Carries the latest window into the held headers, and PSH if `pkt` pushes.
fn update_held(held: &mut [u8], th: usize, pkt: &[u8]) {
    let from = TcpPacket::new_unchecked(&pkt[th..]);
    let (window, push) = (from.window_len(), from.flags() & flags::PSH);
    let mut to = TcpPacket::new_unchecked(&mut held[th..]);
    to.set_window_len(window);
    to.set_flags(to.flags() | push);
}

/// Makes the held headers those of the `len`-byte super-frame `head` describes (total length,
/// IP checksum, partial TCP checksum) and returns its virtio-net header; a merge of one packet
/// is left as it came, behind an all-zero header.
fn finish_headers(held: &mut [u8], head: &Head, len: usize) -> VnetRepr {
    if head.packets == 1 {
        return VnetRepr::NONE;
    }
    // len <= 65535, checked on every append.
    let mut ip = Ipv4Packet::new_unchecked(&mut held[..head.ip_len]);
    ip.set_total_len(len as u16);
    ip.fill_checksum();
    let (src, dst) = addrs(held);
    let partial = checksum::fold(tcp4::pseudo(src, dst, len - head.ip_len));
    TcpPacket::new_unchecked(&mut held[head.ip_len..head.hdr_len]).set_checksum(partial);
    // Header lengths and gso_size are bounded by the 65535-byte packet.
    VnetRepr {
        needs_csum: true,
        gso: Gso::TcpV4,
        ecn: false,
        hdr_len: head.hdr_len as u16,
        gso_size: head.gso_size as u16,
        csum_start: head.ip_len as u16,
        csum_offset: tcp::field::CHECKSUM.start as u16,
    }
}

/// Whether the TCP checksum of `pkt` (laid out as `t`) is valid, summed where it lies.
fn checksum_valid(pkt: &[u8], t: &Tcp4) -> bool {
    let (src, dst) = addrs(pkt);
    t.tcp(pkt).verify_checksum(src, dst)
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> Coalescer<B> {
    /// An empty coalescer over `buf`.
    ///
    /// # Panics
    ///
    /// If `buf` is shorter than [`SUPER_FRAME_BUF`]: a bug in the caller's setup.
    pub fn new(buf: B) -> Self {
        assert!(
            buf.as_ref().len() >= SUPER_FRAME_BUF,
            "a coalescer buffer needs {SUPER_FRAME_BUF} bytes"
        );
        Coalescer {
            buf,
            len: 0,
            head: None,
        }
    }

    /// Whether a merge is held.
    pub fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    /// Offers the IPv4 packet `pkt` (its bytes are copied if taken).
    pub fn push(&mut self, pkt: &[u8]) -> Push {
        let Some(t) = eligible(pkt) else {
            return Push::Rejected;
        };
        let payload = t.payload_len();
        let Some(head) = self.head else {
            let buf = self.buf.as_mut();
            let at = VNET_HDR_LEN + t.ip_len;
            if !copy_checked(pkt, &t, t.ip_len, &mut buf[at..VNET_HDR_LEN + t.total]) {
                return Push::Rejected;
            }
            buf[VNET_HDR_LEN..at].copy_from_slice(&pkt[..t.ip_len]);
            self.len = t.total;
            self.head = Some(Head::start(pkt, &t));
            return Push::Started;
        };
        let held = &self.buf.as_ref()[VNET_HDR_LEN..VNET_HDR_LEN + head.hdr_len];
        if !continues(held, &head, self.len, pkt, &t) {
            return Push::Rejected;
        }
        let th = head.ip_len;
        let buf = self.buf.as_mut();
        let at = VNET_HDR_LEN + self.len;
        // Past the held bytes: a segment whose checksum fails leaves nothing behind.
        if !copy_checked(pkt, &t, t.hdr_len(), &mut buf[at..at + payload]) {
            return Push::Rejected;
        }
        update_held(&mut buf[VNET_HDR_LEN..VNET_HDR_LEN + head.hdr_len], th, pkt);
        self.len += payload;
        self.head = Some(head.appended(pkt, &t));
        Push::Appended
    }

    /// Ends the merge held, if any, and returns it with its virtio-net header in front; the
    /// coalescer is empty afterwards.
    pub fn finish(&mut self) -> Option<Coalesced<'_>> {
        let head = self.head.take()?;
        let len = self.len;
        self.len = 0;
        let buf = self.buf.as_mut();
        let vnet = finish_headers(
            &mut buf[VNET_HDR_LEN..VNET_HDR_LEN + head.hdr_len],
            &head,
            len,
        );
        vnet.emit(&mut VnetHeader::new_unchecked(&mut buf[..VNET_HDR_LEN]));
        Some(Coalesced {
            bytes: &self.buf.as_ref()[..VNET_HDR_LEN + len],
            packets: head.packets,
            packet_bytes: head.packet_bytes,
        })
    }
}

/// Payload pieces a [`GatherCoalescer`] merge holds at most: a 64 KiB super-frame of segments
/// of at least about 1 KiB, as UDP GRO delivers them (`UDP_GRO_CNT_MAX` is 64).
pub const GATHER_PARTS: usize = 64;

/// Longest IPv4 and TCP headers, options included.
pub const MAX_HDR_LEN: usize = 60 + 60;

/// A finished gathered merge: its headers here, its payload where the caller's packets lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gathered<'a> {
    /// The virtio-net header followed by the super-frame's IPv4 and TCP headers.
    pub head: &'a [u8],
    /// The payload pieces, in order, as `(at, len)` in the caller's coordinates (see
    /// [`GatherCoalescer::push`]); the super-frame is `head` followed by them.
    pub parts: &'a [(usize, usize)],
    /// How many packets were merged.
    pub packets: usize,
    /// Their lengths summed (the IPv4 total lengths as received).
    pub packet_bytes: usize,
}

/// Like [`Coalescer`], with the same rules, but copies only headers: each merged segment's
/// payload stays where the caller received it and is recorded as a piece, so the super-frame
/// leaves with one gathered write (`writev(2)`) and the payload is read once, for its checksum,
/// instead of copied and read. The caller keeps the packets' bytes unchanged until
/// [`GatherCoalescer::finish`].
#[derive(Debug)]
pub struct GatherCoalescer {
    hdr: [u8; VNET_HDR_LEN + MAX_HDR_LEN],
    parts: [(usize, usize); GATHER_PARTS],
    nparts: usize,
    /// Bytes of the super-frame held: headers and payload pieces.
    len: usize,
    head: Option<Head>,
}

impl Default for GatherCoalescer {
    fn default() -> Self {
        GatherCoalescer {
            hdr: [0; VNET_HDR_LEN + MAX_HDR_LEN],
            parts: [(0, 0); GATHER_PARTS],
            nparts: 0,
            len: 0,
            head: None,
        }
    }
}

impl GatherCoalescer {
    /// Offers the IPv4 packet `pkt`, whose first byte is at position `at` of the caller's
    /// buffers; if taken, its payload is recorded as a piece at `at` plus its header length.
    pub fn push(&mut self, pkt: &[u8], at: usize) -> Push {
        let Some(t) = eligible(pkt) else {
            return Push::Rejected;
        };
        let hl = t.hdr_len();
        let piece = (at + hl, t.payload_len());
        let Some(head) = self.head else {
            if hl > MAX_HDR_LEN || !checksum_valid(pkt, &t) {
                return Push::Rejected;
            }
            self.hdr[VNET_HDR_LEN..VNET_HDR_LEN + hl].copy_from_slice(&pkt[..hl]);
            self.parts[0] = piece;
            self.nparts = 1;
            self.len = t.total;
            self.head = Some(Head::start(pkt, &t));
            return Push::Started;
        };
        let held = &self.hdr[VNET_HDR_LEN..VNET_HDR_LEN + head.hdr_len];
        if self.nparts == GATHER_PARTS
            || !continues(held, &head, self.len, pkt, &t)
            || !checksum_valid(pkt, &t)
        {
            return Push::Rejected;
        }
        update_held(
            &mut self.hdr[VNET_HDR_LEN..VNET_HDR_LEN + head.hdr_len],
            head.ip_len,
            pkt,
        );
        self.parts[self.nparts] = piece;
        self.nparts += 1;
        self.len += t.payload_len();
        self.head = Some(head.appended(pkt, &t));
        Push::Appended
    }

    /// Ends the merge held, if any, and returns it; the coalescer is empty afterwards.
    pub fn finish(&mut self) -> Option<Gathered<'_>> {
        let head = self.head.take()?;
        let hl = head.hdr_len;
        let vnet = finish_headers(
            &mut self.hdr[VNET_HDR_LEN..VNET_HDR_LEN + hl],
            &head,
            self.len,
        );
        vnet.emit(&mut VnetHeader::new_unchecked(
            &mut self.hdr[..VNET_HDR_LEN],
        ));
        let nparts = core::mem::take(&mut self.nparts);
        self.len = 0;
        Some(Gathered {
            head: &self.hdr[..VNET_HDR_LEN + hl],
            parts: &self.parts[..nparts],
            packets: head.packets,
            packet_bytes: head.packet_bytes,
        })
    }
}

/// Merges `segments`, which must all coalesce, into `out` (at least [`SUPER_FRAME_BUF`] bytes):
/// `out[..VNET_HDR_LEN]` receives the virtio-net header and the packet follows. Returns the bytes
/// written.
pub fn coalesce_tcp4(segments: &[&[u8]], out: &mut [u8]) -> Result<usize, OffloadError> {
    if out.len() < SUPER_FRAME_BUF {
        return Err(OffloadError::BufferTooSmall);
    }
    let mut c = Coalescer::new(out);
    for s in segments {
        if c.push(s) == Push::Rejected {
            return Err(OffloadError::NotCoalescable);
        }
    }
    c.finish()
        .map(|m| m.bytes.len())
        .ok_or(OffloadError::NotCoalescable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::offload::segment::segment_tcp4;

    /// Three 100-byte segments and a 40-byte tail of one flow, cut from a fixture super-frame.
    fn segments(flags: u8) -> Vec<Vec<u8>> {
        let payload: Vec<u8> = (0..340u32).map(|i| (i * 3) as u8).collect();
        let frame = crate::offload::segment::tests::super_frame(&payload, flags);
        let vnet = VnetRepr {
            needs_csum: true,
            gso: Gso::TcpV4,
            ecn: false,
            hdr_len: 52,
            gso_size: 100,
            csum_start: 20,
            csum_offset: 16,
        };
        let mut scratch = [0u8; 200];
        let mut segs = Vec::new();
        segment_tcp4(&frame, &vnet, &mut scratch, |s| segs.push(s.to_vec())).expect("segments");
        segs
    }

    #[test]
    fn merges_one_flow_and_stops_where_the_kernel_would() {
        let segs = segments(flags::ACK | flags::PSH);
        let mut c = Coalescer::new(vec![0u8; SUPER_FRAME_BUF]);
        assert_eq!(c.push(&segs[0]), Push::Started);
        assert_eq!(c.push(&segs[2]), Push::Rejected, "out of order");
        assert_eq!(c.push(&segs[1]), Push::Appended);
        assert_eq!(c.push(&segs[2]), Push::Appended);
        assert_eq!(c.push(&segs[3]), Push::Appended, "the short, pushing tail");
        let m = c.finish().expect("a merge");
        assert_eq!((m.packets, m.packet_bytes), (4, 3 * 152 + 92));
        let vnet = VnetRepr::parse_bytes(m.bytes).expect("header");
        assert_eq!(
            (vnet.gso, vnet.gso_size, vnet.hdr_len),
            (Gso::TcpV4, 100, 52)
        );
        assert_eq!((vnet.csum_start, vnet.csum_offset), (20, 16));
        let pkt = &m.bytes[VNET_HDR_LEN..];
        assert_eq!(pkt.len(), 52 + 340);
        assert_eq!(pkt[20 + tcp::field::FLAGS], flags::ACK | flags::PSH);
        assert_eq!(checksum::data(&pkt[..20]), 0xffff, "IP header checksum");
        assert!(c.is_empty());
        // A pure ACK never starts a merge; a lone segment comes back unchanged behind zeros.
        let mut ack = segs[0][..52].to_vec();
        ack[2..4].copy_from_slice(&52u16.to_be_bytes());
        assert_eq!(c.push(&ack), Push::Rejected);
        assert_eq!(c.push(&segs[1]), Push::Started);
        let m = c.finish().expect("a single");
        assert_eq!(m.bytes[..VNET_HDR_LEN], [0; VNET_HDR_LEN]);
        assert_eq!(&m.bytes[VNET_HDR_LEN..], &segs[1][..]);
    }

    #[test]
    fn corrupt_or_fin_segments_do_not_merge() {
        let segs = segments(flags::ACK);
        let mut other = segs[1].clone();
        other[20 + tcp::field::ACK_NUM.start + 3] ^= 1;
        let mut c = Coalescer::new(vec![0u8; SUPER_FRAME_BUF]);
        assert_eq!(c.push(&segs[0]), Push::Started);
        assert_eq!(
            c.push(&other),
            Push::Rejected,
            "the checksum no longer matches"
        );
        let fin = segments(flags::ACK | flags::FIN);
        assert_eq!(c.push(&fin[3]), Push::Rejected);
        assert_eq!(
            coalesce_tcp4(&[&segs[0]], &mut [0u8; 10]),
            Err(OffloadError::BufferTooSmall)
        );
    }
}
