//! Network namespaces and veth pairs that a test creates and always removes.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{bail, Context as _};

/// Runs a command, failing with its stderr.
pub fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A named network namespace, deleted on drop (with the veth ends inside it).
pub struct Netns {
    pub name: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Netns {
    /// Creates `sft-<role>-<pid>-<n>`: unique per test process, recognisable if a crashed
    /// run leaves one behind.
    pub fn new(role: &str) -> anyhow::Result<Self> {
        let name = format!("sft-{role}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        sh(&["ip", "netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME ARGS…`
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// `ip netns exec NAME ARGS…`
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets it creates stay in the
    /// namespace; interface names it looks up are this namespace's.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).with_context(|| format!("cannot open {path}"))?;
            // SAFETY: a valid namespace fd; setns only changes this thread's namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns({path}): {}", std::io::Error::last_os_error());
            }
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
    }
}

/// While alive, the current thread is inside a namespace; dropping it returns the thread to
/// the namespace it was in.
pub struct Entered {
    previous: File,
}

impl Netns {
    /// Moves the calling thread into this namespace until the guard is dropped. Sockets made
    /// meanwhile stay in this namespace; XDP attachments go to its interfaces.
    pub fn enter(&self) -> anyhow::Result<Entered> {
        let previous = File::open("/proc/thread-self/ns/net").context("cannot open own netns")?;
        let path = format!("/var/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("cannot open {path}"))?;
        // SAFETY: valid namespace fd; affects only this thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns({path}): {}", std::io::Error::last_os_error());
        }
        Ok(Entered { previous })
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        // SAFETY: valid namespace fd.
        unsafe { libc::setns(self.previous.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.name]);
    }
}

/// Connects two namespaces with a veth pair and addresses both ends (`a_addrs` may hold
/// several addresses, the first being the primary). Returns the interface names.
pub fn veth_pair(
    a: &Netns,
    a_addrs: &[&str],
    b: &Netns,
    b_addrs: &[&str],
) -> anyhow::Result<(String, String)> {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let (ia, ib) = (format!("sfa{n}"), format!("sfb{n}"));
    sh(&["ip", "link", "add", &ia, "netns", &a.name, "type", "veth", "peer", "name", &ib, "netns", &b.name])?;
    for (ns, ifname, addrs) in [(a, &ia, a_addrs), (b, &ib, b_addrs)] {
        for addr in addrs {
            ns.ip(&["addr", "add", addr, "dev", ifname])?;
        }
        ns.ip(&["link", "set", ifname, "up"])?;
    }
    Ok((ia, ib))
}
