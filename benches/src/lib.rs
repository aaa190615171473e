//! Fixed inputs shared by the criterion benches in `benches/benches/`.

/// A small deterministic generator (xorshift64*), so every run benches the same inputs.
#[derive(Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u32) -> u32 {
        ((u64::from(self.next_u32()) * u64::from(n)) >> 32) as u32
    }
}

/// The prefix `addr/len`, host bits cleared.
pub fn prefix(addr: u32, len: u8) -> ipnet::Ipv4Net {
    ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(addr), len)
        .expect("length is at most 32")
        .trunc()
}
