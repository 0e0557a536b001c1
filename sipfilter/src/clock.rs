//! The clock the XDP program stamps bans and buckets with.

/// CLOCK_BOOTTIME in nanoseconds: what `bpf_ktime_get_boot_ns()` returns in the kernel.
/// Boot time (not monotonic time) keeps counting through suspend, so a ban's end is the
/// same instant for the kernel and for us.
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec to a valid pointer; CLOCK_BOOTTIME always exists
    // on Linux ≥ 2.6.39.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_BOOTTIME) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
