//! The TC egress program: reads the SIP answers leaving from the SIP ports and judges the
//! source each goes to (sipfilter-common's `answers`). It never changes a packet; it drops
//! one only to withhold the 2xx that proves a guessed password.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use network_types::udp::UdpHdr;
use sipfilter_common::{
    answers::{Answer, AnswerClass, Judgement},
    config::FLAG_WITHHOLD,
    counters::{ban_reason, AnswerKind},
    scan::{scan_headers, status_code, Bytes, Wanted},
    Counters, CrackedExtension, KernelConfig, KnownSource, Method, NS_PER_SEC,
};

use crate::{
    bans::{ban, Cause},
    clock::now,
    maps::{CONFIG, COUNTERS, CRACKED_EXTENSIONS, KNOWN_SOURCES},
    parse::{load_address, parse_l3, udp_ports, ScanWindow, L3},
    source_state::{existing_state, ensure_fresh, top_up},
};

/// "SIP/2.0 " as the first word of a payload.
const SIP_STATUS_LINE: u64 = u64::from_le_bytes(*b"SIP/2.0 ");

/// The empty TC program the benchmark measures the egress program against.
#[classifier]
pub fn tc_floor(_ctx: TcContext) -> i32 {
    TC_ACT_OK as i32
}

#[classifier]
pub fn sipfilter_answers(ctx: TcContext) -> i32 {
    let Some(config) = CONFIG.get(0) else {
        return TC_ACT_OK as i32;
    };
    let Some(counters) = COUNTERS.get_ptr_mut(0) else {
        return TC_ACT_OK as i32;
    };
    // SAFETY: a per-CPU value: only this CPU touches it while the program runs.
    let counters = unsafe { &mut *counters };
    if try_answers(&ctx, config, counters) && !config.monitor() {
        return TC_ACT_SHOT as i32;
    }
    TC_ACT_OK as i32
}

/// Judges one outgoing packet; true when it is a 2xx to withhold.
#[inline(always)]
fn try_answers(ctx: &TcContext, config: &KernelConfig, counters: &mut Counters) -> bool {
    let L3::Udp(h) = parse_l3(ctx) else {
        return false;
    };
    let Some((src_port_be, _)) = udp_ports(ctx, &h) else {
        return false;
    };
    if !config.is_sip_port(src_port_be) {
        return false;
    }
    // The copy reads past the linear area of a socket buffer too.
    let Some(bytes) = ScanWindow::of_skb(ctx, h.udp + UdpHdr::LEN) else {
        return false;
    };
    if bytes.word(0) != Some(SIP_STATUS_LINE) {
        // A request the PBX sends (an OPTIONS ping to a phone): not an answer.
        return false;
    }
    let Some(code) = bytes.word(8).and_then(status_code) else {
        return false;
    };
    if let Some(n) = counters.answers.get_mut(AnswerKind::of(code) as usize) {
        *n += 1;
    }
    if !AnswerClass::needs_headers(code) {
        return false;
    }
    let Some(peer) = load_address(ctx, &h, true) else {
        return false;
    };
    let key = peer.key(config);
    let Some(state) = existing_state(config, &key) else {
        return false;
    };
    // SAFETY: see the ingress program; the two programs may touch one slot at once, which
    // can lose a count, never a ban.
    let state = unsafe { &mut *state };
    let now = now(config);
    ensure_fresh(state, &peer, config, now);
    if state.allow_until_ns > now {
        // Allowlisted: trusted as configured, never judged.
        return false;
    }

    let wanted = Wanted {
        to: true,
        from: true,
        cseq: true,
        credentials: false,
    };
    let found = scan_headers(&bytes, 0, wanted);
    let Some((cseq_id, method)) = found.cseq else {
        counters.uninspected += 1;
        return false;
    };
    // The extension at stake: the registering user, or the caller whose credentials count.
    let user = if method == Method::Register { found.to } else { found.from };
    let Some(ext) = user else {
        counters.uninspected += 1;
        return false;
    };
    let answer = Answer {
        code,
        method,
        cseq: cseq_id,
        ext,
    };
    let known = state.answers.known_until_ns > now;
    match state.answers.judge(&answer, known, &config.trust, now) {
        Judgement::Nothing => false,
        Judgement::Ban(reason) => {
            if state.ban_until_ns <= now {
                let cause = Cause {
                    reason,
                    method,
                    answers: Some((&state.answers, &ext)),
                };
                state.ban_until_ns = ban(config, counters, &key, &cause, now);
            }
            false
        }
        Judgement::Cracked { other_extensions } => {
            let record = CrackedExtension {
                source: key,
                at_ns: now,
                failures: state.answers.failures,
                other_extensions,
            };
            let _ = CRACKED_EXTENSIONS.insert(&ext, &record, 0);
            counters.cracked += 1;
            let cause = Cause {
                reason: ban_reason::CRACKED,
                method,
                answers: Some((&state.answers, &ext)),
            };
            state.ban_until_ns = ban(config, counters, &key, &cause, now);
            // It never becomes known, even if it was.
            state.answers.known_until_ns = 0;
            let _ = KNOWN_SOURCES.remove(&key);
            if config.flag(FLAG_WITHHOLD) {
                counters.withheld += 1;
                return true;
            }
            false
        }
        Judgement::Promote => {
            let until = now.saturating_add(config.trust.known_ttl_secs as u64 * NS_PER_SEC);
            let record = KnownSource {
                until_ns: until,
                last_success_ns: now,
                extension: ext,
            };
            let _ = KNOWN_SOURCES.insert(&key, &record, 0);
            if !known {
                top_up(state, config);
            }
            state.answers.known_until_ns = until;
            counters.promoted += 1;
            false
        }
    }
}
