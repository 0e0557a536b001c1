//! Per-source token buckets in integer arithmetic the verifier accepts.

/// One token, in the bucket's unit. Counting in nano-tokens makes the refill for `elapsed`
/// nanoseconds at `rate` tokens per second exactly `elapsed * rate`: no division and no
/// rounding loss however often packets arrive.
pub const TOKEN: u64 = 1_000_000_000;

/// Refills are computed over at most this long a gap, so `elapsed * rate` cannot overflow
/// for any rate the configuration accepts (≤ [`crate::config::MAX_RATE`]). A bucket idle this
/// long is full for every accepted burst/rate pair anyway.
pub const MAX_REFILL_NS: u64 = 1_000_000_000_000;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// Tokens left, in nano-tokens.
    pub tokens: u64,
    /// When `tokens` was last brought up to date (CLOCK_BOOTTIME ns).
    pub updated_ns: u64,
}

impl TokenBucket {
    /// A bucket that starts full, as a new source's should: a phone's first burst after
    /// boot is not an attack.
    #[inline(always)]
    pub const fn full(burst: u64, now: u64) -> Self {
        TokenBucket {
            tokens: burst * TOKEN,
            updated_ns: now,
        }
    }

    /// Refills for the time since the last update and takes one token.
    /// Returns false when the bucket is empty: the packet exceeds the limit.
    #[inline(always)]
    pub fn take(&mut self, now: u64, rate_per_sec: u64, burst: u64) -> bool {
        let capacity = burst * TOKEN;
        // Clocks never go back, but two CPUs may race on one bucket; treat "earlier" as no time.
        let elapsed = now.saturating_sub(self.updated_ns);
        let elapsed = if elapsed > MAX_REFILL_NS {
            MAX_REFILL_NS
        } else {
            elapsed
        };
        let mut tokens = self.tokens + elapsed * rate_per_sec;
        if tokens > capacity {
            tokens = capacity;
        }
        self.updated_ns = now;
        if tokens >= TOKEN {
            self.tokens = tokens - TOKEN;
            true
        } else {
            self.tokens = tokens;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NS_PER_SEC;

    #[test]
    fn a_full_bucket_allows_exactly_burst_back_to_back() {
        let mut b = TokenBucket::full(150, 0);
        for i in 0..150 {
            assert!(b.take(0, 20, 150), "packet {i}");
        }
        assert!(!b.take(0, 20, 150));
    }

    #[test]
    fn refill_is_exact_for_small_steps() {
        // 20 tokens/s = one token per 50 ms, delivered in 1 µs steps: no rounding loss.
        let mut b = TokenBucket {
            tokens: 0,
            updated_ns: 0,
        };
        let mut now = 0;
        let mut granted = 0;
        while now < NS_PER_SEC {
            now += 1_000;
            if b.take(now, 20, 150) {
                granted += 1;
            }
        }
        assert_eq!(granted, 20);
    }

    #[test]
    fn long_idle_gaps_fill_but_do_not_overflow() {
        let mut b = TokenBucket {
            tokens: 0,
            updated_ns: 0,
        };
        assert!(b.take(u64::MAX / 2, crate::config::MAX_RATE, crate::config::MAX_BURST));
        assert_eq!(b.tokens, crate::config::MAX_BURST * TOKEN - TOKEN);
    }

    #[test]
    fn time_going_backwards_grants_nothing_extra() {
        let mut b = TokenBucket {
            tokens: 0,
            updated_ns: 1_000,
        };
        assert!(!b.take(10, 1_000_000, 10));
    }

    #[test]
    fn flood_at_200_per_second_is_stopped_within_a_second_at_default_register_limits() {
        let limits = crate::config::KernelConfig::default().limits[0];
        let mut b = TokenBucket::full(limits.burst as u64, 0);
        let mut t = 0;
        let step = NS_PER_SEC / 200;
        loop {
            if !b.take(t, limits.rate_per_sec as u64, limits.burst as u64) {
                break;
            }
            t += step;
        }
        assert!(t < NS_PER_SEC, "first refusal at {t} ns");
    }
}
