//! Allowlist and denylist lookups (longest-prefix match on the full address).

use aya_ebpf::maps::{lpm_trie::Key as PrefixKey, LpmTrie};
use sipfilter_common::ListEntry;

/// An LPM key laid out like `PrefixKey<[u8; 16]>` but word-aligned, so building it is a few
/// word stores rather than twenty byte stores into a packed struct.
#[repr(C)]
pub struct ListKey {
    pub prefix_len: u32,
    pub addr: [u32; 4],
}

/// The end of the longest-prefix entry of `list` matching the address (0: none). An entry
/// that has expired hides wider ones until it is removed; the agent (and every CLI command)
/// sweeps expired entries, so that lasts a second at most while the agent runs.
#[inline(always)]
pub fn list_until(list: &LpmTrie<[u8; 16], ListEntry>, addr: &ListKey) -> u64 {
    // SAFETY: ListKey has PrefixKey<[u8; 16]>'s layout (u32 then 16 bytes, no padding).
    let lookup = unsafe { &*(addr as *const ListKey as *const PrefixKey<[u8; 16]>) };
    match list.get(lookup) {
        Some(entry) => entry.expires_ns,
        None => 0,
    }
}

#[inline(always)]
pub fn listed(list: &LpmTrie<[u8; 16], ListEntry>, addr: &ListKey, now: u64) -> bool {
    list_until(list, addr) > now
}
