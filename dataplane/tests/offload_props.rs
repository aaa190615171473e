//! Property tests of the TUN offloads against an independent parser (etherparse): every segment
//! of a super-frame re-parses with valid IPv4 and TCP checksums and the right sequence numbers,
//! flags and IP IDs; every datagram of a UDP super-frame with its own length and a valid UDP
//! checksum; coalescing the segments gives the super-frame back byte for byte; and no
//! input, however garbled, makes either side panic.

use dataplane::offload::{
    coalesce_tcp4, complete_checksum, segment_tcp4, Coalescer, GatherCoalescer, Gso, Ipv4Segments,
    Push, VnetRepr, SUPER_FRAME_BUF, VNET_HDR_LEN,
};
use dataplane::wire::checksum;
use proptest::prelude::*;
use std::net::Ipv4Addr;

const FIN: u8 = 0x01;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const URG: u8 = 0x20;
const ECE: u8 = 0x40;
const CWR: u8 = 0x80;

/// A super-frame as a TUN with TSO hands it out: IPv4 (DF) + TCP (with or without timestamps),
/// a valid IP header checksum, and the folded pseudo-header sum in the TCP checksum field.
fn super_frame(payload: &[u8], flags: u8, seq: u32, id: u16, timestamps: bool) -> Vec<u8> {
    let opts: &[u8] = if timestamps {
        &[1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9]
    } else {
        &[]
    };
    let tcp_len = 20 + opts.len();
    let total = 20 + tcp_len + payload.len();
    let mut p = vec![0x45, 0x02, 0, 0, 0, 0, 0x40, 0, 63, 6, 0, 0];
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[10, 244, 1, 5, 10, 244, 2, 5]);
    let c = checksum::checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&[0x9c, 0x40, 0x23, 0x28]);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0xab, 0xcd, 0, 1]);
    p.extend_from_slice(&[((tcp_len / 4) as u8) << 4, flags, 0x7f, 0xf0, 0, 0, 0, 0]);
    p.extend_from_slice(opts);
    p.extend_from_slice(payload);
    let pseudo = checksum::pseudo_header_v4(
        Ipv4Addr::new(10, 244, 1, 5),
        Ipv4Addr::new(10, 244, 2, 5),
        6,
        (tcp_len + payload.len()) as u16,
    );
    let partial = checksum::fold(pseudo);
    p[36..38].copy_from_slice(&partial.to_be_bytes());
    p
}

fn tso(mss: u16, hdr_len: usize) -> VnetRepr {
    VnetRepr {
        needs_csum: true,
        gso: Gso::TcpV4,
        ecn: false,
        hdr_len: hdr_len as u16,
        gso_size: mss,
        csum_start: 20,
        csum_offset: 16,
    }
}

/// A UDP super-frame as a TUN with USO hands it out: IPv4 + UDP with the super-frame's length
/// and the folded pseudo-header sum in the checksum field.
fn udp_super_frame(payload: &[u8], id: u16) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
    p[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&[10, 244, 1, 5, 10, 244, 2, 5]);
    let c = checksum::checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&[0x30, 0x39, 0x01, 0xbb]);
    p.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let pseudo = checksum::pseudo_header_v4(
        Ipv4Addr::new(10, 244, 1, 5),
        Ipv4Addr::new(10, 244, 2, 5),
        17,
        udp_len as u16,
    );
    p.extend_from_slice(&checksum::fold(pseudo).to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn flag_sets() -> impl Strategy<Value = u8> {
    // ACK always; any mix of PSH, FIN, CWR, ECE, URG.
    (0u8..32).prop_map(|bits| {
        let mut f = ACK;
        for (i, flag) in [PSH, FIN, CWR, ECE, URG].into_iter().enumerate() {
            if bits & (1 << i) != 0 {
                f |= flag;
            }
        }
        f
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn segments_reparse_and_coalesce_back(
        payload_len in 0usize..20_000,
        mss in 1u16..=1460,
        flags in flag_sets(),
        seq in any::<u32>(),
        id in any::<u16>(),
        timestamps in any::<bool>(),
    ) {
        let payload: Vec<u8> = (0..payload_len).map(|i| (i * 7 + 3) as u8).collect();
        let frame = super_frame(&payload, flags, seq, id, timestamps);
        let hdr_len = frame.len() - payload_len;
        let mut scratch = vec![0u8; 2000];
        let mut segs: Vec<Vec<u8>> = Vec::new();
        let n = segment_tcp4(&frame, &tso(mss, hdr_len), &mut scratch, |s| segs.push(s.to_vec()))
            .expect("a valid super-frame segments");
        let want = payload_len.div_ceil(usize::from(mss)).max(1);
        prop_assert_eq!(n, want);
        prop_assert_eq!(
            Ipv4Segments::new(&frame, &tso(mss, hdr_len)).expect("valid").remaining(),
            want
        );

        // The gathered form (headers written, payload left in the super-frame) is the same
        // bytes, segment for segment.
        let mut gathered = Ipv4Segments::new(&frame, &tso(mss, hdr_len)).expect("valid");
        let mut head = [0u8; 120];
        for s in &segs {
            let (hl, body) = gathered
                .emit_next_headers(&mut head)
                .expect("a segment per copied one")
                .expect("headers fit");
            let mut joined = head[..hl].to_vec();
            joined.extend_from_slice(&frame[body]);
            prop_assert_eq!(&joined, s);
        }
        prop_assert!(gathered.emit_next_headers(&mut head).is_none());

        let mut offset = 0usize;
        for (i, s) in segs.iter().enumerate() {
            let (ip4, rest) = etherparse::Ipv4Header::from_slice(s).expect("IPv4 re-parses");
            prop_assert_eq!(usize::from(ip4.total_len), s.len());
            prop_assert_eq!(ip4.header_checksum, ip4.calc_header_checksum());
            prop_assert_eq!(ip4.identification, id.wrapping_add(i as u16));
            prop_assert!(ip4.dont_fragment);
            prop_assert_eq!(ip4.time_to_live, 63);
            let (th, data) = etherparse::TcpHeader::from_slice(rest).expect("TCP re-parses");
            prop_assert_eq!(th.checksum, th.calc_checksum_ipv4(&ip4, data).expect("sum"));
            prop_assert_eq!(th.sequence_number, seq.wrapping_add(offset as u32));
            prop_assert_eq!(data, &payload[offset..offset + data.len()]);
            prop_assert!(data.len() <= usize::from(mss));
            let last = i + 1 == n;
            prop_assert_eq!(th.fin, last && flags & FIN != 0);
            prop_assert_eq!(th.psh, last && flags & PSH != 0);
            prop_assert_eq!(th.cwr, i == 0 && flags & CWR != 0);
            prop_assert_eq!(th.ece, flags & ECE != 0);
            prop_assert!(th.ack);
            prop_assert_eq!(th.window_size, 0x7ff0);
            offset += data.len();
        }
        prop_assert_eq!(offset, payload_len);

        // Coalescing gives the super-frame back when its flags allow a merge at all.
        let refs: Vec<&[u8]> = segs.iter().map(Vec::as_slice).collect();
        let mut out = vec![0u8; SUPER_FRAME_BUF];
        let mergeable = flags & (FIN | CWR | URG) == 0 && payload_len > 0;
        match coalesce_tcp4(&refs, &mut out) {
            Ok(len) => {
                prop_assert!(mergeable, "flags {flags:#x} must not merge");
                let vnet = VnetRepr::parse_bytes(&out).expect("header");
                let got = &out[VNET_HDR_LEN..len];
                if n == 1 {
                    prop_assert_eq!(vnet, VnetRepr::NONE);
                    prop_assert_eq!(got, &segs[0][..]);
                } else {
                    prop_assert_eq!(vnet, tso(mss, hdr_len));
                    prop_assert_eq!(got, &frame[..]);
                }
            }
            Err(_) => prop_assert!(!mergeable || n == 1 && payload_len == 0),
        }

        // The gathered form merges the same segments, laid back to back in one buffer as UDP
        // GRO leaves them, into the same bytes: its headers, then the pieces where they lie.
        let mut laid = Vec::new();
        let mut g = GatherCoalescer::default();
        let mut all_taken = true;
        for s in &segs {
            laid.extend_from_slice(s);
        }
        let mut at = 0;
        for s in &segs {
            all_taken &= g.push(&laid[at..at + s.len()], at) != Push::Rejected;
            at += s.len();
        }
        if let (true, Ok(len)) = (all_taken, coalesce_tcp4(&refs, &mut out)) {
            let m = g.finish().expect("a merge");
            let mut joined = m.head.to_vec();
            for &(at, len) in m.parts {
                joined.extend_from_slice(&laid[at..at + len]);
            }
            prop_assert_eq!(&joined[..], &out[..len]);
            prop_assert_eq!(m.packets, n);
        } else {
            prop_assert!(!mergeable || n == 1 && payload_len == 0 || !all_taken && n > 64);
        }
    }

    #[test]
    fn udp_super_frames_become_their_datagrams(
        payload_len in 0usize..20_000,
        gso_size in 1u16..=1472,
        id in any::<u16>(),
        seed in any::<u8>(),
    ) {
        let payload: Vec<u8> = (0..payload_len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect();
        let frame = udp_super_frame(&payload, id);
        let vnet = VnetRepr {
            needs_csum: true,
            gso: Gso::UdpL4,
            ecn: false,
            hdr_len: 28,
            gso_size,
            csum_start: 20,
            csum_offset: 6,
        };
        let mut segs = Ipv4Segments::new(&frame, &vnet).expect("valid");
        let mut gathered = Ipv4Segments::new(&frame, &vnet).expect("valid");
        let mut out = vec![0u8; 2000];
        let mut head = [0u8; 120];
        let (mut at, mut i) = (0usize, 0u16);
        while let Some(r) = segs.emit_next(&mut out) {
            let len = r.expect("fits");
            let d = &out[..len];
            let (ip4, rest) = etherparse::Ipv4Header::from_slice(d).expect("IPv4 re-parses");
            prop_assert_eq!(ip4.identification, id.wrapping_add(i));
            prop_assert_eq!(ip4.header_checksum, ip4.calc_header_checksum());
            prop_assert_eq!(usize::from(ip4.total_len), len);
            let (udp, data) = etherparse::UdpHeader::from_slice(rest).expect("UDP re-parses");
            prop_assert_eq!(usize::from(udp.length), 8 + data.len());
            let want = udp.calc_checksum_ipv4(&ip4, data).expect("checksum");
            prop_assert_eq!(udp.checksum, want);
            prop_assert!(data.len() <= usize::from(gso_size));
            prop_assert_eq!(data, &payload[at..at + data.len()]);
            // The gathered form: the same headers, the payload where it lies in the frame.
            let (hl, body) = gathered
                .emit_next_headers(&mut head)
                .expect("a segment per copied one")
                .expect("headers fit");
            prop_assert_eq!(&head[..hl], &d[..28]);
            prop_assert_eq!(&frame[body], data);
            at += data.len();
            i += 1;
        }
        prop_assert_eq!(at, payload_len);
        prop_assert_eq!(usize::from(i), payload_len.div_ceil(usize::from(gso_size)).max(1));
        // A TCP packet under a USO header is refused, not cut.
        let tcp = super_frame(&payload[..payload_len.min(100)], ACK, 1, 1, false);
        prop_assert!(Ipv4Segments::new(&tcp, &vnet).is_err());
    }

    #[test]
    fn garbage_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        vnet in proptest::collection::vec(any::<u8>(), 10),
        cut in 0usize..200,
    ) {
        let mut scratch = [0u8; 256];
        if let Ok(repr) = VnetRepr::parse_bytes(&vnet) {
            if let Ok(mut s) = Ipv4Segments::new(&bytes, &repr) {
                // Bounded: each call emits or skips one segment.
                for _ in 0..300 {
                    if s.emit_next(&mut scratch).is_none() { break; }
                }
            }
            let mut pkt = bytes.clone();
            let _ = complete_checksum(&mut pkt, repr.csum_start, repr.csum_offset);
        }
        let mut c = Coalescer::new(vec![0u8; SUPER_FRAME_BUF]);
        let _ = c.push(&bytes);
        let _ = c.push(&bytes[..cut.min(bytes.len())]);
        let _ = c.finish();
        let mut g = GatherCoalescer::default();
        let _ = g.push(&bytes, 0);
        let _ = g.push(&bytes[..cut.min(bytes.len())], 0);
        let _ = g.finish();
    }

    #[test]
    fn a_mutated_segment_does_not_merge_silently(
        payload_len in 200usize..5000,
        mss in 100u16..=1400,
        which in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let payload: Vec<u8> = (0..payload_len).map(|i| i as u8).collect();
        let frame = super_frame(&payload, ACK, 1000, 1, true);
        let mut scratch = vec![0u8; 2000];
        let mut segs: Vec<Vec<u8>> = Vec::new();
        segment_tcp4(&frame, &tso(mss, 52), &mut scratch, |s| segs.push(s.to_vec()))
            .expect("segments");
        prop_assume!(segs.len() >= 2);
        // Corrupt one payload byte of a segment: its checksum no longer matches.
        let k = which.index(segs.len());
        let at = 52 + which.index(segs[k].len() - 52);
        segs[k][at] ^= flip;
        let mut c = Coalescer::new(vec![0u8; SUPER_FRAME_BUF]);
        let mut rejected = false;
        for s in &segs {
            if c.push(s) == Push::Rejected { rejected = true; break; }
        }
        prop_assert!(rejected, "a corrupt segment was merged");
        let mut g = GatherCoalescer::default();
        prop_assert!(
            segs.iter().any(|s| g.push(s, 0) == Push::Rejected),
            "a corrupt segment was gathered"
        );
    }
}
