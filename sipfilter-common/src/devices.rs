//! The devices under a source: one per source port (every phone behind a NAT keeps a port of
//! its own; a multi-line phone registers all its lines from one). What the answers said to
//! each device tells a phone from a robot where the source's totals cannot: a phone retries
//! its *own* extension, a robot fails one extension and moves on to the next.
//!
//! Kept by the egress program in the `devices` map (bounded: LRU, and each source may add
//! only [`NEW_DEVICES`] devices per [`NEW_DEVICE_LEAK_SECS`], so a robot that rotates its port
//! cannot grow it without limit; past that its answers are judged by the source's totals).

use crate::{
    answers::{empty, open_slot, position, same},
    config::Budget,
    scan::Extension,
    SourceKey, NS_PER_SEC,
};

/// Lines (extensions) remembered per device: registered, and challenged (as many as a
/// source remembers, so one lookup serves both).
pub const DEVICE_LINES: usize = crate::answers::RECENT;

/// A source may add this many devices …
pub const NEW_DEVICES: u32 = 128;
/// … and one more every this many seconds (an office of a hundred phones after a power cut
/// fits; a robot with a new port per request gets 128 devices, then none).
pub const NEW_DEVICE_LEAK_SECS: u32 = 10;

/// The budget of new devices per source.
pub const NEW_DEVICE_BUDGET: Budget = Budget {
    capacity: NEW_DEVICES,
    leak_secs: NEW_DEVICE_LEAK_SECS,
};

/// A device: the source's key and the source port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct DeviceKey {
    pub source: SourceKey,
    pub port: u32,
}

/// What the answers have said to one device.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DeviceState {
    /// Extensions this device registered (a 2xx to its REGISTER): its lines.
    pub registered: [Extension; DEVICE_LINES],
    /// Extensions with an open challenge on this device, the CSeq identity of the challenged
    /// request and when the device was first challenged for it.
    pub challenged: [Extension; DEVICE_LINES],
    pub challenged_cseq: [u32; DEVICE_LINES],
    pub challenged_ns: [u64; DEVICE_LINES],
    /// The last extension the device failed on (wrong credentials), and when.
    pub failed: Extension,
    pub failed_ns: u64,
    /// The device's own budgets (a known source's failure and not-found budgets are per
    /// device: four phones with a stale password behind one address are four devices each
    /// failing slowly, not one source failing fast).
    pub failure_debt_ns: u64,
    pub not_found_debt_ns: u64,
    pub first_seen_ns: u64,
    pub last_answer_ns: u64,
    pub failures: u32,
    pub not_found: u32,
    pub successes: u32,
    pub next_registered: u32,
    pub next_challenged: u32,
    pub _pad: u32,
}

/// What the device's history says about a 2xx for `ext`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// Nothing against it: the device's own line, or a line it started with the others.
    Clean,
    /// The device failed on another extension, then started on this one, which it never
    /// registered before: what a robot that walks the extensions does at the one it guessed.
    MovedOn,
}

impl DeviceState {
    /// A fresh device, first answered `now`.
    pub fn new(now: u64) -> DeviceState {
        DeviceState {
            first_seen_ns: now,
            ..DeviceState::default()
        }
    }

    #[inline(always)]
    pub fn has_registered(&self, ext: &Extension) -> bool {
        position(&self.registered, ext).is_some()
    }

    #[inline(always)]
    fn challenge_of(&self, ext: &Extension) -> Option<usize> {
        position(&self.challenged, ext)
    }

    /// A 401/407 to this device for `ext`: true when it answers a request that carried
    /// credentials for an open challenge (a failure), false for a first challenge or a
    /// retransmission's.
    #[inline(always)]
    pub fn challenge(&mut self, ext: &Extension, cseq: u32, now: u64) -> bool {
        self.last_answer_ns = now;
        if let Some(i) = self.challenge_of(ext) {
            let open = self.challenged_cseq.get(i).copied().unwrap_or(0);
            if open == cseq {
                return false;
            }
            if let Some(c) = self.challenged_cseq.get_mut(i) {
                *c = cseq;
            }
            self.fail(ext, now);
            return true;
        }
        let i = open_slot(&self.challenged, &mut self.next_challenged);
        if let Some(c) = self.challenged.get_mut(i) {
            *c = *ext;
        }
        if let Some(c) = self.challenged_cseq.get_mut(i) {
            *c = cseq;
        }
        if let Some(t) = self.challenged_ns.get_mut(i) {
            *t = now;
        }
        false
    }

    /// A credential failure (a re-challenge or 403) for `ext`.
    #[inline(always)]
    pub fn fail(&mut self, ext: &Extension, now: u64) {
        self.failures = self.failures.wrapping_add(1);
        self.failed = *ext;
        self.failed_ns = now;
        self.last_answer_ns = now;
    }

    /// A 2xx for `ext`: what the device's walk says (read before [`Self::registered`]).
    #[inline(always)]
    pub fn walk(&self, ext: &Extension, window_secs: u32, now: u64) -> Walk {
        if empty(&self.failed) || same(&self.failed, ext) || self.has_registered(ext) {
            return Walk::Clean;
        }
        if now.saturating_sub(self.failed_ns) > window_secs as u64 * NS_PER_SEC {
            return Walk::Clean;
        }
        // Started on this extension before the failure (a multi-line phone challenged on all
        // its lines at boot, one of them stale): not a walk. No challenge seen for it on this
        // device (credentials computed from another extension's challenge): a walk.
        if let Some(i) = self.challenge_of(ext) {
            if self.challenged_ns.get(i).is_some_and(|t| *t < self.failed_ns) {
                return Walk::Clean;
            }
        }
        Walk::MovedOn
    }

    /// A 2xx to this device's REGISTER for `ext`: a line of the device from now on.
    #[inline(always)]
    pub fn registered(&mut self, ext: &Extension, now: u64) {
        self.successes = self.successes.wrapping_add(1);
        self.last_answer_ns = now;
        if let Some(i) = self.challenge_of(ext) {
            if let Some(c) = self.challenged.get_mut(i) {
                *c = [0; crate::scan::EXT_LEN];
            }
        }
        if self.has_registered(ext) {
            return;
        }
        let i = (self.next_registered as usize) % DEVICE_LINES;
        if let Some(r) = self.registered.get_mut(i) {
            *r = *ext;
        }
        self.next_registered = (i as u32 + 1) % DEVICE_LINES as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::ext_from;

    const S: u64 = NS_PER_SEC;
    const T0: u64 = 1_000 * S;

    #[test]
    fn a_robot_that_fails_one_extension_and_succeeds_on_the_next_moved_on() {
        let mut d = DeviceState::new(T0);
        assert!(!d.challenge(&ext_from("200"), 1, T0));
        assert!(d.challenge(&ext_from("200"), 2, T0 + S / 100));
        assert!(!d.challenge(&ext_from("201"), 3, T0 + S / 50));
        assert_eq!(d.walk(&ext_from("201"), 600, T0 + S / 20), Walk::MovedOn);
        // Without a challenge of its own for 201 (another port was challenged): still a walk.
        let mut e = DeviceState::new(T0);
        e.challenge(&ext_from("200"), 1, T0);
        e.challenge(&ext_from("200"), 2, T0);
        assert_eq!(e.walk(&ext_from("201"), 600, T0 + S), Walk::MovedOn);
        // Long after the failure: clean.
        assert_eq!(e.walk(&ext_from("201"), 600, T0 + 601 * S), Walk::Clean);
    }

    #[test]
    fn a_phone_retrying_its_own_line_and_a_multi_line_phone_are_clean() {
        // A stale password: the phone fails on its own extension for ever, never succeeds
        // on another.
        let mut p = DeviceState::new(T0);
        for round in 0..20u32 {
            let now = T0 + round as u64 * 15 * S;
            p.challenge(&ext_from("205"), 2 * round, now);
            assert!(p.challenge(&ext_from("205"), 2 * round + 1, now + S / 100));
            assert_eq!(p.walk(&ext_from("205"), 600, now), Walk::Clean);
        }
        // A multi-line phone at boot: all four lines challenged at once, line 1 stale.
        let mut m = DeviceState::new(T0);
        for (i, l) in ["301", "302", "303", "304"].iter().enumerate() {
            m.challenge(&ext_from(l), i as u32, T0);
        }
        assert!(m.challenge(&ext_from("301"), 10, T0 + S / 100));
        for l in ["302", "303", "304"] {
            assert_eq!(m.walk(&ext_from(l), 600, T0 + S / 50), Walk::Clean, "{l}");
            m.registered(&ext_from(l), T0 + S / 50);
        }
        // Its next refresh: the lines it registered stay clean after new failures on 301.
        for round in 1..5u32 {
            let now = T0 + round as u64 * 60 * S;
            m.challenge(&ext_from("301"), 100 + 2 * round, now);
            m.challenge(&ext_from("301"), 101 + 2 * round, now);
            for l in ["302", "303", "304"] {
                m.challenge(&ext_from(l), 200 + round, now + S);
                assert_eq!(m.walk(&ext_from(l), 600, now + S), Walk::Clean, "{l} round {round}");
                m.registered(&ext_from(l), now + S);
            }
        }
    }

    #[test]
    fn a_retransmitted_challenge_is_not_a_failure() {
        let mut d = DeviceState::new(T0);
        assert!(!d.challenge(&ext_from("201"), 7, T0));
        assert!(!d.challenge(&ext_from("201"), 7, T0 + S / 2));
        assert_eq!(d.failures, 0);
    }
}
