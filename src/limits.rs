//! Overload limits: connection slots (per server and per client address) and the event rate of
//! one socket. Each limit refuses work early and cheaply, before it costs memory or disk.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Why a connection was refused; the message is the client's `connect_error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionRefused {
    #[error("Server is at its connection limit")]
    ServerFull,
    #[error("Too many connections from this address")]
    AddressFull,
}

/// Counts live connections, in total and per client address.
pub struct Connections {
    max_total: usize,
    max_per_address: usize,
    /// Live connections per address, and their sum. A std mutex: held for a map update only.
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

impl Connections {
    pub fn new(max_total: usize, max_per_address: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_address,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Takes a slot for a connection from `address`, released when the slot is dropped.
    pub fn acquire(self: &Arc<Self>, address: IpAddr) -> Result<ConnectionSlot, ConnectionRefused> {
        let mut counts = self.counts.lock().expect("connection counts lock poisoned");
        if counts.total >= self.max_total {
            return Err(ConnectionRefused::ServerFull);
        }
        let per_address = counts.per_address.entry(address).or_insert(0);
        if *per_address >= self.max_per_address {
            return Err(ConnectionRefused::AddressFull);
        }
        *per_address += 1;
        counts.total += 1;
        Ok(ConnectionSlot {
            connections: self.clone(),
            address,
        })
    }

    /// Live connections in total.
    pub fn total(&self) -> usize {
        self.counts
            .lock()
            .expect("connection counts lock poisoned")
            .total
    }
}

/// One counted connection; dropping it frees the slot.
pub struct ConnectionSlot {
    connections: Arc<Connections>,
    address: IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self
            .connections
            .counts
            .lock()
            .expect("connection counts lock poisoned");
        counts.total -= 1;
        if let Some(n) = counts.per_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                counts.per_address.remove(&self.address);
            }
        }
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
    fn slots_are_counted_per_address_and_freed_on_drop() {
        let connections = Connections::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = connections.acquire(a).unwrap();
        let _second = connections.acquire(a).unwrap();
        assert_eq!(
            connections.acquire(a).err(),
            Some(ConnectionRefused::AddressFull)
        );
        let _third = connections.acquire(b).unwrap();
        assert_eq!(
            connections.acquire(b).err(),
            Some(ConnectionRefused::ServerFull)
        );
        drop(first);
        assert_eq!(connections.total(), 2);
        assert!(connections.acquire(a).is_ok());
    }

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
