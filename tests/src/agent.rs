//! Running the real `sipfilter` binary (agent or CLI) from tests, inside a namespace.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use anyhow::{bail, Context as _};

use crate::netns::{Background, Netns};

/// `target/<profile>/sipfilter`: beside the test executable's `deps` folder, or beside a
/// benchmark binary. `cargo xtask test` builds it before running the tests.
pub fn sipfilter_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let mut dir = exe.parent().expect("executable folder");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target folder");
    }
    let bin = dir.join("sipfilter");
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

/// A running agent (a [`Background`] process), stopped when dropped.
pub struct AgentProcess {
    process: Background,
}

impl AgentProcess {
    /// Starts `sipfilter --pin-dir PIN run ARGS…` in `ns`, logging to `dir/<name>.out`, and
    /// waits until it says it is ready.
    pub fn start(ns: &Netns, pin_dir: &Path, dir: &Path, name: &str, args: &[&str]) -> anyhow::Result<Self> {
        let bin = sipfilter_bin();
        let pin = pin_dir.to_str().context("pin dir is not UTF-8")?;
        let mut full = vec![
            bin.to_str().context("binary path is not UTF-8")?,
            "--pin-dir",
            pin,
            "run",
        ];
        full.extend_from_slice(args);
        let mut process = ns.spawn(name, &full, dir)?;
        process.wait_for_output("ready", Duration::from_secs(20))?;
        Ok(AgentProcess { process })
    }

    pub fn log(&self) -> String {
        self.process.output()
    }

    /// The agent's process id (`ip netns exec` execs it in place).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Waits until the log contains `needle`; fails early if the agent exits.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        self.process.wait_for_output(needle, timeout)
    }

    pub fn signal(&mut self, sig: i32) {
        self.process.signal(sig);
    }

    /// SIGTERM, wait for exit (SIGKILL after 10 s), return the log.
    pub fn stop(mut self) -> anyhow::Result<String> {
        self.process.stop(libc::SIGTERM, Duration::from_secs(10));
        Ok(self.log())
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
