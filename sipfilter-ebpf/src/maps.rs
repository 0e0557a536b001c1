//! Every map the two programs share, pinned by name (see sipfilter-common's `maps`).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use sipfilter_common::{
    calls::{CallKey, CallTimes, DestinationRule, NumberKey},
    devices::{DeviceKey, DeviceState},
    maps::{
        Connection, ConnectionKey, BAN_EVENTS_BYTES, BAN_TABLE_SIZE, CALL_EVENTS_BYTES, CALL_SOURCES_SIZE,
        CONNECTIONS_SIZE, CONNECTION_LIMITED_SIZE, CRACKED_SIZE, DESTINATIONS_SIZE, DEVICES_SIZE, KNOWN_SOURCES_SIZE,
        LIST_SIZE, OFFENSE_HISTORY_SIZE, RATE_OVERFLOW_SIZE, RATE_STATE_SLOTS, RECENT_CALLS_SIZE,
    },
    scan::Extension,
    scan::Scan,
    user_agent::{Candidates, ScannerUserAgents},
    Ban, ClockSample, Counters, CrackedExtension, KernelConfig, KnownSource, ListEntry, OffenseHistory, RateState,
    SourceKey,
};

#[map(name = "config")]
pub static CONFIG: Array<KernelConfig> = Array::pinned(1, 0);

#[map(name = "counters")]
pub static COUNTERS: PerCpuArray<Counters> = PerCpuArray::pinned(1, 0);

#[map(name = "ban_table")]
pub static BAN_TABLE: HashMap<SourceKey, Ban> = HashMap::pinned(BAN_TABLE_SIZE, 0);

#[map(name = "offense_history")]
pub static OFFENSE_HISTORY: LruHashMap<SourceKey, OffenseHistory> = LruHashMap::pinned(OFFENSE_HISTORY_SIZE, 0);

#[map(name = "rate_state")]
pub static RATE_STATE: Array<RateState> = Array::pinned(RATE_STATE_SLOTS, 0);

#[map(name = "rate_overflow")]
pub static RATE_OVERFLOW: LruHashMap<SourceKey, RateState> = LruHashMap::pinned(RATE_OVERFLOW_SIZE, 0);

/// Sources that earned trust by registering cleanly (the agent expires them).
#[map(name = "known_sources")]
pub static KNOWN_SOURCES: HashMap<SourceKey, KnownSource> = HashMap::pinned(KNOWN_SOURCES_SIZE, 0);

/// Extensions whose password was guessed, until an operator clears them.
#[map(name = "cracked_extensions")]
pub static CRACKED_EXTENSIONS: HashMap<Extension, CrackedExtension> = HashMap::pinned(CRACKED_SIZE, 0);

/// Written only by `xdp_clock`, which userspace runs with BPF_PROG_TEST_RUN to calibrate the
/// jiffies clock. Not pinned: each loader calibrates for itself.
#[map(name = "clock_sample")]
pub static CLOCK_SAMPLE: Array<ClockSample> = Array::with_max_entries(1, 0);

#[map(name = "allowlist")]
pub static ALLOWLIST: LpmTrie<[u8; 16], ListEntry> = LpmTrie::pinned(LIST_SIZE, 0);

#[map(name = "denylist")]
pub static DENYLIST: LpmTrie<[u8; 16], ListEntry> = LpmTrie::pinned(LIST_SIZE, 0);

#[map(name = "ban_events")]
pub static BAN_EVENTS: RingBuf = RingBuf::pinned(BAN_EVENTS_BYTES, 0);

/// The ingress program's helpers reached by tail call (see `request`): [`INSPECT_SLOT`]
/// finds a request's headers (and calls itself to go on past a round's line bound),
/// [`USER_AGENT_SLOT`] and [`CALLS_SLOT`] read them, [`JUDGE_SLOT`] is the verdict on their
/// findings (`verdict`), and [`MAIN_SLOT`] the ingress program itself, which the verdict hands
/// a segment's next message to. Not pinned: each load pins its own (`program_tables`).
#[map(name = "ingress_programs")]
pub static INGRESS_PROGRAMS: ProgramArray = ProgramArray::with_max_entries(5, 0);
pub const INSPECT_SLOT: u32 = 0;
pub const JUDGE_SLOT: u32 = 1;
pub const USER_AGENT_SLOT: u32 = 2;
pub const CALLS_SLOT: u32 = 3;
/// The ingress program, for a segment's next message (the verdict hands it back).
pub const MAIN_SLOT: u32 = 4;

/// What the ingress program asks the inspection for (`Inspection::wanted`).
pub mod wants {
    /// Whether the request carries credentials.
    pub const CREDENTIALS: u32 = 1;
    /// Whether its extension (To of a REGISTER, From of an INVITE) is quarantined.
    pub const QUARANTINE: u32 = 2;
    /// Whether its User-Agent names a scanner.
    pub const USER_AGENT: u32 = 4;
    /// The call rules (INVITE, MESSAGE).
    pub const CALL: u32 = 8;
    /// The source is known (the call-burst rules treat it differently).
    pub const KNOWN: u32 = 16;
    /// The request is a REGISTER (its extension is the To user, not the From user).
    pub const REGISTER: u32 = 32;
    /// Where the message ends (a TCP segment may carry another after it).
    pub const FRAMING: u32 = 64;
}

/// Messages of one TCP segment judged at most: each is a chain of up to eight tail calls
/// (inspection, three more scan rounds, User-Agent, calls, judge, the next message), and the
/// kernel allows 33 in one packet's chain.
pub const MAX_SEGMENT_MESSAGES: u32 = 4;

/// The inspection's progress and answer for the packet being judged on this CPU (XDP runs
/// to completion on one CPU, tail calls included, so one record per CPU is one per packet in
/// flight).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Inspection {
    /// 1 while an inspection's result waits for the ingress program.
    pub done: u32,
    /// The request's method (`Method` as u32), for the verdict.
    pub method: u32,
    /// [`wants`] bits, set by the ingress program before the first tail call.
    pub wanted: u32,
    /// Scan rounds run so far for this packet.
    pub rounds: u32,
    /// 1: quarantined.
    pub quarantined: u32,
    /// 1: the request carried credentials (Authorization or Proxy-Authorization).
    pub credentials: u32,
    /// The scanner token found, plus one (0: none).
    pub scanner: u32,
    /// A `call_verdict`.
    pub call: u32,
    /// 1: something wanted could not be read within the bounds.
    pub uninspected: u32,
    /// The scan window (in this CPU's scan buffer), and the scan of its headers so far.
    pub window_len: u32,
    pub window_cut: u32,
    /// Where the message being judged starts (frame offset, after leading CRLFs).
    pub message_at: u32,
    /// `wants::FRAMING` for a message on a stream (TCP), else 0.
    pub framing: u32,
    /// The first bytes of a segment's later message, copied to be classified.
    pub head: [u8; sipfilter_common::sip::CLASSIFY_LEN + 8],
    /// Where a next message of the segment starts, as the inspection framed this one (0: none).
    pub next_at: u32,
    /// 1: the inspection could not tell where this message ends (see `scan::Framing::Unknown`).
    pub unframed: u32,
    /// Where the message being judged starts (0: the segment's first, where parsing puts it).
    pub current_at: u32,
    /// Which message of its segment is being judged (0: the first).
    pub message_index: u32,
    /// 1 from the ingress program handing the segment back to itself for its next message
    /// until that run starts (a new packet finds 0 and starts at the first message).
    pub handed: u32,
    pub scan: Scan,
    /// The User-Agent reader's scratch.
    pub candidates: Candidates,
}

#[map(name = "inspection")]
pub static INSPECTION: PerCpuArray<Inspection> = PerCpuArray::with_max_entries(1, 0);

/// The scanner User-Agent tokens (one record, written by userspace).
#[map(name = "scanner_user_agents")]
pub static SCANNER_USER_AGENTS: Array<ScannerUserAgents> = Array::pinned(1, 0);

/// Destination rules by dialed-number prefix (E.164 digits as nibbles; longest prefix wins).
#[map(name = "destinations")]
pub static DESTINATIONS: LpmTrie<[u8; 8], DestinationRule> = LpmTrie::pinned(DESTINATIONS_SIZE, 0);

/// Calls seen lately, by source and Call-ID: the verdict their retransmissions get.
#[map(name = "recent_calls")]
pub static RECENT_CALLS: LruHashMap<CallKey, u32> = LruHashMap::pinned(RECENT_CALLS_SIZE, 0);

/// Each source's latest calls to each international number.
#[map(name = "calls_to_number")]
pub static CALLS_TO_NUMBER: LruHashMap<NumberKey, CallTimes> = LruHashMap::pinned(CALL_SOURCES_SIZE, 0);

/// Each source's latest international calls.
#[map(name = "international_calls")]
pub static INTERNATIONAL_CALLS: LruHashMap<SourceKey, CallTimes> = LruHashMap::pinned(CALL_SOURCES_SIZE, 0);

/// Blocked calls, for the agent's log and fraud list.
#[map(name = "call_events")]
pub static CALL_EVENTS: RingBuf = RingBuf::pinned(CALL_EVENTS_BYTES, 0);

/// This CPU's copy of the payload the header scanner reads (see `parse::ScanWindow`).
#[map(name = "scan_buffer")]
pub static SCAN_BUFFER: PerCpuArray<[u8; 2 * sipfilter_common::scan::SCAN_LIMIT]> = PerCpuArray::with_max_entries(1, 0);

/// The answers program's helpers reached by tail call, in the order an answer goes through
/// them (see `egress`): [`ANSWER_HEADERS_SLOT`] finds its headers (and calls itself to go on
/// past a round's line bound), [`IDENTIFY_SLOT`] tells which request it answers,
/// [`EXTENSION_SLOT`] reads the extension at stake, [`JUDGE_ANSWER_SLOT`] judges. Not
/// pinned: each loader fills its own, in this slot order.
#[map(name = "egress_programs")]
pub static EGRESS_PROGRAMS: ProgramArray = ProgramArray::with_max_entries(4, 0);
pub const ANSWER_HEADERS_SLOT: u32 = 0;
pub const IDENTIFY_SLOT: u32 = 1;
pub const EXTENSION_SLOT: u32 = 2;
pub const JUDGE_ANSWER_SLOT: u32 = 3;

/// An answer read by the answers program, waiting for the judge (one per CPU: a TC program
/// runs to completion on its CPU, tail call included).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingAnswer {
    /// The peer (the source the answer goes to), as `parse::Datagram` holds it.
    pub peer: [u32; 4],
    pub peer_v6: u32,
    pub code: u32,
    pub method: u32,
    pub cseq: u32,
    pub ext: sipfilter_common::scan::Extension,
    /// 1 from the read to the judgement.
    pub ready: u32,
    /// The scan window the answer was read from (still in this CPU's scan buffer).
    pub window_len: u32,
    pub window_cut: u32,
    /// The peer's port (the answer's destination port), host order.
    pub peer_port: u32,
    /// The scan of the answer's headers (kept here, in map memory: see `Scan`).
    pub scan: Scan,
    /// Scan rounds done.
    pub rounds: u32,
}

#[map(name = "pending_answer")]
pub static PENDING_ANSWER: PerCpuArray<PendingAnswer> = PerCpuArray::with_max_entries(1, 0);

/// Scratch for a new source's state on its way into the overflow table (per CPU).
#[map(name = "new_state")]
pub static NEW_STATE: PerCpuArray<RateState> = PerCpuArray::with_max_entries(1, 0);

/// The devices under each source the answers went to (sipfilter-common's `devices`).
#[map(name = "devices")]
pub static DEVICES: LruHashMap<DeviceKey, DeviceState> = LruHashMap::pinned(DEVICES_SIZE, 0);

/// Scratch for a new device's state on its way into [`DEVICES`] (per CPU): too large for
/// the stack next to the rest of the judge.
#[map(name = "new_device")]
pub static NEW_DEVICE: PerCpuArray<DeviceState> = PerCpuArray::with_max_entries(1, 0);

/// TCP connections open to the SIP stream ports (see `connections`): added on an accepted
/// SYN, touched by data, removed on FIN or RST in either direction, and swept by the agent
/// when idle.
#[map(name = "connections")]
pub static CONNECTIONS: LruHashMap<ConnectionKey, Connection> = LruHashMap::pinned(CONNECTIONS_SIZE, 0);

/// Sources at their open-connection limit, marked by the agent from its count of
/// [`CONNECTIONS`]: their SYNs are dropped (the value: when the mark was made).
#[map(name = "connection_limited")]
pub static CONNECTION_LIMITED: HashMap<SourceKey, u64> = HashMap::pinned(CONNECTION_LIMITED_SIZE, 0);
