//! Calls, not packets: destination rules and the call-burst rules that catch the
//! Friday-evening pattern (many calls to one premium number, or many international calls
//! from a source that never registered). Shared by the ingress program and the host tests.

use crate::{dialed::DialPlan, SourceKey};

/// Calls remembered per source and number, or per source (a ring).
const RING: usize = 16;
/// The largest limit a burst rule may have (one less than the ring it is judged with).
pub const MAX_CALLS_LIMIT: u32 = RING as u32 - 1;

/// `[calls]` as the kernel holds it (in [`crate::KernelConfig`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallConfig {
    pub dial_plan: DialPlan,
    /// More than this many new calls to one international number within `window_ns` from one
    /// source is a burst (0: off).
    pub per_number: u32,
    /// More than this many new international calls within a minute from one unknown source
    /// is a burst (0: off).
    pub international_per_minute: u32,
    pub window_ns: u64,
}

impl Default for CallConfig {
    fn default() -> Self {
        CallConfig {
            dial_plan: DialPlan::default(),
            per_number: 3,
            international_per_minute: 5,
            window_ns: 60 * crate::NS_PER_SEC,
        }
    }
}

/// Start times of the latest calls, newest at `next - 1` (a ring).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallTimes {
    pub times_ns: [u64; RING],
    pub next: u32,
    pub _pad: u32,
}

impl CallTimes {
    /// Records a new call at `now` and says whether it is one too many: more than `limit`
    /// (≤ the ring) calls within `window_ns`. An excess call is recorded too, so a source that
    /// keeps dialing stays over the limit.
    #[inline(always)]
    pub fn excess(&mut self, now: u64, limit: u32, window_ns: u64) -> bool {
        let limit = limit as usize;
        if limit == 0 || limit > RING - 1 {
            return false;
        }
        // The call `limit` calls back: if it started within the window, this one is the
        // (limit + 1)th within it.
        let back = (self.next as usize + RING - limit) % RING;
        let oldest = self.times_ns.get(back).copied().unwrap_or(0);
        let over = oldest != 0 && now.saturating_sub(oldest) < window_ns;
        let at = self.next as usize % RING;
        if let Some(t) = self.times_ns.get_mut(at) {
            // Zero means "never": a call at boot time 0 is recorded as 1 ns.
            *t = now.max(1);
        }
        self.next = ((at + 1) % RING) as u32;
        over
    }
}

/// A call seen recently from a source (key of the `recent_calls` map): its Call-ID folded
/// to 64 bits. A retransmitted INVITE, and the INVITE sent again with credentials after a
/// 407, keep the Call-ID: one call.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallKey {
    pub source: SourceKey,
    pub call_id: u64,
}

/// A source's calls to one number (key of the `calls_to_number` map).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NumberKey {
    pub source: SourceKey,
    pub number: u64,
}

/// What was decided for a call, kept so its retransmissions get the same.
pub mod call_verdict {
    pub const PASS: u32 = 0;
    /// The dialed number matched a deny rule.
    pub const DESTINATION: u32 = 1;
    /// Over the calls-to-one-number limit.
    pub const BURST_NUMBER: u32 = 2;
    /// Over the international-calls-a-minute limit of an unknown source.
    pub const BURST_INTERNATIONAL: u32 = 3;

    pub fn name(v: u32) -> &'static str {
        match v {
            DESTINATION => "destination",
            BURST_NUMBER => "burst_number",
            BURST_INTERNATIONAL => "burst_international",
            _ => "pass",
        }
    }
}

/// A destination rule (value of the `destinations` LPM trie, keyed by digit nibbles).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DestinationRule {
    /// 1: deny, 0: allow (an allow rule inside a denied range wins by being longer).
    pub deny: u32,
    /// The rule's number in the configuration.
    pub rule: u32,
    /// Calls this rule decided (new calls, not retransmissions), counted by the program.
    pub hits: u64,
}

/// A call blocked by a destination or burst rule, reported to the agent (ring buffer
/// `call_events`) once per call, not per retransmission.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallEvent {
    /// The source address (IPv4-mapped for IPv4), network order.
    pub source: [u32; 4],
    /// The dialed number, E.164 digits.
    pub number: u64,
    pub number_len: u32,
    /// A [`call_verdict`].
    pub verdict: u32,
    /// The caller (From user).
    pub extension: crate::scan::Extension,
    /// 1: the source is known (registered); 0: unknown (and, for a burst, banned).
    pub known: u8,
    pub monitor: u8,
    pub _pad: [u8; 6],
}

/// The Call-ID folded to 64 bits: the first 64 bytes of its value up to the line end.
#[inline(always)]
pub fn call_id_hash<B: crate::scan::Bytes + ?Sized>(b: &B, value: usize) -> u64 {
    if value == 0 || value >= crate::scan::SCAN_LIMIT {
        return 0;
    }
    let at = b.forget(value);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for k in 0..8 {
        let Some(w) = b.word_or_tail(at + 8 * k) else {
            break;
        };
        // Stop at the line end: what follows is another header, which differs between the
        // INVITE and its authenticated retry.
        let cr = line_end_in(w);
        let part = if cr < 8 { w & ((1u64 << (8 * cr)) - 1) } else { w };
        h = (h ^ part).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(23);
        if cr < 8 {
            break;
        }
    }
    h | 1
}

/// Index of the first CR or LF byte of `w`, 8 if none.
#[inline(always)]
fn line_end_in(w: u64) -> usize {
    for i in 0..8 {
        let c = (w >> (8 * i)) as u8;
        if c == b'\r' || c == b'\n' {
            return i;
        }
    }
    8
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{scan_headers, Wanted};

    #[test]
    fn the_fourth_call_within_the_window_is_one_too_many() {
        let mut t = CallTimes::default();
        let s = crate::NS_PER_SEC;
        assert!(!t.excess(10 * s, 3, 60 * s));
        assert!(!t.excess(11 * s, 3, 60 * s));
        assert!(!t.excess(12 * s, 3, 60 * s));
        assert!(t.excess(13 * s, 3, 60 * s));
        // A minute after the second call, the window holds three again (12, 13, now)... and
        // the excess one counts: still over.
        assert!(t.excess(40 * s, 3, 60 * s));
        let mut slow = CallTimes::default();
        for i in 0..20 {
            assert!(!slow.excess(i * 30 * s, 3, 60 * s), "call {i}");
        }
        let mut off = CallTimes::default();
        for i in 0..20 {
            assert!(!off.excess(i, 0, 60 * s));
        }
    }

    #[test]
    fn a_retry_with_credentials_is_the_same_call() {
        let first = b"INVITE sip:+232@h SIP/2.0\r\nCall-ID: abc@10.0.0.1\r\nCSeq: 1 INVITE\r\n\r\n";
        let retry = b"INVITE sip:+232@h SIP/2.0\r\ni: abc@10.0.0.1\r\nCSeq: 2 INVITE\r\nProxy-Authorization: x\r\n\r\n";
        let other = b"INVITE sip:+232@h SIP/2.0\r\nCall-ID: abd@10.0.0.1\r\nCSeq: 1 INVITE\r\n\r\n";
        let w = Wanted {
            call_id: true,
            ..Wanted::NONE
        };
        let id = |m: &[u8]| call_id_hash(m, scan_headers(m, 0, w).call_id_at);
        assert_eq!(id(first), id(retry));
        assert_ne!(id(first), id(other));
        assert_ne!(id(first), 0);
    }
}
