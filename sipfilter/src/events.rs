//! Events from the programs' ring buffers: bans (`ban_events`) and blocked calls
//! (`call_events`).

use aya::maps::{MapData, RingBuf};
use sipfilter_common::{calls::CallEvent, BanEvent};

/// Decodes one ring-buffer record; None if it is shorter than a `T`.
pub fn decode_as<T: aya::Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: T is repr(C) plain data and the slice holds at least one; the record need not
    // be aligned, hence read_unaligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one ban event.
pub fn decode(bytes: &[u8]) -> Option<BanEvent> {
    decode_as(bytes)
}

/// Every record of type `T` waiting in the ring buffer.
pub fn drain_as<T: aya::Pod>(ring: &mut RingBuf<MapData>) -> Vec<T> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        if let Some(e) = decode_as(&item) {
            out.push(e);
        }
    }
    out
}

/// Every ban event waiting in the ring buffer.
pub fn drain(ring: &mut RingBuf<MapData>) -> Vec<BanEvent> {
    drain_as(ring)
}

/// Every blocked-call event waiting in the ring buffer.
pub fn drain_calls(ring: &mut RingBuf<MapData>) -> Vec<CallEvent> {
    drain_as(ring)
}
