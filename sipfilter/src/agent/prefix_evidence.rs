//! IPv6 prefixes banned on evidence. Each IPv6 address is its own source (its own buckets
//! and bans: a phone sharing a /64 with an attacker keeps its service); the whole prefix
//! (`ban.ipv6_prefix`, /64 by default) is banned only when
//! - several of its addresses were banned within the escalation window (an attacker moving
//!   from address to address), or
//! - its addresses together exceed the prefix's aggregate budget (an attacker rotating so
//!   fast that no single address reaches its own limit).
//!
//! Kept by the agent, from the programs' ban events and rate states, because the XDP program
//! has no verifier budget left for it; it acts within a second.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    time::{Duration, Instant},
};

use sipfilter::Cidr;
use sipfilter_common::{
    config::defaults::PREFIX_BUDGET_FACTOR, counters::ban_reason, ClassLimit, RateState, SourceKey,
};

/// What the agent needs of the configuration.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    pub prefix_len: u8,
    /// Addresses banned within `window` that ban their prefix (0: never).
    pub ban_after: u32,
    pub window: Duration,
    /// The known limits: the prefix's aggregate budget is PREFIX_BUDGET_FACTOR times their sum.
    pub limits: [ClassLimit; 3],
}

struct Aggregate {
    tokens: f64,
    updated: Instant,
}

#[derive(Default)]
pub struct PrefixEvidence {
    offenders: HashMap<Cidr, Vec<(Ipv6Addr, Instant)>>,
    aggregate: HashMap<Cidr, Aggregate>,
    /// Each IPv6 source's message count at the last tick.
    last_requests: HashMap<SourceKey, u64>,
}

/// Whether a source's messages since the last tick count toward its prefix: not while the
/// source is banned or denylisted. What a banned address keeps sending is dropped at the
/// filter and costs the PBX nothing; counting it would ban the phone sharing its /64. What a
/// rotating robot's fresh addresses send counts, throttled or not: that is the evidence.
fn counts(state: &RateState, now_ns: u64) -> bool {
    state.ban_until_ns <= now_ns && state.deny_until_ns <= now_ns
}

/// The IPv6 address of a source key (None for IPv4).
fn v6(key: &SourceKey) -> Option<Ipv6Addr> {
    if key.is_v4() {
        return None;
    }
    Some(Ipv6Addr::from(key.addr))
}

fn prefix_of(addr: Ipv6Addr, len: u8) -> Cidr {
    let bits = u128::from(addr);
    let mask = if len == 0 { 0 } else { u128::MAX << (128 - len as u32) };
    Cidr {
        addr: IpAddr::V6(Ipv6Addr::from(bits & mask)),
        prefix_len: len,
    }
}

impl Policy {
    fn budget(&self) -> (f64, f64) {
        let burst: u64 = self.limits.iter().map(|l| l.burst as u64).sum();
        let rate: u64 = self.limits.iter().map(|l| l.rate_per_sec as u64).sum();
        (
            (burst * PREFIX_BUDGET_FACTOR) as f64,
            (rate * PREFIX_BUDGET_FACTOR) as f64,
        )
    }
}

impl PrefixEvidence {
    /// A ban the programs made: the prefix to ban, if this address is the one too many.
    pub fn on_ban(&mut self, source: &SourceKey, reason: u8, policy: &Policy, now: Instant) -> Option<Cidr> {
        if policy.ban_after == 0 || matches!(reason, ban_reason::PREFIX | ban_reason::MANUAL | ban_reason::RESTORED) {
            return None;
        }
        let addr = v6(source)?;
        let prefix = prefix_of(addr, policy.prefix_len);
        let list = self.offenders.entry(prefix).or_default();
        list.retain(|(a, at)| *a != addr && now.duration_since(*at) <= policy.window);
        list.push((addr, now));
        if list.len() as u32 >= policy.ban_after {
            self.offenders.remove(&prefix);
            return Some(prefix);
        }
        None
    }

    /// Once a second: the messages each IPv6 prefix sent since the last tick, against its
    /// aggregate budget. Returns the prefixes that exhausted it.
    /// `now_ns`: the programs' clock (CLOCK_BOOTTIME), for the states' ban times.
    pub fn on_tick(
        &mut self,
        states: &[(SourceKey, RateState)],
        policy: &Policy,
        now: Instant,
        now_ns: u64,
    ) -> Vec<Cidr> {
        let mut sent: HashMap<Cidr, u64> = HashMap::new();
        let mut seen = HashMap::new();
        for (key, state) in states {
            let Some(addr) = v6(key) else { continue };
            let before = self.last_requests.get(key).copied().unwrap_or(0);
            let delta = state.requests.checked_sub(before).unwrap_or(state.requests);
            if counts(state, now_ns) {
                *sent.entry(prefix_of(addr, policy.prefix_len)).or_default() += delta;
            }
            seen.insert(*key, state.requests);
        }
        self.last_requests = seen;
        let (burst, rate) = policy.budget();
        let mut exhausted = Vec::new();
        for (prefix, n) in sent {
            let agg = self.aggregate.entry(prefix).or_insert(Aggregate {
                tokens: burst,
                updated: now,
            });
            let refill = now.duration_since(agg.updated).as_secs_f64() * rate;
            agg.tokens = (agg.tokens + refill).min(burst) - n as f64;
            agg.updated = now;
            if agg.tokens < 0.0 {
                exhausted.push(prefix);
                agg.tokens = burst;
            }
        }
        // Forget prefixes back at full budget that sent nothing.
        self.aggregate
            .retain(|_, a| a.tokens < burst || now.duration_since(a.updated) < Duration::from_secs(60));
        exhausted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipfilter::addr::source_key;
    use sipfilter_common::config::defaults;

    const NOW_NS: u64 = 1_000 * 1_000_000_000;

    fn policy() -> Policy {
        Policy {
            prefix_len: 64,
            ban_after: 3,
            window: Duration::from_secs(86_400),
            limits: [defaults::REGISTER, defaults::INVITE, defaults::OTHER],
        }
    }

    fn key(s: &str) -> SourceKey {
        source_key(s.parse().unwrap(), 128)
    }

    #[test]
    fn the_third_banned_address_bans_the_prefix_and_repeats_do_not_count() {
        let mut e = PrefixEvidence::default();
        let t = Instant::now();
        let p = policy();
        assert_eq!(e.on_ban(&key("2001:db8:1:1::a"), ban_reason::RATE, &p, t), None);
        assert_eq!(
            e.on_ban(&key("2001:db8:1:1::a"), ban_reason::RATE, &p, t),
            None,
            "same address"
        );
        assert_eq!(
            e.on_ban(&key("2001:db8:1:2::b"), ban_reason::RATE, &p, t),
            None,
            "another /64"
        );
        assert_eq!(e.on_ban(&key("2001:db8:1:1::b"), ban_reason::AUTH_FAILURE, &p, t), None);
        assert_eq!(
            e.on_ban(&key("2001:db8:1:1::c"), ban_reason::RATE, &p, t)
                .map(|c| c.to_string()),
            Some("2001:db8:1:1::/64".to_string())
        );
        assert_eq!(e.on_ban(&key("192.0.2.1"), ban_reason::RATE, &p, t), None, "IPv4");
    }

    #[test]
    fn rotation_exhausts_the_aggregate_and_an_office_does_not() {
        let mut e = PrefixEvidence::default();
        let p = policy();
        let t0 = Instant::now();
        let state = |n| RateState {
            requests: n,
            ..Default::default()
        };
        // An office: 50 phones, 10 messages each a second, for a minute.
        for s in 1..=60u64 {
            let states: Vec<_> = (0..50)
                .map(|i| (key(&format!("2001:db8:2:1::{i:x}")), state(10 * s)))
                .collect();
            assert!(
                e.on_tick(&states, &p, t0 + Duration::from_secs(s), NOW_NS).is_empty(),
                "second {s}"
            );
        }
        // A robot rotating through 100 addresses, 60 messages each in one second.
        let states: Vec<_> = (0..100)
            .map(|i| (key(&format!("2001:db8:3:1::{i:x}")), state(60)))
            .collect();
        let banned = e.on_tick(&states, &p, t0 + Duration::from_secs(61), NOW_NS);
        assert_eq!(
            banned.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            vec!["2001:db8:3:1::/64"]
        );
    }

    #[test]
    fn a_banned_address_that_keeps_flooding_does_not_spend_its_prefix() {
        let mut e = PrefixEvidence::default();
        let p = policy();
        let t0 = Instant::now();
        // One address banned for a flood keeps sending 5,000 messages a second, all dropped;
        // a phone in the same /64 sends 2 a second.
        for s in 1..=30u64 {
            let flooder = RateState {
                requests: 200 + 5_000 * s,
                drops: 5_000 * s,
                ban_until_ns: NOW_NS + 300 * 1_000_000_000,
                ..Default::default()
            };
            let phone = RateState {
                requests: 2 * s,
                ..Default::default()
            };
            let states = vec![(key("2001:db8:4:1::66"), flooder), (key("2001:db8:4:1::20"), phone)];
            assert!(
                e.on_tick(&states, &p, t0 + Duration::from_secs(s), NOW_NS).is_empty(),
                "second {s}"
            );
        }
    }
}
