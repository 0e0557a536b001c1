//! The XDP program: judges each SIP request (and any datagram or segment to a SIP port) as it
//! arrives.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::{
        bpf_ktime_get_boot_ns,
        generated::{bpf_jiffies64, bpf_xdp_load_bytes},
    },
    macros::xdp,
    programs::XdpContext,
};
use sipfilter_common::{
    calls::call_verdict,
    config::{
        transport, FLAG_CALLS, FLAG_QUARANTINE, FLAG_SCANNER_USER_AGENTS, FLAG_STEALTH, FLAG_STEALTH_ALL, FLAG_TRUST,
    },
    counters::ban_reason,
    scan::Scan,
    sip::CLASSIFY_LEN,
    ClockSample, Counters, KernelConfig, Method, Outcome, RateState, SourceKey, Verdict,
};

use crate::{
    bans::{ban, Cause},
    clock::now,
    connections,
    lists::listed,
    maps::{
        wants, ALLOWLIST, BAN_TABLE, CLOCK_SAMPLE, CONFIG, CONNECTION_LIMITED, COUNTERS, DENYLIST, INGRESS_PROGRAMS,
        INSPECTION, INSPECT_SLOT,
    },
    parse::{load_address, parse_l3, ptr_at, Datagram, Headers, L3},
    source_state::{ensure_fresh, source_state},
};

/// The empty program the benchmark measures as its floor. It is not attached anywhere.
#[xdp]
pub fn xdp_floor(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Reads both clocks at one instant for userspace's calibration of [`now`]. Not attached.
#[xdp]
pub fn xdp_clock(_ctx: XdpContext) -> u32 {
    let sample = ClockSample {
        jiffies: unsafe { bpf_jiffies64() },
        boot_ns: unsafe { bpf_ktime_get_boot_ns() },
    };
    let _ = CLOCK_SAMPLE.set(0, &sample, 0);
    XDP_PASS
}

#[xdp]
pub fn sipfilter(ctx: XdpContext) -> u32 {
    let Some(config) = CONFIG.get(0) else {
        return XDP_PASS;
    };
    let Some(counters) = COUNTERS.get_ptr_mut(0) else {
        return XDP_PASS;
    };
    // SAFETY: a per-CPU value: only this CPU touches it while the program runs.
    let counters = unsafe { &mut *counters };
    let outcome = try_sipfilter(&ctx, config, counters);
    finish(config, counters, outcome)
}

/// Counts the outcome and turns it into the XDP action.
#[inline(always)]
pub(crate) fn finish(config: &KernelConfig, c: &mut Counters, outcome: Outcome) -> u32 {
    // Through black_box: the compiler knows the enum's range and would drop the bounds check,
    // but it may compute the outcome with a lookup table whose range the verifier does not
    // know (u8, not 0..COUNT).
    if let Some(o) = c.outcomes.get_mut(core::hint::black_box(outcome as usize)) {
        *o += 1;
    }
    if !outcome.drops() {
        // Passed packets are not counted twice: userspace derives them as every outcome less
        // the drops (see `Counters::derive_passed`), one store less on the common path.
        return XDP_PASS;
    }
    let (verdict, action) = if config.monitor() {
        (Verdict::WouldDrop, XDP_PASS)
    } else {
        (Verdict::Drop, XDP_DROP)
    };
    if let Some(v) = c.verdicts.get_mut(verdict as usize) {
        *v += 1;
    }
    action
}

/// What a packet to a SIP port carries, as far as judging goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Message {
    /// A SIP message: a datagram, or a TCP segment that starts one.
    Sip(Method),
    /// A connection's first SYN.
    Connect,
    /// A TCP segment with nothing to read: judged by the lists and bans alone.
    Segment,
}

#[inline(always)]
fn try_sipfilter(ctx: &XdpContext, config: &KernelConfig, counters: &mut Counters) -> Outcome {
    let h = match parse_l3(ctx) {
        L3::Transport(h) => crate::parse::launder(h, &mut counters.scratch),
        L3::Other(outcome, h) => {
            // With scope "all", a banned or denylisted source loses its non-SIP traffic too.
            if config.scope_all() {
                if let Some(o) = load_address(ctx, &h, false).and_then(|d| source_block(&d, config, now(config))) {
                    return o;
                }
            }
            return outcome;
        }
        L3::Skip(o) => return o,
    };

    let transport = if h.tcp {
        config.stream_transport(h.dst_port_be)
    } else if config.is_sip_port(h.dst_port_be) {
        Some(transport::UDP)
    } else {
        None
    };
    let Some(transport) = transport else {
        if config.scope_all() {
            if let Some(o) = load_address(ctx, &h, false).and_then(|d| source_block(&d, config, now(config))) {
                return o;
            }
        }
        return Outcome::NotSipPort;
    };
    // Counted for a segment's first message only (its next ones come back to this program)
    // rather than uncounted before the tail call:
    // nothing about the transport then stays live into the judging, and the verifier walks
    // it nearly once for UDP and TCP alike (measured: 535,000 instructions processed the
    // other way, 359,000 this way).
    if INSPECTION.get(0).is_none_or(|i| i.handed == 0) {
        if let Some(n) = counters.transports.get_mut(transport) {
            *n += 1;
        }
    }

    let message = message(ctx, &h, transport, counters, current_message());
    if let Message::Sip(method) = message {
        if let Some(m) = counters.methods.get_mut(method as usize) {
            *m += 1;
        }
    }

    let Some(dgram) = load_address(ctx, &h, false) else {
        return Outcome::Malformed;
    };
    let now = now(config);
    let key = dgram.key(config);
    let Some(state) = source_state(config, &key, now) else {
        return Outcome::Malformed;
    };
    // SAFETY: a slot of a shared array (or an overflow entry). Two CPUs may update one at once;
    // the worst that does is lose a token's worth of accounting, never a ban (bans live in the
    // ban table).
    let state = unsafe { &mut *state };
    state.last_seen_ns = now;
    ensure_fresh(state, &dgram, config, now);

    // What `sipfilter top` shows: every SIP message and new connection of the source, and
    // every packet dropped.
    if message != Message::Segment {
        state.requests += 1;
    }
    let (allowed, denied) = if dgram.is_v6 && !config.v6_lists_by_prefix() {
        // List status is cached per source key, which for IPv6 is a whole prefix; while some
        // list entry is longer than that prefix its addresses may be listed differently, so
        // look them up every time.
        let prefix = dgram.prefix();
        (listed(&ALLOWLIST, &prefix, now), listed(&DENYLIST, &prefix, now))
    } else {
        (state.allow_until_ns > now, state.deny_until_ns > now)
    };
    // The allowlist comes first, even before an active ban: an allowlisted address inside a
    // banned IPv6 prefix (the ban is on the /64, the trunk is one /128 of it) must still pass.
    if allowed {
        return Outcome::Allowlisted;
    }
    if denied {
        state.drops += 1;
        return Outcome::Denylisted;
    }
    if state.ban_until_ns > now {
        state.drops += 1;
        return Outcome::Banned;
    }
    // Without the answers program nobody can earn trust: everyone is judged as known was.
    let known = !config.flag(FLAG_TRUST) || state.answers.known_until_ns > now;
    let method = match message {
        Message::Sip(method) => method,
        Message::Connect => {
            let outcome = connection_budget(config, counters, state, &key, known, now);
            if outcome == Outcome::Connection {
                connections::opened(&connections::connection_key(&dgram, h.src_port_be, h.dst_port_be), now);
            }
            return outcome;
        }
        Message::Segment => {
            if h.tcp {
                let conn = connections::connection_key(&dgram, h.src_port_be, h.dst_port_be);
                if h.closing() {
                    connections::closed(&conn);
                } else {
                    connections::touched(&conn, now);
                }
            }
            return Outcome::Segment;
        }
    };
    // A connection's data keeps it from the idle sweep through the segments that carry no
    // message (the ACKs of the PBX's answers, keep-alives): touching it here too would make
    // the verifier walk the judging once more for TCP.
    let wanted = match judge_request(config, state, method, known, now) {
        Judged::Drop(outcome, reason) => {
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
        Judged::RateFirst(wanted) => wanted,
    };
    let outcome = rate_limit(config, counters, state, &key, method, known, now);
    // Only a request within its rate is read: a flood costs its bucket check, not a scan.
    if wanted != 0 && !outcome.drops() {
        inspect(ctx, method, wanted);
    }
    outcome
}

/// Where the message to judge starts: 0 for a packet's first (parsing finds it), or the
/// start of the segment's next message the verdict program handed back to this one.
#[inline(always)]
fn current_message() -> u32 {
    let Some(insp) = INSPECTION.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: a per-CPU record; see `Inspection`.
    let insp = unsafe { &mut *insp };
    if insp.handed == 0 {
        insp.current_at = 0;
        insp.message_index = 0;
    }
    insp.handed = 0;
    insp.current_at
}

/// What a packet to a SIP port of `transport` carries, and where its message starts. A
/// datagram is a SIP message; a TCP segment is one when it starts one (a phone's REGISTER
/// and the PBX's answer each fill their own segment in the common case), and so is each
/// message after it in the segment (`at`: its start, 0 for the first); TLS and WebSocket
/// carry nothing readable.
#[inline(always)]
fn message(ctx: &XdpContext, h: &Headers, transport: usize, counters: &mut Counters, at: u32) -> Message {
    if !h.tcp {
        let (start, method) = sip_message(ctx, h);
        note_message(start, 0);
        return Message::Sip(method);
    }
    if h.syn() {
        return Message::Connect;
    }
    if transport != transport::TCP {
        return Message::Segment;
    }
    let (start, method) = stream_message(ctx, if at != 0 { at as usize } else { h.payload });
    if method != Method::Unknown {
        note_message(start, wants::FRAMING);
        return Message::Sip(method);
    }
    // Data that starts no message (a continuation, or the rest after a first message) is
    // never judged; an ACK, a keep-alive's CRLFs or Ethernet padding is not data enough to
    // count.
    if ptr_at::<[u8; 8], XdpContext>(ctx, h.payload).is_some() {
        counters.segments_uninspected += 1;
    }
    Message::Segment
}

/// Notes in the record where the message starts and whether its end is wanted (a stream's
/// next message may follow it), for the inspection: kept there rather than in registers,
/// which would make the verifier walk the judging once per transport.
#[inline(always)]
fn note_message(start: usize, framing: u32) {
    if let Some(insp) = INSPECTION.get_ptr_mut(0) {
        // SAFETY: a per-CPU record; see `Inspection`.
        unsafe {
            (*insp).message_at = start as u32;
            (*insp).framing = framing;
        }
    }
}

/// Where a message of a TCP segment starts and what it is: the segment's first, or one
/// after it, anywhere in the frame (copied, not read in place: a later one may lie beyond
/// the bound of direct reads); leading CRLFs skipped as for a datagram. Both through this
/// one copy into the record: two ways of reading would make the verifier walk the judging
/// after each. The copy has a constant length (a variable one costs 6.1's verifier its
/// budget): a segment with fewer bytes than that at the message's start is not classified
/// (no SIP message is that short; see docs/transports.md on split requests).
#[inline(always)]
pub fn stream_message(ctx: &XdpContext, at: usize) -> (usize, Method) {
    let Some(insp) = INSPECTION.get_ptr_mut(0) else {
        return (at, Method::Unknown);
    };
    // SAFETY: a per-CPU record; see `Inspection`.
    let head = unsafe { &mut (*insp).head };
    // SAFETY: the helper bounds the copy by the frame and by `head`'s size.
    let rc = unsafe { bpf_xdp_load_bytes(ctx.ctx, at as u32, head.as_mut_ptr() as *mut _, head.len() as u32) };
    if rc != 0 {
        return (at, Method::Unknown);
    }
    let mut skip = 0;
    for _ in 0..2 {
        if head.get(skip..skip + 2) == Some(b"\r\n") {
            skip += 2;
        }
    }
    let Some(first) = head.get(skip..skip + CLASSIFY_LEN) else {
        return (at, Method::Unknown);
    };
    let Ok(first) = <&[u8; CLASSIFY_LEN]>::try_from(first) else {
        return (at, Method::Unknown);
    };
    (at + skip, sipfilter_common::classify(first))
}

/// The connection budgets of a SYN: every source draws from its flood bucket (emptying it
/// bans, as a REGISTER flood does); an unknown source also from its tight one (over it the
/// SYN is dropped: the phone retransmits it); and a source the agent found at its open
/// connection limit has its SYNs dropped until it closes some.
#[inline(always)]
fn connection_budget(
    config: &KernelConfig,
    counters: &mut Counters,
    state: &mut RateState,
    key: &SourceKey,
    known: bool,
    now: u64,
) -> Outcome {
    let flood = &config.connections.flood;
    if !state.connect.take(now, flood.rate_per_sec as u64, flood.burst as u64) {
        state.drops += 1;
        let cause = Cause {
            reason: ban_reason::CONNECTION_FLOOD,
            method: Method::Unknown,
            answers: None,
            port: 0,
        };
        state.ban_until_ns = ban(config, counters, key, &cause, now);
        return Outcome::RateConnection;
    }
    if !known {
        let tight = &config.connections.unknown;
        if !state
            .connect_tight
            .take(now, tight.rate_per_sec as u64, tight.burst as u64)
        {
            state.drops += 1;
            return Outcome::ConnectionThrottled;
        }
    }
    if let Some(marked) = unsafe { CONNECTION_LIMITED.get(key) } {
        if now.saturating_sub(*marked) < sipfilter_common::maps::CONNECTION_MARK_TTL_NS {
            state.drops += 1;
            return Outcome::ConnectionThrottled;
        }
    }
    Outcome::Connection
}

/// `Judged::Drop`'s "drop, but ban nobody".
pub(crate) const NO_BAN: u8 = u8::MAX;

/// What `judge_request` decided.
enum Judged {
    /// Drop, with a ban reason or [`NO_BAN`].
    Drop(Outcome, u8),
    /// Go on to the rate limits; then read the request for these `wants` (0: nothing).
    RateFirst(u32),
}

/// What the request itself says, beyond its rate, and what the inspection is to read of it.
/// A request that must be read is judged in two programs: this one checks its rate and hands
/// it to the inspection (a tail call), whose readers hand it to the verdict (`verdict.rs`),
/// which reads the findings (scanner User-Agent, quarantined extension, the call rules).
/// Stealth and enumeration apply to sources that are neither known nor allowlisted.
#[inline(always)]
fn judge_request(config: &KernelConfig, state: &mut RateState, method: Method, known: bool, now: u64) -> Judged {
    let Some(insp) = INSPECTION.get_ptr_mut(0) else {
        return Judged::RateFirst(0);
    };
    // SAFETY: a per-CPU record; see `Inspection`.
    let insp = unsafe { &mut *insp };
    // On a stream, where the message ends: another may follow it in the segment. (Read
    // from the record, not carried from the parse: a transport kept in a register would
    // make the verifier walk the judging once per transport.)
    let mut wanted = insp.framing;
    if !known {
        // A source that was challenged on many extensions and never sent credentials is
        // enumerating: banned on its next request (the PBX sees no more of it).
        if state
            .answers
            .enumerating(now, config.trust.unknown.enumeration_challenges)
        {
            return Judged::Drop(Outcome::Banned, ban_reason::ENUMERATION);
        }
        if config.flag(FLAG_SCANNER_USER_AGENTS) && !matches!(method, Method::Response | Method::Unknown) {
            wanted |= wants::USER_AGENT;
        }
        // The credentials and extension are read only while they can matter: an extension is
        // quarantined, or the source was challenged and has not yet shown it answers
        // challenges with credentials (what tells a phone from a scanner).
        let quarantine = config.flag(FLAG_QUARANTINE);
        let challenged =
            (state.answers.first_challenges != 0 && state.answers.credentialed == 0) || state.answers.unanswered != 0;
        if (quarantine || challenged) && matches!(method, Method::Register | Method::Invite) {
            wanted |= wants::CREDENTIALS;
            if quarantine {
                wanted |= wants::QUARANTINE;
            }
            if method == Method::Register {
                wanted |= wants::REGISTER;
            }
        }
    }
    if config.flag(FLAG_CALLS) && matches!(method, Method::Invite | Method::Message) {
        wanted |= wants::CALL;
        if known {
            wanted |= wants::KNOWN;
        }
    }
    // Stealth waits for the inspection when there is one: a probe that names a scanner is
    // banned, not only silenced.
    if wanted == 0 && !known && silenced(config, method) {
        return Judged::Drop(Outcome::Stealth, NO_BAN);
    }
    Judged::RateFirst(wanted)
}

/// Stealth: a request from a source that is neither known nor allowlisted dropped unanswered.
#[inline(always)]
pub(crate) fn silenced(config: &KernelConfig, method: Method) -> bool {
    if !config.flag(FLAG_STEALTH) {
        return false;
    }
    match method {
        Method::Options => true,
        // Answers, keep-alives and REGISTER (how trust is earned) are never silenced.
        Method::Register | Method::Response | Method::Unknown => false,
        _ => config.flag(FLAG_STEALTH_ALL),
    }
}

/// Sends the request to the inspection, which hands it back to this program with its
/// findings in this CPU's `Inspection`. Returns only if the tail call failed (no inspection
/// loaded): the request is then judged without it.
#[inline(always)]
fn inspect(ctx: &XdpContext, method: Method, wanted: u32) {
    let Some(insp) = INSPECTION.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU record; see `Inspection`.
    let insp = unsafe { &mut *insp };
    insp.wanted = wanted;
    insp.method = method as u32;
    insp.next_at = 0;
    insp.unframed = 0;
    insp.rounds = 0;
    insp.quarantined = 0;
    insp.credentials = 0;
    insp.scanner = 0;
    insp.call = call_verdict::PASS;
    insp.uninspected = 0;
    insp.scan = Scan::default();
    // SAFETY: a tail call either does not return or fails (no program loaded there).
    unsafe { INGRESS_PROGRAMS.tail_call(ctx, INSPECT_SLOT) };
    insp.wanted = 0;
}

/// Where a datagram's (or segment's) SIP message starts and what it is. Receivers ignore CRLFs before the
/// start line (RFC 3261 §7.5), so a REGISTER sent as "\r\nREGISTER …" is still a REGISTER,
/// not a cheap way into the looser bucket.
#[inline(always)]
pub fn sip_message(ctx: &XdpContext, h: &Headers) -> (usize, Method) {
    let mut payload = h.payload;
    for _ in 0..2 {
        match ptr_at::<[u8; 2], XdpContext>(ctx, payload) {
            Some(p) if unsafe { *p } == *b"\r\n" => payload += 2,
            _ => break,
        }
    }
    let method = match ptr_at::<[u8; CLASSIFY_LEN], XdpContext>(ctx, payload) {
        Some(head) => sipfilter_common::classify(unsafe { &*head }),
        None => Method::Unknown,
    };
    (payload, method)
}

/// Allowlist, denylist, then ban (the SIP path's order) for traffic that is not SIP, under
/// scope "all".
#[inline(always)]
fn source_block(d: &Datagram, config: &KernelConfig, now: u64) -> Option<Outcome> {
    let prefix = d.prefix();
    if listed(&ALLOWLIST, &prefix, now) {
        return None;
    }
    if listed(&DENYLIST, &prefix, now) {
        return Some(Outcome::Denylisted);
    }
    if is_banned(&d.key(config), now) {
        return Some(Outcome::Banned);
    }
    None
}

#[inline(always)]
fn is_banned(key: &SourceKey, now: u64) -> bool {
    match unsafe { BAN_TABLE.get(key) } {
        Some(ban) => ban.expires_ns > now,
        None => false,
    }
}

/// The token buckets: every source draws from its flood bucket at the known (NAT-office)
/// limits, and emptying it bans, as always; an unknown source also draws from its tight
/// bucket, and over that it is dropped without a ban (throttled): an office behind a new
/// address gets in on retransmissions once its first phone registers.
#[inline(always)]
fn rate_limit(
    config: &KernelConfig,
    counters: &mut Counters,
    state: &mut RateState,
    key: &SourceKey,
    method: Method,
    known: bool,
    now: u64,
) -> Outcome {
    let class = method.class() as usize;
    let (Some(limit), Some(bucket)) = (config.limits.get(class), state.buckets.get_mut(class)) else {
        return Outcome::Accepted;
    };
    if !bucket.take(now, limit.rate_per_sec as u64, limit.burst as u64) {
        state.drops += 1;
        let cause = Cause {
            reason: ban_reason::RATE + method.class() as u8,
            method,
            answers: None,
            port: 0,
        };
        state.ban_until_ns = ban(config, counters, key, &cause, now);
        return Outcome::rate_limited(method.class());
    }
    if known {
        return Outcome::Accepted;
    }
    let (Some(limit), Some(tight)) = (config.unknown_limits.get(class), state.tight.get_mut(class)) else {
        return Outcome::Accepted;
    };
    if tight.take(now, limit.rate_per_sec as u64, limit.burst as u64) {
        return Outcome::Accepted;
    }
    state.drops += 1;
    Outcome::Throttled
}
