//! The event rate of one socket: a sustained rate with a burst above it; floods are refused,
//! then disconnected.

use std::time::Instant;

/// What one Socket.IO socket may send.
#[derive(Clone, Copy, Debug)]
pub struct EventLimits {
    /// Sustained events per second.
    pub per_second: u32,
    /// Events at once above the sustained rate; also how many may wait to run.
    pub burst: u32,
    /// Bytes of arguments the events waiting to run may hold.
    pub pending_bytes: u64,
}

impl EventLimits {
    /// Events that may wait to run: a whole burst (at least 64).
    pub fn pending(&self) -> usize {
        (self.burst as usize).max(64)
    }
}

/// What the rate limiter says of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Over the rate: answer `{ error }`.
    Refuse,
    /// Still sending at over twice the rate after its grace ran out: disconnect.
    Disconnect,
}

/// Two token buckets refilled at the sustained rate: `allowance` (capacity: the burst) pays for
/// accepted events; `grace` (same capacity) pays for refused ones. A client at up to the rate is
/// never refused; one at up to twice the rate is refused for the excess; one above that drains
/// its grace and is disconnected.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    allowance: f64,
    grace: f64,
    last: Instant,
}

impl RateLimiter {
    pub fn new(per_second: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(per_second.max(1)),
            burst,
            allowance: burst,
            grace: burst,
            last: Instant::now(),
        }
    }

    pub fn check(&mut self, now: Instant) -> Verdict {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.last = now;
        self.allowance = (self.allowance + refill).min(self.burst);
        self.grace = (self.grace + refill).min(self.burst);
        if self.allowance >= 1.0 {
            self.allowance -= 1.0;
            Verdict::Accept
        } else if self.grace >= 1.0 {
            self.grace -= 1.0;
            Verdict::Refuse
        } else {
            Verdict::Disconnect
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_rate_limiter_accepts_the_rate_refuses_the_excess_and_drops_abuse() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(10, 5);
        // The burst is accepted at once, the next five are refused, then the client is dropped.
        let verdicts: Vec<Verdict> = (0..11).map(|_| limiter.check(start)).collect();
        assert_eq!(&verdicts[..5], &[Verdict::Accept; 5]);
        assert_eq!(&verdicts[5..10], &[Verdict::Refuse; 5]);
        assert_eq!(verdicts[10], Verdict::Disconnect);

        // A client at the sustained rate is never refused.
        let mut steady = RateLimiter::new(10, 5);
        for i in 0..100 {
            let at = start + Duration::from_millis(100 * i);
            assert_eq!(steady.check(at), Verdict::Accept);
        }
    }
}
