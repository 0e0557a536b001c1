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
    /// IP but not UDP.
    NotUdp,
    /// A non-first IP fragment: it carries no UDP header to judge.
    Fragment,
    /// Truncated or inconsistent headers; passed because judging garbage risks mis-bans.
    Malformed,
    /// UDP to a port that is not a SIP port.
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
}

impl Outcome {
    pub const COUNT: usize = 12;
    pub const ALL: [Outcome; Outcome::COUNT] = [
        Outcome::NotIp,
        Outcome::NotUdp,
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
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Outcome::NotIp => "not_ip",
            Outcome::NotUdp => "not_udp",
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
        }
    }

    /// Whether this outcome drops the packet (outside monitor mode).
    #[inline(always)]
    pub const fn drops(self) -> bool {
        matches!(
            self,
            Outcome::Denylisted | Outcome::Banned | Outcome::RateRegister | Outcome::RateInvite | Outcome::RateOther
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
    /// Added by an operator (CLI).
    pub const MANUAL: u8 = 10;
    /// Restored from the agent's state file.
    pub const RESTORED: u8 = 11;

    pub fn name(reason: u8) -> &'static str {
        match reason {
            0 => "rate_register",
            1 => "rate_invite",
            2 => "rate_other",
            MANUAL => "manual",
            RESTORED => "restored",
            _ => "unknown",
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
    /// Bans the program created, by [`RateClass`].
    pub bans: [u64; RateClass::COUNT],
    /// Bans that could not be stored because the ban table was full (the packet was still dropped).
    pub ban_table_full: u64,
    /// Ban events the ring buffer had no room for.
    pub events_lost: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            verdicts: [0; Verdict::COUNT],
            outcomes: [0; Outcome::COUNT],
            methods: [0; Method::COUNT],
            bans: [0; RateClass::COUNT],
            ban_table_full: 0,
            events_lost: 0,
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
