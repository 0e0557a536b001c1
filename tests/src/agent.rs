//! Running the real `sipfilter` binary (agent or CLI) from tests, inside a namespace.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::netns::Netns;

/// `target/<profile>/sipfilter`, next to the test executable's folder. `cargo xtask test`
/// builds it before running the tests.
pub fn sipfilter_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe.parent().and_then(Path::parent).expect("target folder").join("sipfilter");
    assert!(
        bin.exists(),
        "{} does not exist: build it first with `cargo build -p sipfilter` (`cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// Runs `sipfilter --pin-dir PIN ARGS…` (inside `ns` when given) and returns its output.
pub fn sipfilter(ns: Option<&Netns>, pin_dir: &Path, args: &[&str]) -> anyhow::Result<Output> {
    let bin = sipfilter_bin();
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name]).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    cmd.arg("--pin-dir").arg(pin_dir).args(args);
    cmd.output().context("cannot run sipfilter")
}

/// A running agent, stopped (SIGTERM, then SIGKILL) when dropped.
pub struct AgentProcess {
    child: Option<Child>,
    pub log_path: PathBuf,
}

impl AgentProcess {
    /// Starts `sipfilter --pin-dir PIN run ARGS…` in `ns` and waits until it says it is ready.
    pub fn start(ns: &Netns, pin_dir: &Path, log_path: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let log = std::fs::File::create(log_path)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .arg(sipfilter_bin())
            .arg("--pin-dir")
            .arg(pin_dir)
            .arg("run")
            .args(args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("cannot start the agent")?;
        let mut agent = AgentProcess { child: Some(child), log_path: log_path.to_owned() };
        agent.wait_for_log("ready", Duration::from_secs(20))?;
        Ok(agent)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; fails early if the agent exits.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if self.log().contains(needle) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("the agent exited ({status}) before logging {needle:?}:\n{}", self.log());
                }
            }
            if start.elapsed() > timeout {
                bail!("the agent did not log {needle:?} within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, sig) };
        }
    }

    /// SIGTERM, wait for exit, return the log.
    pub fn stop(mut self) -> anyhow::Result<String> {
        self.terminate();
        Ok(self.log())
    }

    fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// `GET /metrics` from inside `ns` (the endpoint listens on the namespace's loopback).
pub fn scrape(ns: &Netns, addr: &str) -> anyhow::Result<String> {
    let addr: SocketAddr = addr.parse()?;
    let _inside = ns.enter()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    s.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("no HTTP header end")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("metrics answered {head}");
    }
    Ok(body.to_string())
}

/// The value of one sample (`name{labels}` exactly as exposed, or a bare name).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}
