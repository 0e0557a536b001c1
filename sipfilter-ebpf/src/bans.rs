//! Making a ban: the ban table entry with its escalated duration, the offence history, the
//! event for userspace and the counters. Both programs ban through here.

use sipfilter_common::{
    answers::AnswerState, scan::Extension, Ban, BanEvent, Counters, KernelConfig, Method, OffenseHistory, SourceKey,
};

use crate::maps::{BAN_EVENTS, BAN_TABLE, OFFENSE_HISTORY};

/// Why, and what the answers said (for answer-based bans).
pub struct Cause<'a> {
    pub reason: u8,
    pub method: Method,
    pub answers: Option<(&'a AnswerState, &'a Extension)>,
    /// The device (source port) answered, for answer-based bans (0: none).
    pub port: u16,
}

/// Bans `key` for its strike's duration and tells userspace. Returns when the ban ends.
// Inlined like everything else: on this kernel a program with bpf-to-bpf calls costs
// ~15 ns more per packet, on every path.
#[inline(always)]
pub fn ban(config: &KernelConfig, c: &mut Counters, key: &SourceKey, cause: &Cause, now: u64) -> u64 {
    let strike = match OFFENSE_HISTORY.get_ptr_mut(key) {
        Some(h) => {
            let h = unsafe { &*h };
            if now < h.last_ban_end_ns.saturating_add(config.escalation_window_ns) {
                h.strikes + 1
            } else {
                1
            }
        }
        None => 1,
    };
    let duration = config.ban_duration(strike);
    let expires = now.saturating_add(duration);
    let entry = Ban {
        expires_ns: expires,
        banned_at_ns: now,
        strike,
        reason: cause.reason,
        method: cause.method as u8,
        monitor: config.monitor() as u8,
        _pad: 0,
    };
    let stored = BAN_TABLE.insert(key, &entry, 0).is_ok();
    let history = OffenseHistory {
        last_ban_end_ns: expires,
        strikes: strike,
        _pad: 0,
    };
    let _ = OFFENSE_HISTORY.insert(key, &history, 0);

    let sent = report(config, key, duration, strike, cause);
    if let Some(b) = c
        .bans
        .get_mut(sipfilter_common::counters::ban_reason::slot(cause.reason))
    {
        *b += 1;
    }
    if !stored {
        c.ban_table_full += 1;
    }
    if !sent {
        c.events_lost += 1;
    }
    expires
}

/// Tells userspace of a ban (or, `duration` 0, an alert: a suspect 2xx withheld). True when
/// the event fit in the ring buffer.
#[inline(always)]
pub fn report(config: &KernelConfig, key: &SourceKey, duration: u64, strike: u32, cause: &Cause) -> bool {
    match BAN_EVENTS.reserve::<BanEvent>(0) {
        Some(mut slot) => {
            let e = slot.as_mut_ptr();
            // SAFETY: the reserved record is ours until submitted; fields written one by one
            // (no struct on the stack: the event is 128 bytes).
            unsafe {
                (*e).source = *key;
                (*e).duration_ns = duration;
                (*e).strike = strike;
                (*e).reason = cause.reason;
                (*e).method = cause.method as u8;
                (*e).monitor = config.monitor() as u8;
                (*e)._pad = 0;
                (*e).device_port = cause.port as u32;
                (*e)._pad2 = 0;
                match cause.answers {
                    Some((a, ext)) => {
                        (*e).failures = a.failures;
                        (*e).not_found = a.not_found;
                        crate::source_state::copy_words(&mut (*e).extension, ext);
                        crate::source_state::copy_words(&mut (*e).tried, &a.failed);
                    }
                    None => {
                        (*e).failures = 0;
                        (*e).not_found = 0;
                        core::ptr::write_bytes(&mut (*e).extension, 0, 1);
                        core::ptr::write_bytes(&mut (*e).tried, 0, 1);
                    }
                }
            }
            slot.submit(0);
            true
        }
        None => false,
    }
}
