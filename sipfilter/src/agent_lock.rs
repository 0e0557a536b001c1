//! One agent per pin set. The agent holds an exclusive flock on the folder `<pins>/agent`
//! (bpffs holds no regular files, but a folder can be locked) for as long as it runs; the
//! kernel drops the lock with the process, so a crashed or killed agent leaves nothing
//! behind. Who holds it is read from /proc/locks, which names the holder's PID: that is how
//! a second `run` names the first, and how `status` tells whether an agent runs.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};

/// The locked folder, under the pin folder.
pub fn lock_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("agent")
}

/// The lock, held while it lives.
pub struct AgentLock {
    _dir: File,
}

/// Takes the lock, or says which agent holds it.
pub fn acquire(pin_dir: &Path) -> anyhow::Result<AgentLock> {
    let dir = lock_dir(pin_dir);
    crate::bpffs::create_private_dir(&dir)?;
    let f = File::open(&dir).with_context(|| format!("cannot open {}", dir.display()))?;
    // SAFETY: flock on a valid fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            match holder(pin_dir) {
                Some(pid) => bail!(
                    "another agent (PID {pid}) is running on the pins in {}; stop it first (one agent per pin folder)",
                    pin_dir.display()
                ),
                None => bail!(
                    "another agent is running on the pins in {}; stop it first (one agent per pin folder)",
                    pin_dir.display()
                ),
            }
        }
        return Err(err).with_context(|| format!("cannot lock {}", dir.display()));
    }
    Ok(AgentLock { _dir: f })
}

/// Whether an agent holds the lock of `pin_dir`: asked of the lock itself (a shared lock
/// that cannot be had), which answers in every PID namespace, where /proc/locks names the
/// holder only when it is visible from the reader's.
pub fn is_held(pin_dir: &Path) -> bool {
    let Ok(f) = File::open(lock_dir(pin_dir)) else {
        return false;
    };
    // SAFETY: flock on a valid fd we own; the shared lock, if had, goes with `f`.
    let taken = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0;
    !taken && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
}

/// The PID of the agent running on `pin_dir`, if one is and it is visible from this PID
/// namespace (/proc/locks shows 0 for a holder outside it).
pub fn holder(pin_dir: &Path) -> Option<u32> {
    let meta = std::fs::metadata(lock_dir(pin_dir)).ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    holder_in(&locks, meta.dev(), meta.ino())
}

/// The PID holding an flock on the inode (`dev`, `ino`) in a /proc/locks text.
pub fn holder_in(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    // Linux's encoding of a dev_t's major and minor numbers (glibc's gnu_dev_major/minor).
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let want = format!("{major:02x}:{minor:02x}:{ino}");
    locks.lines().find_map(|line| {
        // "1: FLOCK  ADVISORY  WRITE 4242 00:2e:1234 0 EOF"; a waiter's line has "->".
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            [_, "FLOCK", _, _, pid, id, ..] if *id == want => pid.parse().ok().filter(|p| *p != 0),
            _ => None,
        }
    })
}

/// When process `pid` started (seconds since the epoch), from /proc.
pub fn started(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime, clock ticks since boot) counts after the command's closing paren.
    let after = stat.rsplit_once(')')?.1;
    let ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let btime: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse().ok()))?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(btime + ticks / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_is_found_by_device_and_inode() {
        let locks = "1: POSIX  ADVISORY  WRITE 100 00:19:555 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4242 00:2e:1234 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 4243 00:2e:1234 0 EOF\n";
        let dev = 0x2e; // major 0, minor 0x2e
        assert_eq!(holder_in(locks, dev, 1234), Some(4242));
        assert_eq!(holder_in(locks, dev, 1235), None);
        assert_eq!(holder_in(locks, 0x19, 555), None, "a POSIX lock is not ours");
    }
}
