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
pub const ALLOWLIST: &str = "allowlist";
pub const DENYLIST: &str = "denylist";
pub const BAN_EVENTS: &str = "ban_events";

/// The XDP program, and the empty program the benchmark measures as its floor.
pub const XDP_PROGRAM: &str = "sipfilter";
pub const FLOOR_PROGRAM: &str = "xdp_floor";

/// Capacities. Bans are a plain hash (not LRU) so a flood of spoofed sources cannot evict
/// real bans; when it is full new bans fail (counted) and their packets still drop.
pub const BAN_TABLE_SIZE: u32 = 131_072;
/// Rate state and offence history are LRU: forgetting a quiet source costs nothing.
pub const RATE_STATE_SIZE: u32 = 262_144;
pub const OFFENSE_HISTORY_SIZE: u32 = 131_072;
pub const LIST_SIZE: u32 = 262_144;
pub const BAN_EVENTS_BYTES: u32 = 256 * 1024;

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
        SourceKey { addr: unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(w) } }
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
    pub _pad: [u8; 2],
}

/// The value of an allowlist or denylist entry (keyed by prefix). An entry stops applying
/// once `expires_ns` has passed, which is how a timed ban of a whole CIDR is stored.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ListEntry {
    /// CLOCK_BOOTTIME ns at which the entry stops applying ([`PERMANENT`] for never).
    pub expires_ns: u64,
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

/// Per-source rate state: a token bucket per [`crate::RateClass`] and what `top` shows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RateState {
    pub buckets: [crate::TokenBucket; 3],
    /// SIP messages seen from this source (after allow/deny/ban checks).
    pub requests: u64,
    /// Of those, how many exceeded a limit.
    pub drops: u64,
}

/// Sent on the `ban_events` ring buffer whenever the program creates a ban.
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
}
