//! Map names, and the layouts of their keys and values.
//!
//! All maps are pinned by these names under one bpffs folder ([`DEFAULT_PIN_DIR`]), so the
//! agent, the CLI and `bpftool` see the same state and it outlives the loader.

/// Where maps (and the agent's links) are pinned unless configured otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/sipfilter";

pub const CONFIG_MAP: &str = "config";
pub const COUNTERS_MAP: &str = "counters";
pub const BAN_TABLE: &str = "ban_table";
pub const OFFENSE_HISTORY: &str = "offense_history";
pub const RATE_STATE: &str = "rate_state";
pub const RATE_OVERFLOW: &str = "rate_overflow";
pub const ALLOWLIST: &str = "allowlist";
pub const DENYLIST: &str = "denylist";
pub const BAN_EVENTS: &str = "ban_events";
pub const KNOWN_SOURCES: &str = "known_sources";
pub const CRACKED_EXTENSIONS: &str = "cracked_extensions";
pub const SCANNER_USER_AGENTS: &str = "scanner_user_agents";
pub const DESTINATIONS: &str = "destinations";
pub const RECENT_CALLS: &str = "recent_calls";
pub const CALLS_TO_NUMBER: &str = "calls_to_number";
pub const INTERNATIONAL_CALLS: &str = "international_calls";
pub const CALL_EVENTS: &str = "call_events";
pub const DEVICES: &str = "devices";
pub const CONNECTIONS: &str = "connections";
pub const CONNECTION_LIMITED: &str = "connection_limited";

/// The XDP program, and the empty program the benchmark measures as its floor.
pub const XDP_PROGRAM: &str = "sipfilter";
pub const FLOOR_PROGRAM: &str = "xdp_floor";
/// The request inspection (tail-called by the XDP program) and its tail-call table.
pub const INSPECT_PROGRAM: &str = "sipfilter_inspect";
/// The inspection's readers of the User-Agent and of the dialed number.
pub const USER_AGENT_PROGRAM: &str = "sipfilter_user_agent";
pub const CALLS_PROGRAM: &str = "sipfilter_calls";
/// The verdict on an inspected request (reached by tail call).
pub const VERDICT_PROGRAM: &str = "sipfilter_verdict";
pub const INGRESS_PROGRAMS: &str = "ingress_programs";
/// The egress (TC) program that reads the PBX's answers, and its empty floor.
pub const ANSWERS_PROGRAM: &str = "sipfilter_answers";
pub const TC_FLOOR_PROGRAM: &str = "tc_floor";
/// The answers program's helpers (tail-called, in this order) and their tail-call table.
pub const ANSWER_HEADERS_PROGRAM: &str = "sipfilter_answer_headers";
pub const IDENTIFY_PROGRAM: &str = "sipfilter_identify";
pub const EXTENSION_PROGRAM: &str = "sipfilter_extension";
pub const JUDGE_PROGRAM: &str = "sipfilter_judge";
pub const EGRESS_PROGRAMS: &str = "egress_programs";

/// Capacities. Bans are a plain hash (not LRU) so a flood of spoofed sources cannot evict
/// real bans; when it is full new bans fail (counted) and their packets still drop.
pub const BAN_TABLE_SIZE: u32 = 131_072;
/// Slots in the rate-state table (a power of two). The table is an array indexed by a hash
/// of the source: the program finds a source's state with an inlined array access, not a
/// hash-map helper call (each helper call costs ~20 ns on kernels with return-thunk
/// mitigations). A source whose slot is held by another source that was active within
/// [`SLOT_IDLE_NS`] keeps its state in the overflow table (an LRU hash) instead, so two
/// colliding sources never reset each other's buckets; a slot idle longer goes to the
/// newcomer. Bans are never lost either way: they live in the ban table.
pub const RATE_STATE_SLOTS: u32 = 1 << 16;
pub const RATE_OVERFLOW_SIZE: u32 = 65_536;
/// How long a slot's holder must have been quiet before another source may take the slot.
pub const SLOT_IDLE_NS: u64 = 10 * crate::NS_PER_SEC;
/// Offence history is LRU: forgetting a long-quiet offender costs nothing.
pub const OFFENSE_HISTORY_SIZE: u32 = 131_072;
pub const LIST_SIZE: u32 = 262_144;
pub const BAN_EVENTS_BYTES: u32 = 256 * 1024;
/// Known sources: a plain hash (a flood cannot evict them; spoofed sources never become known,
/// since only a real registration's 2xx makes one). The agent expires them.
pub const KNOWN_SOURCES_SIZE: u32 = 65_536;
pub const CRACKED_SIZE: u32 = 4_096;
/// Destination rules: the shipped high-risk list has ~40; room for a carrier's full list.
pub const DESTINATIONS_SIZE: u32 = 16_384;
/// Calls remembered (LRU): a minute of calls of a large PBX many times over.
pub const RECENT_CALLS_SIZE: u32 = 65_536;
/// Sources (and source-number pairs) whose international calls are counted (LRU).
pub const CALL_SOURCES_SIZE: u32 = 16_384;
pub const CALL_EVENTS_BYTES: u32 = 64 * 1024;
/// Devices (source + port) the answers went to (LRU: a device quiet the longest goes first;
/// each source adds at most `devices::NEW_DEVICES`, so one robot cannot take it over).
pub const DEVICES_SIZE: u32 = 32_768;
/// TCP connections open to the SIP TCP, TLS and WebSocket ports (LRU: a spoofed SYN flood
/// evicts the quietest, which then go uncounted: an undercount, never a wrong limit).
pub const CONNECTIONS_SIZE: u32 = 65_536;
/// Sources at their open-connection limit (written by the agent, read on each SYN).
pub const CONNECTION_LIMITED_SIZE: u32 = 16_384;
/// How long a mark of `connection_limited` holds: the agent stamps the marks anew every
/// second, so the marks of a stopped agent lapse (the connections they counted are no longer
/// counted) instead of keeping a source's SYNs out for good.
pub const CONNECTION_MARK_TTL_NS: u64 = 5 * crate::NS_PER_SEC;

/// A TCP connection to a SIP port, by its client's address and port and the server's port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ConnectionKey {
    /// The client's full address (IPv4-mapped for IPv4), four words in network byte order.
    pub addr: [u32; 4],
    /// Client and server port, host byte order.
    pub client_port: u16,
    pub server_port: u16,
}

/// What is kept of an open connection: when it opened and when it last carried data
/// (the agent closes the count of one idle longer than `connections.idle_timeout`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Connection {
    pub opened_ns: u64,
    pub last_ns: u64,
}

/// A traffic source: an IPv4 address as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`),
/// or an IPv6 address masked to the configured prefix. One key type lets one set of maps
/// serve both families; the mapped form cannot collide with a real IPv6 /64 of a host.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SourceKey {
    pub addr: [u8; 16],
}

/// The IPv4-mapped prefix: 80 zero bits and 16 one bits.
pub const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
/// Prefix length an IPv4 CIDR gains when stored as IPv4-mapped IPv6 in the LPM lists.
pub const V4_MAPPED_PREFIX_LEN: u32 = 96;

impl SourceKey {
    pub const fn from_v4(octets: [u8; 4]) -> Self {
        let mut addr = [0u8; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12] = octets[0];
        addr[13] = octets[1];
        addr[14] = octets[2];
        addr[15] = octets[3];
        SourceKey { addr }
    }

    /// From four words as they lie in memory (network byte order).
    #[inline(always)]
    pub fn from_words(w: [u32; 4]) -> Self {
        // SAFETY: [u32; 4] and [u8; 16] have the same size and any bit pattern is valid.
        SourceKey {
            addr: unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(w) },
        }
    }

    /// The key as four words, as they lie in memory.
    #[inline(always)]
    pub fn words(&self) -> [u32; 4] {
        // SAFETY: same size, any bit pattern is valid, SourceKey is 4-aligned.
        unsafe { core::mem::transmute::<[u8; 16], [u32; 4]>(self.addr) }
    }

    /// The rate-state slot of this source: a seeded multiplicative hash (the seed is
    /// random per installation, so nobody can pick addresses that collide on purpose).
    #[inline(always)]
    pub fn slot(&self, seed: u32) -> u32 {
        let w = self.words();
        let mut h = seed ^ w[0];
        h = (h ^ w[1]).wrapping_mul(0x9e37_79b1);
        h = (h ^ w[2]).wrapping_mul(0x85eb_ca6b);
        h = (h ^ w[3]).wrapping_mul(0xc2b2_ae35);
        // MurmurHash3's finaliser: every input bit reaches the low bits the mask keeps
        // (multiplication alone only carries bits upwards).
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^= h >> 16;
        h & (RATE_STATE_SLOTS - 1)
    }

    pub fn is_v4(&self) -> bool {
        self.addr[..12] == V4_MAPPED_PREFIX
    }
}

/// Ban expiry meaning "until removed by an operator".
pub const PERMANENT: u64 = u64::MAX;

/// An active (or expired, not yet swept) ban. The program ignores a ban whose
/// `expires_ns` has passed; the agent removes those.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ban {
    /// CLOCK_BOOTTIME ns at which the ban ends ([`PERMANENT`] for never).
    pub expires_ns: u64,
    /// CLOCK_BOOTTIME ns at which it began.
    pub banned_at_ns: u64,
    /// 1 for a first offence, n for the n-th within the escalation window.
    pub strike: u32,
    /// [`crate::counters::ban_reason`].
    pub reason: u8,
    /// The [`crate::Method`] of the packet that caused it.
    pub method: u8,
    /// 1 when the program recorded it in monitor mode: nothing was dropped for it, and the
    /// agent lifts it when monitor mode ends rather than enforcing it after the fact.
    pub monitor: u8,
    pub _pad: u8,
}

/// The value of an allowlist or denylist entry (keyed by prefix). An entry stops applying
/// once `expires_ns` has passed, which is how a timed ban of a whole CIDR is stored.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ListEntry {
    /// CLOCK_BOOTTIME ns at which the entry stops applying ([`PERMANENT`] for never).
    pub expires_ns: u64,
    /// The entry's own prefix length (in the 128-bit mapped space). A longest-prefix lookup
    /// that lands on an expired entry looks again one bit shorter, so an expired narrow entry
    /// never hides a wider one that is still in force.
    pub prefix_len: u32,
    /// Why a timed denylist entry (a CIDR ban) was made: a [`crate::counters::ban_reason`]
    /// code, 0 for an operator's (what `ban list` shows). The programs never read it.
    pub reason: u32,
}

/// What the program remembers of a source after its ban, for escalation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OffenseHistory {
    /// End of the most recent ban (CLOCK_BOOTTIME ns).
    pub last_ban_end_ns: u64,
    pub strikes: u32,
    pub _pad: u32,
}

/// One slot of the rate-state table: the source it holds, a token bucket per
/// [`crate::RateClass`], what `top` shows, and a cached copy of the source's ban and list
/// status so a packet costs no map lookups beyond this slot.
///
/// The cached status is valid while `generation` equals the config's generation; userspace
/// bumps that whenever it changes a ban or a list, and the program then reads the ban table
/// and the lists again for each source's next packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RateState {
    /// The source this slot holds; all zero for an empty slot.
    pub key: SourceKey,
    /// Config generation the cached status was read at (0: never).
    pub generation: u64,
    /// Cached: end of the source's ban (0: none).
    pub ban_until_ns: u64,
    /// Cached (IPv4 only): end of the allowlist / denylist entry covering the source (0: none).
    pub allow_until_ns: u64,
    pub deny_until_ns: u64,
    /// The flood buckets, at the known limits for every source: emptying one bans.
    pub buckets: [crate::TokenBucket; 3],
    /// The tight buckets of an unknown source, at the unknown limits: emptying one drops
    /// (throttles) without banning, so an office's first round after a power cut is slowed,
    /// not banned; a flood still empties the flood bucket and is banned as before.
    pub tight: [crate::TokenBucket; 3],
    /// New TCP connections: the flood bucket (every source; emptying it bans) and the tight
    /// one of an unknown source (emptying it drops the SYN).
    pub connect: crate::TokenBucket,
    pub connect_tight: crate::TokenBucket,
    /// What the PBX's answers have said about the source.
    pub answers: crate::answers::AnswerState,
    /// Last SIP message from this source (CLOCK_BOOTTIME ns): how long the slot has been idle.
    pub last_seen_ns: u64,
    /// SIP messages seen from this source.
    pub requests: u64,
    /// Of those, how many were dropped (over a limit, banned or denylisted).
    pub drops: u64,
}

/// Sent on the `ban_events` ring buffer whenever a program creates a ban.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BanEvent {
    pub source: SourceKey,
    pub duration_ns: u64,
    pub strike: u32,
    pub reason: u8,
    pub method: u8,
    /// 1 when the program was in monitor mode (the ban is recorded, nothing is dropped).
    pub monitor: u8,
    pub _pad: u8,
    /// Answer-based bans: credential failures and not-found answers the source collected.
    pub failures: u32,
    pub not_found: u32,
    /// Cracked: the extension; other answer-based bans: the last one answered.
    pub extension: crate::scan::Extension,
    /// The extensions that failed recently (as many as are remembered).
    pub tried: [crate::scan::Extension; crate::answers::RECENT],
    /// Answer-based bans and alerts: the source port of the device answered (0: none).
    pub device_port: u32,
    pub _pad2: u32,
}

/// A source that earned trust: a clean 2xx to a REGISTER.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct KnownSource {
    /// CLOCK_BOOTTIME ns at which it stops being known (last clean success + TTL).
    pub until_ns: u64,
    /// Its last clean success.
    pub last_success_ns: u64,
    /// The extension that registered.
    pub extension: crate::scan::Extension,
}

/// An extension whose password was guessed (keyed by the extension).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CrackedExtension {
    pub source: SourceKey,
    pub at_ns: u64,
    pub failures: u32,
    pub other_extensions: u32,
}

/// One reading of the kernel's two clocks at the same instant, taken by the `xdp_clock`
/// program through BPF_PROG_TEST_RUN, to calibrate the jiffies clock.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ClockSample {
    pub jiffies: u64,
    pub boot_ns: u64,
}

pub const CLOCK_SAMPLE_MAP: &str = "clock_sample";
pub const CLOCK_PROGRAM: &str = "xdp_clock";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_address_bit_moves_the_slot() {
        // Flip each bit of an address: under most seeds the slot must change. (Before the
        // finaliser, the top bit of the last byte never did.)
        let base = SourceKey::from_v4([203, 0, 113, 7]);
        for bit in 0..128 {
            let mut other = base;
            other.addr[bit / 8] ^= 1 << (bit % 8);
            let same = (1..=200u32)
                .filter(|seed| base.slot(seed.wrapping_mul(0x9e37_79b9)) == other.slot(seed.wrapping_mul(0x9e37_79b9)))
                .count();
            assert!(same <= 5, "bit {bit}: same slot under {same} of 200 seeds");
        }
    }
}
