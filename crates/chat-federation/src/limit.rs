//! A token bucket per linked server: how many requests a peer may send in a burst, and how fast its budget
//! comes back. A peer over it is answered 429 with `Retry-After`, after its signature was checked (so that
//! nobody else can spend a peer's budget by naming it).

/// A burst and a refill rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Requests allowed at once.
    pub burst: u32,
    /// Requests per second coming back.
    pub per_second: f64,
}

/// One peer's budget.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bucket {
    tokens: f64,
    at_ms: u64,
}

impl Bucket {
    pub(crate) fn full(limit: RateLimit, now_ms: u64) -> Self {
        Self {
            tokens: f64::from(limit.burst),
            at_ms: now_ms,
        }
    }

    /// Takes one request's token; when there is none, how long until there is (ms).
    pub(crate) fn take(&mut self, limit: RateLimit, now_ms: u64) -> Result<(), u64> {
        let elapsed = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * limit.per_second).min(f64::from(limit.burst));
        self.at_ms = now_ms.max(self.at_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if limit.per_second > 0.0 {
            Err((((1.0 - self.tokens) / limit.per_second) * 1000.0).ceil() as u64)
        } else {
            Err(u64::MAX)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_refill_rate() {
        let limit = RateLimit {
            burst: 3,
            per_second: 2.0,
        };
        let mut b = Bucket::full(limit, 1_000);
        for _ in 0..3 {
            assert_eq!(b.take(limit, 1_000), Ok(()));
        }
        assert_eq!(b.take(limit, 1_000), Err(500));
        assert_eq!(b.take(limit, 1_250), Err(250));
        assert_eq!(b.take(limit, 1_500), Ok(()));
        // A long pause refills to the burst, no more.
        for _ in 0..3 {
            assert_eq!(b.take(limit, 60_000), Ok(()));
        }
        assert!(b.take(limit, 60_000).is_err());
        // A clock that steps back takes nothing and gives nothing.
        assert!(b.take(limit, 59_000).is_err());
    }
}
