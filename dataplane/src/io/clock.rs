//! The workers' clock: `std::time::Instant` (CLOCK_MONOTONIC) measured from a process-wide
//! origin, as the core's [`Instant`]. The core never reads a clock; a worker
//! reads this one once per wakeup. The control side must use the same clock for anything it puts
//! into the tables with a time (learned neighbours), so that ages compare.

use std::sync::OnceLock;

use crate::time::Instant;

static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();

/// The process's clock origin, fixed on first use.
fn origin() -> std::time::Instant {
    *ORIGIN.get_or_init(std::time::Instant::now)
}

/// Now, in microseconds since the process-wide origin.
pub fn now() -> Instant {
    let micros = origin().elapsed().as_micros();
    Instant::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic() {
        let a = now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = now();
        assert!(b.saturating_since(a).as_micros() >= 2000);
    }
}
