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
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
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
        let name = format!(
            "sft-{role}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
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
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> anyhow::Result<T> + Send + 'static) -> anyhow::Result<T> {
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
pub fn veth_pair(a: &Netns, a_addrs: &[&str], b: &Netns, b_addrs: &[&str]) -> anyhow::Result<(String, String)> {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let (ia, ib) = (format!("sfa{n}"), format!("sfb{n}"));
    sh(&[
        "ip", "link", "add", &ia, "netns", &a.name, "type", "veth", "peer", "name", &ib, "netns", &b.name,
    ])?;
    for (ns, ifname, addrs) in [(a, &ia, a_addrs), (b, &ib, b_addrs)] {
        for addr in addrs {
            ns.ip(&["addr", "add", addr, "dev", ifname])?;
        }
        ns.ip(&["link", "set", ifname, "up"])?;
    }
    Ok((ia, ib))
}

/// A process started inside a namespace with `ip netns exec` (which execs it, so the pid is
/// the program's), its standard output and error going to a file. Dropping it stops it
/// (SIGTERM, then SIGKILL after 3 s), also when a test fails; if the thread that started it
/// dies first, the kernel sends it SIGTERM (PR_SET_PDEATHSIG).
pub struct Background {
    pub name: String,
    child: std::process::Child,
    status: Option<std::process::ExitStatus>,
    /// Where its standard output and error go.
    pub log: std::path::PathBuf,
}

impl Netns {
    /// Starts `args` in this namespace with `cwd` as its folder, logging to `cwd/<name>.out`.
    pub fn spawn(&self, name: &str, args: &[&str], cwd: &std::path::Path) -> anyhow::Result<Background> {
        spawn_in(&self.name, name, args, cwd)
    }
}

/// [`Netns::spawn`] for a namespace known by name (one this code did not create).
pub fn spawn_in(ns: &str, name: &str, args: &[&str], cwd: &std::path::Path) -> anyhow::Result<Background> {
    use std::os::unix::process::CommandExt as _;
    let log = cwd.join(format!("{name}.out"));
    let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .args(args)
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group: a Ctrl-C meant for the test run reaches the test, whose
        // guards then stop it.
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {name} ({})", args[0]))?;
    Ok(Background {
        name: name.into(),
        child,
        status: None,
        log,
    })
}

impl Background {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its exit status, once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Sends a signal, unless it has exited.
    pub fn signal(&mut self, sig: libc::c_int) {
        if self.exited().is_none() {
            // SAFETY: our child, not reaped yet, so the pid is still ours.
            unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        }
    }

    /// Waits for it to exit on its own.
    pub fn wait(&mut self, timeout: std::time::Duration) -> anyhow::Result<std::process::ExitStatus> {
        let end = std::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                return Ok(s);
            }
            if std::time::Instant::now() > end {
                bail!(
                    "{} did not exit within {timeout:?}; its output:\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Waits until its output contains `needle`; fails if it exits first.
    pub fn wait_for_output(&mut self, needle: &str, timeout: std::time::Duration) -> anyhow::Result<()> {
        let end = std::time::Instant::now() + timeout;
        loop {
            if self.output().contains(needle) {
                return Ok(());
            }
            if let Some(s) = self.exited() {
                bail!(
                    "{} exited ({s}) before printing {needle:?}:\n{}",
                    self.name,
                    self.output()
                );
            }
            if std::time::Instant::now() > end {
                bail!(
                    "{} did not print {needle:?} within {timeout:?}:\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Sends `sig`, waits up to `grace` for it to exit, then kills it.
    pub fn stop(&mut self, sig: libc::c_int, grace: std::time::Duration) -> Option<std::process::ExitStatus> {
        self.signal(sig);
        let end = std::time::Instant::now() + grace;
        while self.exited().is_none() && std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if self.exited().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
        self.status
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop(libc::SIGTERM, std::time::Duration::from_secs(3));
    }
}

/// A fresh folder under the temp dir, removed with its contents when dropped.
pub struct ScratchDir {
    path: std::path::PathBuf,
}

impl ScratchDir {
    /// Creates `<tmp>/sipfilter-<what>-<pid>-<n>`.
    pub fn new(what: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "sipfilter-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(ScratchDir { path })
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
