//! What the agent of a pin set leaves beside its lock (`<pins>/agent`, see `agent_lock`), for
//! the CLI to read whether or not the agent still runs:
//!
//! - `state_file`: a symlink to the agent's state file, so `sipfilter events` and the
//!   commands that record to the audit trail find the agent's files from `--pin-dir` alone
//!   (bpffs holds no regular files, but it holds symlinks and folders, and names without dots);
//! - `housekeeping`: a folder whose modification time is when the agent last completed its
//!   per-second housekeeping (`sipfilter status`: an agent that holds the lock but no longer
//!   ticks is stuck).
//!
//! Both live and die with the pin set, like the maps they describe; nothing in a map's layout
//! changes.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;

use crate::agent_lock::lock_dir;

fn state_file_link(pin_dir: &Path) -> PathBuf {
    lock_dir(pin_dir).join("state_file")
}

fn housekeeping_dir(pin_dir: &Path) -> PathBuf {
    lock_dir(pin_dir).join("housekeeping")
}

/// Records (at start) where the agent of `pin_dir` keeps its state file, as an absolute path.
pub fn record_state_file(pin_dir: &Path, state_file: &Path) -> anyhow::Result<()> {
    let target =
        std::path::absolute(state_file).with_context(|| format!("cannot make {} absolute", state_file.display()))?;
    let link = state_file_link(pin_dir);
    if std::fs::read_link(&link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    match std::fs::remove_file(&link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot replace {}", link.display())),
    }
    std::os::unix::fs::symlink(&target, &link)
        .with_context(|| format!("cannot record the state file's place at {}", link.display()))
}

/// The state file recorded by the agent of `pin_dir` (running or not); None if no agent
/// recorded one.
pub fn state_file(pin_dir: &Path) -> Option<PathBuf> {
    std::fs::read_link(state_file_link(pin_dir)).ok()
}

/// Marks the end of one housekeeping round: the folder's modification time is set to now.
pub fn housekeeping_done(pin_dir: &Path) -> anyhow::Result<()> {
    let dir = housekeeping_dir(pin_dir);
    if !dir.exists() {
        crate::bpffs::create_private_dir(&dir)?;
    }
    let c = CString::new(dir.as_os_str().as_bytes()).context("a path with a NUL byte")?;
    // SAFETY: a valid C string; a null times pointer means "now" for both times.
    if unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), std::ptr::null(), 0) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot touch {}", dir.display()));
    }
    Ok(())
}

/// When the agent of `pin_dir` last completed its housekeeping; None if it never did.
pub fn last_housekeeping(pin_dir: &Path) -> Option<SystemTime> {
    std::fs::metadata(housekeeping_dir(pin_dir)).ok()?.modified().ok()
}

/// Seconds since the Unix epoch of a `SystemTime` (0 before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// How long ago `t` was (zero if in the future).
pub fn ago(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}
