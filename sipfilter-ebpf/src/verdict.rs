//! The verdict on a request the inspection read: its findings (scanner User-Agent,
//! quarantined extension, the call rules), stealth, and a segment's next message handed back
//! to the ingress program. A program of its own (reached by tail call from the inspection's
//! readers), so that the ingress program's verifier walk holds only the first pass.

use aya_ebpf::{bindings::xdp_action::XDP_PASS, macros::xdp, programs::XdpContext};
use sipfilter_common::{
    calls::call_verdict, config::FLAG_TRUST, counters::ban_reason, Counters, KernelConfig, Method, Outcome, RateState,
};

use crate::{
    bans::{ban, Cause},
    clock::now,
    ingress::{finish, silenced, NO_BAN},
    maps::{Inspection, CONFIG, COUNTERS, INGRESS_PROGRAMS, INSPECTION, MAIN_SLOT, MAX_SEGMENT_MESSAGES},
    parse::{load_address, parse_l3, L3},
    source_state::source_state,
};

#[xdp]
pub fn sipfilter_verdict(ctx: XdpContext) -> u32 {
    let Some(config) = CONFIG.get(0) else {
        return XDP_PASS;
    };
    let Some(counters) = COUNTERS.get_ptr_mut(0) else {
        return XDP_PASS;
    };
    // SAFETY: a per-CPU value: only this CPU touches it while the program runs.
    let counters = unsafe { &mut *counters };
    let outcome = try_verdict(&ctx, config, counters);
    finish(config, counters, outcome)
}

#[inline(always)]
fn try_verdict(ctx: &XdpContext, config: &KernelConfig, counters: &mut Counters) -> Outcome {
    let Some(insp) = INSPECTION.get_ptr_mut(0) else {
        return Outcome::Accepted;
    };
    // SAFETY: a per-CPU record; see `Inspection`.
    let insp = unsafe { &mut *insp };
    // Only right after an inspection (its `judge` sets it before the tail call here).
    if insp.done == 0 {
        return Outcome::Accepted;
    }
    insp.done = 0;
    let L3::Transport(h) = parse_l3(ctx) else {
        return Outcome::Accepted;
    };
    let Some(dgram) = load_address(ctx, &h, false) else {
        return Outcome::Malformed;
    };
    let now = now(config);
    let key = dgram.key(config);
    let Some(state) = source_state(config, &key, now) else {
        return Outcome::Malformed;
    };
    // SAFETY: as in the ingress program.
    let state = unsafe { &mut *state };
    let known = !config.flag(FLAG_TRUST) || state.answers.known_until_ns > now;
    let method = Method::ALL
        .get(insp.method as usize)
        .copied()
        .unwrap_or(Method::Unknown);
    if let Some((outcome, reason)) = findings(insp, counters, state, known) {
        state.drops += 1;
        if reason != NO_BAN {
            let cause = Cause {
                reason,
                method,
                answers: None,
                port: 0,
            };
            state.ban_until_ns = ban(config, counters, &key, &cause, now);
        }
        return outcome;
    }
    if !known && silenced(config, method) {
        state.drops += 1;
        return Outcome::Stealth;
    }
    // The segment's next message, if it has one (a datagram never has).
    next_message(ctx, counters, state, known)
}

/// The inspection's findings.
#[inline(always)]
fn findings(insp: &Inspection, counters: &mut Counters, state: &mut RateState, known: bool) -> Option<(Outcome, u8)> {
    if insp.uninspected != 0 {
        counters.requests_uninspected += 1;
    }
    if insp.credentials != 0 {
        state.answers.credentialed = state.answers.credentialed.wrapping_add(1);
        // One challenge answered: the next challenge to the source may pass.
        state.answers.unanswered = state.answers.unanswered.saturating_sub(1);
    }
    if insp.scanner != 0 {
        if let Some(n) = counters.scanner_tokens.get_mut(insp.scanner as usize - 1) {
            *n += 1;
        }
        return Some((Outcome::Scanner, ban_reason::SCANNER));
    }
    if insp.quarantined != 0 {
        return Some((Outcome::Quarantined, NO_BAN));
    }
    match insp.call {
        call_verdict::DESTINATION => Some((Outcome::Destination, NO_BAN)),
        call_verdict::BURST_NUMBER | call_verdict::BURST_INTERNATIONAL => {
            // A registered phone dialing in a burst is reported, not cut off for good.
            Some((Outcome::CallBurst, if known { NO_BAN } else { ban_reason::CALL_BURST }))
        }
        _ => None,
    }
}

/// After a TCP message passed: the segment's next message, if the inspection found one,
/// judged the same way (the ingress program again, by tail call). Up to [`MAX_SEGMENT_MESSAGES`];
/// what an unknown source puts beyond that, or behind a message whose end cannot be told,
/// is dropped (no ban: its TCP resends the segment and fares no better), a known source's
/// passes unread (counted uninspected).
#[inline(always)]
fn next_message(ctx: &XdpContext, counters: &mut Counters, state: &mut RateState, known: bool) -> Outcome {
    let Some(insp) = INSPECTION.get_ptr_mut(0) else {
        return Outcome::Accepted;
    };
    // SAFETY: a per-CPU record; see `Inspection`.
    let insp = unsafe { &mut *insp };
    let (next, unframed) = (insp.next_at, insp.unframed);
    insp.next_at = 0;
    insp.unframed = 0;
    if unframed != 0 || (next != 0 && insp.message_index + 1 >= MAX_SEGMENT_MESSAGES) {
        return self::unframed(counters, state, known);
    }
    if next == 0 {
        return Outcome::Accepted;
    }
    insp.current_at = next;
    insp.message_index += 1;
    insp.handed = 1;
    // SAFETY: a tail call either does not return or fails (no program there); then the rest
    // of the segment passes unread, as it did before segments were framed.
    unsafe { INGRESS_PROGRAMS.tail_call(ctx, MAIN_SLOT) };
    insp.handed = 0;
    counters.requests_uninspected += 1;
    Outcome::Accepted
}

/// The rest of a segment sipfilter cannot read as messages: dropped from an unknown source
/// (no ban: its TCP resends the segment, which fares no better), passed from a known one and
/// counted uninspected (an office's proxy coalescing many messages is never cut off).
#[inline(always)]
fn unframed(counters: &mut Counters, state: &mut RateState, known: bool) -> Outcome {
    if !known {
        state.drops += 1;
        return Outcome::Throttled;
    }
    counters.requests_uninspected += 1;
    Outcome::Accepted
}
