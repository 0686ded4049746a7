//! Capped exponential backoff between attempts to reach the store, with
//! jitter: after an outage a fleet's agents do not all come back in the
//! same instant (the re-publish storm is spread by the jitter, not set by
//! the number of agents).

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Self {
        Self {
            first,
            cap,
            next: first.min(cap),
        }
    }

    /// How long to wait before the next attempt, without jitter; doubles
    /// up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.cap);
        delay
    }

    /// [`Backoff::next_delay`] scaled by a random factor in [0.5, 1.0)
    /// ("equal jitter").
    pub fn next_jittered(&mut self) -> Duration {
        let delay = self.next_delay();
        let mut byte = [0u8; 2];
        let fraction =
            match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut byte) {
                Ok(()) => f64::from(u16::from_le_bytes(byte)) / 65536.0,
                Err(_) => 0.5,
            };
        delay.mul_f64(0.5 + fraction / 2.0)
    }

    /// After a success: the next failure waits the shortest again.
    pub fn reset(&mut self) {
        self.next = self.first.min(self.cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), Duration::from_secs(10));
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000].map(ms)
        );
        b.reset();
        assert_eq!(b.next_delay(), ms(100));
        // Jittered: within [half, whole) of the plain delay, and not all
        // the same.
        let mut b = Backoff::new(ms(1000), ms(1000));
        let jittered: Vec<_> = (0..50).map(|_| b.next_jittered()).collect();
        assert!(jittered.iter().all(|d| *d >= ms(500) && *d < ms(1000)));
        assert!(jittered.iter().any(|d| *d != jittered[0]));
    }
}
