//! The programs' clock.

use aya_ebpf::helpers::{bpf_ktime_get_boot_ns, generated::bpf_jiffies64};
use sipfilter_common::KernelConfig;

/// CLOCK_BOOTTIME ns, to within a tick: from jiffies (an inlined load) once userspace has
/// calibrated it, from the helper (~55 ns a call on this kind of machine) before that.
#[inline(always)]
pub fn now(config: &KernelConfig) -> u64 {
    if config.ns_per_jiffy != 0 {
        let jiffies = unsafe { bpf_jiffies64() };
        jiffies
            .wrapping_mul(config.ns_per_jiffy)
            .wrapping_add(config.jiffies_offset_ns)
    } else {
        unsafe { bpf_ktime_get_boot_ns() }
    }
}
