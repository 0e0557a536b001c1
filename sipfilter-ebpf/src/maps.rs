//! Every map the two programs share, pinned by name (see sipfilter-common's `maps`).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use sipfilter_common::{
    maps::{
        BAN_EVENTS_BYTES, BAN_TABLE_SIZE, CRACKED_SIZE, KNOWN_SOURCES_SIZE, LIST_SIZE, OFFENSE_HISTORY_SIZE,
        RATE_OVERFLOW_SIZE, RATE_STATE_SLOTS,
    },
    scan::Extension,
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

/// The ingress program's helpers reached by tail call: [`INSPECT_SLOT`] reads a request's
/// headers, [`JUDGE_SLOT`] is the ingress program itself, which the inspection hands the
/// packet back to. Not pinned: each loaded ingress program has its own, filled by its loader.
#[map(name = "ingress_programs")]
pub static INGRESS_PROGRAMS: ProgramArray = ProgramArray::with_max_entries(2, 0);
pub const INSPECT_SLOT: u32 = 0;
pub const JUDGE_SLOT: u32 = 1;

/// The inspection's answer for the packet being judged on this CPU (XDP runs to completion
/// on one CPU, so one record per CPU is one per packet in flight).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Inspection {
    /// 1 while an inspection's result waits for the ingress program.
    pub done: u32,
    /// 1: quarantined.
    pub quarantined: u32,
    /// 1: the request carried credentials (Authorization or Proxy-Authorization).
    pub credentials: u32,
    pub _pad: u32,
}

#[map(name = "inspection")]
pub static INSPECTION: PerCpuArray<Inspection> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's copy of the payload the header scanner reads (see `parse::ScanWindow`).
#[map(name = "scan_buffer")]
pub static SCAN_BUFFER: PerCpuArray<[u8; 2 * sipfilter_common::scan::SCAN_LIMIT]> = PerCpuArray::with_max_entries(1, 0);

/// The egress programs reached by tail call: [`JUDGE_ANSWER_SLOT`] judges what the answers
/// program read, [`READ_CALLER_SLOT`] reads the caller first where the answer needs it. Not pinned: each loader fills its own.
#[map(name = "egress_programs")]
pub static EGRESS_PROGRAMS: ProgramArray = ProgramArray::with_max_entries(3, 0);
pub const JUDGE_ANSWER_SLOT: u32 = 0;
/// Reads the caller of an answer to anything but a REGISTER.
pub const READ_CALLER_SLOT: u32 = 1;
/// Tells which request an answer is for.
pub const IDENTIFY_SLOT: u32 = 2;

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
}

#[map(name = "pending_answer")]
pub static PENDING_ANSWER: PerCpuArray<PendingAnswer> = PerCpuArray::with_max_entries(1, 0);

/// Scratch for a new source's state on its way into the overflow table (per CPU).
#[map(name = "new_state")]
pub static NEW_STATE: PerCpuArray<RateState> = PerCpuArray::with_max_entries(1, 0);
