//! Per-pod bandwidth limits in the switch: the `bandwidth` plugin's rates, enforced by Weft.
//!
//! # What this module promises
//!
//! - The limits are the CNI `bandwidth` capability as runtimes pass it
//!   (`runtimeConfig.bandwidth`, parsed and checked by the CNI side): `ingressRate`/`egressRate`
//!   in bits per second and `ingressBurst`/`egressBurst` in bits. Ingress is traffic *into* the
//!   pod, egress traffic *from* it, as for the `bandwidth` plugin (whose tbf on the host veth and
//!   ifb cannot see frames an AF_PACKET port reads before tc ingress and sends past the qdisc).
//! - A [`Policer`] is a token bucket of `burst` bits filled at `rate`, kept as one atomic
//!   theoretical arrival time (the GCRA form of a token bucket): any worker may charge it with one
//!   compare-and-swap and no lock. A frame that finds too few tokens is dropped, not queued: Weft's
//!   workers hold no frames, so this is policing where tbf shapes. TCP backs off from the drops:
//!   with a burst of about 0.8 s of the rate (Open vSwitch's advice for its policer) a TCP
//!   stream gets the limit; with a burst of 0.1 s, about half of it.
//! - A frame passes whenever the bucket holds any tokens, takes its whole cost and leaves the
//!   bucket in debt, which later frames wait out. So a 64 KiB TSO super-frame neither starves
//!   against a small burst nor beats the rate, and drops come only from an empty bucket (the
//!   kernel's tbf segments such frames for the same reason).
//! - Time is an argument ([`Instant`], microseconds); the bucket itself counts nanoseconds, so a
//!   1500-byte frame at 10 Gbit/s (1.2 µs) is charged exactly.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::time::Instant;

/// A token bucket of `burst` bits filled at `rate` bits per second, shared by every worker.
#[derive(Debug)]
pub struct Policer {
    /// Picoseconds one byte costs: 8e12 / rate.
    ps_per_byte: u64,
    /// The bucket, as the time it takes to fill: burst bits at the rate, in nanoseconds.
    depth_ns: u64,
    /// When the bucket would be full again if nothing more came (the GCRA's theoretical arrival
    /// time), in nanoseconds on the caller's clock.
    full_at_ns: AtomicU64,
    rate: u64,
    burst: u64,
}

impl Policer {
    /// A full bucket of `burst` bits filled at `rate` bits per second; `None` when `rate` is 0
    /// (no limit).
    pub fn new(rate: u64, burst: u64) -> Option<Policer> {
        if rate == 0 {
            return None;
        }
        let depth_ns =
            u64::try_from(u128::from(burst) * 1_000_000_000 / u128::from(rate)).unwrap_or(u64::MAX);
        Some(Policer {
            ps_per_byte: (8_000_000_000_000 / rate).max(1),
            depth_ns,
            full_at_ns: AtomicU64::new(0),
            rate,
            burst,
        })
    }

    /// The rate, bits per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// The bucket size, bits.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Charges `bytes` at `now`: true if the frame may pass (its tokens are taken), false if it
    /// is to be dropped (nothing is taken).
    #[inline]
    pub fn admit(&self, now: Instant, bytes: usize) -> bool {
        let now_ns = now.as_micros().saturating_mul(1000);
        let cost = (bytes as u64).saturating_mul(self.ps_per_byte) / 1000;
        let mut full_at = self.full_at_ns.load(Ordering::Relaxed);
        loop {
            let from = full_at.max(now_ns);
            // Drop only when the bucket is empty; a frame finding some tokens takes them all
            // and leaves the bucket in debt, which the next frames wait out.
            if from - now_ns >= self.depth_ns {
                return false;
            }
            match self.full_at_ns.compare_exchange_weak(
                full_at,
                from.saturating_add(cost),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => full_at = seen,
            }
        }
    }
}

/// A pod port's limits, one policer per direction.
#[derive(Debug, Default)]
pub struct PortLimits {
    /// Frames into the pod.
    pub ingress: Option<Policer>,
    /// Frames from the pod.
    pub egress: Option<Policer>,
}

impl PortLimits {
    /// The policers for `(rate, burst)` into and out of the pod (bits per second, bits; a rate
    /// of 0 is no limit); `None` when neither direction is limited.
    pub fn new(ingress: (u64, u64), egress: (u64, u64)) -> Option<PortLimits> {
        let limits = PortLimits {
            ingress: Policer::new(ingress.0, ingress.1),
            egress: Policer::new(egress.0, egress.1),
        };
        (limits.ingress.is_some() || limits.egress.is_some()).then_some(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at_us(us: u64) -> Instant {
        Instant::from_micros(us)
    }

    #[test]
    fn a_full_bucket_passes_its_burst_then_the_rate() {
        // 8 Mbit/s = 1 byte per µs; burst 80 000 bits = 10 000 bytes.
        let p = Policer::new(8_000_000, 80_000).expect("limited");
        let mut passed = 0;
        for _ in 0..20 {
            passed += usize::from(p.admit(at_us(1_000), 1_000));
        }
        assert_eq!(passed, 10, "the burst: 10 000 bytes");
        assert!(!p.admit(at_us(1_000), 1));
        // 1 ms later 1 000 bytes more have been earned: one frame, then the bucket is empty.
        assert!(p.admit(at_us(2_000), 1_000));
        assert!(!p.admit(at_us(2_000), 100));
    }

    #[test]
    fn over_a_long_run_the_rate_holds() {
        // 100 Mbit/s, 1500-byte frames offered at twice the rate for one second.
        let p = Policer::new(100_000_000, 200_000).expect("limited");
        let mut bytes = 0u64;
        let mut t = 0u64;
        while t < 1_000_000 {
            if p.admit(at_us(t), 1_500) {
                bytes += 1_500;
            }
            t += 60; // 1500 B every 60 µs = 200 Mbit/s
        }
        let mbit = bytes * 8 / 1_000_000;
        assert!((99..=103).contains(&mbit), "{mbit} Mbit in a second");
    }

    #[test]
    fn a_frame_larger_than_the_bucket_passes_into_debt_and_is_paid_for() {
        // Burst 8 000 bits = 1 000 bytes at 1 byte per µs; a 64 KiB super-frame.
        let p = Policer::new(8_000_000, 8_000).expect("limited");
        assert!(p.admit(at_us(0), 65_536), "full bucket: passes, into debt");
        assert!(!p.admit(at_us(1_000), 65_536), "still in debt");
        assert!(
            !p.admit(at_us(64_536), 100),
            "debt just paid, the bucket still empty"
        );
        assert!(
            p.admit(at_us(64_600), 65_536),
            "a token again: passes, into debt"
        );
        assert!(!p.admit(at_us(64_600), 1));
    }

    #[test]
    fn many_threads_share_one_bucket_without_overspending() {
        let p = std::sync::Arc::new(Policer::new(8_000_000, 800_000).expect("limited"));
        let passed: usize = (0..4)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || (0..10_000).filter(|_| p.admit(at_us(5), 100)).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .sum();
        assert_eq!(passed, 1_000, "100 000 bytes of burst, 100-byte frames");
    }

    #[test]
    fn port_limits_keep_what_they_were_given() {
        let limits = PortLimits::new((1_000_000, 100_000), (0, 0)).expect("limits");
        let ingress = limits.ingress.as_ref().expect("ingress limited");
        assert_eq!((ingress.rate(), ingress.burst()), (1_000_000, 100_000));
        assert!(limits.egress.is_none());
        assert!(PortLimits::new((0, 0), (0, 0)).is_none());
    }
}
