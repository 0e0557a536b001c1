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
    config::{FLAG_TRUST, FLAG_WITHHOLD},
    counters::{ban_reason, AnswerKind},
    scan::{cseq, first_header_line, request_identity, scan_lines, status_code, uri_user, Bytes, Found, Scan, Wanted},
    Counters, CrackedExtension, KernelConfig, KnownSource, Method, NS_PER_SEC,
};

use crate::{
    bans::{ban, Cause},
    clock::now,
    maps::{
        PendingAnswer, CONFIG, COUNTERS, CRACKED_EXTENSIONS, EGRESS_PROGRAMS, IDENTIFY_SLOT, JUDGE_ANSWER_SLOT,
        KNOWN_SOURCES, PENDING_ANSWER, READ_CALLER_SLOT,
    },
    parse::{load_address, parse_l3, udp_ports, Datagram, ScanWindow, L3},
    source_state::{ensure_fresh, existing_state, top_up},
};

/// "SIP/2.0 " as the first word of a payload.
const SIP_STATUS_LINE: u64 = u64::from_le_bytes(*b"SIP/2.0 ");

/// The empty TC program the benchmark measures the egress program against.
#[classifier]
pub fn tc_floor(_ctx: TcContext) -> i32 {
    TC_ACT_OK as i32
}

/// Reads an answer leaving from a SIP port; if it is one that says something about the source
/// it goes to, notes what it says in this CPU's [`PENDING_ANSWER`] and hands the packet to
/// the next program by tail call (`sipfilter_identify`, then `sipfilter_caller` where the
/// caller is needed, then `sipfilter_judge`). Several programs, because the verifier walks the
/// header scan once for every distinct state that reaches it: each reads at most two headers
/// from a clean start, and judging (with its map lookups and branches) comes last.
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
    if let Some(next) = read_answer(&ctx, config, counters) {
        // SAFETY: a tail call does not return unless it fails (nothing loaded there): then
        // the answer passes unjudged.
        unsafe { EGRESS_PROGRAMS.tail_call(&ctx, next) };
    }
    TC_ACT_OK as i32
}

/// Judges the answer [`sipfilter_answers`] read; drops it only to withhold a cracked guess's
/// proof.
#[classifier]
pub fn sipfilter_judge(_ctx: TcContext) -> i32 {
    let Some(config) = CONFIG.get(0) else {
        return TC_ACT_OK as i32;
    };
    let Some(counters) = COUNTERS.get_ptr_mut(0) else {
        return TC_ACT_OK as i32;
    };
    let Some(pending) = waiting_answer() else {
        return TC_ACT_OK as i32;
    };
    // SAFETY: a per-CPU value: only this CPU touches it while the program runs.
    let counters = unsafe { &mut *counters };
    pending.ready = 0;
    if judge(pending, config, counters) && !config.monitor() {
        return TC_ACT_SHOT as i32;
    }
    TC_ACT_OK as i32
}

/// Reads one outgoing packet: for an answer worth judging, notes it in [`PENDING_ANSWER`] and
/// says which program goes on with it.
#[inline(always)]
fn read_answer(ctx: &TcContext, config: &KernelConfig, counters: &mut Counters) -> Option<u32> {
    let L3::Udp(h) = parse_l3(ctx).laundered(&mut counters.scratch) else {
        return None;
    };
    let Some((src_port_be, dst_port_be)) = udp_ports(ctx, &h) else {
        return None;
    };
    if !config.is_sip_port(src_port_be) {
        return None;
    }
    // The copy reads past the linear area of a socket buffer too.
    let Some(bytes) = ScanWindow::of_skb(ctx, h.udp + UdpHdr::LEN) else {
        return None;
    };
    if bytes.word(0) != Some(SIP_STATUS_LINE) {
        // A request the PBX sends (an OPTIONS ping to a phone): not an answer.
        return None;
    }
    let Some(code) = bytes.word(8).and_then(status_code) else {
        return None;
    };
    if let Some(n) = counters.answers.get_mut(AnswerKind::of(code) as usize) {
        *n += 1;
    }
    if !AnswerClass::needs_headers(code) {
        return None;
    }
    let Some(peer) = load_address(ctx, &h, true) else {
        return None;
    };
    // To and CSeq here; the From (the caller) of an answer to anything but a REGISTER is
    // read by `sipfilter_caller`: three headers in one scan are more paths than the
    // verifier walks.
    let wanted = Wanted {
        to: true,
        cseq: true,
        ..Wanted::NONE
    };
    let found = scan_in_map(&bytes, wanted);
    let Some((cseq_id, method)) = cseq(&bytes, found.cseq_at) else {
        counters.uninspected += 1;
        return None;
    };
    let Some(pending) = PENDING_ANSWER.get_ptr_mut(0) else {
        return None;
    };
    // SAFETY: this CPU's record.
    let pending = unsafe { &mut *pending };
    pending.peer = peer.addr;
    pending.peer_v6 = peer.is_v6 as u32;
    pending.code = code as u32;
    pending.method = method as u32;
    pending.cseq = cseq_id;
    pending.peer_port = u16::from_be(dst_port_be) as u32;
    pending.window_len = Bytes::len(&bytes) as u32;
    pending.window_cut = bytes.truncated() as u32;
    if method == Method::Register {
        // The extension at stake in a REGISTER's answer: the registering user.
        let Some(ext) = uri_user(&bytes, found.to_at) else {
            counters.uninspected += 1;
            return None;
        };
        pending.ext = ext;
    }
    pending.ready = 1;
    Some(IDENTIFY_SLOT)
}

/// Tells which request the answer is for (`scan::request_identity`: its top Via and CSeq),
/// then hands the packet on: to the judge for a REGISTER's answer, to `sipfilter_caller`
/// for the rest. A program of its own, like each header read, for the verifier.
#[classifier]
pub fn sipfilter_identify(ctx: TcContext) -> i32 {
    let Some(pending) = waiting_answer() else {
        return TC_ACT_OK as i32;
    };
    let Some(bytes) = pending.window() else {
        pending.ready = 0;
        return TC_ACT_OK as i32;
    };
    let wanted = Wanted {
        via: true,
        ..Wanted::NONE
    };
    let found = scan_in_map(&bytes, wanted);
    pending.cseq = request_identity(&bytes, found.via_at, pending.cseq);
    let next = if pending.method == Method::Register as u32 {
        JUDGE_ANSWER_SLOT
    } else {
        READ_CALLER_SLOT
    };
    // SAFETY: see `sipfilter_answers`.
    unsafe { EGRESS_PROGRAMS.tail_call(&ctx, next) };
    pending.ready = 0;
    TC_ACT_OK as i32
}

/// Reads the caller (From user) of an answer to anything but a REGISTER: whose credentials
/// the answer is about. Then hands the packet to the judge.
#[classifier]
pub fn sipfilter_caller(ctx: TcContext) -> i32 {
    let Some(counters) = COUNTERS.get_ptr_mut(0) else {
        return TC_ACT_OK as i32;
    };
    let Some(pending) = waiting_answer() else {
        return TC_ACT_OK as i32;
    };
    // SAFETY: a per-CPU value: only this CPU touches it while the program runs.
    let counters = unsafe { &mut *counters };
    let Some(bytes) = pending.window() else {
        pending.ready = 0;
        return TC_ACT_OK as i32;
    };
    let wanted = Wanted {
        from: true,
        ..Wanted::NONE
    };
    let found = scan_in_map(&bytes, wanted);
    match uri_user(&bytes, found.from_at) {
        Some(ext) => {
            pending.ext = ext;
            // SAFETY: see `sipfilter_answers`.
            unsafe { EGRESS_PROGRAMS.tail_call(&ctx, JUDGE_ANSWER_SLOT) };
        }
        None => counters.uninspected += 1,
    }
    pending.ready = 0;
    TC_ACT_OK as i32
}

/// Scans the answer's headers with the scan's progress in this CPU's pending record: in map
/// memory, where the verifier does not track it (see `Scan`).
#[inline(always)]
fn scan_in_map(bytes: &ScanWindow, wanted: Wanted) -> Found {
    let Some(p) = PENDING_ANSWER.get_ptr_mut(0) else {
        return Found {
            incomplete: true,
            ..Found::default()
        };
    };
    // SAFETY: this CPU's record.
    let p = unsafe { &mut *p };
    p.scan = Scan {
        wanted,
        found: Found::default(),
    };
    match first_header_line(bytes, 0) {
        Some(first) => scan_lines(bytes, first, &mut p.scan),
        None => p.scan.found.incomplete = true,
    }
    p.scan.found
}

/// This CPU's answer read by an earlier program of the chain, if one waits (a TC program runs
/// to completion on its CPU, tail calls included).
#[inline(always)]
fn waiting_answer() -> Option<&'static mut PendingAnswer> {
    let p = PENDING_ANSWER.get_ptr_mut(0)?;
    // SAFETY: this CPU's record; see above.
    let p = unsafe { &mut *p };
    (p.ready != 0).then_some(p)
}

impl PendingAnswer {
    /// The scan window the answer was read from, still in this CPU's scan buffer.
    #[inline(always)]
    fn window(&self) -> Option<ScanWindow> {
        ScanWindow::resume(self.window_len as usize, self.window_cut != 0)
    }
}

/// Judges a read answer; true when it is a 2xx to withhold.
#[inline(always)]
fn judge(pending: &PendingAnswer, config: &KernelConfig, counters: &mut Counters) -> bool {
    if !config.flag(FLAG_TRUST) {
        // `[trust] enabled = false`: answers are counted, nobody is judged by them.
        return false;
    }
    let peer = Datagram {
        addr: pending.peer,
        is_v6: pending.peer_v6 != 0,
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
    let method = Method::from_u8(pending.method as u8).unwrap_or(Method::Unknown);
    let ext = pending.ext;
    let answer = Answer {
        code: pending.code as u16,
        method,
        cseq: pending.cseq,
        ext,
        port: pending.peer_port as u16,
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
            // Monitor mode withholds nothing (and counts nothing as withheld).
            if config.flag(FLAG_WITHHOLD) && !config.monitor() {
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
