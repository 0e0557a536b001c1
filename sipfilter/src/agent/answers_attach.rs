//! Attaching the answers program to the egress of each interface: through a tcx bpf_link
//! pinned beside the XDP link where the kernel has tcx (6.6 and later), so it outlives the
//! agent and the next agent swaps its program in; through a clsact qdisc filter otherwise,
//! at a fixed priority and handle so the next agent finds and replaces it.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        LinkOrder, SchedClassifier, TcAttachType,
    },
    util::KernelVersion,
};

/// The clsact filter's place when tcx is missing: priority and handle no other tool picks by
/// default (tc's own defaults start at 49152 and handle 1).
const NL_PRIORITY: u16 = 0x5f1f;
const NL_HANDLE: TcHandle = TcHandle::new(0x5f1f, 1);

/// Where the egress link of `iface` is pinned (tcx only). A folder of its own: bpffs allows
/// no dot in a name.
pub fn link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join("links").join("egress").join(iface)
}

/// How the answers program came to run on an interface.
pub struct EgressAttachment {
    /// "tcx" or "clsact".
    pub path: &'static str,
    pub adopted: bool,
}

fn has_tcx() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

pub fn attach(
    prog: &mut SchedClassifier,
    pin_dir: &Path,
    iface: &str,
    how: sipfilter::config::EgressAttach,
) -> anyhow::Result<EgressAttachment> {
    if how == sipfilter::config::EgressAttach::Auto && has_tcx() {
        attach_tcx(prog, pin_dir, iface)
    } else {
        attach_clsact(prog, iface)
    }
}

fn attach_tcx(prog: &mut SchedClassifier, pin_dir: &Path, iface: &str) -> anyhow::Result<EgressAttachment> {
    let pin = link_pin(pin_dir, iface);
    if pin.exists() {
        let adopted = (|| -> anyhow::Result<()> {
            let fd_link: FdLink = PinnedLink::from_pin(&pin)
                .context("cannot open the pinned link")?
                .into();
            let link = SchedClassifierLink::try_from(fd_link).context("the pin is not a TC link")?;
            prog.attach_to_link(link)
                .context("cannot swap the new program into the link")?;
            Ok(())
        })();
        match adopted {
            Ok(()) => {
                return Ok(EgressAttachment {
                    path: "tcx",
                    adopted: true,
                })
            }
            Err(e) => {
                eprintln!(
                    "sipfilter: warning: cannot adopt the egress attachment pinned at {} ({e:#}); attaching anew",
                    pin.display()
                );
                let _ = std::fs::remove_file(&pin);
            }
        }
    }
    let id = prog
        .attach_with_options(
            iface,
            TcAttachType::Egress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .with_context(|| format!("cannot attach the answers program to the egress of {iface}"))?;
    let link = prog.take_link(id).context("attached link vanished")?;
    let fd_link: FdLink = link.try_into().context("tcx gave no bpf_link")?;
    sipfilter::bpffs::create_private_dir(pin.parent().expect("pin has a parent"))?;
    let pinned = fd_link
        .pin(&pin)
        .with_context(|| format!("cannot pin the egress link at {}", pin.display()))?;
    let link = SchedClassifierLink::try_from(FdLink::from(pinned))?;
    prog.attach_to_link(link)
        .with_context(|| format!("cannot re-own the egress link on {iface}"))?;
    Ok(EgressAttachment {
        path: "tcx",
        adopted: false,
    })
}

fn attach_clsact(prog: &mut SchedClassifier, iface: &str) -> anyhow::Result<EgressAttachment> {
    // The qdisc may already be there (an earlier agent, or another tool): that is fine.
    let _ = tc::qdisc_add_clsact(iface);
    let mut adopted = false;
    if let Ok(old) = SchedClassifierLink::attached(iface, TcAttachType::Egress, NL_PRIORITY, NL_HANDLE, None) {
        adopted = aya::programs::Link::detach(old).is_ok();
    }
    let options = NlOptions {
        priority: NL_PRIORITY,
        handle: NL_HANDLE,
        ..Default::default()
    };
    let id = prog
        .attach_with_options(iface, TcAttachType::Egress, TcAttachOptions::Netlink(options))
        .with_context(|| format!("cannot attach the answers program to the egress of {iface} (clsact)"))?;
    // Leave the filter in place when the agent exits, as the XDP link stays.
    let link = prog.take_link(id)?;
    std::mem::forget(link);
    Ok(EgressAttachment {
        path: "clsact",
        adopted,
    })
}

/// Removes the answers program from the egress of `iface` (whichever way it was attached).
/// Returns whether something was removed.
pub fn detach(pin_dir: &Path, iface: &str) -> anyhow::Result<bool> {
    let pin = link_pin(pin_dir, iface);
    if pin.exists() {
        let fd = sipfilter::bpffs::pinned_object_fd(&pin)?;
        super::attach::link_detach(std::os::fd::AsRawFd::as_raw_fd(&fd))
            .with_context(|| format!("cannot detach the answers program from {iface}"))?;
        std::fs::remove_file(&pin).with_context(|| format!("cannot unpin {}", pin.display()))?;
        return Ok(true);
    }
    if let Ok(old) = SchedClassifierLink::attached(iface, TcAttachType::Egress, NL_PRIORITY, NL_HANDLE, None) {
        return Ok(aya::programs::Link::detach(old).is_ok());
    }
    Ok(false)
}
