//! Reading a request, for the ingress program: its headers (credentials, the extension for
//! quarantine, the User-Agent, the Call-ID), and the number it dials. Three XDP programs
//! reached by tail call, each within its own verifier budget; they hand the packet to the
//! verdict (`JUDGE_SLOT`, `verdict.rs`) with their answer in this CPU's `Inspection`.
//!
//! - `sipfilter_inspect` finds the headers, [`MAX_LINES`](sipfilter_common::scan::MAX_LINES) lines a round; a request whose
//!   wanted headers lie further down gets another round (the program tail-calls itself), up
//!   to [`MAX_SCAN_ROUNDS`] rounds, and what is still not found is counted uninspected.
//! - `sipfilter_user_agent` searches the User-Agent for scanner tokens.
//! - `sipfilter_calls` reads the dialed number and applies the destination and call-burst
//!   rules.

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    helpers::generated::bpf_xdp_load_bytes,
    macros::xdp,
    maps::{lpm_trie::Key as PrefixKey, LruHashMap},
    programs::XdpContext,
};
use sipfilter_common::{
    calls::{call_id_hash, call_verdict, CallEvent, CallKey, CallTimes, DestinationRule, NumberKey},
    dialed::Dialed,
    scan::{
        content_length, first_header_line, framing, scan_lines, uri_user, Bytes, Found, Framing, Wanted,
        MAX_SCAN_ROUNDS,
    },
    sip::CLASSIFY_LEN,
    Counters, KernelConfig, Method, SourceKey,
};

use crate::{
    clock::now,
    ingress::stream_message,
    maps::{
        wants, Inspection, CALLS_SLOT, CALLS_TO_NUMBER, CALL_EVENTS, CONFIG, COUNTERS, CRACKED_EXTENSIONS,
        DESTINATIONS, INGRESS_PROGRAMS, INSPECTION, INSPECT_SLOT, INTERNATIONAL_CALLS, JUDGE_SLOT, RECENT_CALLS,
        SCANNER_USER_AGENTS, USER_AGENT_SLOT,
    },
    parse::{load_address, parse_l3, ScanWindow, L3},
};

/// This CPU's inspection record.
#[inline(always)]
fn record() -> Option<&'static mut Inspection> {
    let p = INSPECTION.get_ptr_mut(0)?;
    // SAFETY: a per-CPU record; see `Inspection`.
    Some(unsafe { &mut *p })
}

impl Inspection {
    #[inline(always)]
    fn window(&self) -> Option<ScanWindow> {
        ScanWindow::resume(self.window_len as usize, self.window_cut != 0)
    }

    #[inline(always)]
    fn wants(&self, bit: u32) -> bool {
        self.wanted & bit != 0
    }

    /// The headers the scan looks for.
    #[inline(always)]
    fn headers(&self) -> Wanted {
        let quarantine = self.wants(wants::QUARANTINE);
        let register = self.wants(wants::REGISTER);
        let call = self.wants(wants::CALL);
        Wanted {
            to: quarantine && register,
            from: (quarantine && !register) || call,
            call_id: call,
            user_agent: self.wants(wants::USER_AGENT),
            credentials: self.wants(wants::CREDENTIALS),
            end: self.wants(wants::FRAMING),
            ..Wanted::NONE
        }
    }
}

/// Hands the packet to the verdict with the inspection's answer.
#[inline(always)]
fn judge(ctx: &XdpContext, insp: &mut Inspection) -> u32 {
    insp.done = 1;
    // SAFETY: a tail call either does not return or fails; then the packet passes, as it
    // would have without inspection (and the record is cleared for the next packet).
    unsafe { INGRESS_PROGRAMS.tail_call(ctx, JUDGE_SLOT) };
    insp.done = 0;
    insp.wanted = 0;
    XDP_PASS
}

/// The next reader the request needs, or the judge.
#[inline(always)]
fn next_reader(ctx: &XdpContext, insp: &mut Inspection) -> u32 {
    if insp.wants(wants::USER_AGENT) && insp.scan.found.user_agent_at != 0 {
        // SAFETY: see `judge`; a failed tail call judges without this reader.
        unsafe { INGRESS_PROGRAMS.tail_call(ctx, USER_AGENT_SLOT) };
    }
    calls_or_judge(ctx, insp)
}

#[inline(always)]
fn calls_or_judge(ctx: &XdpContext, insp: &mut Inspection) -> u32 {
    // A request dropped for its User-Agent or its quarantined extension places no call: the
    // call rules neither count it nor report it.
    if insp.wants(wants::CALL) && insp.scanner == 0 && insp.quarantined == 0 {
        // SAFETY: as above.
        unsafe { INGRESS_PROGRAMS.tail_call(ctx, CALLS_SLOT) };
    }
    judge(ctx, insp)
}

/// Finds the wanted headers, a round of [`MAX_LINES`](sipfilter_common::scan::MAX_LINES) lines per run, then reads the
/// credentials and the quarantined extension and passes on to the readers.
#[xdp]
pub fn sipfilter_inspect(ctx: XdpContext) -> u32 {
    let Some(insp) = record() else {
        return XDP_PASS;
    };
    let bytes = if insp.rounds == 0 {
        let L3::Transport(h) = parse_l3(&ctx) else {
            return judge(&ctx, insp);
        };
        let Some(bytes) = ScanWindow::of_xdp(&ctx, insp.message_at as usize) else {
            insp.uninspected = 1;
            return judge(&ctx, insp);
        };
        insp.window_len = bytes.len() as u32;
        // A first fragment is cut too: the rest of the request is in later fragments.
        insp.window_cut = (bytes.truncated() || h.first_fragment) as u32;
        let Some(first) = first_header_line(&bytes, 0) else {
            insp.uninspected = 1;
            // A start line over MAX_LINE bytes: where the message ends cannot be told.
            if insp.wants(wants::FRAMING) {
                insp.unframed = 1;
            }
            return next_reader(&ctx, insp);
        };
        insp.scan.wanted = insp.headers();
        insp.scan.found.resume_at = first;
        // Read again through the record: the window must say it is cut.
        let Some(bytes) = insp.window() else {
            return judge(&ctx, insp);
        };
        bytes
    } else {
        let Some(bytes) = insp.window() else {
            return judge(&ctx, insp);
        };
        bytes
    };
    scan_lines(&bytes, insp.scan.found.resume_at, &mut insp.scan);
    let found = insp.scan.found;
    insp.rounds += 1;
    if found.resume_at != 0 && insp.rounds < MAX_SCAN_ROUNDS {
        // SAFETY: see `judge`.
        unsafe { INGRESS_PROGRAMS.tail_call(&ctx, INSPECT_SLOT) };
    }
    if found.incomplete {
        insp.uninspected = 1;
    }
    if insp.wants(wants::FRAMING) {
        frame(&ctx, insp, &found);
    }
    insp.credentials = found.credentials as u32;
    if insp.wants(wants::QUARANTINE) {
        insp.quarantined = quarantined(insp, &found) as u32;
    }
    next_reader(&ctx, insp)
}

/// Where the message ends, and whether another starts after it in the segment (a robot's
/// pipelined requests: each is judged, see the ingress program).
#[inline(always)]
fn frame(ctx: &XdpContext, insp: &mut Inspection, found: &Found) {
    let Some(bytes) = insp.window() else {
        return;
    };
    let total = ctx.data_end() - ctx.data();
    match framing(&bytes, found) {
        Framing::Length(len) => {
            let next = insp.message_at as usize + len;
            // Its body runs on into the next segment, which will start inside it: what the
            // robot puts after it there would be judged by nobody.
            if next > total {
                insp.unframed = 1;
                return;
            }
            // A next message is at least a start line; fewer bytes are keep-alive CRLFs.
            if next + CLASSIFY_LEN > total {
                return;
            }
            // What follows must start a SIP message: anything else means sipfilter and the
            // PBX could frame the stream apart (a robot's doing), and is not trusted.
            match stream_message(ctx, next) {
                (_, Method::Unknown) => insp.unframed = 1,
                _ => insp.next_at = next as u32,
            }
        }
        Framing::Unknown => insp.unframed = 1,
        // The headers ran to the end of the segment: a whole message only if the segment
        // ends with the empty line and no body is announced; else the message goes on in
        // the next segment (as above).
        Framing::Fills => {
            let announced = match found.content_length_at {
                0 => Some(0),
                at => content_length(&bytes, at),
            };
            if announced != Some(0) || !ends_with_empty_line(ctx, total) {
                insp.unframed = 1;
            }
        }
    }
}

/// Whether the segment's last bytes are the empty line that ends a message's headers.
#[inline(always)]
fn ends_with_empty_line(ctx: &XdpContext, total: usize) -> bool {
    if total < 4 {
        return false;
    }
    let mut tail = [0u8; 4];
    // SAFETY: the helper bounds the copy by the frame; `tail` is on this stack.
    let rc = unsafe { bpf_xdp_load_bytes(ctx.ctx, (total - 4) as u32, tail.as_mut_ptr() as *mut _, 4) };
    rc == 0 && (tail == *b"\r\n\r\n" || tail[2..] == *b"\n\n")
}

/// Whether the extension at stake (the To user of a REGISTER, the caller of an INVITE) is on
/// the cracked list.
#[inline(always)]
fn quarantined(insp: &Inspection, found: &Found) -> bool {
    let Some(bytes) = insp.window() else {
        return false;
    };
    let at = if insp.wants(wants::REGISTER) {
        found.to_at
    } else {
        found.from_at
    };
    match uri_user(&bytes, at) {
        Some(ext) => unsafe { CRACKED_EXTENSIONS.get(&ext) }.is_some(),
        None => false,
    }
}

/// Searches the User-Agent for the scanner tokens.
#[xdp]
pub fn sipfilter_user_agent(ctx: XdpContext) -> u32 {
    let Some(insp) = record() else {
        return XDP_PASS;
    };
    if let (Some(bytes), Some(rules)) = (insp.window(), SCANNER_USER_AGENTS.get(0)) {
        let at = insp.scan.found.user_agent_at;
        if let Some(i) = rules.find(&bytes, at, &mut insp.candidates) {
            insp.scanner = i as u32 + 1;
        }
    }
    calls_or_judge(&ctx, insp)
}

/// Reads the dialed number of an INVITE or MESSAGE and applies the destination and
/// call-burst rules, once per call (a retransmission gets the verdict its call got).
#[xdp]
pub fn sipfilter_calls(ctx: XdpContext) -> u32 {
    let Some(insp) = record() else {
        return XDP_PASS;
    };
    let (Some(config), Some(counters)) = (CONFIG.get(0), COUNTERS.get_ptr_mut(0)) else {
        return judge(&ctx, insp);
    };
    // SAFETY: a per-CPU value: only this CPU touches it while the program runs.
    let counters = unsafe { &mut *counters };
    insp.call = try_calls(&ctx, config, counters, insp);
    judge(&ctx, insp)
}

#[inline(always)]
fn try_calls(ctx: &XdpContext, config: &KernelConfig, counters: &mut Counters, insp: &mut Inspection) -> u32 {
    let Some(bytes) = insp.window() else {
        return call_verdict::PASS;
    };
    let number = match config.calls.dial_plan.dialed(&bytes, 0) {
        Dialed::International(d) => d,
        Dialed::National(d) => {
            // The PBX's own country: destination rules apply (premium national ranges),
            // bursts do not (a call centre dials one national number all day).
            if denies(destination(&d.key_bytes(), d.len)) {
                return call_verdict::DESTINATION;
            }
            return call_verdict::PASS;
        }
        Dialed::Unreadable => {
            insp.uninspected = 1;
            return call_verdict::PASS;
        }
        Dialed::NotANumber | Dialed::Local => return call_verdict::PASS,
    };
    // The destination rules first, on every INVITE (they need no state); the call's other
    // rules, its event and its counters once per call.
    let rule = destination(&number.key_bytes(), number.len);
    let deny = denies(rule);
    let L3::Transport(h) = parse_l3(ctx) else {
        return call_verdict::PASS;
    };
    let Some(dgram) = load_address(ctx, &h, false) else {
        return call_verdict::PASS;
    };
    let source = dgram.key(config);
    if insp.scan.found.call_id_at == 0 {
        // No Call-ID within the bounds: not a call this program can count.
        insp.uninspected = 1;
        return if deny {
            call_verdict::DESTINATION
        } else {
            call_verdict::PASS
        };
    }
    let call = CallKey {
        source,
        call_id: call_id_hash(&bytes, insp.scan.found.call_id_at),
    };
    if let Some(v) = unsafe { RECENT_CALLS.get(&call) } {
        return *v;
    }
    counters.calls_checked += 1;
    count_hit(rule);
    let now = now(config);
    let known = insp.wants(wants::KNOWN);
    let verdict = if deny {
        call_verdict::DESTINATION
    } else if over_number_limit(config, &source, number.nibbles, now) {
        call_verdict::BURST_NUMBER
    } else if !known && over_international_limit(config, &source, now) {
        call_verdict::BURST_INTERNATIONAL
    } else {
        call_verdict::PASS
    };
    let _ = RECENT_CALLS.insert(&call, &verdict, 0);
    if verdict != call_verdict::PASS {
        if let Some(n) = counters.calls_blocked.get_mut(verdict as usize - 1) {
            *n += 1;
        }
        report(
            config,
            counters,
            insp,
            &dgram.addr,
            number.nibbles,
            number.len,
            verdict,
            known,
        );
    }
    verdict
}

/// The longest destination rule matching the number, if any.
#[inline(always)]
fn destination(digits: &[u8; 8], len: u32) -> Option<*mut DestinationRule> {
    let key = PrefixKey::new(4 * len, *digits);
    DESTINATIONS
        .get(&key)
        .map(|r| r as *const DestinationRule as *mut DestinationRule)
}

/// Whether that rule denies the number.
#[inline(always)]
fn denies(rule: Option<*mut DestinationRule>) -> bool {
    // SAFETY: a map value the lookup returned.
    rule.is_some_and(|r| unsafe { (*r).deny } != 0)
}

/// Counts a new call against the rule that decided it.
#[inline(always)]
fn count_hit(rule: Option<*mut DestinationRule>) {
    if let Some(r) = rule {
        // SAFETY: a map value. Two CPUs counting one rule at the same instant may lose a count
        // (the BPF target has no 64-bit atomic add in `core`); calls are rare enough for that.
        unsafe { (*r).hits = (*r).hits.wrapping_add(1) };
    }
}

#[inline(always)]
fn over_number_limit(config: &KernelConfig, source: &SourceKey, number: u64, now: u64) -> bool {
    let key = NumberKey {
        source: *source,
        number,
    };
    excess(
        &CALLS_TO_NUMBER,
        &key,
        now,
        config.calls.per_number,
        config.calls.window_ns,
    )
}

#[inline(always)]
fn over_international_limit(config: &KernelConfig, source: &SourceKey, now: u64) -> bool {
    let minute = 60 * sipfilter_common::NS_PER_SEC;
    excess(
        &INTERNATIONAL_CALLS,
        source,
        now,
        config.calls.international_per_minute,
        minute,
    )
}

/// Records a call in `table` under `key`; whether it is over `limit` calls within the window.
#[inline(always)]
fn excess<K>(table: &LruHashMap<K, CallTimes>, key: &K, now: u64, limit: u32, window_ns: u64) -> bool {
    if limit == 0 {
        return false;
    }
    match table.get_ptr_mut(key) {
        // SAFETY: a map value; two CPUs counting one source's calls at once may lose one.
        Some(t) => unsafe { (*t).excess(now, limit, window_ns) },
        None => {
            let mut t = CallTimes::default();
            let over = t.excess(now, limit, window_ns);
            let _ = table.insert(key, &t, 0);
            over
        }
    }
}

/// Tells the agent about a blocked call: the source, the caller and the number.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn report(
    config: &KernelConfig,
    counters: &mut Counters,
    insp: &Inspection,
    source: &[u32; 4],
    number: u64,
    len: u32,
    verdict: u32,
    known: bool,
) {
    let extension = match insp.window() {
        Some(bytes) => uri_user(&bytes, insp.scan.found.from_at).unwrap_or([0; 16]),
        None => [0; 16],
    };
    match CALL_EVENTS.reserve::<CallEvent>(0) {
        Some(mut slot) => {
            let e = slot.as_mut_ptr();
            // SAFETY: the reserved record is ours until submitted.
            unsafe {
                (*e).source = *source;
                (*e).number = number;
                (*e).number_len = len;
                (*e).verdict = verdict;
                (*e).extension = extension;
                (*e).known = known as u8;
                (*e).monitor = config.monitor() as u8;
                (*e)._pad = [0; 6];
            }
            slot.submit(0);
        }
        None => counters.events_lost += 1,
    }
}
