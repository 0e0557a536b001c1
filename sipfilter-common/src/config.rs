//! The runtime configuration record the XDP program reads from the `config` map.
//!
//! Userspace writes it at load and on reload; the program reads it on every packet, so a
//! threshold change takes effect at once without reloading the program.

use crate::NS_PER_SEC;

/// Largest accepted rate (tokens per second) and burst; these bound the token-bucket
/// arithmetic (see [`crate::bucket::MAX_REFILL_NS`]).
pub const MAX_RATE: u64 = 1_000_000;
pub const MAX_BURST: u64 = 1_000_000;

/// How many SIP ports one program can watch, per transport (UDP, TCP; TLS and WebSocket
/// share one set: both are opaque to the program).
pub const MAX_SIP_PORTS: usize = 8;
/// How many TLS and WebSocket (WS and WSS) SIP ports, each.
pub const MAX_OPAQUE_PORTS: usize = 4;

/// The SIP transports, as the program tells them apart (by protocol and port).
pub mod transport {
    /// SIP over UDP: every datagram read.
    pub const UDP: usize = 0;
    /// SIP over plain TCP: a segment that starts a message is read like a datagram.
    pub const TCP: usize = 1;
    /// SIP over TLS: nothing readable; lists, bans and connection budgets apply.
    pub const TLS: usize = 2;
    /// SIP over WebSocket (WS or WSS: client frames are masked, so opaque too).
    pub const WEBSOCKET: usize = 3;
    pub const COUNT: usize = 4;
    pub const NAMES: [&str; COUNT] = ["udp", "tcp", "tls", "websocket"];
}

/// Flag: evaluate and count, never drop.
pub const FLAG_MONITOR: u32 = 1;
/// Flag: a banned or denylisted source loses all its traffic, not only its SIP traffic.
pub const FLAG_SCOPE_ALL: u32 = 2;
/// Set by userspace while no IPv6 allow/deny entry is longer than the IPv6 source prefix:
/// every address of a source prefix then has the same list status, and the program may cache
/// it per source like it does for IPv4 instead of looking the lists up on every packet.
pub const FLAG_V6_LISTS_BY_PREFIX: u32 = 4;
/// Stealth: OPTIONS from a source that is neither known nor allowlisted are dropped.
pub const FLAG_STEALTH: u32 = 8;
/// Stealth for every request but REGISTER (sites that take no calls from the internet).
pub const FLAG_STEALTH_ALL: u32 = 16;
/// Set by userspace while quarantine is on and some extension is on the cracked list: the
/// program then reads the extension of REGISTERs and INVITEs from unknown sources.
pub const FLAG_QUARANTINE: u32 = 32;
/// Withhold the 2xx that proves a guessed password (docs/judging.md).
pub const FLAG_WITHHOLD: u32 = 64;
/// Trust tiers in force (`[trust] enabled`): unknown sources get `unknown_limits`, the
/// answers program judges. Without it every source gets `limits` (and stealth and quarantine,
/// which need the tiers, stay off).
pub const FLAG_TRUST: u32 = 128;
/// Requests from sources that are neither known nor allowlisted have their User-Agent
/// searched for scanner tokens (set while the token list is not empty).
pub const FLAG_SCANNER_USER_AGENTS: u32 = 256;
/// INVITE and MESSAGE requests have their dialed number checked against the destination
/// rules and counted for the call-burst rules.
pub const FLAG_CALLS: u32 = 512;

/// A leaky budget of answers: `capacity` answers, one leaking away every `leak_secs`.
/// Capacity 0: no budget.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Budget {
    pub capacity: u32,
    pub leak_secs: u32,
}

/// What a trust tier may collect from the PBX before it is banned.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TierPolicy {
    /// Credential failures (a re-challenge, or 403).
    pub failures: Budget,
    /// Credential failures again, over a longer time: catches a robot guessing slowly.
    pub slow_failures: Budget,
    /// 404, 484, 604.
    pub not_found: Budget,
    /// First challenges (401/407 to requests without credentials).
    pub challenges: Budget,
    /// A 2xx after failures on at least this many other extensions is a cracked extension
    /// (0: never).
    pub crack_min_extensions: u32,
    /// First challenges on this many extensions without credentials is enumeration (see
    /// `AnswerState::enumerating`; 0: never).
    pub enumeration_challenges: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrustConfig {
    pub unknown: TierPolicy,
    pub known: TierPolicy,
    /// How long a source stays known after its last clean REGISTER success.
    pub known_ttl_secs: u32,
    /// Failures this recent make a source a suspect (for the cracked rule).
    pub suspect_window_secs: u32,
    /// IPv6: the whole prefix is banned once this many of its addresses were banned within
    /// the escalation window.
    pub prefix_ban_after: u32,
    pub _pad: u32,
}

impl Default for TrustConfig {
    fn default() -> Self {
        TrustConfig {
            unknown: defaults::UNKNOWN_POLICY,
            known: defaults::KNOWN_POLICY,
            known_ttl_secs: defaults::KNOWN_TTL_SECS,
            suspect_window_secs: defaults::SUSPECT_WINDOW_SECS,
            prefix_ban_after: defaults::PREFIX_BAN_AFTER,
            _pad: 0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassLimit {
    /// Sustained rate, tokens per second.
    pub rate_per_sec: u32,
    /// Bucket size: how many messages a source may send back to back.
    pub burst: u32,
}

/// What each source may open in TCP connections to the SIP ports (TCP, TLS, WebSocket).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// New connections (SYNs) of every source: emptying it bans, like a REGISTER flood.
    pub flood: ClassLimit,
    /// New connections of an unknown source: over it the SYN is dropped, not banned (the
    /// phone's SYN retransmission gets in later).
    pub unknown: ClassLimit,
    /// Open connections at once: a source at its tier's limit has its SYNs dropped (the
    /// agent counts the `connections` table and marks such sources; 0: no limit).
    pub known_open: u32,
    pub unknown_open: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelConfig {
    /// UDP SIP ports in network byte order. Unused slots repeat the first port so the
    /// per-packet check is a fixed, branch-free comparison with no "count" to consult.
    pub sip_ports_be: [u16; MAX_SIP_PORTS],
    /// Plain TCP SIP ports; unused slots 0 (no TCP segment goes to port 0).
    pub tcp_ports_be: [u16; MAX_SIP_PORTS],
    /// TLS SIP ports; unused slots 0.
    pub tls_ports_be: [u16; MAX_OPAQUE_PORTS],
    /// WebSocket SIP ports (WS and WSS); unused slots 0.
    pub websocket_ports_be: [u16; MAX_OPAQUE_PORTS],
    pub connections: ConnectionLimits,
    /// FLAG_* bits.
    pub flags: u32,
    /// IPv6 source-key mask as four 32-bit words in network byte order: /128 (each address
    /// its own state and bans) unless a test sets another.
    pub ipv6_mask_be: [u32; 4],
    /// The IPv6 prefix banned as a whole on evidence (several of its addresses banned, or its
    /// aggregate budget exhausted by rotation): /64 by default.
    pub ipv6_group_mask_be: [u32; 4],
    /// Limits of known sources, indexed by [`crate::RateClass`].
    pub limits: [ClassLimit; 3],
    /// Limits of unknown sources (neither known nor allowlisted).
    pub unknown_limits: [ClassLimit; 3],
    pub trust: TrustConfig,
    /// Destination and call-burst rules (`[calls]`).
    pub calls: crate::calls::CallConfig,
    /// First ban's length, ns.
    pub ban_base_ns: u64,
    /// Longest ban escalation may reach, ns.
    pub ban_max_ns: u64,
    /// A source banned again within this long after its previous ban ended counts as a
    /// repeat offender and gets twice the previous ban, ns.
    pub escalation_window_ns: u64,
    /// Bumped by userspace on every change to bans, lists or this record: rate-state slots
    /// cached at an older generation re-read the ban table and the lists.
    pub generation: u64,
    /// Seed of the rate-state slot hash, random per installation.
    pub hash_seed: u32,
    pub _pad: u32,
    /// The program's clock: `jiffies * ns_per_jiffy + jiffies_offset_ns` approximates
    /// CLOCK_BOOTTIME to within a tick. Reading jiffies is an inlined load; the boot-time
    /// helper costs ~55 ns a call here. Zero `ns_per_jiffy` (not calibrated): use the helper.
    pub ns_per_jiffy: u64,
    pub jiffies_offset_ns: u64,
}

/// The documented defaults (docs/judging.md, "Defaults and why").
pub mod defaults {
    use super::*;
    pub const SIP_PORT: u16 = 5060;
    /// SIP over TLS (RFC 3261 §26.2's sips default).
    pub const TLS_PORT: u16 = 5061;
    /// Connections: every phone opens one, and after a power cut all of an office's phones
    /// open theirs at once, with SYN retransmissions at 1, 3, 7 s. A known source (the office
    /// behind one address) may open 150 back to back and 20 a second, like its REGISTERs; a
    /// source that empties that is flooding and is banned. An unknown source opens 20 back to
    /// back, then 2 a second: the rest of a new office gets in on retransmissions, and once
    /// its first phone registers the address is known. Open at once: 500 for a known source
    /// (a large office with a connection per phone and spares), 20 for an unknown one (what
    /// Kamailio's `tcp_accept_iplimit` examples use).
    pub const CONNECTIONS: ConnectionLimits = ConnectionLimits {
        flood: ClassLimit {
            rate_per_sec: 20,
            burst: 150,
        },
        unknown: ClassLimit {
            rate_per_sec: 2,
            burst: 20,
        },
        known_open: 500,
        unknown_open: 20,
    };
    /// REGISTER: 150 back to back covers an office of 50 phones behind one NAT address
    /// re-registering at once after a power cut (REGISTER, 401, REGISTER with credentials =
    /// 100 messages) with 50% to spare; 20/s sustained is 1,200 re-registrations a minute.
    /// A source sending 200/s empties it after about 167 packets, 0.83 s into the flood.
    pub const REGISTER: ClassLimit = ClassLimit {
        rate_per_sec: 20,
        burst: 150,
    };
    /// INVITE: 60 back to back (every phone of that office calling at once, with the
    /// INVITE/407/INVITE retry), 10/s sustained (a busy call centre's peak).
    pub const INVITE: ClassLimit = ClassLimit {
        rate_per_sec: 10,
        burst: 60,
    };
    /// Other requests and responses: phones SUBSCRIBE to many busy lamps after a reboot
    /// and answer NOTIFYs and OPTIONS pings, so this bucket is the loosest.
    pub const OTHER: ClassLimit = ClassLimit {
        rate_per_sec: 100,
        burst: 1000,
    };
    /// 300 s first ban: Kamailio's default antiflood ban.
    pub const BAN_BASE_SECS: u64 = 300;
    /// Seven days at most: fail2ban's recidive jail.
    pub const BAN_MAX_SECS: u64 = 7 * 24 * 3600;
    /// Repeat within a day of the previous ban's end doubles the ban (recidive's window).
    pub const ESCALATION_WINDOW_SECS: u64 = 24 * 3600;
    /// Attackers rotate addresses inside their /64: the prefix banned on evidence.
    pub const IPV6_PREFIX_LEN: u8 = 64;
    /// The aggregate budget of an IPv6 prefix: this many times the known limits, shared by
    /// all its addresses (an office of phones each on its own address stays far below it).
    pub const PREFIX_BUDGET_FACTOR: u64 = 4;

    /// Unknown sources: a REGISTER burst for a small office's first round (20: ten phones'
    /// REGISTER and re-REGISTER with credentials) and the rest on retransmissions; the first
    /// clean 2xx makes the address known and lifts it to the known limits.
    pub const UNKNOWN_REGISTER: ClassLimit = ClassLimit {
        rate_per_sec: 2,
        burst: 20,
    };
    /// Few INVITEs: a source that never registered is a trunk (allowlist it) or a robot.
    pub const UNKNOWN_INVITE: ClassLimit = ClassLimit {
        rate_per_sec: 1,
        burst: 10,
    };
    pub const UNKNOWN_OTHER: ClassLimit = ClassLimit {
        rate_per_sec: 20,
        burst: 200,
    };
    /// CrowdSec's asterisk_bf: 5 failures, one leaking every 10 s.
    pub const UNKNOWN_FAILURES: Budget = Budget {
        capacity: 5,
        leak_secs: 10,
    };
    /// CrowdSec's ssh-slow-bf: 10, one leaking a minute; a guess every 20 s is banned within
    /// ten minutes.
    pub const UNKNOWN_SLOW_FAILURES: Budget = Budget {
        capacity: 10,
        leak_secs: 60,
    };
    /// Enumeration: CrowdSec's asterisk_user_enum counts > 5 failing users.
    pub const UNKNOWN_NOT_FOUND: Budget = Budget {
        capacity: 5,
        leak_secs: 10,
    };
    /// First challenges without a success: an office's first round is well under 60;
    /// enumeration against a PBX that challenges everyone is not.
    pub const UNKNOWN_CHALLENGES: Budget = Budget {
        capacity: 60,
        leak_secs: 5,
    };
    pub const UNKNOWN_POLICY: TierPolicy = TierPolicy {
        failures: UNKNOWN_FAILURES,
        slow_failures: UNKNOWN_SLOW_FAILURES,
        not_found: UNKNOWN_NOT_FOUND,
        challenges: UNKNOWN_CHALLENGES,
        crack_min_extensions: 2,
        enumeration_challenges: 10,
    };
    /// Known sources: four times the room (an office's misconfigured phone failing every
    /// 15 s never fills it), no slow budget (that phone would fill any), no challenge budget.
    pub const KNOWN_POLICY: TierPolicy = TierPolicy {
        failures: Budget {
            capacity: 20,
            leak_secs: 10,
        },
        slow_failures: Budget {
            capacity: 0,
            leak_secs: 0,
        },
        not_found: Budget {
            capacity: 20,
            leak_secs: 10,
        },
        challenges: Budget {
            capacity: 0,
            leak_secs: 0,
        },
        crack_min_extensions: 4,
        enumeration_challenges: 0,
    };
    pub const KNOWN_TTL_SECS: u32 = 7 * 24 * 3600;
    /// Ten minutes: a robot moves from extension to extension within seconds.
    pub const SUSPECT_WINDOW_SECS: u32 = 600;
    /// Three addresses of one /64 banned within the escalation window ban the /64.
    pub const PREFIX_BAN_AFTER: u32 = 3;
}

/// The IPv6 source-key mask for a prefix length (0..=128), as KernelConfig stores it.
pub const fn ipv6_mask(prefix_len: u8) -> [u32; 4] {
    let mut words = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        let bits = prefix_len as i32 - 32 * i as i32;
        let host = if bits >= 32 {
            u32::MAX
        } else if bits <= 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        };
        words[i] = host.to_be();
        i += 1;
    }
    words
}

impl Default for KernelConfig {
    fn default() -> Self {
        let mut tcp_ports_be = [0; MAX_SIP_PORTS];
        tcp_ports_be[0] = defaults::SIP_PORT.to_be();
        let mut tls_ports_be = [0; MAX_OPAQUE_PORTS];
        tls_ports_be[0] = defaults::TLS_PORT.to_be();
        KernelConfig {
            sip_ports_be: [defaults::SIP_PORT.to_be(); MAX_SIP_PORTS],
            tcp_ports_be,
            tls_ports_be,
            websocket_ports_be: [0; MAX_OPAQUE_PORTS],
            connections: defaults::CONNECTIONS,
            flags: 0,
            ipv6_mask_be: ipv6_mask(128),
            ipv6_group_mask_be: ipv6_mask(defaults::IPV6_PREFIX_LEN),
            limits: [defaults::REGISTER, defaults::INVITE, defaults::OTHER],
            unknown_limits: [
                defaults::UNKNOWN_REGISTER,
                defaults::UNKNOWN_INVITE,
                defaults::UNKNOWN_OTHER,
            ],
            trust: TrustConfig::default(),
            calls: crate::calls::CallConfig::default(),
            ban_base_ns: defaults::BAN_BASE_SECS * NS_PER_SEC,
            ban_max_ns: defaults::BAN_MAX_SECS * NS_PER_SEC,
            escalation_window_ns: defaults::ESCALATION_WINDOW_SECS * NS_PER_SEC,
            generation: 0,
            hash_seed: 0,
            _pad: 0,
            ns_per_jiffy: 0,
            jiffies_offset_ns: 0,
        }
    }
}

/// Whether any of a fixed set of port slots is `port_be`: every slot compared, no early
/// exit, so the check unrolls to straight-line compares the verifier walks once.
#[inline(always)]
fn holds<const N: usize>(slots: &[u16; N], port_be: u16) -> bool {
    let mut any = false;
    for s in slots {
        any |= *s == port_be;
    }
    any
}

impl KernelConfig {
    /// Sets the SIP ports (1..=MAX_SIP_PORTS of them), filling unused slots with the first.
    pub fn set_sip_ports(&mut self, ports: &[u16]) {
        let first = ports.first().copied().unwrap_or(defaults::SIP_PORT);
        for (i, slot) in self.sip_ports_be.iter_mut().enumerate() {
            *slot = ports.get(i).copied().unwrap_or(first).to_be();
        }
    }

    #[inline(always)]
    pub fn is_sip_port(&self, port_be: u16) -> bool {
        holds(&self.sip_ports_be, port_be)
    }

    /// Sets the TCP, TLS and WebSocket SIP ports (as many as fit; unused slots 0).
    pub fn set_stream_ports(&mut self, tcp: &[u16], tls: &[u16], websocket: &[u16]) {
        fn fill(slots: &mut [u16], ports: &[u16]) {
            for (i, slot) in slots.iter_mut().enumerate() {
                *slot = ports.get(i).copied().unwrap_or(0).to_be();
            }
        }
        fill(&mut self.tcp_ports_be, tcp);
        fill(&mut self.tls_ports_be, tls);
        fill(&mut self.websocket_ports_be, websocket);
    }

    /// The SIP transport a TCP segment to (ingress) or from (egress) `port_be` carries, if
    /// the port is a SIP port ([`transport`]).
    #[inline(always)]
    pub fn stream_transport(&self, port_be: u16) -> Option<usize> {
        if port_be == 0 {
            return None;
        }
        if holds(&self.tcp_ports_be, port_be) {
            return Some(transport::TCP);
        }
        if holds(&self.tls_ports_be, port_be) {
            return Some(transport::TLS);
        }
        if holds(&self.websocket_ports_be, port_be) {
            return Some(transport::WEBSOCKET);
        }
        None
    }

    #[inline(always)]
    pub fn monitor(&self) -> bool {
        self.flags & FLAG_MONITOR != 0
    }

    #[inline(always)]
    pub fn flag(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }

    #[inline(always)]
    pub fn v6_lists_by_prefix(&self) -> bool {
        self.flags & FLAG_V6_LISTS_BY_PREFIX != 0
    }

    /// The IPv6 source prefix length, from the mask.
    pub fn ipv6_prefix_len(&self) -> u8 {
        self.ipv6_mask_be.iter().map(|w| w.count_ones()).sum::<u32>() as u8
    }

    /// The IPv6 prefix banned on evidence, from its mask.
    pub fn ipv6_group_len(&self) -> u8 {
        self.ipv6_group_len_bits() as u8
    }

    /// The same, as the kernel computes it (no iterator).
    #[inline(always)]
    pub fn ipv6_group_len_bits(&self) -> u32 {
        let m = &self.ipv6_group_mask_be;
        m[0].count_ones() + m[1].count_ones() + m[2].count_ones() + m[3].count_ones()
    }

    #[inline(always)]
    pub fn scope_all(&self) -> bool {
        self.flags & FLAG_SCOPE_ALL != 0
    }

    /// The ban for a source's `strike`-th offence (1 = first): the base doubled per
    /// repeat, capped.
    #[inline(always)]
    pub fn ban_duration(&self, strike: u32) -> u64 {
        let doublings = strike.saturating_sub(1);
        // 2^40 × any sane base is past every cap; stop shifting before it can overflow.
        if doublings >= 40 {
            return self.ban_max_ns;
        }
        let d = self.ban_base_ns << doublings;
        if d > self.ban_max_ns || d >> doublings != self.ban_base_ns {
            self.ban_max_ns
        } else {
            d
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_words() {
        assert_eq!(ipv6_mask(64), [u32::MAX, u32::MAX, 0, 0]);
        assert_eq!(ipv6_mask(128), [u32::MAX; 4]);
        assert_eq!(ipv6_mask(0), [0; 4]);
        assert_eq!(ipv6_mask(48), [u32::MAX, 0xffff_0000u32.to_be(), 0, 0]);
    }

    #[test]
    fn ports_fill_unused_slots() {
        let mut c = KernelConfig::default();
        c.set_sip_ports(&[5060, 5080]);
        assert!(c.is_sip_port(5060u16.to_be()));
        assert!(c.is_sip_port(5080u16.to_be()));
        assert!(!c.is_sip_port(0));
        assert!(!c.is_sip_port(5061u16.to_be()));
    }

    #[test]
    fn stream_ports_by_transport() {
        let mut c = KernelConfig::default();
        assert_eq!(c.stream_transport(5060u16.to_be()), Some(transport::TCP));
        assert_eq!(c.stream_transport(5061u16.to_be()), Some(transport::TLS));
        assert_eq!(c.stream_transport(0), None);
        c.set_stream_ports(&[5062], &[], &[8088, 8089]);
        assert_eq!(c.stream_transport(5060u16.to_be()), None);
        assert_eq!(c.stream_transport(5061u16.to_be()), None);
        assert_eq!(c.stream_transport(5062u16.to_be()), Some(transport::TCP));
        assert_eq!(c.stream_transport(8089u16.to_be()), Some(transport::WEBSOCKET));
        assert_eq!(c.stream_transport(0), None);
    }

    #[test]
    fn escalation_doubles_and_caps() {
        let c = KernelConfig::default();
        let base = defaults::BAN_BASE_SECS * NS_PER_SEC;
        assert_eq!(c.ban_duration(1), base);
        assert_eq!(c.ban_duration(2), 2 * base);
        assert_eq!(c.ban_duration(3), 4 * base);
        assert_eq!(c.ban_duration(20), c.ban_max_ns);
        assert_eq!(c.ban_duration(u32::MAX), c.ban_max_ns);
        assert_eq!(c.ban_duration(0), base);
    }
}
