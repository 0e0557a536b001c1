//! Attaching the program to interfaces through pinned bpf_links, so the attachment outlives
//! the agent: a stopped, upgraded or crashed agent leaves the filter in place, and the next
//! agent adopts the link (swapping its freshly loaded program in atomically).

use std::{
    ffi::CString,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use aya::programs::{
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
    Xdp, XdpMode,
};

use sipfilter::config::AttachMode;

/// Where the link for `iface` is pinned.
pub fn link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join("links").join(iface)
}

/// How an interface came to be filtered.
pub struct Attachment {
    pub iface: String,
    pub mode: &'static str,
    pub adopted: bool,
}

pub fn if_index(iface: &str) -> Option<u32> {
    let c = CString::new(iface).ok()?;
    // SAFETY: NUL-terminated name.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

/// Attaches `prog` to `iface`, adopting an existing pinned link if there is one.
pub fn attach(prog: &mut Xdp, pin_dir: &Path, iface: &str, mode: AttachMode) -> anyhow::Result<Attachment> {
    if if_index(iface).is_none() {
        bail!("interface {iface} does not exist");
    }
    let pin = link_pin(pin_dir, iface);
    if pin.exists() {
        match adopt(prog, &pin) {
            Ok(()) => {
                return Ok(Attachment {
                    iface: iface.to_owned(),
                    mode: "adopted",
                    adopted: true,
                });
            }
            Err(e) => {
                // The interface was deleted and re-created, say: the old link is defunct.
                eprintln!(
                    "sipfilter: warning: cannot adopt the attachment pinned at {} ({e:#}); attaching anew",
                    pin.display()
                );
                let _ = std::fs::remove_file(&pin);
            }
        }
    }
    let (link_id, mode_name) = match mode {
        AttachMode::Native => (
            prog.attach(iface, XdpMode::Driver)
                .with_context(|| format!("{iface} does not support native XDP (try --mode generic)"))?,
            "native",
        ),
        AttachMode::Generic => (
            prog.attach(iface, XdpMode::Skb)
                .with_context(|| format!("cannot attach to {iface}"))?,
            "generic",
        ),
        AttachMode::Auto => match prog.attach(iface, XdpMode::Driver) {
            Ok(id) => (id, "native"),
            Err(native) => {
                eprintln!(
                    "sipfilter: warning: {iface} has no native XDP ({native}); using generic mode, which costs more per packet"
                );
                (
                    prog.attach(iface, XdpMode::Skb)
                        .with_context(|| format!("cannot attach to {iface}"))?,
                    "generic",
                )
            }
        },
    };
    let link = prog.take_link(link_id).context("attached link vanished")?;
    let fd_link: FdLink = link
        .try_into()
        .context("the kernel did not give a bpf_link (kernel older than 5.9?)")?;
    sipfilter::bpffs::create_private_dir(pin.parent().expect("pin has a parent"))?;
    let pinned = fd_link
        .pin(&pin)
        .with_context(|| format!("cannot pin the link at {}", pin.display()))?;
    // Hand the link back to the program: it stays attached through the pin when we exit.
    let fd_link: FdLink = pinned.into();
    prog.attach_to_link(XdpLink::try_from(fd_link)?)
        .with_context(|| format!("cannot re-own the link on {iface}"))?;
    Ok(Attachment {
        iface: iface.to_owned(),
        mode: mode_name,
        adopted: false,
    })
}

/// The programs attached through the links pinned under `<pin_dir>/links` (one per
/// interface): the loads whose tail-call tables must stay.
pub fn attached_program_ids(pin_dir: &Path) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(pin_dir.join("links")) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .filter_map(|e| PinnedLink::from_pin(e.path()).ok())
        .filter_map(|p| FdLink::from(p).info().ok())
        .map(|i| i.program_id())
        .collect()
}

fn adopt(prog: &mut Xdp, pin: &Path) -> anyhow::Result<()> {
    let pinned = PinnedLink::from_pin(pin).context("cannot open the pinned link")?;
    let fd_link: FdLink = pinned.into();
    let xdp_link = XdpLink::try_from(fd_link).context("the pin is not an XDP link")?;
    prog.attach_to_link(xdp_link)
        .context("cannot swap the new program into the link")?;
    Ok(())
}

/// What `detach` removed.
pub struct Detached {
    pub iface: String,
    pub link_id: Option<u32>,
    pub prog_id: Option<u32>,
}

/// Detaches and unpins the link of `iface`, or of every interface when `iface` is None.
pub fn detach(pin_dir: &Path, iface: Option<&str>) -> anyhow::Result<Vec<Detached>> {
    let links_dir = pin_dir.join("links");
    let names: Vec<String> = match iface {
        Some(i) => vec![i.to_owned()],
        None => match std::fs::read_dir(&links_dir) {
            // The `egress` folder holds the answers program's links (see answers_attach).
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
                .filter_map(|e| e.file_name().into_string().ok())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", links_dir.display())),
        },
    };
    let mut out = Vec::new();
    for name in names {
        let pin = links_dir.join(&name);
        if !pin.exists() {
            bail!(
                "sipfilter is not attached to {name} (no link pinned at {})",
                pin.display()
            );
        }
        let pinned = PinnedLink::from_pin(&pin).with_context(|| format!("cannot open {}", pin.display()))?;
        let info = FdLink::from(pinned).info().ok();
        // A running agent may hold the link too: detach it in the kernel, not just unpin it.
        let fd = sipfilter::bpffs::pinned_object_fd(&pin)?;
        link_detach(fd.as_raw_fd()).with_context(|| format!("cannot detach from {name}"))?;
        std::fs::remove_file(&pin).with_context(|| format!("cannot unpin {}", pin.display()))?;
        out.push(Detached {
            iface: name,
            link_id: info.as_ref().map(|i| i.id()),
            prog_id: info.as_ref().map(|i| i.program_id()),
        });
    }
    Ok(out)
}

/// BPF_LINK_DETACH: ends the attachment whoever else holds the link (aya 0.14 has no call for it).
pub(super) fn link_detach(link_fd: i32) -> anyhow::Result<()> {
    const BPF_LINK_DETACH: libc::c_long = 34;
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&(link_fd as u32).to_ne_bytes());
    // SAFETY: the bpf syscall reads `size` bytes of attr, which we own.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_DETACH, attr.as_mut_ptr(), attr.len() as u32) };
    if rc < 0 {
        let err = std::io::Error::last_os_error();
        // ENOLINK: already detached (e.g. its interface is gone).
        if err.raw_os_error() != Some(libc::ENOLINK) {
            return Err(err.into());
        }
    }
    Ok(())
}
