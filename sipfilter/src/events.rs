//! Ban events from the program's ring buffer.

use aya::maps::{MapData, RingBuf};
use sipfilter_common::BanEvent;

/// Decodes one ring-buffer record; None if it is not the size of a ban event.
pub fn decode(bytes: &[u8]) -> Option<BanEvent> {
    if bytes.len() < std::mem::size_of::<BanEvent>() {
        return None;
    }
    // SAFETY: BanEvent is repr(C) plain data and the slice holds at least one; the record
    // need not be aligned, hence read_unaligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<BanEvent>()) })
}

/// Every event waiting in the ring buffer.
pub fn drain(ring: &mut RingBuf<MapData>) -> Vec<BanEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        if let Some(e) = decode(&item) {
            out.push(e);
        }
    }
    out
}
