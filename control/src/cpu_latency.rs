//! A PM QoS CPU latency request: the way a latency-sensitive service (or tuned's
//! latency-performance profile) asks the kernel to keep idle CPUs shallow, so a thread woken by a
//! packet runs sooner.
//!
//! The request is system-wide and holds while its file is open: the cpuidle governor then never
//! picks an idle state whose exit latency exceeds it (0: only the polling state). On a VM an idle
//! vCPU that polls never halts, so a wakeup needs no exit to the host, and the host pays a core
//! for each idle vCPU.

use std::fs::File;
use std::io::{self, Write as _};

/// The kernel's PM QoS CPU latency device.
pub const DEVICE: &str = "/dev/cpu_dma_latency";

/// A CPU wakeup latency request, in force while this lives.
#[derive(Debug)]
pub struct CpuLatencyRequest {
    _held: File,
    us: u32,
}

impl CpuLatencyRequest {
    /// Asks that no CPU take longer than `us` microseconds to wake.
    pub fn request(us: u32) -> io::Result<CpuLatencyRequest> {
        let value = i32::try_from(us).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{us} µs is beyond an s32"),
            )
        })?;
        let mut f = std::fs::OpenOptions::new().write(true).open(DEVICE)?;
        // The device takes a native-endian s32.
        f.write_all(&value.to_ne_bytes())?;
        Ok(CpuLatencyRequest { _held: f, us })
    }

    /// The latency asked for, in microseconds.
    pub fn us(&self) -> u32 {
        self.us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_beyond_an_s32_is_refused_before_the_device_is_touched() {
        let e = CpuLatencyRequest::request(u32::MAX).expect_err("refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
