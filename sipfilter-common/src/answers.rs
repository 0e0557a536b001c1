//! Judging a source by the PBX's answers to it: credential failures, not-found answers,
//! challenges and successes, the failure budgets by trust tier, promotion to "known" and the
//! cracked-extension rule. Plain arithmetic on the source's [`AnswerState`], run by the
//! egress program for each answer and by the host tests and the reference model unchanged.
//!
//! How a re-challenge is told from a first challenge (docs/judging.md): the
//! source keeps the extensions it has an open challenge for, with the identity of the
//! challenged request (its top Via branch and CSeq). A 401/407 for an extension with an open
//! challenge that answers a *different* request is an answer to a request that came after the
//! challenge, i.e. one that carried credentials and they were wrong: a credential failure.
//! The same request again is a retransmission and is ignored; a 2xx closes the challenge. This
//! needs no request scanning on ingress, and works the same for a PBX that answers unknown
//! users with 404 (kamailio-style: not-found) and one that challenges them (Asterisk/PJSIP:
//! every attempt with credentials is re-challenged, a credential failure).

use crate::{
    config::{Budget, TierPolicy, TrustConfig},
    devices::{DeviceState, Walk},
    scan::Extension,
    sip::Method,
    NS_PER_SEC,
};

/// Open challenges and recently failed extensions remembered per source.
pub const RECENT: usize = 4;

/// What the answers have said about one source (part of its rate-state slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AnswerState {
    /// Cached: the end of the source's known status (0: unknown).
    pub known_until_ns: u64,
    /// Each budget is kept as the time its debt is paid off: an answer that charges it adds
    /// one leak interval; the debt drains in real time; the budget is exceeded when the debt
    /// reaches capacity × leak interval. One number per budget, no timers.
    pub failure_debt_ns: u64,
    pub slow_failure_debt_ns: u64,
    pub not_found_debt_ns: u64,
    pub challenge_debt_ns: u64,
    /// Last credential failure or not-found answer: suspicion lasts a window after it.
    pub last_failure_ns: u64,
    /// Extensions with an open challenge, and the CSeq number of the challenged request.
    pub challenged: [Extension; RECENT],
    pub challenged_cseq: [u32; RECENT],
    /// Distinct extensions with a credential failure or not-found answer within the window.
    pub failed: [Extension; RECENT],
    pub failures: u32,
    pub not_found: u32,
    pub challenges: u32,
    pub successes: u32,
    pub next_challenged: u32,
    pub next_failed: u32,
    /// First challenges (to requests without credentials), and when the first came.
    pub first_challenges: u32,
    pub first_challenge_ns: u64,
    /// Requests with credentials the source sent (seen by the ingress program).
    pub credentialed: u32,
    /// First challenges in a row answered to one source port of the source, and that port.
    pub port_challenges: u32,
    pub last_port: u32,
    /// First challenges let through to this (unknown) source that no request with
    /// credentials has answered yet (the ingress program counts them down).
    pub unanswered: u32,
    /// The new-device budget (`devices::NEW_DEVICE_BUDGET`).
    pub device_debt_ns: u64,
    /// The request whose 2xx was withheld as suspect: its retransmission is let through.
    pub withheld_cseq: u32,
    pub _pad: u32,
}

/// An unknown source may have this many first challenges unanswered (no request with
/// credentials after them); the next challenges and not-found answers to it are withheld
/// until it answers one, or becomes known. A phone answers its challenge within a round trip;
/// an enumerator never does, and so learns at most this many extensions, and nothing from
/// the difference between 401 and 404. An office's first round after a power cut is slowed
/// by one retransmission (500 ms), until its first phone registers.
pub const UNANSWERED_CHALLENGES: u32 = 5;

/// A known source's failure and not-found budgets are per device (the tier's); over all its
/// devices together it has these: sustained, one a second, with room for a hundred.
pub const KNOWN_SOURCE_FAILURES: Budget = Budget {
    capacity: 100,
    leak_secs: 1,
};

/// First challenges for this many extensions in a row to one source port, with no credentials
/// ever sent, is a scanner: every phone behind a NAT has a port of its own, and even a
/// multi-line desk phone registers fewer lines than this from its one port before it answers
/// its first challenge.
pub const PORT_ENUMERATION: u32 = 8;

/// How long a challenged source has to answer a challenge with credentials before a run of
/// challenges on many extensions counts as enumeration. A phone answers within a round trip;
/// an office behind one address is challenged on many extensions at once after a power cut,
/// and its phones send credentials at once.
pub const ENUMERATION_GRACE_NS: u64 = 2 * NS_PER_SEC;

/// One SIP answer sent to the source, as the egress program read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub code: u16,
    /// The CSeq method: which request it answers.
    pub method: Method,
    /// Which request it answers (`scan::request_identity`: top Via branch and CSeq): the
    /// same for a retransmission, new for every new request.
    pub cseq: u32,
    /// The extension it concerns: the To user of a REGISTER, the From user (the caller,
    /// whose credentials were checked) of anything else.
    pub ext: Extension,
    /// The source port the answer goes to.
    pub port: u16,
}

/// Why the egress program bans (see [`crate::counters::ban_reason`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// A first challenge, a retransmission, or an answer that says nothing about the source.
    Nothing,
    /// Exceeded a budget: ban with this reason.
    Ban(u8),
    /// A guessed password: ban, quarantine the extension, withhold the 2xx. An unknown
    /// source's device that failed on another extension and then moved on to this one
    /// (`devices::Walk::MovedOn`), or an unknown source whose devices are not told apart
    /// with failures on the tier's number of other extensions.
    Cracked { other_extensions: u32 },
    /// Ambiguous: withhold this one 2xx and alert, ban nobody. A known source's device that
    /// moved on, or an unknown source with failures on other extensions from other devices
    /// (an office with stale passwords looks like that too). A phone retransmits and gets in
    /// on the PBX's next answer; a robot that moved on never sees it.
    Suspect { other_extensions: u32 },
    /// Withhold this challenge or not-found answer: the source's challenges go unanswered
    /// (see [`UNANSWERED_CHALLENGES`]).
    Withhold,
    /// A clean 2xx to a REGISTER: the source is (again) known.
    Promote,
}

/// What kind of answer a status code is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerClass {
    Success,
    Challenge,
    Forbidden,
    NotFound,
    Other,
}

impl AnswerClass {
    /// Whether an answer with this code to a banned source is withheld: a banned source
    /// learns nothing more about extensions and passwords from the PBX. Its requests are
    /// dropped from the ban on, but answers to requests already let through still come; over
    /// TCP the PBX's own stack also retransmits an answer the filter withheld, which without
    /// this the robot would get once banned (its withheld challenges being judged anew).
    #[inline(always)]
    pub fn withheld_from_banned(code: u16) -> bool {
        matches!(
            AnswerClass::of(code),
            AnswerClass::Challenge | AnswerClass::Forbidden | AnswerClass::NotFound
        )
    }

    #[inline(always)]
    pub fn of(code: u16) -> AnswerClass {
        match code {
            200..=299 => AnswerClass::Success,
            401 | 407 => AnswerClass::Challenge,
            403 => AnswerClass::Forbidden,
            404 | 484 | 604 => AnswerClass::NotFound,
            _ => AnswerClass::Other,
        }
    }

    /// Whether the egress program needs the answer's headers (the extension and CSeq).
    #[inline(always)]
    pub fn needs_headers(code: u16) -> bool {
        !matches!(AnswerClass::of(code), AnswerClass::Other)
    }
}

#[inline(always)]
fn halves(e: &Extension) -> (u64, u64) {
    // SAFETY: an Extension is 16 bytes; unaligned reads of its two halves.
    unsafe {
        let p = e.as_ptr() as *const u64;
        (core::ptr::read_unaligned(p), core::ptr::read_unaligned(p.add(1)))
    }
}

#[inline(always)]
pub(crate) fn same(a: &Extension, b: &Extension) -> bool {
    // Two word compares; the extension is 16 bytes.
    halves(a) == halves(b)
}

#[inline(always)]
pub(crate) fn empty(a: &Extension) -> bool {
    halves(a) == (0, 0)
}

#[inline(always)]
fn clear(a: &mut Extension) {
    // SAFETY: as in `halves`.
    unsafe {
        let p = a.as_mut_ptr() as *mut u64;
        core::ptr::write_unaligned(p, 0);
        core::ptr::write_unaligned(p.add(1), 0);
    }
}

/// Where `ext` is in a list of remembered extensions (empty entries never match). Every
/// entry is looked at, with no early exit: a loop the verifier walks once.
#[inline(always)]
pub(crate) fn position(list: &[Extension; RECENT], ext: &Extension) -> Option<usize> {
    let mut at = None;
    for (i, e) in list.iter().enumerate() {
        if !empty(e) && same(e, ext) {
            at = Some(i);
        }
    }
    at
}

/// Where a new open challenge goes: a free entry (closed by a success) first, else the
/// oldest (`next` turns round the list).
#[inline(always)]
pub(crate) fn open_slot(list: &[Extension; RECENT], next: &mut u32) -> usize {
    let mut i = (*next as usize) % RECENT;
    let mut free = false;
    for (j, c) in list.iter().enumerate() {
        if !free && empty(c) {
            i = j;
            free = true;
        }
    }
    if !free {
        *next = (i as u32 + 1) % RECENT as u32;
    }
    i
}

/// Charges one answer to a leaky budget; true when that fills it. Capacity 0: no budget.
#[inline(always)]
pub fn charge(debt_ns: &mut u64, budget: &Budget, now: u64) -> bool {
    if budget.capacity == 0 {
        return false;
    }
    let leak = budget.leak_secs as u64 * NS_PER_SEC;
    let base = if *debt_ns > now { *debt_ns } else { now };
    *debt_ns = base.saturating_add(leak);
    // Exceeded once the debt holds more than capacity − 1 answers: the capacity-th answer
    // within one leak interval of the others is the one that bans.
    *debt_ns - now > (budget.capacity as u64 - 1) * leak
}

/// How many answers a budget currently holds (for `sipfilter sources`).
pub fn level(debt_ns: u64, budget: &Budget, now: u64) -> u32 {
    let leak = budget.leak_secs as u64 * NS_PER_SEC;
    if leak == 0 || debt_ns <= now {
        return 0;
    }
    (debt_ns - now).div_ceil(leak) as u32
}

impl AnswerState {
    #[inline(always)]
    fn remember_failed(&mut self, ext: &Extension) {
        for f in self.failed.iter() {
            if same(f, ext) {
                return;
            }
        }
        let i = (self.next_failed as usize) % RECENT;
        if let Some(slot) = self.failed.get_mut(i) {
            *slot = *ext;
        }
        self.next_failed = (i as u32 + 1) % RECENT as u32;
    }

    /// Enumeration: challenged on at least `min` extensions, never sent credentials in the
    /// grace time since the first challenge, never succeeded (what `svwar` does against a PBX
    /// that challenges real extensions; 0: never).
    #[inline(always)]
    pub fn enumerating(&self, now: u64, min: u32) -> bool {
        min != 0
            && self.first_challenges >= min
            && self.credentialed == 0
            && self.successes == 0
            && self.first_challenge_ns != 0
            && now.saturating_sub(self.first_challenge_ns) >= ENUMERATION_GRACE_NS
    }

    /// Failed extensions other than `ext` within the window.
    #[inline(always)]
    pub fn others_failed(&self, ext: &Extension) -> u32 {
        let mut n = 0;
        for f in self.failed.iter() {
            if !empty(f) && !same(f, ext) {
                n += 1;
            }
        }
        n
    }

    #[inline(always)]
    fn has_failed(&self, ext: &Extension) -> bool {
        position(&self.failed, ext).is_some()
    }

    /// The open challenge for `ext`: its index.
    #[inline(always)]
    fn challenge_of(&self, ext: &Extension) -> Option<usize> {
        position(&self.challenged, ext)
    }

    /// A credential failure on `ext`; `device_over`: it filled the device's own budget.
    #[inline(always)]
    fn credential_failure(
        &mut self,
        ext: &Extension,
        policy: &TierPolicy,
        known: bool,
        device_over: bool,
        now: u64,
    ) -> Judgement {
        self.failures = self.failures.wrapping_add(1);
        self.remember_failed(ext);
        self.last_failure_ns = now;
        let over = if known {
            // Per device; the source's total only against a guesser rotating its port.
            device_over | charge(&mut self.failure_debt_ns, &KNOWN_SOURCE_FAILURES, now)
        } else {
            let fast = charge(&mut self.failure_debt_ns, &policy.failures, now);
            let slow = charge(&mut self.slow_failure_debt_ns, &policy.slow_failures, now);
            fast | slow
        };
        if over {
            Judgement::Ban(crate::counters::ban_reason::AUTH_FAILURE)
        } else {
            Judgement::Nothing
        }
    }

    /// Withholds an answer to an unknown source whose challenges go unanswered.
    #[inline(always)]
    fn unanswered_verdict(&self, known: bool) -> Judgement {
        if !known && self.unanswered >= UNANSWERED_CHALLENGES {
            Judgement::Withhold
        } else {
            Judgement::Nothing
        }
    }

    /// Takes in one answer sent to the source (to its `device`, when the source's devices
    /// are told apart) and says what follows from it.
    #[inline(always)]
    pub fn judge(
        &mut self,
        answer: &Answer,
        known: bool,
        device: Option<&mut DeviceState>,
        trust: &TrustConfig,
        now: u64,
    ) -> Judgement {
        let policy = if known { &trust.known } else { &trust.unknown };
        // Suspicion fades: failures older than the window no longer make a success "cracked".
        if self.last_failure_ns != 0
            && now.saturating_sub(self.last_failure_ns) > trust.suspect_window_secs as u64 * NS_PER_SEC
        {
            for f in self.failed.iter_mut() {
                clear(f);
            }
            self.next_failed = 0;
            self.last_failure_ns = 0;
        }
        let ext = &answer.ext;
        match AnswerClass::of(answer.code) {
            AnswerClass::Success => {
                self.successes = self.successes.wrapping_add(1);
                // The source answers its challenges.
                self.unanswered = 0;
                if let Some(i) = self.challenge_of(ext) {
                    if let Some(c) = self.challenged.get_mut(i) {
                        clear(c);
                    }
                }
                if !matches!(answer.method, Method::Register | Method::Invite) || empty(ext) {
                    return Judgement::Nothing;
                }
                // The retransmission of the request whose 2xx was withheld as suspect: the
                // device behaves as a phone does.
                let retransmitted = self.withheld_cseq != 0 && self.withheld_cseq == answer.cseq;
                if retransmitted {
                    self.withheld_cseq = 0;
                }
                let others = self.others_failed(ext);
                let walk = match &device {
                    Some(d) => d.walk(ext, trust.suspect_window_secs, now),
                    None => Walk::Clean,
                };
                let cracked_by_totals =
                    !known && policy.crack_min_extensions != 0 && others >= policy.crack_min_extensions;
                if !retransmitted {
                    let other_extensions = if others == 0 { 1 } else { others };
                    if walk == Walk::MovedOn && !known {
                        return Judgement::Cracked { other_extensions };
                    }
                    if cracked_by_totals && device.is_none() {
                        return Judgement::Cracked { other_extensions };
                    }
                    if walk == Walk::MovedOn || cracked_by_totals {
                        self.withheld_cseq = if answer.cseq == 0 { 1 } else { answer.cseq };
                        return Judgement::Suspect { other_extensions };
                    }
                }
                if answer.method == Method::Register {
                    if let Some(d) = device {
                        d.registered(ext, now);
                    }
                    if retransmitted || !self.has_failed(ext) {
                        return Judgement::Promote;
                    }
                }
                Judgement::Nothing
            }
            AnswerClass::Challenge => {
                self.challenges = self.challenges.wrapping_add(1);
                if empty(ext) {
                    return Judgement::Nothing;
                }
                let mut device_over = false;
                if let Some(d) = device {
                    if d.challenge(ext, answer.cseq, now) && known {
                        device_over = charge(&mut d.failure_debt_ns, &policy.failures, now);
                    }
                }
                if let Some(i) = self.challenge_of(ext) {
                    let open = self.challenged_cseq.get(i).copied().unwrap_or(0);
                    if open == answer.cseq {
                        // The challenged request again: a retransmission (withheld as its
                        // first answer was, if it was).
                        return self.unanswered_verdict(known);
                    }
                    if let Some(c) = self.challenged_cseq.get_mut(i) {
                        *c = answer.cseq;
                    }
                    return self.credential_failure(ext, policy, known, device_over, now);
                }
                let i = open_slot(&self.challenged, &mut self.next_challenged);
                if let Some(c) = self.challenged.get_mut(i) {
                    *c = *ext;
                }
                if let Some(c) = self.challenged_cseq.get_mut(i) {
                    *c = answer.cseq;
                }
                self.first_challenges = self.first_challenges.wrapping_add(1);
                if self.first_challenge_ns == 0 {
                    self.first_challenge_ns = now;
                }
                if self.last_port == answer.port as u32 {
                    self.port_challenges = self.port_challenges.wrapping_add(1);
                } else {
                    self.last_port = answer.port as u32;
                    self.port_challenges = 1;
                }
                let port_scan = policy.enumeration_challenges != 0
                    && self.port_challenges >= PORT_ENUMERATION
                    && self.credentialed == 0
                    && self.successes == 0;
                if charge(&mut self.challenge_debt_ns, &policy.challenges, now)
                    || port_scan
                    || self.enumerating(now, policy.enumeration_challenges)
                {
                    return Judgement::Ban(crate::counters::ban_reason::ENUMERATION);
                }
                let v = self.unanswered_verdict(known);
                if v == Judgement::Nothing && !known {
                    self.unanswered = self.unanswered.wrapping_add(1);
                }
                v
            }
            AnswerClass::Forbidden => {
                if empty(ext) {
                    return Judgement::Nothing;
                }
                let mut device_over = false;
                if let Some(d) = device {
                    d.fail(ext, now);
                    if known {
                        device_over = charge(&mut d.failure_debt_ns, &policy.failures, now);
                    }
                }
                self.credential_failure(ext, policy, known, device_over, now)
            }
            AnswerClass::NotFound => {
                self.not_found = self.not_found.wrapping_add(1);
                if empty(ext) {
                    return Judgement::Nothing;
                }
                self.remember_failed(ext);
                self.last_failure_ns = now;
                if known {
                    // One device of a known source over its not-found budget (odd messages,
                    // a misconfigured device, an enumerator inside the office) has its
                    // not-founds withheld: it learns nothing, and the office stays up. The
                    // source's total over all its devices still bans.
                    let mut device_over = false;
                    if let Some(d) = device {
                        d.not_found = d.not_found.wrapping_add(1);
                        device_over = charge(&mut d.not_found_debt_ns, &policy.not_found, now);
                    }
                    if charge(&mut self.not_found_debt_ns, &KNOWN_SOURCE_FAILURES, now) {
                        return Judgement::Ban(crate::counters::ban_reason::NOT_FOUND);
                    }
                    return if device_over {
                        Judgement::Withhold
                    } else {
                        Judgement::Nothing
                    };
                }
                if charge(&mut self.not_found_debt_ns, &policy.not_found, now) {
                    return Judgement::Ban(crate::counters::ban_reason::NOT_FOUND);
                }
                self.unanswered_verdict(known)
            }
            AnswerClass::Other => Judgement::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::{counters::ban_reason, scan::ext_from};
    use std::format;

    fn ans(code: u16, method: Method, cseq: u32, ext: &str) -> Answer {
        Answer {
            code,
            method,
            cseq,
            ext: ext_from(ext),
            port: 5060,
        }
    }

    const S: u64 = NS_PER_SEC;
    const T0: u64 = 1_000 * S;

    #[test]
    fn a_phone_registering_is_promoted_and_never_charged() {
        let trust = TrustConfig::default();
        let mut st = AnswerState::default();
        for round in 0..100u32 {
            let now = T0 + round as u64 * 60 * S;
            assert_eq!(
                st.judge(&ans(401, Method::Register, 2 * round, "201"), false, None, &trust, now),
                Judgement::Nothing
            );
            // A retransmission of the challenged REGISTER is answered again: not a failure.
            assert_eq!(
                st.judge(&ans(401, Method::Register, 2 * round, "201"), false, None, &trust, now),
                Judgement::Nothing
            );
            assert_eq!(
                st.judge(
                    &ans(200, Method::Register, 2 * round + 1, "201"),
                    false,
                    None,
                    &trust,
                    now
                ),
                Judgement::Promote
            );
        }
        assert_eq!(st.failures, 0);
    }

    #[test]
    fn dictionary_brute_force_is_banned_at_the_fifth_failure() {
        let trust = TrustConfig::default();
        let mut st = AnswerState::default();
        let now = T0;
        st.judge(&ans(401, Method::Register, 1, "201"), false, None, &trust, now);
        for guess in 1..=5u32 {
            let v = st.judge(
                &ans(401, Method::Register, 1 + guess, "201"),
                false,
                None,
                &trust,
                now + guess as u64 * S / 10,
            );
            if guess < 5 {
                assert_eq!(v, Judgement::Nothing, "guess {guess}");
            } else {
                assert_eq!(v, Judgement::Ban(ban_reason::AUTH_FAILURE));
            }
        }
    }

    #[test]
    fn one_guess_every_two_seconds_is_banned_and_one_every_twenty_too() {
        let trust = TrustConfig::default();
        for (gap, within) in [(2u64, 30u64), (20, 600)] {
            let mut st = AnswerState::default();
            st.judge(&ans(401, Method::Register, 1, "201"), false, None, &trust, T0);
            let mut banned = None;
            for guess in 1..1000u32 {
                let now = T0 + guess as u64 * gap * S;
                if let Judgement::Ban(r) =
                    st.judge(&ans(401, Method::Register, 1 + guess, "201"), false, None, &trust, now)
                {
                    assert_eq!(r, ban_reason::AUTH_FAILURE);
                    banned = Some(guess as u64 * gap);
                    break;
                }
            }
            let at = banned.expect("never banned");
            assert!(at <= within, "one guess per {gap} s banned after {at} s");
        }
    }

    #[test]
    fn enumeration_is_banned_at_the_fifth_not_found() {
        let trust = TrustConfig::default();
        let mut st = AnswerState::default();
        for (i, ext) in ["100", "101", "102", "103", "104"].iter().enumerate() {
            let v = st.judge(
                &ans(404, Method::Register, 1, ext),
                false,
                None,
                &trust,
                T0 + i as u64 * S / 10,
            );
            assert_eq!(v == Judgement::Ban(ban_reason::NOT_FOUND), i == 4, "{ext}");
        }
    }

    #[test]
    fn success_after_failures_on_two_other_extensions_is_cracked_not_known() {
        let trust = TrustConfig::default();
        let mut st = AnswerState::default();
        let now = T0;
        // 200: not found; 201: wrong password (challenge, then re-challenge); 202: right.
        st.judge(&ans(404, Method::Register, 1, "200"), false, None, &trust, now);
        st.judge(&ans(401, Method::Register, 1, "201"), false, None, &trust, now);
        assert_eq!(
            st.judge(&ans(401, Method::Register, 2, "201"), false, None, &trust, now),
            Judgement::Nothing
        );
        st.judge(&ans(401, Method::Register, 1, "202"), false, None, &trust, now);
        assert_eq!(
            st.judge(&ans(200, Method::Register, 2, "202"), false, None, &trust, now),
            Judgement::Cracked { other_extensions: 2 }
        );
    }

    #[test]
    fn an_office_with_one_misconfigured_phone_is_promoted_and_stays_unbanned() {
        // The misconfigured phone fails every 15 s for 5 minutes; the other phones register.
        let trust = TrustConfig::default();
        let mut st = AnswerState::default();
        let mut known = false;
        let mut cseq = 0;
        for tick in 0..20u64 {
            let now = T0 + tick * 15 * S;
            cseq += 1;
            let v = st.judge(&ans(401, Method::Register, cseq, "299"), known, None, &trust, now);
            assert!(!matches!(v, Judgement::Ban(_)), "banned at tick {tick}");
            for phone in 0..3 {
                let ext = ext_from(["201", "202", "203"][phone]);
                let a = Answer {
                    code: 401,
                    method: Method::Register,
                    cseq,
                    ext,
                    port: 5060,
                };
                st.judge(&a, known, None, &trust, now);
                let ok = Answer {
                    code: 200,
                    method: Method::Register,
                    cseq: cseq + 1,
                    ext,
                    port: 5060,
                };
                match st.judge(&ok, known, None, &trust, now) {
                    Judgement::Promote => known = true,
                    Judgement::Nothing => {}
                    v => panic!("tick {tick}: {v:?}"),
                }
            }
        }
        assert!(known);
        assert!(st.failures >= 18);
    }

    #[test]
    fn challenges_on_many_extensions_without_credentials_are_enumeration_an_office_is_not() {
        let trust = TrustConfig::default();
        let min = trust.unknown.enumeration_challenges;
        // svwar: a first challenge for each real extension, no credentials ever.
        let mut robot = AnswerState::default();
        let mut banned = None;
        for i in 0..40u32 {
            let now = T0 + i as u64 * S / 4;
            let ext = ext_from(&format!("{}", 201 + i));
            // A slow scanner (one probe every 250 ms) changing its source port each time: the
            // grace-time rule catches it.
            let port = 40000 + i as u16;
            if let Judgement::Ban(r) = robot.judge(
                &Answer {
                    code: 401,
                    method: Method::Register,
                    cseq: i,
                    ext,
                    port,
                },
                false,
                None,
                &trust,
                now,
            ) {
                banned = Some((i, r));
                break;
            }
        }
        let (at, reason) = banned.expect("svwar never banned");
        assert_eq!(reason, ban_reason::ENUMERATION);
        assert!((min..=12).contains(&(at + 1)), "banned at challenge {}", at + 1);
        // svwar: all from one port, as fast as it can: the 8th challenge in a row bans.
        let mut svwar = AnswerState::default();
        let mut at = None;
        for i in 0..40u32 {
            let ext = ext_from(&format!("{}", 201 + i));
            let a = Answer {
                code: 401,
                method: Method::Register,
                cseq: i,
                ext,
                port: 5060,
            };
            match svwar.judge(&a, false, None, &trust, T0) {
                // It learns the first five extensions; the challenges after are withheld.
                Judgement::Nothing => assert!(i < UNANSWERED_CHALLENGES, "challenge {} passed", i + 1),
                Judgement::Withhold => assert!(i >= UNANSWERED_CHALLENGES),
                _ => {
                    at = Some(i + 1);
                    break;
                }
            }
        }
        assert_eq!(at, Some(PORT_ENUMERATION));
        // An office behind one address: 50 phones, each its own NAT port, challenged at once
        // after a power cut; a multi-line phone registers 6 lines from its one port.
        let mut office = AnswerState::default();
        for i in 0..50u32 {
            let ext = ext_from(&format!("{}", 201 + i));
            let a = Answer {
                code: 401,
                method: Method::Register,
                cseq: i,
                ext,
                port: 20000 + i as u16,
            };
            // The first phones' challenges pass; the rest are withheld (never banned) until
            // a phone answers (each phone retransmits its REGISTER 500 ms later).
            let want = if i < UNANSWERED_CHALLENGES {
                Judgement::Nothing
            } else {
                Judgement::Withhold
            };
            assert_eq!(office.judge(&a, false, None, &trust, T0), want, "phone {i}");
        }
        // The first phone registers: the office answers its challenges; nothing is withheld.
        let ok = Answer {
            code: 200,
            method: Method::Register,
            cseq: 1000,
            ext: ext_from("201"),
            port: 20000,
        };
        assert_eq!(office.judge(&ok, false, None, &trust, T0), Judgement::Promote);
        for line in 0..6u32 {
            let ext = ext_from(&format!("{}", 301 + line));
            let a = Answer {
                code: 401,
                method: Method::Register,
                cseq: line,
                ext,
                port: 5062,
            };
            // Known from its first 2xx on: nothing is withheld.
            assert_eq!(
                office.judge(&a, true, None, &trust, T0),
                Judgement::Nothing,
                "line {line}"
            );
        }
        // Its phones send credentials at once: later challenges on one port never count as
        // enumeration (what remains is the challenge budget until its first success).
        office.credentialed = 1;
        office.unanswered = 0;
        for i in 0..3u32 {
            let ext = ext_from(&format!("{}", 401 + i));
            let a = Answer {
                code: 401,
                method: Method::Register,
                cseq: i,
                ext,
                port: 5062,
            };
            assert_eq!(office.judge(&a, false, None, &trust, T0 + 10 * S), Judgement::Nothing);
        }
    }

    #[test]
    fn budgets_leak() {
        let b = Budget {
            capacity: 5,
            leak_secs: 10,
        };
        let mut debt = 0;
        for _ in 0..4 {
            assert!(!charge(&mut debt, &b, T0));
        }
        assert_eq!(level(debt, &b, T0), 4);
        assert_eq!(level(debt, &b, T0 + 25 * S), 2);
        assert!(!charge(&mut debt, &b, T0 + 25 * S));
        assert!(!charge(&mut debt, &b, T0 + 25 * S));
        assert!(charge(&mut debt, &b, T0 + 25 * S));
        let off = Budget {
            capacity: 0,
            leak_secs: 10,
        };
        assert!(!charge(&mut debt, &off, T0));
    }
}
