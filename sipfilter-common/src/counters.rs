//! Per-CPU counters: one record per CPU, summed by userspace.

use crate::sip::{Method, RateClass};

/// What the program did with a packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass = 0,
    Drop = 1,
    /// Monitor mode: the packet would have been dropped and was passed.
    WouldDrop = 2,
}

impl Verdict {
    pub const COUNT: usize = 3;
    pub const ALL: [Verdict; Verdict::COUNT] = [Verdict::Pass, Verdict::Drop, Verdict::WouldDrop];
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Drop => "drop",
            Verdict::WouldDrop => "would_drop",
        }
    }
}

/// Why: every packet gets exactly one outcome.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not IPv4/IPv6 (ARP, LLDP, ...).
    NotIp = 0,
    /// IP carrying neither UDP nor TCP (ICMP, ESP, ...).
    OtherTransport,
    /// A non-first IP fragment: it carries no UDP header to judge.
    Fragment,
    /// Truncated or inconsistent headers; passed because judging garbage risks mis-bans.
    Malformed,
    /// UDP or TCP to a port that is not a SIP port.
    NotSipPort,
    /// Source on the allowlist.
    Allowlisted,
    /// Within its rate limits.
    Accepted,
    /// Source on the denylist.
    Denylisted,
    /// Source under an active ban.
    Banned,
    /// Emptied its REGISTER bucket (and was banned).
    RateRegister,
    /// Emptied its INVITE bucket (and was banned).
    RateInvite,
    /// Emptied its bucket for other messages (and was banned).
    RateOther,
    /// Stealth: a probe (OPTIONS, or any non-REGISTER under stealth "all") from a source that
    /// is neither known nor allowlisted, dropped unanswered. No ban.
    Stealth,
    /// A REGISTER or INVITE for a cracked extension from a source that is neither known nor
    /// allowlisted.
    Quarantined,
    /// An unknown source over its tight limit: dropped, not banned.
    Throttled,
    /// A request whose User-Agent names a scanner: dropped unanswered, the source banned.
    Scanner,
    /// A call to a denied destination: dropped, the source not banned
    /// (docs/judging.md, "Destination rules").
    Destination,
    /// A call over a call-burst limit: dropped (and an unknown source banned).
    CallBurst,
    /// A new TCP connection (SYN) to a SIP port within the source's connection budgets.
    Connection,
    /// A SYN over an unknown source's new-connection budget, or from a source at its open
    /// connection limit: dropped, not banned (the SYN's retransmission may get in).
    ConnectionThrottled,
    /// Emptied its new-connection flood bucket (a SYN flood): dropped, and banned.
    RateConnection,
    /// A TCP segment to a SIP port that starts no SIP message to read: an ACK, FIN or RST, a
    /// keep-alive, a message's continuation, or TLS and WebSocket data (passed after the
    /// lists and bans).
    Segment,
}

impl Outcome {
    pub const COUNT: usize = 22;
    pub const ALL: [Outcome; Outcome::COUNT] = [
        Outcome::NotIp,
        Outcome::OtherTransport,
        Outcome::Fragment,
        Outcome::Malformed,
        Outcome::NotSipPort,
        Outcome::Allowlisted,
        Outcome::Accepted,
        Outcome::Denylisted,
        Outcome::Banned,
        Outcome::RateRegister,
        Outcome::RateInvite,
        Outcome::RateOther,
        Outcome::Stealth,
        Outcome::Quarantined,
        Outcome::Throttled,
        Outcome::Scanner,
        Outcome::Destination,
        Outcome::CallBurst,
        Outcome::Connection,
        Outcome::ConnectionThrottled,
        Outcome::RateConnection,
        Outcome::Segment,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Outcome::NotIp => "not_ip",
            Outcome::OtherTransport => "other_transport",
            Outcome::Fragment => "fragment",
            Outcome::Malformed => "malformed",
            Outcome::NotSipPort => "not_sip_port",
            Outcome::Allowlisted => "allowlisted",
            Outcome::Accepted => "accepted",
            Outcome::Denylisted => "denylisted",
            Outcome::Banned => "banned",
            Outcome::RateRegister => "rate_register",
            Outcome::RateInvite => "rate_invite",
            Outcome::RateOther => "rate_other",
            Outcome::Stealth => "stealth",
            Outcome::Quarantined => "quarantined",
            Outcome::Throttled => "throttled",
            Outcome::Scanner => "scanner",
            Outcome::Destination => "destination",
            Outcome::CallBurst => "call_burst",
            Outcome::Connection => "connection",
            Outcome::ConnectionThrottled => "connection_throttled",
            Outcome::RateConnection => "rate_connection",
            Outcome::Segment => "segment",
        }
    }

    /// Whether this outcome drops the packet (outside monitor mode).
    #[inline(always)]
    pub const fn drops(self) -> bool {
        matches!(
            self,
            Outcome::Denylisted
                | Outcome::Banned
                | Outcome::RateRegister
                | Outcome::RateInvite
                | Outcome::RateOther
                | Outcome::Stealth
                | Outcome::Quarantined
                | Outcome::Throttled
                | Outcome::Scanner
                | Outcome::Destination
                | Outcome::CallBurst
                | Outcome::ConnectionThrottled
                | Outcome::RateConnection
        )
    }

    #[inline(always)]
    pub const fn rate_limited(class: RateClass) -> Outcome {
        match class {
            RateClass::Register => Outcome::RateRegister,
            RateClass::Invite => Outcome::RateInvite,
            RateClass::Other => Outcome::RateOther,
        }
    }
}

/// Why a ban was created (kept in [`crate::Ban::reason`] and the ban event).
pub mod ban_reason {
    /// Emptied a token bucket; the rate class is in the low bits (`RATE + class`).
    pub const RATE: u8 = 0;
    /// Exceeded its credential-failure budget (wrong passwords).
    pub const AUTH_FAILURE: u8 = 3;
    /// Exceeded its not-found budget (enumeration).
    pub const NOT_FOUND: u8 = 4;
    /// Guessed a password: a 2xx after failures on other extensions.
    pub const CRACKED: u8 = 5;
    /// Enumeration: challenged on many extensions without ever sending credentials, or more
    /// first challenges than its budget without a success.
    pub const ENUMERATION: u8 = 6;
    /// IPv6: several addresses of the prefix offended.
    pub const PREFIX: u8 = 7;
    /// A scanner's User-Agent.
    pub const SCANNER: u8 = 8;
    /// An unknown source over a call-burst limit.
    pub const CALL_BURST: u8 = 9;
    /// Emptied its new-connection flood bucket: a SYN flood to the SIP TCP, TLS or
    /// WebSocket ports. (14: the values 10..13 were taken by non-kernel reasons first.)
    pub const CONNECTION_FLOOD: u8 = 14;
    /// Reasons the programs ban for (counter slots).
    pub const KERNEL_REASONS: usize = 11;
    /// Those reasons, in counter order.
    pub const KERNEL: [u8; KERNEL_REASONS] = [
        RATE,
        RATE + 1,
        RATE + 2,
        AUTH_FAILURE,
        NOT_FOUND,
        CRACKED,
        ENUMERATION,
        PREFIX,
        SCANNER,
        CALL_BURST,
        CONNECTION_FLOOD,
    ];

    /// A kernel reason's slot in `Counters::bans` (its place in [`KERNEL`]).
    #[inline(always)]
    pub const fn slot(reason: u8) -> usize {
        if reason == CONNECTION_FLOOD {
            10
        } else {
            reason as usize
        }
    }
    /// Added by an operator (CLI).
    pub const MANUAL: u8 = 10;
    /// Restored from the agent's state file.
    pub const RESTORED: u8 = 11;
    /// A CrowdSec decision pulled from the Local API (the fleet's; never pushed back).
    pub const CROWDSEC: u8 = 12;
    /// Not a ban: an alert the egress program reports on the ban events ring (duration 0)
    /// when it withholds a suspect 2xx (`answers::Judgement::Suspect`).
    pub const SUSPECT: u8 = 13;

    pub fn name(reason: u8) -> &'static str {
        match reason {
            0 => "rate_register",
            1 => "rate_invite",
            2 => "rate_other",
            AUTH_FAILURE => "auth_failure",
            NOT_FOUND => "not_found",
            CRACKED => "cracked",
            ENUMERATION => "enumeration",
            PREFIX => "prefix",
            SCANNER => "scanner",
            CALL_BURST => "call_burst",
            MANUAL => "manual",
            RESTORED => "restored",
            CROWDSEC => "crowdsec",
            SUSPECT => "suspect",
            CONNECTION_FLOOD => "connection_flood",
            _ => "unknown",
        }
    }
}

/// How the egress program counts SIP answers: by what they say about the source.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnswerKind {
    Provisional = 0,
    Success,
    Challenge,
    Forbidden,
    NotFound,
    OtherFailure,
}

impl AnswerKind {
    pub const COUNT: usize = 6;
    pub const ALL: [AnswerKind; AnswerKind::COUNT] = [
        AnswerKind::Provisional,
        AnswerKind::Success,
        AnswerKind::Challenge,
        AnswerKind::Forbidden,
        AnswerKind::NotFound,
        AnswerKind::OtherFailure,
    ];
    pub const fn name(self) -> &'static str {
        match self {
            AnswerKind::Provisional => "provisional",
            AnswerKind::Success => "success",
            AnswerKind::Challenge => "challenge",
            AnswerKind::Forbidden => "forbidden",
            AnswerKind::NotFound => "not_found",
            AnswerKind::OtherFailure => "other",
        }
    }
    #[inline(always)]
    pub const fn of(code: u16) -> AnswerKind {
        match code {
            100..=199 => AnswerKind::Provisional,
            200..=299 => AnswerKind::Success,
            401 | 407 => AnswerKind::Challenge,
            403 => AnswerKind::Forbidden,
            404 | 484 | 604 => AnswerKind::NotFound,
            _ => AnswerKind::OtherFailure,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    /// Packets by [`Verdict`]. The program counts drops and would-drops only; userspace fills
    /// in passes with [`Counters::derive_passed`].
    pub verdicts: [u64; Verdict::COUNT],
    /// Packets by [`Outcome`].
    pub outcomes: [u64; Outcome::COUNT],
    /// SIP messages seen on SIP ports, by [`Method`].
    pub methods: [u64; Method::COUNT],
    /// Bans the programs created, by [`ban_reason`] (0..KERNEL_REASONS).
    pub bans: [u64; ban_reason::KERNEL_REASONS],
    /// SIP answers seen leaving from the SIP ports, by [`AnswerKind`].
    pub answers: [u64; AnswerKind::COUNT],
    /// Extensions found cracked.
    pub cracked: u64,
    /// Sources that became (or stayed) known by a clean REGISTER success.
    pub promoted: u64,
    /// 2xx answers withheld from a source that guessed a password.
    pub withheld: u64,
    /// 2xx answers withheld once as suspect (a device that moved on from a failed extension,
    /// at a known source; failures on other extensions from other devices): nobody banned.
    pub suspect: u64,
    /// Challenges and not-found answers withheld: to an unknown source whose challenges go
    /// unanswered (`answers::UNANSWERED_CHALLENGES`), or a known source's not-founds to a
    /// device over its own not-found budget.
    pub withheld_challenges: u64,
    /// Answers whose headers could not be read within the scan bound (passed, not judged).
    pub uninspected: u64,
    /// Requests matched by each scanner User-Agent token (by its place in the list).
    pub scanner_tokens: [u64; crate::user_agent::MAX_TOKENS],
    /// Calls dropped by each destination rule kind: [denied destination, burst to one
    /// number, international burst].
    pub calls_blocked: [u64; 3],
    /// New calls (not retransmissions) whose dialed number was checked.
    pub calls_checked: u64,
    /// Requests the inspection could not read within its bounds (a header past the scan
    /// bound, a dialed number too long to normalise): passed, not judged by those rules.
    pub requests_uninspected: u64,
    /// Packets to (ingress) the SIP ports, by transport ([`crate::config::transport`]).
    pub transports: [u64; crate::config::transport::COUNT],
    /// TCP data segments to a plain TCP SIP port that start no SIP message (a continuation,
    /// a second message, something else): passed, never judged.
    pub segments_uninspected: u64,
    /// Bans that could not be stored because the ban table was full (the packet was still dropped).
    pub ban_table_full: u64,
    /// Ban events the ring buffer had no room for.
    pub events_lost: u64,
    /// Not a counter: where the programs launder the parsed headers' offsets (this CPU's
    /// record is at hand, and a store and a load of map memory erase what the verifier knows
    /// of them, so the UDP and TCP ways through the parser meet in one verifier state).
    /// Userspace ignores it.
    pub scratch: [u64; 4],
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            verdicts: [0; Verdict::COUNT],
            outcomes: [0; Outcome::COUNT],
            methods: [0; Method::COUNT],
            bans: [0; ban_reason::KERNEL_REASONS],
            answers: [0; AnswerKind::COUNT],
            cracked: 0,
            promoted: 0,
            withheld: 0,
            suspect: 0,
            withheld_challenges: 0,
            uninspected: 0,
            scanner_tokens: [0; crate::user_agent::MAX_TOKENS],
            calls_blocked: [0; 3],
            calls_checked: 0,
            requests_uninspected: 0,
            transports: [0; crate::config::transport::COUNT],
            segments_uninspected: 0,
            ban_table_full: 0,
            events_lost: 0,
            scratch: [0; 4],
        }
    }
}

impl Counters {
    /// Adds another CPU's record to this one.
    pub fn add(&mut self, o: &Counters) {
        fn sum<const N: usize>(a: &mut [u64; N], b: &[u64; N]) {
            for (x, y) in a.iter_mut().zip(b) {
                *x = x.wrapping_add(*y);
            }
        }
        sum(&mut self.verdicts, &o.verdicts);
        sum(&mut self.outcomes, &o.outcomes);
        sum(&mut self.methods, &o.methods);
        sum(&mut self.bans, &o.bans);
        sum(&mut self.answers, &o.answers);
        self.cracked = self.cracked.wrapping_add(o.cracked);
        self.promoted = self.promoted.wrapping_add(o.promoted);
        self.withheld = self.withheld.wrapping_add(o.withheld);
        self.suspect = self.suspect.wrapping_add(o.suspect);
        self.withheld_challenges = self.withheld_challenges.wrapping_add(o.withheld_challenges);
        self.uninspected = self.uninspected.wrapping_add(o.uninspected);
        sum(&mut self.scanner_tokens, &o.scanner_tokens);
        sum(&mut self.calls_blocked, &o.calls_blocked);
        self.calls_checked = self.calls_checked.wrapping_add(o.calls_checked);
        self.requests_uninspected = self.requests_uninspected.wrapping_add(o.requests_uninspected);
        sum(&mut self.transports, &o.transports);
        self.segments_uninspected = self.segments_uninspected.wrapping_add(o.segments_uninspected);
        self.ban_table_full = self.ban_table_full.wrapping_add(o.ban_table_full);
        self.events_lost = self.events_lost.wrapping_add(o.events_lost);
    }

    /// Fills in the passed count, which the program does not keep: every packet gets exactly
    /// one outcome, so passed = all outcomes − dropped − would-drop.
    pub fn derive_passed(&mut self) {
        let all = self.outcomes.iter().fold(0u64, |a, b| a.wrapping_add(*b));
        let dropped = self.verdicts[Verdict::Drop as usize].wrapping_add(self.verdicts[Verdict::WouldDrop as usize]);
        self.verdicts[Verdict::Pass as usize] = all.wrapping_sub(dropped);
    }

    pub fn outcome(&self, o: Outcome) -> u64 {
        self.outcomes[o as usize]
    }
    pub fn verdict(&self, v: Verdict) -> u64 {
        self.verdicts[v as usize]
    }
    pub fn method(&self, m: Method) -> u64 {
        self.methods[m as usize]
    }
}
