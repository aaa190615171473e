//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Sums are kept as unfolded `u32` accumulators so several pieces (pseudo-header, header, payload)
//! can be added before one final fold and complement.

use std::net::Ipv4Addr;

/// Adds `data` to a running ones'-complement accumulator, as big-endian 16-bit words; an odd last
/// byte is padded with a zero byte (RFC 1071 §4.1).
#[inline]
pub fn accumulate(acc: u32, data: &[u8]) -> u32 {
    let mut lanes = [0u64; 4];
    let mut chunks = data.chunks_exact(32);
    for c in &mut chunks {
        add_words(&mut lanes, c);
    }
    finish(acc, lanes, chunks.remainder())
}

/// Adds the 32 bytes `c` to four lanes, as native-endian 32-bit halves of 64-bit words (each
/// lane grows by under 2^33 per call, so 2^31 calls, 64 GiB, cannot overflow it).
#[inline(always)]
fn add_words(lanes: &mut [u64; 4], c: &[u8]) {
    for (lane, w) in lanes.iter_mut().zip(c.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        let x = u64::from_ne_bytes(b);
        *lane += (x & 0xffff_ffff) + (x >> 32);
    }
}

/// Folds the lanes and the tail bytes `rest` (under 32) into `acc`. The words were summed in
/// the machine's byte order; the folded sum is swapped to network order at the end (RFC 1071
/// §2(B), byte-order independence). An odd last byte is padded with a zero on the right.
#[inline(always)]
fn finish(acc: u32, lanes: [u64; 4], rest: &[u8]) -> u32 {
    let mut wide = lanes.iter().fold(0u64, |a, &l| {
        let (sum, carry) = a.overflowing_add(l);
        sum + u64::from(carry)
    });
    let mut words = rest.chunks_exact(2);
    for w in &mut words {
        wide += u64::from(u16::from_ne_bytes([w[0], w[1]]));
    }
    if let [b] = words.remainder() {
        wide += u64::from(u16::from_ne_bytes([*b, 0]));
    }
    while wide >> 16 != 0 {
        wide = (wide & 0xffff) + (wide >> 16);
    }
    let net = u16::from_be_bytes((wide as u16).to_ne_bytes());
    combine(acc, u32::from(net))
}

/// Copies `src` into `dst` (which must be as long) and adds `src` to the running accumulator
/// `acc`, like [`accumulate`], in one pass over the bytes: for moving a payload and checksumming
/// it at once (segmentation, coalescing).
///
/// The words are summed in the machine's byte order and the folded sum swapped to network order
/// at the end (RFC 1071 §2(B), byte-order independence); an odd last byte is padded as
/// [`accumulate`] pads it.
///
/// # Panics
///
/// If the slices differ in length: a caller bug.
#[inline]
pub fn copy_and_accumulate(acc: u32, src: &[u8], dst: &mut [u8]) -> u32 {
    assert_eq!(src.len(), dst.len(), "copy_and_accumulate: lengths differ");
    let mut lanes = [0u64; 4];
    let mut s = src.chunks_exact(32);
    let mut d = dst.chunks_exact_mut(32);
    for (sc, dc) in (&mut s).zip(&mut d) {
        dc.copy_from_slice(sc);
        add_words(&mut lanes, sc);
    }
    let (s, d) = (s.remainder(), d.into_remainder());
    d.copy_from_slice(s);
    finish(acc, lanes, s)
}

/// Adds two running accumulators (of byte runs that each start at an even offset).
#[inline]
pub fn combine(a: u32, b: u32) -> u32 {
    let total = u64::from(a) + u64::from(b);
    ((total & 0xffff_ffff) + (total >> 32)) as u32
}

/// Folds an accumulator to 16 bits (without complementing it).
#[inline]
pub fn fold(mut acc: u32) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The folded ones'-complement sum of `data` (not complemented).
#[inline]
pub fn data(data: &[u8]) -> u16 {
    fold(accumulate(0, data))
}

/// The checksum field value for `data`: the complement of its ones'-complement sum.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !self::data(data)
}

/// The big-endian 16-bit word of `data` at byte `at`, as the checksum sums it: for incremental
/// updates that add or take out one field of a header.
///
/// # Panics
///
/// If `at + 2` is past `data`: callers name a field of a checked header.
#[inline]
pub fn word(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([data[at], data[at + 1]])
}

/// The ones'-complement sum of the IPv4 pseudo-header used by UDP and TCP (RFC 768, RFC 793).
#[inline]
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> u32 {
    let mut acc = accumulate(0, &src.octets());
    acc = accumulate(acc, &dst.octets());
    acc + u32::from(protocol) + u32::from(length)
}

/// Updates checksum field `old_check` after a 16-bit word of the covered data changed from `old`
/// to `new`: RFC 1624 eqn. 3, `HC' = ~(~HC + ~m + m')`, which never yields the -0 pitfall of eqn. 2.
#[inline]
pub fn update_u16(old_check: u16, old: u16, new: u16) -> u16 {
    let sum = u32::from(!old_check) + u32::from(!old) + u32::from(new);
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_and_accumulate_matches_accumulate_and_copies() {
        let mut x = 0x1234_5678u32;
        let data: Vec<u8> = (0..300)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for len in 0..data.len() {
            for acc in [0u32, 0xffff, 0x1_2345, 0xffff_fff0] {
                let mut out = vec![0u8; len];
                let got = copy_and_accumulate(acc, &data[..len], &mut out);
                assert_eq!(out, &data[..len]);
                assert_eq!(
                    fold(got),
                    fold(accumulate(acc, &data[..len])),
                    "len {len} acc {acc:#x}"
                );
            }
        }
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3 worked example: bytes 00 01 f2 03 f4 f5 f6 f7 sum to 0xddf2.
        assert_eq!(
            data(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(data(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    #[test]
    fn incremental_update_matches_recompute() {
        // An IPv4 header (RFC 791) with TTL 64; decrementing TTL changes the word TTL|protocol.
        let mut hdr = [
            0x45u8, 0x00, 0x00, 0x54, 0x12, 0x34, 0x40, 0x00, 0x40, 0x01, 0x00, 0x00, 10, 244, 1,
            2, 10, 244, 2, 3,
        ];
        let c = checksum(&hdr);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        let old = u16::from_be_bytes([hdr[8], hdr[9]]);
        hdr[8] -= 1;
        let new = u16::from_be_bytes([hdr[8], hdr[9]]);
        let updated = update_u16(c, old, new);
        hdr[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(updated, checksum(&hdr));
    }
}
