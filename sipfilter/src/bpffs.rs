//! The bpffs folder where maps and links are pinned.

use std::{ffi::CString, fs, os::unix::fs::PermissionsExt as _, path::Path};

use anyhow::{bail, Context as _};

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Whether `path` lies on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and a statfs buffer of the right type.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Mounts a bpffs at `mount_point` unless one is there already.
pub fn ensure_mounted(mount_point: &Path) -> anyhow::Result<()> {
    if is_bpffs(mount_point) {
        return Ok(());
    }
    fs::create_dir_all(mount_point).with_context(|| format!("cannot create {}", mount_point.display()))?;
    let target = CString::new(mount_point.as_os_str().as_encoded_bytes())?;
    // SAFETY: NUL-terminated strings; a null data pointer is allowed for bpffs.
    let rc = unsafe { libc::mount(c"bpf".as_ptr(), target.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "cannot mount a bpf filesystem at {}: {err} (are you root?)",
            mount_point.display()
        );
    }
    Ok(())
}

/// Prepares the pin folder: its parent must be a bpffs (mounted if it is the standard
/// /sys/fs/bpf), and the folder itself is readable by root only, since the maps in it hold
/// the ban list and the allowlist.
pub fn prepare_pin_dir(pin_dir: &Path) -> anyhow::Result<()> {
    let parent = pin_dir.parent().context("pin folder has no parent")?;
    if !is_bpffs(parent) {
        if parent == Path::new("/sys/fs/bpf") {
            ensure_mounted(parent)?;
        } else {
            bail!(
                "{} is not on a bpf filesystem; mount one there (mount -t bpf bpf {}) or pick a folder under /sys/fs/bpf",
                pin_dir.display(),
                parent.display()
            );
        }
    }
    fs::create_dir_all(pin_dir).with_context(|| format!("cannot create {}", pin_dir.display()))?;
    fs::set_permissions(pin_dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {} to root", pin_dir.display()))?;
    Ok(())
}

/// An fd for a pinned BPF object (BPF_OBJ_GET), for the calls aya 0.14 does not offer.
pub fn pinned_object_fd(path: &Path) -> anyhow::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    const BPF_OBJ_GET: libc::c_long = 7;
    let c = CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64; // pathname
                                 // SAFETY: attr is a zero-padded bpf_attr holding a pointer to a NUL-terminated path that
                                 // outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot open {}", path.display()));
    }
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(rc as i32) })
}

/// Creates a folder under the pins (the links' folders) root's alone, whatever the umask.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}
