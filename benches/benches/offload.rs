//! The fast path's per-byte work: cutting a 64 KiB TSO super-frame into MSS-sized segments (copy,
//! headers, TCP checksum per segment), merging the segments back (checksum check and copy per
//! segment), the same two in their gathered (copy-free) forms — headers written apart, payload
//! left where it lies and only summed — and the Internet checksum itself.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dataplane::offload::{
    Coalescer, GatherCoalescer, Gso, Ipv4Segments, Push, VnetRepr, SUPER_FRAME_BUF,
};
use dataplane::wire::checksum;

/// The MSS of a 1450-byte tunnel MTU with TCP timestamps: 1450 - 20 - 32.
const MSS: u16 = 1398;
/// Payload of a full super-frame: 46 segments of [`MSS`].
const PAYLOAD: usize = 46 * MSS as usize;

/// A super-frame as a TUN with TSO hands it out (IPv4 with DF, TCP with timestamps, the folded
/// pseudo-header sum in the checksum field) and its virtio-net description.
fn super_frame() -> (Vec<u8>, VnetRepr) {
    let (src, dst) = (Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 244, 2, 5));
    let opts = [1u8, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9];
    let tcp_len = 20 + opts.len();
    let total = 20 + tcp_len + PAYLOAD;
    let mut p = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0];
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let c = checksum::checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&[0x9c, 0x40, 0x23, 0x28, 0, 0, 0, 1, 0, 0, 0, 1]);
    p.extend_from_slice(&[((tcp_len / 4) as u8) << 4, 0x18, 0x7f, 0xf0, 0, 0, 0, 0]);
    p.extend_from_slice(&opts);
    p.extend((0..PAYLOAD).map(|i| (i * 7 + 3) as u8));
    let partial = checksum::fold(checksum::pseudo_header_v4(
        src,
        dst,
        6,
        (tcp_len + PAYLOAD) as u16,
    ));
    p[36..38].copy_from_slice(&partial.to_be_bytes());
    let vnet = VnetRepr {
        needs_csum: true,
        gso: Gso::TcpV4,
        ecn: false,
        hdr_len: (20 + tcp_len) as u16,
        gso_size: MSS,
        csum_start: 20,
        csum_offset: 16,
    };
    (p, vnet)
}

fn segments(frame: &[u8], vnet: &VnetRepr) -> Vec<Vec<u8>> {
    let mut segs = Ipv4Segments::new(frame, vnet).expect("valid super-frame");
    let mut out = Vec::new();
    let mut buf = vec![0u8; 2048];
    while let Some(r) = segs.emit_next(&mut buf) {
        let n = r.expect("segment fits");
        out.push(buf[..n].to_vec());
    }
    out
}

fn bench_offload(c: &mut Criterion) {
    let (frame, vnet) = super_frame();
    let segs = segments(&frame, &vnet);
    assert_eq!(segs.len(), 46);
    let mut g = c.benchmark_group("offload");
    g.throughput(Throughput::Bytes(PAYLOAD as u64));
    g.bench_function("segment_64k_super_frame", |b| {
        let mut slots = vec![0u8; 64 * 2048];
        b.iter(|| {
            let mut s = Ipv4Segments::new(black_box(&frame), &vnet).expect("valid");
            let mut i = 0;
            while let Some(r) = s.emit_next(&mut slots[i * 2048..(i + 1) * 2048]) {
                black_box(r.expect("fits"));
                i += 1;
            }
            i
        })
    });
    g.bench_function("coalesce_46_segments", |b| {
        let mut co = Coalescer::new(vec![0u8; SUPER_FRAME_BUF]);
        b.iter(|| {
            for s in &segs {
                let r = co.push(black_box(s));
                debug_assert_ne!(r, Push::Rejected);
            }
            co.finish().map(|m| m.packets)
        })
    });
    g.bench_function("segment_64k_super_frame_gathered", |b| {
        let mut heads = vec![0u8; 64 * 128];
        b.iter(|| {
            let mut s = Ipv4Segments::new(black_box(&frame), &vnet).expect("valid");
            let mut i = 0;
            while let Some(r) = s.emit_next_headers(&mut heads[i * 128..(i + 1) * 128]) {
                black_box(r.expect("fits"));
                i += 1;
            }
            i
        })
    });
    // The segments back to back, as UDP GRO leaves them in one receive buffer.
    let laid: Vec<u8> = segs.concat();
    g.bench_function("coalesce_46_segments_gathered", |b| {
        let mut co = GatherCoalescer::default();
        b.iter(|| {
            let mut at = 0;
            for s in &segs {
                let r = co.push(black_box(&laid[at..at + s.len()]), at);
                debug_assert_ne!(r, Push::Rejected);
                at += s.len();
            }
            co.finish().map(|m| m.packets)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("checksum");
    for len in [1400usize, PAYLOAD] {
        let data: Vec<u8> = (0..len).map(|i| (i * 13 + 1) as u8).collect();
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(format!("accumulate_{len}"), |b| {
            b.iter(|| checksum::accumulate(0, black_box(&data)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench_offload);
criterion_main!(benches);
