//! TCP (and UDP) segmentation of a super-frame read from a TUN with `TUN_F_TSO4` (`TUN_F_USO4`),
//! and completion of a partial checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`) on a plain packet.
//!
//! The segments are what the kernel's `tcp_gso_segment`/`inet_gso_segment` would have sent
//! (Linux `net/ipv4/tcp_offload.c`, `af_inet.c`):
//!
//! - every segment carries a copy of the IPv4 header (options included) and the TCP header
//!   (options, such as timestamps, included) and `gso_size` payload bytes, the last one the rest;
//! - the IPv4 total length is the segment's, the IP ID is the super-frame's plus the segment's
//!   index (wrapping), and the header checksum is recomputed;
//! - the TCP sequence number advances by the payload before the segment; FIN and PSH stay only
//!   on the last segment and CWR only on the first (RFC 3168 §6.1.2: CWR is sent once);
//! - the TCP checksum is complete (pseudo-header, header and payload; RFC 793 §3.1), whatever the
//!   super-frame's checksum field held (the kernel leaves the pseudo-header sum there).
//!
//! A UDP super-frame (`GSO_UDP_L4`) is cut the same way into datagrams of `gso_size` payload
//! bytes (`__udp_gso_segment`, `net/ipv4/udp_offload.c`): IPv4 header as above, the UDP length
//! the datagram's, a complete UDP checksum (a result of 0 sent as `0xffff`, RFC 768).
//!
//! `hdr_len` from the kernel is only a hint (`skb_headlen`, not always the header length), so it
//! is recomputed from the IPv4 IHL and TCP data offset, as wireguard-go does.

use super::tcp4::{addrs, Tcp4};
use super::vnet::{Gso, VnetRepr};
use super::OffloadError;
use crate::wire::checksum;
use crate::wire::ipv4::{self, protocol, Ipv4Packet};
use crate::wire::tcp::{self, flags, TcpPacket};
use crate::wire::udp::{self, UdpPacket};
use core::ops::Range;

/// The segments of one IPv4/TCP or IPv4/UDP super-frame, emitted one at a time into caller
/// buffers.
#[derive(Debug, Clone)]
pub struct Ipv4Segments<'a> {
    frame: &'a [u8],
    t: Tcp4,
    /// A UDP super-frame (`GSO_UDP_L4`): `t.tcp_len` is the UDP header.
    udp: bool,
    mss: usize,
    /// Payload bytes already emitted.
    offset: usize,
    /// Segments already emitted.
    index: usize,
    /// Segments in all.
    count: usize,
    /// The ones'-complement sum of the IPv4 header without its total length, ID and checksum:
    /// the part every segment shares ([`header_sums`]).
    ip_base: u32,
    /// The same for the transport: pseudo-header without its length, TCP header without
    /// sequence number, offset/flags word and checksum (UDP: without length and checksum).
    l4_base: u32,
}

/// The per-super-frame parts of the segments' checksums, summed once: see
/// [`Ipv4Segments::ip_base`] and [`Ipv4Segments::l4_base`]. Each segment then adds only the
/// fields it changes (RFC 1624: a ones'-complement sum can be taken in any order and grouping).
fn header_sums(frame: &[u8], t: &Tcp4, udp: bool) -> (u32, u32) {
    let word = |at: usize| u32::from(checksum::word(frame, at));
    let ip_hdr = checksum::accumulate(0, &frame[..t.ip_len]);
    // Ones' complement: subtracting a word is adding its complement.
    let minus = |acc: u32, w: u32| checksum::combine(acc, u32::from(!(w as u16)));
    let ip_base = [
        ipv4::field::LENGTH.start,
        ipv4::field::IDENT.start,
        ipv4::field::CHECKSUM.start,
    ]
    .into_iter()
    .fold(ip_hdr, |acc, at| minus(acc, word(at)));
    let (src, dst) = addrs(frame);
    let th = t.ip_len;
    let l4 = &frame[th..t.hdr_len()];
    let (proto, skip): (u8, &[usize]) = if udp {
        (
            protocol::UDP,
            &[udp::field::LENGTH.start, udp::field::CHECKSUM.start],
        )
    } else {
        (
            protocol::TCP,
            &[
                tcp::field::SEQ_NUM.start,
                tcp::field::SEQ_NUM.start + 2,
                tcp::field::OFF_FLAGS.start,
                tcp::field::CHECKSUM.start,
            ],
        )
    };
    let acc = checksum::accumulate(checksum::pseudo_header_v4(src, dst, proto, 0), l4);
    let l4_base = skip.iter().fold(acc, |acc, &at| minus(acc, word(th + at)));
    (ip_base, l4_base)
}

impl<'a> Ipv4Segments<'a> {
    /// Checks the super-frame `frame` (an IPv4 packet, the virtio-net header already removed)
    /// against its header `vnet`, which must say [`Gso::TcpV4`] or [`Gso::UdpL4`] with a
    /// non-zero `gso_size`.
    pub fn new(frame: &'a [u8], vnet: &VnetRepr) -> Result<Self, OffloadError> {
        let udp = match vnet.gso {
            Gso::TcpV4 => false,
            Gso::UdpL4 => true,
            _ => return Err(OffloadError::UnsupportedGso(vnet.to_bytes()[1])),
        };
        if vnet.gso_size == 0 {
            return Err(OffloadError::ZeroGsoSize);
        }
        let t = if udp {
            Tcp4::parse_udp(frame)?
        } else {
            Tcp4::parse(frame)?
        };
        let mss = usize::from(vnet.gso_size);
        let count = t.payload_len().div_ceil(mss).max(1);
        let (ip_base, l4_base) = header_sums(frame, &t, udp);
        Ok(Ipv4Segments {
            frame,
            t,
            udp,
            mss,
            offset: 0,
            index: 0,
            count,
            ip_base,
            l4_base,
        })
    }

    /// Segments not yet emitted.
    pub fn remaining(&self) -> usize {
        self.count - self.index
    }

    /// Whether every segment has been emitted.
    pub fn is_done(&self) -> bool {
        self.index >= self.count
    }

    /// The length of the next segment, if any.
    pub fn next_len(&self) -> Option<usize> {
        if self.is_done() {
            return None;
        }
        Some(self.t.hdr_len() + self.mss.min(self.t.payload_len() - self.offset))
    }

    /// The super-frame the segments are cut from.
    pub fn frame(&self) -> &'a [u8] {
        self.frame
    }

    /// Writes the next segment at the start of `out` and returns its length; `None` once all are
    /// emitted. If `out` is too small nothing is written, the segment is skipped and
    /// [`OffloadError::BufferTooSmall`] returned.
    pub fn emit_next(&mut self, out: &mut [u8]) -> Option<Result<usize, OffloadError>> {
        let seg_len = self.next_len()?;
        let hl = self.t.hdr_len();
        let (index, offset) = self.advance(seg_len - hl);
        let Some(out) = out.get_mut(..seg_len) else {
            return Some(Err(OffloadError::BufferTooSmall));
        };
        let (head, body) = out.split_at_mut(hl);
        // The payload is summed as it is copied; the headers are added once they are final.
        let payload_sum = checksum::copy_and_accumulate(0, self.payload(offset, body.len()), body);
        self.write_headers(head, index, offset, body.len(), payload_sum);
        Some(Ok(seg_len))
    }

    /// Like [`Ipv4Segments::emit_next`], but writes only the next segment's IPv4 and TCP headers
    /// at the start of `out`, and returns their length and where in [`Ipv4Segments::frame`] the
    /// segment's payload lies: a gathered send takes it from there. The TCP checksum covers that
    /// payload, summed where it lies, without a copy.
    pub fn emit_next_headers(
        &mut self,
        out: &mut [u8],
    ) -> Option<Result<(usize, Range<usize>), OffloadError>> {
        let seg_len = self.next_len()?;
        let hl = self.t.hdr_len();
        let n = seg_len - hl;
        let (index, offset) = self.advance(n);
        let Some(head) = out.get_mut(..hl) else {
            return Some(Err(OffloadError::BufferTooSmall));
        };
        let payload_sum = checksum::accumulate(0, self.payload(offset, n));
        self.write_headers(head, index, offset, n, payload_sum);
        Some(Ok((hl, hl + offset..hl + offset + n)))
    }

    /// Moves past a segment of `n` payload bytes; returns the segment's index and payload offset.
    fn advance(&mut self, n: usize) -> (usize, usize) {
        let at = (self.index, self.offset);
        self.offset += n;
        self.index += 1;
        at
    }

    /// The `n` payload bytes at `offset` (after the headers) of the super-frame.
    fn payload(&self, offset: usize, n: usize) -> &'a [u8] {
        let hl = self.t.hdr_len();
        &self.frame[hl + offset..hl + offset + n]
    }

    /// Writes the headers (`hdr_len` bytes) of segment `index`, whose `n` payload bytes start at
    /// payload offset `offset` and sum to `payload_sum`, into `head`.
    fn write_headers(
        &self,
        head: &mut [u8],
        index: usize,
        offset: usize,
        n: usize,
        payload_sum: u32,
    ) {
        let Tcp4 {
            ip_len, tcp_len, ..
        } = self.t;
        let hl = self.t.hdr_len();
        let (first, last) = (index == 0, index + 1 == self.count);
        head.copy_from_slice(&self.frame[..hl]);
        let (ip_head, l4_head) = head.split_at_mut(ip_len);

        // hl + n <= the super-frame's total length, a u16.
        let seg_len = (hl + n) as u16;
        let id = self.t.ip(self.frame).ident().wrapping_add(index as u16);
        let mut ip = Ipv4Packet::new_unchecked(ip_head);
        ip.set_total_len(seg_len);
        ip.set_ident(id);
        let ip_sum = [seg_len, id]
            .into_iter()
            .fold(self.ip_base, |acc, w| checksum::combine(acc, u32::from(w)));
        ip.set_checksum(!checksum::fold(ip_sum));

        // tcp_len + n <= the super-frame's total length, a u16.
        let l4_len = (tcp_len + n) as u16;
        // The pseudo-header's length, then the fields this segment changes.
        let mut words = [l4_len, 0, 0, 0];
        if self.udp {
            let mut udp = UdpPacket::new_unchecked(l4_head);
            udp.set_len(l4_len);
            words[1] = l4_len;
            let sum = words[..2]
                .iter()
                .fold(self.l4_base, |acc, &w| checksum::combine(acc, u32::from(w)));
            let c = !checksum::fold(checksum::combine(sum, payload_sum));
            // RFC 768: zero means "no checksum".
            udp.set_checksum(if c == 0 { 0xffff } else { c });
        } else {
            let mut tcp = TcpPacket::new_unchecked(l4_head);
            let seq = tcp.seq_number().wrapping_add(offset as u32);
            tcp.set_seq_number(seq);
            let mut f = tcp.flags();
            if !last {
                f &= !(flags::FIN | flags::PSH);
            }
            if !first {
                f &= !flags::CWR;
            }
            tcp.set_flags(f);
            words[1] = (seq >> 16) as u16;
            words[2] = seq as u16;
            words[3] = tcp.offset_flags_word();
            let sum = words
                .iter()
                .fold(self.l4_base, |acc, &w| checksum::combine(acc, u32::from(w)));
            tcp.set_checksum(!checksum::fold(checksum::combine(sum, payload_sum)));
        }
    }
}

/// Cuts the super-frame `frame` described by `vnet` into segments, writing each into `scratch`
/// and handing it to `each`. Returns how many segments were emitted.
pub fn segment_tcp4(
    frame: &[u8],
    vnet: &VnetRepr,
    scratch: &mut [u8],
    mut each: impl FnMut(&[u8]),
) -> Result<usize, OffloadError> {
    let mut segs = Ipv4Segments::new(frame, vnet)?;
    let mut n = 0;
    while let Some(r) = segs.emit_next(scratch) {
        let len = r?;
        each(&scratch[..len]);
        n += 1;
    }
    Ok(n)
}

/// Completes the partial checksum of the IPv4 packet `pkt` that a header with
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM` describes: the field at `csum_start + csum_offset` holds the
/// pseudo-header sum, so the ones'-complement sum from `csum_start` to the end, complemented, is
/// the checksum (the kernel's `skb_checksum_help`). A UDP result of zero is sent as `0xffff`
/// (RFC 768: zero means "no checksum").
pub fn complete_checksum(
    pkt: &mut [u8],
    csum_start: u16,
    csum_offset: u16,
) -> Result<(), OffloadError> {
    let start = usize::from(csum_start);
    let field = start + usize::from(csum_offset);
    if start > pkt.len() || field + 2 > pkt.len() {
        return Err(OffloadError::ChecksumOutOfRange);
    }
    let mut c = !checksum::fold(checksum::accumulate(0, &pkt[start..]));
    let udp = pkt.len() >= ipv4::HEADER_LEN
        && Ipv4Packet::new_unchecked(&pkt[..]).protocol() == protocol::UDP;
    if c == 0 && udp {
        c = 0xffff;
    }
    pkt[field..field + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An IPv4/TCP super-frame (DF, ID 0x1234, TTL 64) with the given TCP flags, a timestamp
    /// option, and `payload`; its TCP checksum field holds the pseudo-header sum, as the kernel
    /// leaves it.
    pub(crate) fn super_frame(payload: &[u8], flags: u8) -> Vec<u8> {
        let tcp_len = 32;
        let total = 20 + tcp_len + payload.len();
        let mut p = vec![
            0x45, 0x00, 0, 0, 0x12, 0x34, 0x40, 0x00, 64, 6, 0, 0, 10, 244, 1, 5, 10, 244, 2, 5,
        ];
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        Ipv4Packet::new_unchecked(&mut p[..20]).fill_checksum();
        p.extend_from_slice(&[
            0x9c, 0x40, 0x23, 0x28, // ports 40000 -> 9000
            0xff, 0xff, 0xff, 0x00, // seq (wraps within the frame)
            0, 0, 0x10, 0x00, // ack
            0x80, flags, 0xfa, 0xf0, // doff 8, flags, window
            0, 0, 0, 0, // checksum, urgent
            1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2, // NOP NOP timestamps
        ]);
        p.extend_from_slice(payload);
        let (src, dst) = addrs(&p);
        let c = checksum::fold(crate::offload::tcp4::pseudo(
            src,
            dst,
            tcp_len + payload.len(),
        ));
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn tso(mss: u16) -> VnetRepr {
        VnetRepr {
            needs_csum: true,
            gso: Gso::TcpV4,
            ecn: false,
            hdr_len: 52,
            gso_size: mss,
            csum_start: 20,
            csum_offset: 16,
        }
    }

    #[test]
    fn three_segments_from_a_fixture() {
        let payload: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let frame = super_frame(&payload, flags::ACK | flags::PSH | flags::CWR);
        let mut scratch = [0u8; 2000];
        let mut segs = Vec::new();
        let n = segment_tcp4(&frame, &tso(1000), &mut scratch, |s| segs.push(s.to_vec()))
            .expect("segments");
        assert_eq!(n, 3);
        for (i, s) in segs.iter().enumerate() {
            let (ip4, rest) = etherparse::Ipv4Header::from_slice(s).expect("ipv4");
            assert_eq!(ip4.identification, 0x1234 + i as u16);
            assert_eq!(ip4.header_checksum, ip4.calc_header_checksum());
            let (th, data) = etherparse::TcpHeader::from_slice(rest).expect("tcp");
            assert_eq!(data, &payload[i * 1000..(i * 1000 + 1000).min(2500)]);
            assert_eq!(
                th.sequence_number,
                0xffff_ff00u32.wrapping_add(i as u32 * 1000)
            );
            assert_eq!(th.psh, i == 2);
            assert_eq!(th.cwr, i == 0);
            assert!(th.ack);
            assert_eq!(
                th.checksum,
                th.calc_checksum_ipv4(&ip4, data).expect("checksum")
            );
        }
        assert_eq!(segs[2].len(), 52 + 500);
    }

    #[test]
    fn rejects_bad_frames_without_panicking() {
        let frame = super_frame(&[1, 2, 3], flags::ACK);
        let mut scratch = [0u8; 100];
        let mut zero = tso(0);
        assert_eq!(
            segment_tcp4(&frame, &zero, &mut scratch, |_| {}),
            Err(OffloadError::ZeroGsoSize)
        );
        zero.gso = Gso::Udp;
        assert!(matches!(
            segment_tcp4(&frame, &zero, &mut scratch, |_| {}),
            Err(OffloadError::UnsupportedGso(_))
        ));
        assert_eq!(
            segment_tcp4(&frame[..30], &tso(10), &mut scratch, |_| {}),
            Err(OffloadError::Truncated)
        );
        assert_eq!(
            segment_tcp4(&frame, &tso(10), &mut scratch[..40], |_| {}),
            Err(OffloadError::BufferTooSmall)
        );
        let mut short = [0u8; 4];
        assert_eq!(
            complete_checksum(&mut short, 2, 2),
            Err(OffloadError::ChecksumOutOfRange)
        );
    }

    #[test]
    fn completes_a_partial_checksum() {
        let payload = b"partial checksum";
        let mut frame = super_frame(payload, flags::ACK | flags::PSH);
        complete_checksum(&mut frame, 20, 16).expect("in range");
        let (ip4, rest) = etherparse::Ipv4Header::from_slice(&frame).expect("ipv4");
        let (th, data) = etherparse::TcpHeader::from_slice(rest).expect("tcp");
        assert_eq!(th.checksum, th.calc_checksum_ipv4(&ip4, data).expect("sum"));
    }
}
