//! Each source's state: its slot in the rate-state array (or its overflow entry), what the
//! slot caches of the source's ban, list and trust status, and how that cache is refreshed.

use sipfilter_common::{
    answers::RECENT, maps::SLOT_IDLE_NS, scan::EXT_LEN, KernelConfig, RateState, SourceKey, TokenBucket,
};

use crate::{
    lists::list_until,
    maps::{ALLOWLIST, BAN_TABLE, DENYLIST, KNOWN_SOURCES, NEW_STATE, RATE_OVERFLOW, RATE_STATE},
    parse::Datagram,
};

/// The source's rate state: its slot, or its overflow entry when another source that is
/// still active holds the slot. Created (full buckets) for a new source.
#[inline(always)]
pub fn source_state(config: &KernelConfig, key: &SourceKey, now: u64) -> Option<*mut RateState> {
    let slot = RATE_STATE.get_ptr_mut(key.slot(config.hash_seed))?;
    // SAFETY: a valid slot pointer; see the caller.
    let held = unsafe { &mut *slot };
    if held.key.words() == key.words() {
        return Some(slot);
    }
    if held.key.words() == [0; 4] || now.saturating_sub(held.last_seen_ns) > SLOT_IDLE_NS {
        // Free, or its holder went quiet: the slot is the newcomer's, with the state it had
        // in the overflow table if it had one (a flooder must not win a fresh burst by moving).
        match RATE_OVERFLOW.get_ptr_mut(key) {
            Some(entry) => {
                // SAFETY: a valid overflow entry pointer.
                unsafe { copy_words(held, entry) };
                let _ = RATE_OVERFLOW.remove(key);
            }
            None => reset_state(held, config, *key, now),
        }
        return Some(slot);
    }
    // A collision with an active source: neither may reset the other's buckets.
    if let Some(entry) = RATE_OVERFLOW.get_ptr_mut(key) {
        return Some(entry);
    }
    // The fresh state is built in this CPU's scratch record: a slot's state is too large
    // for the program's 512-byte stack.
    let fresh = NEW_STATE.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch record.
    let fresh = unsafe { &mut *fresh };
    reset_state(fresh, config, *key, now);
    let _ = RATE_OVERFLOW.insert(key, fresh, 0);
    RATE_OVERFLOW.get_ptr_mut(key)
}

/// The state of a source that already has one (the egress program never creates state:
/// an answer to a source the ingress program has not seen says nothing it can act on).
#[inline(always)]
pub fn existing_state(config: &KernelConfig, key: &SourceKey) -> Option<*mut RateState> {
    let slot = RATE_STATE.get_ptr_mut(key.slot(config.hash_seed))?;
    // SAFETY: a valid slot pointer.
    if unsafe { (*slot).key.words() } == key.words() {
        return Some(slot);
    }
    RATE_OVERFLOW.get_ptr_mut(key)
}

/// Gives a slot to a new source: buckets full, nothing cached, no answers. Field by field with volatile
/// stores, because LLVM turns a whole-struct store of zeros into a call to a byte-by-byte
/// `memset` subprogram, and a program with subprograms costs ~15 ns more per packet here.
#[inline(always)]
pub fn reset_state(state: &mut RateState, config: &KernelConfig, key: SourceKey, now: u64) {
    use core::ptr::write_volatile as put;
    // SAFETY: every pointer is a field of the slot we hold a unique reference to.
    unsafe {
        put(&mut state.key, key);
        put(&mut state.generation, 0);
        put(&mut state.ban_until_ns, 0);
        put(&mut state.allow_until_ns, 0);
        put(&mut state.deny_until_ns, 0);
        for (i, bucket) in state.buckets.iter_mut().enumerate() {
            let burst = config.limits.get(i).map_or(0, |l| l.burst as u64);
            put(bucket, TokenBucket::full(burst, now));
        }
        for (i, bucket) in state.tight.iter_mut().enumerate() {
            let burst = config.unknown_limits.get(i).map_or(0, |l| l.burst as u64);
            put(bucket, TokenBucket::full(burst, now));
        }
        put(
            &mut state.connect,
            TokenBucket::full(config.connections.flood.burst as u64, now),
        );
        put(
            &mut state.connect_tight,
            TokenBucket::full(config.connections.unknown.burst as u64, now),
        );
        put(&mut state.last_seen_ns, now);
        put(&mut state.requests, 0);
        put(&mut state.drops, 0);
        let a = &mut state.answers;
        put(&mut a.known_until_ns, 0);
        put(&mut a.failure_debt_ns, 0);
        put(&mut a.slow_failure_debt_ns, 0);
        put(&mut a.not_found_debt_ns, 0);
        put(&mut a.challenge_debt_ns, 0);
        put(&mut a.last_failure_ns, 0);
        for i in 0..RECENT {
            if let Some(c) = a.challenged.get_mut(i) {
                put(c, [0u8; EXT_LEN]);
            }
            if let Some(c) = a.challenged_cseq.get_mut(i) {
                put(c, 0);
            }
            if let Some(f) = a.failed.get_mut(i) {
                put(f, [0u8; EXT_LEN]);
            }
        }
        put(&mut a.failures, 0);
        put(&mut a.not_found, 0);
        put(&mut a.challenges, 0);
        put(&mut a.successes, 0);
        put(&mut a.next_challenged, 0);
        put(&mut a.next_failed, 0);
        put(&mut a.first_challenges, 0);
        put(&mut a.first_challenge_ns, 0);
        put(&mut a.credentialed, 0);
        put(&mut a.port_challenges, 0);
        put(&mut a.last_port, 0);
        put(&mut a.unanswered, 0);
        put(&mut a.device_debt_ns, 0);
        put(&mut a.withheld_cseq, 0);
    }
}

/// Re-reads the source's ban, list (IPv4, or IPv6 while the lists allow it) and known status
/// into its slot. Reads the generation first (the caller did): a change made while this runs
/// bumps it again, so the next packet re-reads rather than trusting what this one saw.
#[inline(always)]
pub fn refresh_status(state: &mut RateState, d: &Datagram, config: &KernelConfig, generation: u64) {
    state.ban_until_ns = match unsafe { BAN_TABLE.get(&state.key) } {
        Some(ban) => ban.expires_ns,
        None => 0,
    };
    if !d.is_v6 || config.v6_lists_by_prefix() {
        let prefix = d.prefix();
        state.allow_until_ns = list_until(&ALLOWLIST, &prefix);
        state.deny_until_ns = list_until(&DENYLIST, &prefix);
    }
    state.answers.known_until_ns = match unsafe { KNOWN_SOURCES.get(&state.key) } {
        Some(k) => k.until_ns,
        None => 0,
    };
    if state.generation == 0 && state.answers.known_until_ns != 0 {
        // A new slot for a known source (after a restart, or a slot taken over): its buckets
        // start full at the known limits, as they would have been.
        top_up(state, config);
    }
    state.generation = generation;
}

/// Brings the slot's cached status up to date if userspace changed anything since, or a
/// cached list entry has expired (it may have hidden a wider one).
#[inline(always)]
pub fn ensure_fresh(state: &mut RateState, d: &Datagram, config: &KernelConfig, now: u64) {
    // SAFETY: a field of the config map's value; volatile so the generation is read before
    // the tables it vouches for.
    let generation = unsafe { core::ptr::read_volatile(&config.generation) };
    let expired = |until: u64| until != 0 && until <= now;
    if state.generation != generation || expired(state.allow_until_ns) || expired(state.deny_until_ns) {
        refresh_status(state, d, config, generation);
    }
}

/// Fills the source's buckets to the known limits' bursts: what a source that just earned
/// trust gets, so the retransmissions of an office's first round pass at once.
#[inline(always)]
pub fn top_up(state: &mut RateState, config: &KernelConfig) {
    for (i, bucket) in state.buckets.iter_mut().enumerate() {
        if let Some(l) = config.limits.get(i) {
            let full = l.burst as u64 * sipfilter_common::bucket::TOKEN;
            if bucket.tokens < full {
                bucket.tokens = full;
            }
        }
    }
    let full = config.connections.flood.burst as u64 * sipfilter_common::bucket::TOKEN;
    if state.connect.tokens < full {
        state.connect.tokens = full;
    }
}

/// `*dst = *src` as 8-byte moves: a plain struct copy this large becomes a call to a
/// byte-by-byte `memcpy`, which the verifier walks byte by byte.
///
/// # Safety
/// Both point to valid `T`s whose size is a multiple of 8 bytes.
#[inline(always)]
pub unsafe fn copy_words<T>(dst: *mut T, src: *const T) {
    let words = core::mem::size_of::<T>() / 8;
    let (d, s) = (dst as *mut u64, src as *const u64);
    for i in 0..words {
        unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
    }
}
