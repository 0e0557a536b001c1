//! The XDP program: judges each SIP request (and any datagram to a SIP port) as it arrives.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::{bpf_ktime_get_boot_ns, generated::bpf_jiffies64},
    macros::xdp,
    programs::XdpContext,
};
use network_types::udp::UdpHdr;
use sipfilter_common::{
    config::{FLAG_QUARANTINE, FLAG_STEALTH, FLAG_STEALTH_ALL, FLAG_TRUST},
    counters::ban_reason,
    scan::{scan_headers, uri_user, Wanted},
    sip::CLASSIFY_LEN,
    ClockSample, Counters, KernelConfig, Method, Outcome, RateState, SourceKey, Verdict,
};

use crate::{
    bans::{ban, Cause},
    clock::now,
    lists::listed,
    maps::{
        ALLOWLIST, BAN_TABLE, CLOCK_SAMPLE, CONFIG, COUNTERS, CRACKED_EXTENSIONS, DENYLIST, INGRESS_PROGRAMS,
        INSPECTION, INSPECT_SLOT, JUDGE_SLOT,
    },
    parse::{load_address, parse_l3, ptr_at, udp_ports, Datagram, Headers, ScanWindow, L3},
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
fn finish(config: &KernelConfig, c: &mut Counters, outcome: Outcome) -> u32 {
    if let Some(o) = c.outcomes.get_mut(outcome as usize) {
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

#[inline(always)]
fn try_sipfilter(ctx: &XdpContext, config: &KernelConfig, counters: &mut Counters) -> Outcome {
    let h = match parse_l3(ctx) {
        L3::Udp(h) => h,
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

    let Some((_, dst_port_be)) = udp_ports(ctx, &h) else {
        return Outcome::Malformed;
    };
    if !config.is_sip_port(dst_port_be) {
        if config.scope_all() {
            if let Some(o) = load_address(ctx, &h, false).and_then(|d| source_block(&d, config, now(config))) {
                return o;
            }
        }
        return Outcome::NotSipPort;
    }

    let (_, method) = sip_message(ctx, &h);
    if let Some(m) = counters.methods.get_mut(method as usize) {
        *m += 1;
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

    // What `sipfilter top` shows: every SIP message of the source, and every one dropped.
    state.requests += 1;
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
    if !known {
        if let Some(o) = untrusted_request(ctx, config, counters, state, method) {
            state.drops += 1;
            return o;
        }
        // A source that was challenged on many extensions and never sent credentials is
        // enumerating: banned on its next request (the PBX sees no more of it).
        if state
            .answers
            .enumerating(now, config.trust.unknown.enumeration_challenges)
        {
            let cause = Cause {
                reason: ban_reason::ENUMERATION,
                method,
                answers: None,
            };
            state.ban_until_ns = ban(config, counters, &key, &cause, now);
            state.drops += 1;
            return Outcome::Banned;
        }
    }
    rate_limit(config, counters, state, &key, method, known, now)
}

/// Stealth, and what the inspection reads of a REGISTER or INVITE (credentials, and the
/// extension for quarantine), for a source that is neither known nor allowlisted.
#[inline(always)]
fn untrusted_request(
    ctx: &XdpContext,
    config: &KernelConfig,
    counters: &mut Counters,
    state: &mut RateState,
    method: Method,
) -> Option<Outcome> {
    if config.flag(FLAG_STEALTH) {
        let silent = match method {
            Method::Options => true,
            // Answers, keep-alives and REGISTER (how trust is earned) are never silenced.
            Method::Register | Method::Response | Method::Unknown => false,
            _ => config.flag(FLAG_STEALTH_ALL),
        };
        if silent {
            return Some(Outcome::Stealth);
        }
    }
    // The headers are read only while they can matter: an extension is quarantined, or the
    // source was challenged and has not yet shown it answers challenges with credentials
    // (what tells a phone from a scanner). A flood that no PBX answered is not read at all.
    let wanted =
        config.flag(FLAG_QUARANTINE) || (state.answers.first_challenges != 0 && state.answers.credentialed == 0);
    if wanted && matches!(method, Method::Register | Method::Invite) {
        // The headers are read by a program of their own (reached by tail call, handing the
        // packet back with its answer): scanning inline would push this program past the
        // verifier's budget, and known sources never pay for it.
        let Some(inspection) = INSPECTION.get_ptr_mut(0) else {
            return None;
        };
        // SAFETY: a per-CPU record; see `Inspection`.
        let inspection = unsafe { &mut *inspection };
        if inspection.done == 0 {
            // The inspection hands the packet back to this program, which counts it again:
            // uncount it here, and count it back if the tail call fails.
            let uncount = |c: &mut Counters, s: &mut RateState, by: i64| {
                if let Some(m) = c.methods.get_mut(method as usize) {
                    *m = m.wrapping_add(by as u64);
                }
                s.requests = s.requests.wrapping_add(by as u64);
            };
            uncount(counters, state, -1);
            // SAFETY: a tail call either does not return or fails (no program loaded there),
            // and then the request is judged without inspection.
            unsafe { INGRESS_PROGRAMS.tail_call(ctx, INSPECT_SLOT) };
            uncount(counters, state, 1);
            return None;
        }
        inspection.done = 0;
        if inspection.credentials != 0 {
            state.answers.credentialed = state.answers.credentialed.wrapping_add(1);
        }
        if inspection.quarantined != 0 {
            return Some(Outcome::Quarantined);
        }
    }
    None
}

/// Reads the extension of a REGISTER (To) or INVITE (From) and tells the ingress program,
/// through `INSPECTION`, whether it is quarantined; then hands the packet back to it.
#[xdp]
pub fn sipfilter_inspect(ctx: XdpContext) -> u32 {
    let (quarantined, credentials) = try_inspect(&ctx);
    if let Some(inspection) = INSPECTION.get_ptr_mut(0) {
        // SAFETY: a per-CPU record; see `Inspection`.
        unsafe {
            (*inspection).done = 1;
            (*inspection).quarantined = quarantined as u32;
            (*inspection).credentials = credentials as u32;
        }
    }
    // SAFETY: see above; if it fails the packet passes, as it would without inspection.
    unsafe { INGRESS_PROGRAMS.tail_call(&ctx, JUDGE_SLOT) };
    XDP_PASS
}

/// (quarantined, carries credentials)
#[inline(always)]
fn try_inspect(ctx: &XdpContext) -> (bool, bool) {
    let Some(config) = CONFIG.get(0) else {
        return (false, false);
    };
    let L3::Udp(h) = parse_l3(ctx) else {
        return (false, false);
    };
    let (payload, method) = sip_message(ctx, &h);
    // The extension at stake: the To user of a REGISTER, the caller (From) of an INVITE.
    let register = method == Method::Register;
    let Some(bytes) = ScanWindow::of_xdp(ctx, payload) else {
        return (false, false);
    };
    let quarantine = config.flag(FLAG_QUARANTINE);
    let wanted = Wanted {
        via: false,
        to: register && quarantine,
        from: !register && quarantine,
        cseq: false,
        credentials: true,
    };
    let found = scan_headers(&bytes, 0, wanted);
    if !quarantine {
        return (false, found.credentials);
    }
    let at = if register { found.to_at } else { found.from_at };
    let quarantined = match uri_user(&bytes, at) {
        Some(ext) => unsafe { CRACKED_EXTENSIONS.get(&ext) }.is_some(),
        None => false,
    };
    (quarantined, found.credentials)
}

/// Where a datagram's SIP message starts and what it is. Receivers ignore CRLFs before the
/// start line (RFC 3261 §7.5), so a REGISTER sent as "\r\nREGISTER …" is still a REGISTER,
/// not a cheap way into the looser bucket.
#[inline(always)]
fn sip_message(ctx: &XdpContext, h: &Headers) -> (usize, Method) {
    let mut payload = h.udp + UdpHdr::LEN;
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
