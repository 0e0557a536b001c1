//! The TC egress program: reads the SIP answers leaving from the SIP ports (UDP datagrams, and
//! TCP segments that start an answer; the device is then the connection) and judges the
//! source each goes to (sipfilter-common's `answers`). It never changes a packet; it drops
//! one only to withhold the 2xx that proves a guessed password.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use sipfilter_common::{
    answers::{charge, Answer, AnswerClass, AnswerState, Judgement},
    config::{transport, FLAG_TRUST, FLAG_WITHHOLD},
    counters::{ban_reason, AnswerKind},
    devices::{DeviceKey, DeviceState, NEW_DEVICE_BUDGET},
    scan::{
        cseq, first_header_line, request_identity, scan_lines, status_code, uri_user, Bytes, Found, Scan, Wanted,
        EXT_LEN, MAX_SCAN_ROUNDS,
    },
    Counters, CrackedExtension, KernelConfig, KnownSource, Method, SourceKey, NS_PER_SEC,
};

use crate::{
    bans::{ban, report, Cause},
    clock::now,
    connections,
    maps::{
        PendingAnswer, ANSWER_HEADERS_SLOT, CONFIG, COUNTERS, CRACKED_EXTENSIONS, DEVICES, EGRESS_PROGRAMS,
        EXTENSION_SLOT, IDENTIFY_SLOT, JUDGE_ANSWER_SLOT, KNOWN_SOURCES, NEW_DEVICE, PENDING_ANSWER,
    },
    parse::{load_address, parse_l3, Datagram, Headers, ScanWindow, L3},
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
/// it goes to, notes it in this CPU's [`PENDING_ANSWER`] and hands the packet on by tail
/// call: `sipfilter_answer_headers` finds its headers, `sipfilter_identify` tells which
/// request it answers, `sipfilter_extension` reads the extension at stake and
/// `sipfilter_judge` judges. Several programs, because the verifier walks each header read
/// once for every distinct state that reaches it: each program does one read from a clean
/// start (the way the request inspection is split too), and the smallest verifier our users
/// run (Debian 12's 6.1) takes each of them.
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
    if let Some(pending) = read_answer(&ctx, config, counters) {
        pass_on(&ctx, pending, ANSWER_HEADERS_SLOT);
    }
    TC_ACT_OK as i32
}

/// Reads one outgoing packet: for an answer worth judging, notes what the status line and the
/// addresses say in [`PENDING_ANSWER`] and starts its header scan there.
#[inline(always)]
fn read_answer(ctx: &TcContext, config: &KernelConfig, counters: &mut Counters) -> Option<&'static mut PendingAnswer> {
    let L3::Transport(h) = parse_l3(ctx).laundered(&mut counters.scratch) else {
        return None;
    };
    let (src_port_be, dst_port_be) = (h.src_port_be, h.dst_port_be);
    if h.tcp {
        match config.stream_transport(src_port_be) {
            Some(transport::TCP) => {}
            Some(_) => {
                // TLS and WebSocket: nothing to read, but a close ends the connection's count.
                closing(ctx, &h);
                return None;
            }
            None => return None,
        }
        closing(ctx, &h);
    } else if !config.is_sip_port(src_port_be) {
        return None;
    }
    // The copy reads past the linear area of a socket buffer too. A TCP segment is read
    // when it starts an answer, as a datagram is.
    let Some(bytes) = ScanWindow::of_skb(ctx, h.payload) else {
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
    let Some(first) = first_header_line(&bytes, 0) else {
        counters.uninspected += 1;
        return None;
    };
    let pending = PENDING_ANSWER.get_ptr_mut(0)?;
    // SAFETY: this CPU's record.
    let pending = unsafe { &mut *pending };
    pending.peer = peer.addr;
    pending.peer_v6 = peer.is_v6 as u32;
    pending.code = code as u32;
    pending.method = Method::Unknown as u32;
    pending.cseq = 0;
    pending.ext = [0; EXT_LEN];
    pending.peer_port = u16::from_be(dst_port_be) as u32;
    pending.window_len = Bytes::len(&bytes) as u32;
    pending.window_cut = bytes.truncated() as u32;
    // The request's top Via and CSeq tell which request this answers; the extension at stake
    // is the To user of a REGISTER's answer, the From user (the caller) of the rest.
    pending.scan = Scan {
        wanted: Wanted {
            via: true,
            to: true,
            from: true,
            cseq: true,
            ..Wanted::NONE
        },
        found: Found {
            resume_at: first,
            ..Found::default()
        },
    };
    pending.rounds = 0;
    pending.ready = 1;
    Some(pending)
}

/// The PBX closing (FIN or RST) a connection on a SIP stream port: it no longer counts
/// toward its client's open connections.
#[inline(always)]
fn closing(ctx: &TcContext, h: &Headers) {
    if !h.closing() {
        return;
    }
    if let Some(peer) = load_address(ctx, h, true) {
        connections::closed(&connections::connection_key(&peer, h.dst_port_be, h.src_port_be));
    }
}

/// Finds the answer's headers, a round of [`MAX_LINES`](sipfilter_common::scan::MAX_LINES)
/// lines per run (it calls itself for the next round, up to [`MAX_SCAN_ROUNDS`]), with the
/// scan's progress in map memory, where the verifier does not track it (see `Scan`).
#[classifier]
pub fn sipfilter_answer_headers(ctx: TcContext) -> i32 {
    let Some(pending) = waiting_answer() else {
        return TC_ACT_OK as i32;
    };
    let Some(bytes) = pending.window() else {
        pending.ready = 0;
        return TC_ACT_OK as i32;
    };
    scan_lines(&bytes, pending.scan.found.resume_at, &mut pending.scan);
    pending.rounds += 1;
    if pending.scan.found.resume_at != 0 && pending.rounds < MAX_SCAN_ROUNDS {
        pass_on(&ctx, pending, ANSWER_HEADERS_SLOT);
    } else {
        pass_on(&ctx, pending, IDENTIFY_SLOT);
    }
    TC_ACT_OK as i32
}

/// Tells which request the answer is for (`scan::request_identity`: its top Via and CSeq)
/// and the method it answers.
#[classifier]
pub fn sipfilter_identify(ctx: TcContext) -> i32 {
    let Some((pending, bytes, counters)) = resume() else {
        return TC_ACT_OK as i32;
    };
    let found = pending.scan.found;
    match cseq(&bytes, found.cseq_at) {
        Some((cseq_id, method)) => {
            pending.method = method as u32;
            pending.cseq = request_identity(&bytes, found.via_at, cseq_id);
            pass_on(&ctx, pending, EXTENSION_SLOT);
        }
        None => {
            counters.uninspected += 1;
            pending.ready = 0;
        }
    }
    TC_ACT_OK as i32
}

/// Reads the extension at stake: the registering user (To) of a REGISTER's answer, the
/// caller (From) of the rest, whose credentials the answer is about.
#[classifier]
pub fn sipfilter_extension(ctx: TcContext) -> i32 {
    let Some((pending, bytes, counters)) = resume() else {
        return TC_ACT_OK as i32;
    };
    let at = if pending.method == Method::Register as u32 {
        pending.scan.found.to_at
    } else {
        pending.scan.found.from_at
    };
    match uri_user(&bytes, at) {
        Some(ext) => {
            pending.ext = ext;
            pass_on(&ctx, pending, JUDGE_ANSWER_SLOT);
        }
        None => {
            counters.uninspected += 1;
            pending.ready = 0;
        }
    }
    TC_ACT_OK as i32
}

/// Judges the answer the programs before it read; drops it only to withhold a cracked guess's
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

/// Hands the packet to the program in `slot`. A tail call does not return unless it fails
/// (nothing loaded there): then the answer passes unjudged and the record is let go.
#[inline(always)]
fn pass_on(ctx: &TcContext, pending: &mut PendingAnswer, slot: u32) {
    // SAFETY: see above.
    unsafe { EGRESS_PROGRAMS.tail_call(ctx, slot) };
    pending.ready = 0;
}

/// The waiting answer, its scan window and this CPU's counters, for a program of the chain.
#[inline(always)]
fn resume() -> Option<(&'static mut PendingAnswer, ScanWindow, &'static mut Counters)> {
    let counters = COUNTERS.get_ptr_mut(0)?;
    // SAFETY: a per-CPU value: only this CPU touches it while the program runs.
    let counters = unsafe { &mut *counters };
    let pending = waiting_answer()?;
    match pending.window() {
        Some(bytes) => Some((pending, bytes, counters)),
        None => {
            pending.ready = 0;
            None
        }
    }
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

/// The device (source port) under the source an answer goes to: its entry, created for a
/// new device while the source's new-device budget lasts (None after: its answers are judged
/// by the source's totals alone).
#[inline(always)]
fn device_state(key: &SourceKey, port: u16, answers: &mut AnswerState, now: u64) -> Option<&'static mut DeviceState> {
    let device = DeviceKey {
        source: *key,
        port: port as u32,
    };
    if let Some(d) = DEVICES.get_ptr_mut(&device) {
        // SAFETY: a valid entry; the egress program is its only writer.
        return Some(unsafe { &mut *d });
    }
    if charge(&mut answers.device_debt_ns, &NEW_DEVICE_BUDGET, now) {
        return None;
    }
    let fresh = NEW_DEVICE.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch record, ours while the program runs.
    unsafe {
        core::ptr::write_bytes(fresh, 0, 1);
        (*fresh).first_seen_ns = now;
        let _ = DEVICES.insert(&device, &*fresh, 0);
    }
    let d = DEVICES.get_ptr_mut(&device)?;
    // SAFETY: as above.
    Some(unsafe { &mut *d })
}

/// Judges a read answer; true when it is an answer to withhold.
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
    // Banned, or denylisted (a CIDR ban, an imported list, a CrowdSec range).
    let shut_out = state.ban_until_ns > now || state.deny_until_ns > now;
    if shut_out && AnswerClass::withheld_from_banned(answer.code) {
        if config.monitor() {
            return false;
        }
        counters.withheld_challenges += 1;
        return true;
    }
    let known = state.answers.known_until_ns > now;
    let device = device_state(&key, answer.port, &mut state.answers, now);
    match state.answers.judge(&answer, known, device, &config.trust, now) {
        Judgement::Nothing => false,
        Judgement::Withhold => {
            if config.monitor() {
                return false;
            }
            counters.withheld_challenges += 1;
            true
        }
        Judgement::Suspect { .. } => {
            let cause = Cause {
                reason: ban_reason::SUSPECT,
                method,
                answers: Some((&state.answers, &ext)),
                port: answer.port,
            };
            if !report(config, &key, 0, 0, &cause) {
                counters.events_lost += 1;
            }
            counters.suspect += 1;
            // Monitor mode withholds nothing.
            config.flag(FLAG_WITHHOLD) && !config.monitor()
        }
        Judgement::Ban(reason) => {
            if state.ban_until_ns <= now {
                let cause = Cause {
                    reason,
                    method,
                    answers: Some((&state.answers, &ext)),
                    port: answer.port,
                };
                state.ban_until_ns = ban(config, counters, &key, &cause, now);
            }
            // The answer that gets a source banned teaches it nothing either (see
            // `AnswerClass::withheld_from_banned`).
            if config.monitor() || !AnswerClass::withheld_from_banned(answer.code) {
                return false;
            }
            counters.withheld_challenges += 1;
            true
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
                port: answer.port,
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
