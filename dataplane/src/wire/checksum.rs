//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! Sums are kept as unfolded `u32` accumulators so several pieces (pseudo-header, header, payload)
//! can be added before one final fold and complement.

use std::net::Ipv4Addr;

/// Adds `data` to a running ones'-complement accumulator, as big-endian 16-bit words; an odd last
/// byte is padded with a zero byte (RFC 1071 §4.1).
#[inline]
pub fn accumulate(mut acc: u32, data: &[u8]) -> u32 {
    // Summing 32-bit words into a 64-bit accumulator halves the loop count; the fold at the end
    // gives the same ones'-complement sum as 16-bit words (RFC 1071 §2(C), byte-order independence).
    let mut wide: u64 = u64::from(acc);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        wide += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        wide += u64::from(u16::from_be_bytes([rest[i], rest[i + 1]]));
        i += 2;
    }
    if i < rest.len() {
        wide += u64::from(rest[i]) << 8;
    }
    // Fold 64 -> 32 bits; the accumulator stays a valid partial sum.
    while wide >> 32 != 0 {
        wide = (wide & 0xffff_ffff) + (wide >> 32);
    }
    acc = wide as u32;
    acc
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
