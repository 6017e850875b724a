//! Flood control as IRC servers do it: each line costs `1 / rate` seconds on a clock that never runs
//! behind now; a line is handled at once while the clock is at most `burst` lines ahead, waits otherwise,
//! and a client whose clock runs `burst + excess` lines ahead is disconnected.

use std::time::Duration;

use tokio::time::Instant;

/// One connection's flood clock.
#[derive(Debug)]
pub(crate) struct Flood {
    clock: Instant,
    cost: Duration,
    burst: Duration,
    limit: Duration,
}

/// What to do with a line that just came in.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Handle it at this instant (now, or later when the client is over its burst).
    At(Instant),
    /// The client is too far ahead: disconnect it.
    Excess,
}

impl Flood {
    pub(crate) fn new(burst: u32, rate: f64, excess: u32, now: Instant) -> Self {
        let cost = Duration::from_secs_f64(1.0 / rate.max(0.001));
        Self {
            clock: now,
            cost,
            burst: cost * burst,
            limit: cost * (burst + excess),
        }
    }

    /// Charges one line arriving at `now`.
    pub(crate) fn charge(&mut self, now: Instant) -> Verdict {
        self.clock = self.clock.max(now) + self.cost;
        let ahead = self.clock - now;
        if ahead > self.limit {
            return Verdict::Excess;
        }
        Verdict::At(now + ahead.saturating_sub(self.burst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_a_steady_rate_then_excess() {
        let now = Instant::now();
        let mut flood = Flood::new(5, 2.0, 3, now);
        for _ in 0..5 {
            assert_eq!(flood.charge(now), Verdict::At(now));
        }
        // Past the burst, each line waits half a second more than the one before.
        assert_eq!(
            flood.charge(now),
            Verdict::At(now + Duration::from_millis(500))
        );
        assert_eq!(
            flood.charge(now),
            Verdict::At(now + Duration::from_millis(1000))
        );
        assert_eq!(
            flood.charge(now),
            Verdict::At(now + Duration::from_millis(1500))
        );
        assert_eq!(flood.charge(now), Verdict::Excess);
        // A client that keeps to the rate is never held back.
        let later = now + Duration::from_secs(60);
        let mut flood = Flood::new(5, 2.0, 3, later);
        for i in 0..100 {
            let at = later + Duration::from_millis(500 * i);
            assert_eq!(flood.charge(at), Verdict::At(at));
        }
    }
}
