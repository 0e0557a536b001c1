//! `cargo xtask demo`: a small lab in network namespaces where a robot attacks a PBX the way
//! the threat notes describe (probe, extension sweep, password brute force, REGISTER flood)
//! while a legitimate phone keeps registering, with the sipfilter agent watching the PBX's
//! interface. Prints who was banned, what reached the PBX, what the phone saw and the
//! agent's key metrics.
//!
//! `cargo xtask demo --compare`: the same lab twice under a SIPp REGISTER flood at the highest
//! rate SIPp reaches here, with the agent and without it, and a table of the figures.
//!
//! Everything it creates (namespaces `sfdemo-*`, a private bpffs, a temp folder, the agent and
//! SIPp processes) is removed when it ends, fails, or is interrupted with Ctrl-C. The SIP
//! traffic never leaves the lab's namespaces.
//!
//! xtask must not depend on the sipfilter crates (it has to compile before the eBPF toolchain
//! exists), so this drives the `sipfilter` binary and SIPp as programs.

use std::{
    collections::BTreeMap,
    ffi::CString,
    fmt::Write as _,
    fs::File,
    io::{Read as _, Write as _},
    net::TcpStream,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde_json::Value;

// --- the lab's addresses (a private /24 inside the lab's namespaces) ---

const PBX_IP: &str = "10.77.0.1";
const PHONE_IP: &str = "10.77.0.20";
const SCANNER_IP: &str = "10.77.0.66";
const SWEEPER_IP: &str = "10.77.0.67";
const CRACKER_IP: &str = "10.77.0.68";
const FLOODER_IP: &str = "10.77.0.69";
const GUESSER_IP: &str = "10.77.0.70";
const CALLER_IP: &str = "10.77.0.71";
const TOLL_IP: &str = "10.77.0.72";
/// The PBX's interface, the one sipfilter attaches to.
const PBX_IF: &str = "pbx0";
const METRICS: &str = "127.0.0.1:9460";
/// The phone gives up on a registration that gets no answer within this long.
const PHONE_TIMEOUT_MS: &str = "5000";

fn role_of(ip: &str) -> &'static str {
    match ip {
        PHONE_IP => "the phone",
        SCANNER_IP => "scanner (probe)",
        SWEEPER_IP => "extension sweep",
        CRACKER_IP => "password brute force",
        FLOODER_IP => "REGISTER flood",
        GUESSER_IP => "password = extension",
        CALLER_IP => "robot's second address",
        TOLL_IP => "toll fraud (new address)",
        _ => "?",
    }
}

// --- Ctrl-C ---

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM set a flag that every wait below checks; the error it returns unwinds
/// through the Drop guards, which stop the processes and remove the lab.
fn catch_signals() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

fn check_interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted: stopping and removing the lab");
    }
    Ok(())
}

fn sleep(d: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupted()?;
        std::thread::sleep(Duration::from_millis(50).min(end.saturating_duration_since(Instant::now())));
    }
    check_interrupted()
}

use crate::{
    netns::{self, sh},
    sipp::{sipp_args, PBX_SERVER_ARGS},
};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace folder")
        .to_path_buf()
}

fn sipfilter_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    target.join("debug/sipfilter")
}

// --- processes ---

/// A process started inside a namespace (the tests' [`netns::Background`]: its own process
/// group, so Ctrl-C reaches only xtask, which then stops it in order; stopped when dropped;
/// sent SIGTERM by the kernel if xtask itself dies), with waits that notice Ctrl-C.
struct Proc(netns::Background);

impl Proc {
    fn spawn(name: &str, ns: &str, args: &[&str], cwd: &Path) -> anyhow::Result<Proc> {
        Ok(Proc(netns::spawn_in(ns, name, args, cwd)?))
    }

    fn output(&self) -> String {
        self.0.output()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.0.exited()
    }

    fn signal(&mut self, sig: libc::c_int) {
        self.0.signal(sig);
    }

    /// Waits for the process to end on its own.
    fn wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited() {
                return Ok(s);
            }
            check_interrupted()?;
            if Instant::now() > end {
                bail!(
                    "{} did not finish within {timeout:?}; its output:\n{}",
                    self.0.name,
                    tail(&self.output(), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `sig`, waits up to `grace`, then kills.
    fn stop(&mut self, sig: libc::c_int, grace: Duration) {
        self.0.stop(sig, grace);
    }

    /// SIPp exits 0 when every call succeeded and 1 when some failed; anything else means
    /// it did not run the scenario.
    fn wait_sipp(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let status = self.wait(timeout)?;
        match status.code() {
            Some(0 | 1) => Ok(()),
            _ => bail!(
                "SIPp ({}) failed with {status}; its output:\n{}",
                self.0.name,
                tail(&self.output(), 30)
            ),
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// --- the lab ---

/// Four namespaces on one bridge: `pbx` (10.77.0.1 on `pbx0`, the interface sipfilter
/// watches), `phone` (10.77.0.20), `attacker` (10.77.0.66-69, one address per attack step, as
/// a small botnet would) and `lan` (the bridge). A private bpffs for the agent's pins and a
/// temp folder for the processes' files. Dropping it removes all of them.
struct Lab {
    tag: String,
    namespaces: Vec<String>,
    bpffs: Option<PathBuf>,
    dir: PathBuf,
}

impl Lab {
    fn new(tag: &str) -> anyhow::Result<Lab> {
        let dir = std::env::temp_dir().join(format!("sfdemo-{tag}"));
        // Created empty first so that Drop removes whatever was made before a failure.
        let mut lab = Lab {
            tag: tag.into(),
            namespaces: Vec::new(),
            bpffs: None,
            dir: dir.clone(),
        };
        std::fs::create_dir_all(&dir)?;
        for role in ["pbx", "lan", "attacker", "phone"] {
            let ns = lab.ns(role);
            sh(&["ip", "netns", "add", &ns])?;
            lab.namespaces.push(ns.clone());
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        let lan = lab.ns("lan");
        sh(&["ip", "-n", &lan, "link", "add", "br0", "type", "bridge"])?;
        sh(&["ip", "-n", &lan, "link", "set", "br0", "up"])?;
        let attacker_ips = [
            SCANNER_IP, SWEEPER_IP, CRACKER_IP, FLOODER_IP, GUESSER_IP, CALLER_IP, TOLL_IP,
        ];
        for (role, ifname, port, addrs) in [
            ("pbx", PBX_IF, "to-pbx", &[PBX_IP][..]),
            ("phone", "eth0", "to-phone", &[PHONE_IP][..]),
            ("attacker", "eth0", "to-attacker", &attacker_ips[..]),
        ] {
            let ns = lab.ns(role);
            sh(&[
                "ip", "link", "add", port, "netns", &lan, "type", "veth", "peer", "name", ifname, "netns", &ns,
            ])?;
            sh(&["ip", "-n", &lan, "link", "set", port, "master", "br0", "up"])?;
            for a in addrs {
                sh(&["ip", "-n", &ns, "addr", "add", &format!("{a}/24"), "dev", ifname])?;
            }
            sh(&["ip", "-n", &ns, "link", "set", ifname, "up"])?;
        }
        // Named like the tests' mounts so that `cargo xtask cleanup` sweeps it up after a crash.
        let mount = std::env::temp_dir().join(format!("sipfilter-test-bpffs-sfdemo-{tag}"));
        std::fs::create_dir_all(&mount)?;
        sh(&["mount", "-t", "bpf", "bpf", mount.to_str().context("temp path")?])?;
        lab.bpffs = Some(mount);
        Ok(lab)
    }

    fn ns(&self, role: &str) -> String {
        format!("sfdemo-{role}-{}", self.tag)
    }

    fn pin_dir(&self) -> PathBuf {
        self.bpffs.as_ref().expect("bpffs mounted").join("sipfilter")
    }

    fn subdir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let d = self.dir.join(name);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }

    /// Starts the agent in the PBX's namespace on `pbx0` and waits for its `ready` line.
    fn start_agent(&self, config: &Path) -> anyhow::Result<Proc> {
        let dir = self.subdir("agent")?;
        let (bin, pin, state) = (sipfilter_bin(), self.pin_dir(), dir.join("state.json"));
        let s = |p: &Path| p.to_str().map(str::to_owned).context("non-UTF-8 path");
        let (bin, pin, state, config) = (s(&bin)?, s(&pin)?, s(&state)?, s(config)?);
        let mut agent = Proc::spawn(
            "agent",
            &self.ns("pbx"),
            &[
                &bin,
                "--pin-dir",
                &pin,
                "run",
                "--config",
                &config,
                "--iface",
                PBX_IF,
                "--state-file",
                &state,
                "--metrics-listen",
                METRICS,
                "--detach-on-exit",
            ],
            &dir,
        )?;
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if agent.output().contains("ready") {
                return Ok(agent);
            }
            if let Some(s) = agent.exited() {
                bail!("the agent exited ({s}) before it was ready:\n{}", agent.output());
            }
            if Instant::now() > end {
                bail!("the agent was not ready within 30 s:\n{}", agent.output());
            }
            sleep(Duration::from_millis(100))?;
        }
    }

    /// Runs a SIPp scenario from `demo/` in its own folder. `remote` false: server mode.
    fn sipp(
        &self,
        name: &str,
        role: &str,
        scenario: &str,
        local_ip: &str,
        remote: bool,
        extra: &[&str],
    ) -> anyhow::Result<Proc> {
        let dir = self.subdir(name)?;
        // A scenario of demo/, or one of the tests' (a path from the workspace).
        let (from, scenario) = match scenario.rsplit_once('/') {
            Some((_, file)) => (workspace().join(scenario), file),
            None => (workspace().join("demo").join(scenario), scenario),
        };
        std::fs::copy(&from, dir.join(scenario)).with_context(|| format!("cannot copy {}", from.display()))?;
        let target = format!("{PBX_IP}:5060");
        let args = sipp_args(scenario, remote.then_some(target.as_str()), local_ip, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proc::spawn(name, &self.ns(role), &args, &dir)
    }

    /// The PBX: a SIPp registrar (demo/pbx.xml) that logs every request it receives. A large
    /// socket buffer (SIPp's default is 64 KiB) so that a burst of 150 back-to-back REGISTERs,
    /// which sipfilter lets through, is not lost in the PBX's own socket.
    fn start_pbx(&self) -> anyhow::Result<Proc> {
        let pbx = self.sipp("pbx", "pbx", "pbx.xml", PBX_IP, false, PBX_SERVER_ARGS)?;
        // SIPp binds in well under a second; give it that before anyone sends.
        sleep(Duration::from_millis(700))?;
        Ok(pbx)
    }

    fn phone(&self, rate: &str) -> anyhow::Result<Proc> {
        self.sipp(
            "phone",
            "phone",
            "phone.xml",
            PHONE_IP,
            true,
            &[
                "-r",
                rate,
                "-l",
                "200",
                "-recv_timeout",
                PHONE_TIMEOUT_MS,
                "-trace_rtt",
                "-rtt_freq",
                "1",
            ],
        )
    }

    fn cli_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let pin = self.pin_dir();
        let mut full = vec![sipfilter_bin().to_str().context("path")?.to_owned(), "--pin-dir".into()];
        full.push(pin.to_str().context("path")?.into());
        full.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let out = sh(&refs)?;
        serde_json::from_str(&out).with_context(|| format!("sipfilter {} printed no JSON: {out}", args.join(" ")))
    }

    /// GET http://127.0.0.1:9460/metrics from inside the PBX's namespace (a thread that
    /// joins the namespace; no curl needed).
    fn scrape(&self) -> anyhow::Result<String> {
        let path = format!("/var/run/netns/{}", self.ns("pbx"));
        std::thread::spawn(move || -> anyhow::Result<String> {
            let ns = File::open(&path).with_context(|| format!("cannot open {path}"))?;
            // SAFETY: a valid namespace fd; setns only moves this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns({path}): {}", std::io::Error::last_os_error());
            }
            let mut s = TcpStream::connect(METRICS).with_context(|| format!("cannot connect to {METRICS}"))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
            let mut resp = String::new();
            s.read_to_string(&mut resp)?;
            let (head, body) = resp.split_once("\r\n\r\n").context("no HTTP header in the response")?;
            if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
                bail!("GET /metrics: {}", head.lines().next().unwrap_or(""));
            }
            Ok(body.to_owned())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("metrics thread panicked"))?
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in self.namespaces.drain(..).rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
        }
        if let Some(m) = self.bpffs.take() {
            if let Ok(c) = CString::new(m.as_os_str().as_encoded_bytes()) {
                // SAFETY: NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
            let _ = std::fs::remove_dir(&m);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// --- reading SIPp's files ---

fn find_file(dir: &Path, suffix: &str) -> anyhow::Result<PathBuf> {
    std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(suffix))
        })
        .with_context(|| format!("no *{suffix} in {}", dir.display()))
}

/// SIPp's final screens (`-trace_screen`): the scenario's message table and the statistics.
struct Screen(String);

impl Screen {
    fn read(dir: &Path) -> anyhow::Result<Screen> {
        Ok(Screen(std::fs::read_to_string(find_file(dir, "_screen.log")?)?))
    }

    /// A statistics counter's cumulative value ("Successful call", "Failed call", ...).
    fn stat(&self, label: &str) -> u64 {
        self.0
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split('|').nth(2))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Messages of the scenario table named `name` (a method or a status code), sent
    /// (`out`) or received, summed over the scenario's steps.
    fn messages(&self, name: &str, out: bool) -> u64 {
        let arrow = if out { "---------->" } else { "<----------" };
        self.0
            .lines()
            .filter_map(|l| {
                let t: Vec<&str> = l.split_whitespace().collect();
                if t.len() >= 3 && t[0] == name && t[1] == arrow {
                    // "B-RTD1" / "E-RTD1" may stand between the arrow and the count.
                    t[2..].iter().find_map(|x| x.parse::<u64>().ok())
                } else {
                    None
                }
            })
            .sum()
    }
}

/// Requests the PBX received, by (source address, method), from its `-trace_logs` lines
/// (`REGISTER via= SIP/2.0/UDP 10.77.0.20:5060;branch=...`).
fn pbx_received(dir: &Path) -> anyhow::Result<BTreeMap<(String, String), u64>> {
    let mut counts = BTreeMap::new();
    let Ok(log) = find_file(dir, "_logs.log") else {
        return Ok(counts); // nothing logged: nothing received
    };
    for line in std::fs::read_to_string(log)?.lines() {
        let mut parts = line.split_whitespace();
        let (Some(method), Some(_), Some(_), Some(hostport)) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let ip = hostport.split([':', ';']).next().unwrap_or("").to_owned();
        *counts.entry((ip, method.to_owned())).or_default() += 1;
    }
    Ok(counts)
}

fn received_from(counts: &BTreeMap<(String, String), u64>, ip: &str, method: &str) -> u64 {
    counts.get(&(ip.to_owned(), method.to_owned())).copied().unwrap_or(0)
}

/// The phone's registration times in ms (REGISTER to 200 OK), from `-trace_rtt`.
fn rtts(dir: &Path) -> Vec<f64> {
    let Ok(f) = find_file(dir, "_rtt.csv") else {
        return Vec::new();
    };
    let mut v: Vec<f64> = std::fs::read_to_string(f)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split(';').nth(1)?.trim().parse().ok())
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// `name{labels} value` → value, for the lines of a Prometheus text exposition.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

fn promtool_check(text: &str) -> String {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        return "promtool not installed, not checked".into();
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(text.as_bytes());
    }
    match child.wait_with_output() {
        Ok(o) if o.status.success() => "valid (promtool check metrics: no problems)".into(),
        Ok(o) => format!(
            "promtool check metrics complains: {}",
            String::from_utf8_lossy(&[o.stdout, o.stderr].concat())
                .trim()
                .replace('\n', "; ")
        ),
        Err(e) => format!("promtool failed: {e}"),
    }
}

/// 1234567 → "1,234,567".
fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0} ms"))
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.1} %", part as f64 * 100.0 / whole as f64)
    }
}

// --- entry point ---

pub fn run(compare: bool, flood_secs: u32) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the demo creates network namespaces and loads an XDP program: run it as root");
    }
    if Command::new("sipp")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        bail!("sipp is not installed (cargo xtask setup installs Debian's sip-tester)");
    }
    if !sipfilter_bin().exists() {
        bail!("{} is missing", sipfilter_bin().display());
    }
    catch_signals();
    let result = if compare {
        compare_run(flood_secs)
    } else {
        attack_demo()
    };
    // The lab is gone by now (dropped while the error travelled up).
    if INTERRUPTED.load(Ordering::SeqCst) {
        eprintln!("xtask demo: interrupted; the lab's namespaces, processes, bpffs and files are removed");
        std::process::exit(130);
    }
    result
}

fn step(n: u32, what: &str) {
    println!("\n[{n}/7] {what}");
}

fn attack_demo() -> anyhow::Result<()> {
    let tag = std::process::id().to_string();
    println!("sipfilter demo: building a lab of network namespaces (removed at the end, also on Ctrl-C)");
    let lab = Lab::new(&tag)?;
    println!(
        "  PBX       {PBX_IP:<13} a SIP registrar (SIPp server, demo/pbx.xml); sipfilter watches its interface {PBX_IF}\n  \
         phone     {PHONE_IP:<13} extension 2000, registers with its password twice a second (demo/phone.xml)\n  \
         attacker  10.77.0.66-72  a robot; each attack step comes from its own address, as from a botnet\n  \
         all three are on one bridge, so everything the PBX receives comes through {PBX_IF}"
    );
    let config = workspace().join("demo/sipfilter.toml");
    let agent = lab.start_agent(&config)?;
    println!(
        "\nsipfilter agent started with demo/sipfilter.toml: sources that register cleanly are known (REGISTER burst 150,\n\
         then 20/s); everyone else is unknown: 20 REGISTERs, then throttled; banned after 5 wrong passwords, 5 not-found\n\
         answers or a scan of extensions; OPTIONS from unknown sources go unanswered; first ban 300 s"
    );
    let mut pbx = lab.start_pbx()?;
    let mut phone = lab.phone("2")?;
    sleep(Duration::from_secs(2))?;

    step(
        1,
        &format!("probe: {SCANNER_IP} sends one OPTIONS with User-Agent \"friendly-scanner\" (svmap)"),
    );
    let mut probe = lab.sipp("probe", "attacker", "probe.xml", SCANNER_IP, true, &["-m", "1"])?;
    probe.wait_sipp(Duration::from_secs(15))?;
    let probe_answered = Screen::read(&lab.dir.join("probe"))?.messages("200", false) > 0;
    println!(
        "  the PBX {}",
        if probe_answered {
            "answered 200 OK: the robot now knows a PBX lives here"
        } else {
            "never saw it: its User-Agent names a scanner, so it was dropped unanswered and the robot banned (reason scanner)"
        }
    );

    step(
        2,
        &format!("extension sweep: {SWEEPER_IP} sends REGISTER for extensions 100 to 999, 200 a second (svwar)"),
    );
    let users: String = std::iter::once("SEQUENTIAL".to_owned())
        .chain((100..1000).map(|u| u.to_string()))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(lab.subdir("sweep")?.join("users.csv"), users + "\n")?;
    let mut sweep = lab.sipp(
        "sweep",
        "attacker",
        "sweep.xml",
        SWEEPER_IP,
        true,
        &["-inf", "users.csv", "-r", "200", "-m", "900"],
    )?;
    sweep.wait_sipp(Duration::from_secs(30))?;

    step(
        3,
        &format!("password brute force: {CRACKER_IP} tries 300 passwords for extension 2000, 50 a second (svcrack)"),
    );
    let mut dict = vec!["SEQUENTIAL".to_owned()];
    let words = [
        "2000", "1234", "0000", "12345", "password", "admin", "2000pass", "qwerty", "letmein", "111111",
    ];
    for i in 0..300 {
        let pw = words
            .get(i)
            .map_or_else(|| format!("{:04}", i * 37 % 10000), |w| w.to_string());
        dict.push(format!("[authentication username=2000 password={pw}]"));
    }
    std::fs::write(lab.subdir("crack")?.join("passwords.csv"), dict.join("\n") + "\n")?;
    let mut crack = lab.sipp(
        "crack",
        "attacker",
        "crack.xml",
        CRACKER_IP,
        true,
        &["-inf", "passwords.csv", "-r", "50", "-m", "300", "-l", "500"],
    )?;
    crack.wait_sipp(Duration::from_secs(40))?;

    step(
        4,
        &format!(
            "password = extension: {GUESSER_IP} registers 200, 201, 202 … with the extension as password; 202's is \"202\""
        ),
    );
    let guesses: String = std::iter::once("SEQUENTIAL".to_owned())
        .chain((200..210).map(|e| format!("{e};{e}")))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(lab.subdir("guess")?.join("guesses.csv"), guesses + "\n")?;
    let mut guess = lab.sipp(
        "guess",
        "attacker",
        "tests/scenarios/register_auth.xml",
        GUESSER_IP,
        true,
        &["-inf", "guesses.csv", "-r", "5", "-m", "10", "-recv_timeout", "2000"],
    )?;
    guess.wait_sipp(Duration::from_secs(40))?;
    for l in agent.output().lines().filter(|l| l.contains("CRACKED")) {
        println!("  the agent: {l}");
    }
    let guess_s = Screen::read(&lab.dir.join("guess"))?;
    println!(
        "  the robot received {} 200 OK: the proof of its right guess was withheld (dropped on its way out)",
        guess_s.messages("200", false)
    );

    step(
        5,
        &format!("test call: {CALLER_IP}, the robot's second address, registers 202 with the guessed password"),
    );
    std::fs::write(lab.subdir("call")?.join("account.csv"), "SEQUENTIAL\n202;202\n")?;
    let mut call = lab.sipp(
        "call",
        "attacker",
        "tests/scenarios/register_auth.xml",
        CALLER_IP,
        true,
        &["-inf", "account.csv", "-m", "1", "-recv_timeout", "3000"],
    )?;
    call.wait_sipp(Duration::from_secs(40))?;

    step(
        6,
        &format!("REGISTER flood: {FLOODER_IP} sends REGISTERs as fast as SIPp can for 5 s"),
    );
    let mut flood = lab.sipp(
        "flood",
        "attacker",
        "flood.xml",
        FLOODER_IP,
        true,
        &["-r", "100000", "-rp", "1000", "-timeout", "5s"],
    )?;
    flood.wait_sipp(Duration::from_secs(30))?;
    let sent = Screen::read(&lab.dir.join("flood"))?.messages("REGISTER", true);
    println!("  SIPp sent {} REGISTERs ({}/s)", grouped(sent), grouped(sent / 5));

    step(
        7,
        &format!(
            "toll fraud, Friday evening: {TOLL_IP}, an address sipfilter never saw, with extension 201's password (stolen elsewhere), calls Sierra Leone in three dial formats, then one London number 8 times; the phone calls a national number"
        ),
    );
    let toll_calls: Vec<String> = ["+23276123456", "0023276123456", "01123276123456"]
        .into_iter()
        .chain(std::iter::repeat_n("+442079460000", 8))
        .map(|n| format!("201;{n}"))
        .collect();
    std::fs::write(
        lab.subdir("toll")?.join("calls.csv"),
        format!("SEQUENTIAL\n{}\n", toll_calls.join("\n")),
    )?;
    let mut toll = lab.sipp(
        "toll",
        "attacker",
        "call.xml",
        TOLL_IP,
        true,
        &["-inf", "calls.csv", "-r", "4", "-m", "11", "-recv_timeout", "2000"],
    )?;
    std::fs::write(
        lab.subdir("national")?.join("call.csv"),
        "SEQUENTIAL\n2000;0301234567\n",
    )?;
    let mut national = lab.sipp(
        "national",
        "phone",
        "call.xml",
        PHONE_IP,
        true,
        &["-inf", "call.csv", "-m", "1", "-p", "5062", "-recv_timeout", "3000"],
    )?;
    toll.wait_sipp(Duration::from_secs(60))?;
    national.wait_sipp(Duration::from_secs(30))?;
    let toll_s = Screen::read(&lab.dir.join("toll"))?;
    let national_s = Screen::read(&lab.dir.join("national"))?;
    println!(
        "  the robot's calls: {} of 11 connected; the phone's national call {}",
        toll_s.stat("Successful call"),
        if national_s.stat("Successful call") == 1 {
            "connected"
        } else {
            "FAILED"
        }
    );
    for l in agent.output().lines().filter(|l| l.contains("blocked call")) {
        println!("  the agent: {l}");
    }

    // Let the phone register a little longer after the attack, then let it finish.
    sleep(Duration::from_secs(2))?;
    phone.signal(libc::SIGUSR1); // SIPp: place no new calls, exit when the current ones end
    phone.wait(Duration::from_secs(20))?;
    let metrics = lab.scrape()?;
    let bans = lab.cli_json(&["ban", "list", "--json"])?;
    let top = lab.cli_json(&["top", "--once", "--json", "-n", "50"])?;
    pbx.stop(libc::SIGUSR1, Duration::from_secs(5));
    let agent_log = agent.output();

    // --- report ---
    let received = pbx_received(&lab.dir.join("pbx"))?;
    let requests: BTreeMap<String, (u64, u64)> = top["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            Some((
                s["source"].as_str()?.to_owned(),
                (s["requests"].as_u64()?, s["drops"].as_u64()?),
            ))
        })
        .collect();

    println!("\n=== Who was banned ===");
    println!("(from `sipfilter ban list --json`, and `sipfilter top --once --json` for how many SIP messages each");
    println!(" source sent until its ban; everything a banned source sends afterwards is dropped in XDP)");
    let ban_list = bans.as_array().cloned().unwrap_or_default();
    if ban_list.is_empty() {
        println!("  nobody");
    }
    for b in &ban_list {
        let src = b["source"].as_str().unwrap_or("?");
        // Messages that passed, plus the one that got it banned.
        let req = requests
            .get(src)
            .map_or(0, |(sent, dropped)| sent.saturating_sub(*dropped) + 1);
        println!(
            "  {src:<12} {:<22} banned on its SIP message #{} (a {}; the {} before it passed), reason {}, ban ends in {} s",
            role_of(src),
            grouped(req),
            b["method"].as_str().unwrap_or("?"),
            grouped(req.saturating_sub(1)),
            b["reason"].as_str().unwrap_or("?"),
            b["expires_in_secs"].as_u64().map_or("?".into(), |s| s.to_string()),
        );
    }
    let not_banned: Vec<&str> = [SCANNER_IP, CALLER_IP, TOLL_IP, PHONE_IP]
        .into_iter()
        .filter(|ip| !ban_list.iter().any(|b| b["source"] == *ip))
        .collect();
    for ip in not_banned {
        println!("  {ip:<12} {:<22} not banned", role_of(ip));
    }
    println!("  The agent logged each ban as it happened:");
    for l in agent_log
        .lines()
        .filter(|l| l.contains(" ban ") || l.contains("CRACKED") || l.contains("quarantine"))
    {
        println!("    {l}");
    }

    println!("\n=== What reached the PBX ===");
    println!("(sent: counted by the sender's SIPp; reached: counted by the PBX's SIPp, one log line per request)");
    let sweep_s = Screen::read(&lab.dir.join("sweep"))?;
    let crack_s = Screen::read(&lab.dir.join("crack"))?;
    let flood_s = Screen::read(&lab.dir.join("flood"))?;
    let phone_s = Screen::read(&lab.dir.join("phone"))?;
    let probe_s = Screen::read(&lab.dir.join("probe"))?;
    let guess_s = Screen::read(&lab.dir.join("guess"))?;
    let call_s = Screen::read(&lab.dir.join("call"))?;
    let mut t = String::new();
    writeln!(
        t,
        "  {:<24} {:<12} {:>12} {:>14}",
        "step", "source", "sent", "reached PBX"
    )?;
    for (what, ip, method, sent) in [
        (
            "1 probe (OPTIONS)",
            SCANNER_IP,
            "OPTIONS",
            probe_s.messages("OPTIONS", true),
        ),
        (
            "2 extension sweep",
            SWEEPER_IP,
            "REGISTER",
            sweep_s.messages("REGISTER", true),
        ),
        (
            "3 brute force",
            CRACKER_IP,
            "REGISTER",
            crack_s.messages("REGISTER", true),
        ),
        (
            "4 password = extension",
            GUESSER_IP,
            "REGISTER",
            guess_s.messages("REGISTER", true),
        ),
        (
            "5 test call (202)",
            CALLER_IP,
            "REGISTER",
            call_s.messages("REGISTER", true),
        ),
        ("6 flood", FLOODER_IP, "REGISTER", flood_s.messages("REGISTER", true)),
        (
            "7 toll fraud (INVITE)",
            TOLL_IP,
            "INVITE",
            Screen::read(&lab.dir.join("toll"))?.messages("INVITE", true),
        ),
        (
            "the phone's national call",
            PHONE_IP,
            "INVITE",
            Screen::read(&lab.dir.join("national"))?.messages("INVITE", true),
        ),
        (
            "the phone (2 per login)",
            PHONE_IP,
            "REGISTER",
            phone_s.messages("REGISTER", true),
        ),
    ] {
        writeln!(
            t,
            "  {what:<24} {ip:<12} {:>12} {:>14}",
            grouped(sent),
            grouped(received_from(&received, ip, method))
        )?;
    }
    print!("{t}");
    let (attempts, answered) = (crack_s.stat("Outgoing calls created"), crack_s.messages("401", false));
    println!(
        "  The brute force got {} of its {} password attempts answered ({} wrong-password 403s, {} 200 OK) before its ban;",
        answered,
        attempts,
        crack_s.messages("403", false),
        crack_s.messages("200", false)
    );
    println!("  every attempt after the ban went unanswered, so the robot cannot even tell a right password from a wrong one.");
    println!("  The test call's REGISTER for the cracked extension 202 came from an address sipfilter did not know:");
    println!("  quarantined in XDP; the PBX never saw it, while the phone's own extension kept working.");
    println!("  The toll-fraud calls to Sierra Leone never reached the PBX (destination rule, no ban); of the London");
    println!("  calls the first 3 did, the 4th within a minute was one too many: dropped, and the new address banned");
    println!("  (call_burst). `sipfilter fraud list` keeps each blocked call with its source, extension and number.");

    println!("\n=== What the phone saw ===");
    let (ok, failed) = (phone_s.stat("Successful call"), phone_s.stat("Failed call"));
    let r = rtts(&lab.dir.join("phone"));
    println!(
        "  {} registrations: {ok} OK, {failed} failed ({} OK); registration time (REGISTER to 200 OK, with the 401 challenge) p50 {}, p99 {}, max {}",
        ok + failed,
        pct(ok, ok + failed),
        ms(percentile(&r, 50.0)),
        ms(percentile(&r, 99.0)),
        ms(r.last().copied()),
    );

    println!("\n=== Key metrics (GET http://{METRICS}/metrics inside the PBX's namespace) ===");
    for (series, meaning) in [
        (
            "sipfilter_packets_total{action=\"pass\"}",
            "packets passed to the PBX's network stack",
        ),
        (
            "sipfilter_packets_total{action=\"drop\"}",
            "packets dropped in XDP, before the PBX saw them",
        ),
        (
            "sipfilter_packet_reasons_total{reason=\"rate_register\"}",
            "first REGISTER over a source's flood bucket (one per ban)",
        ),
        (
            "sipfilter_packet_reasons_total{reason=\"stealth\"}",
            "probes from unknown sources dropped unanswered",
        ),
        (
            "sipfilter_packet_reasons_total{reason=\"throttled\"}",
            "unknown sources over their tight limits (dropped, no ban)",
        ),
        (
            "sipfilter_packet_reasons_total{reason=\"quarantined\"}",
            "requests for a cracked extension from unknown sources",
        ),
        (
            "sipfilter_packet_reasons_total{reason=\"scanner\"}",
            "requests with a scanner User-Agent (dropped, source banned)",
        ),
        (
            "sipfilter_calls_blocked_total{rule=\"destination\"}",
            "calls to denied destinations (calls, not packets)",
        ),
        (
            "sipfilter_calls_blocked_total{rule=\"burst_number\"}",
            "calls over the calls-to-one-number limit",
        ),
        (
            "sipfilter_sip_answers_total{kind=\"challenge\"}",
            "401/407 answers the PBX sent",
        ),
        (
            "sipfilter_bans_total{reason=\"auth_failure\"}",
            "bans for wrong passwords",
        ),
        (
            "sipfilter_bans_total{reason=\"enumeration\"}",
            "bans for scanning extensions",
        ),
        (
            "sipfilter_bans_total{reason=\"cracked\"}",
            "bans for a guessed password",
        ),
        ("sipfilter_cracked_total", "extensions found cracked"),
        ("sipfilter_known_sources", "sources known now (the phone)"),
        (
            "sipfilter_packet_reasons_total{reason=\"banned\"}",
            "packets from sources already banned",
        ),
        ("sipfilter_sip_messages_total{method=\"REGISTER\"}", "REGISTERs seen"),
        ("sipfilter_sip_messages_total{method=\"OPTIONS\"}", "OPTIONS seen"),
        (
            "sipfilter_bans_total{reason=\"rate_register\"}",
            "bans for REGISTER rate",
        ),
        ("sipfilter_active_bans", "bans in force now"),
    ] {
        let v = metric(&metrics, series).map_or("(missing)".into(), |v| grouped(v as u64));
        println!("  {series:<58} {v:>12}  {meaning}");
    }
    println!("  The metrics text is {}", promtool_check(&metrics));
    println!("\nRemoving the lab.");
    drop((
        probe, sweep, crack, guess, call, flood, toll, national, phone, pbx, agent,
    ));
    drop(lab);
    Ok(())
}

/// One flood run's figures.
struct Figures {
    flood_sent: u64,
    flood_rate: f64,
    pbx_from_flooder: u64,
    phone_ok: u64,
    phone_failed: u64,
    p50: Option<f64>,
    p99: Option<f64>,
    dropped: Option<f64>,
}

fn flood_run(with_agent: bool, flood_secs: u32) -> anyhow::Result<Figures> {
    let tag = format!("{}-{}", std::process::id(), if with_agent { "a" } else { "n" });
    let lab = Lab::new(&tag)?;
    let agent = if with_agent {
        Some(lab.start_agent(&workspace().join("demo/sipfilter.toml"))?)
    } else {
        None
    };
    let mut pbx = lab.start_pbx()?;
    let mut phone = lab.phone("5")?;
    sleep(Duration::from_secs(2))?;
    let secs = format!("{flood_secs}s");
    let mut flood = lab.sipp(
        "flood",
        "attacker",
        "flood.xml",
        FLOODER_IP,
        true,
        &["-r", "100000", "-rp", "1000", "-timeout", &secs],
    )?;
    flood.wait_sipp(Duration::from_secs(flood_secs as u64 + 30))?;
    sleep(Duration::from_secs(2))?;
    phone.signal(libc::SIGUSR1);
    phone.wait(Duration::from_secs(20))?;
    let dropped = if with_agent {
        metric(&lab.scrape()?, "sipfilter_packets_total{action=\"drop\"}")
    } else {
        None
    };
    pbx.stop(libc::SIGUSR1, Duration::from_secs(10));
    let received = pbx_received(&lab.dir.join("pbx"))?;
    let flood_s = Screen::read(&lab.dir.join("flood"))?;
    let phone_s = Screen::read(&lab.dir.join("phone"))?;
    let r = rtts(&lab.dir.join("phone"));
    let flood_sent = flood_s.messages("REGISTER", true);
    let f = Figures {
        flood_sent,
        flood_rate: flood_sent as f64 / flood_secs as f64,
        pbx_from_flooder: received_from(&received, FLOODER_IP, "REGISTER"),
        phone_ok: phone_s.stat("Successful call"),
        phone_failed: phone_s.stat("Failed call"),
        p50: percentile(&r, 50.0),
        p99: percentile(&r, 99.0),
        dropped,
    };
    drop((flood, phone, pbx, agent));
    drop(lab);
    Ok(f)
}

fn compare_run(flood_secs: u32) -> anyhow::Result<()> {
    println!(
        "sipfilter demo --compare: a SIPp REGISTER flood (sipp -r 100000 -rp 1000: as fast as SIPp goes) from {FLOODER_IP}\n\
         for {flood_secs} s against the lab's PBX while the phone registers 5 times a second, first with the agent\n\
         attached to the PBX's interface, then in a fresh lab without it."
    );
    println!("\nrun 1/2: with the agent ...");
    let with = flood_run(true, flood_secs)?;
    println!("run 2/2: without the agent ...");
    let without = flood_run(false, flood_secs)?;
    let row = |name: &str, a: String, b: String| println!("| {name} | {a} | {b} |");
    println!("\n| {flood_secs} s REGISTER flood, phone registering 5/s | with agent | without agent |");
    println!("|---|---:|---:|");
    row(
        "flood REGISTERs sent (rate SIPp reached)",
        format!("{} ({}/s)", grouped(with.flood_sent), grouped(with.flood_rate as u64)),
        format!(
            "{} ({}/s)",
            grouped(without.flood_sent),
            grouped(without.flood_rate as u64)
        ),
    );
    row(
        "flood REGISTERs the PBX received",
        format!(
            "{} ({})",
            grouped(with.pbx_from_flooder),
            pct(with.pbx_from_flooder, with.flood_sent)
        ),
        format!(
            "{} ({})",
            grouped(without.pbx_from_flooder),
            pct(without.pbx_from_flooder, without.flood_sent)
        ),
    );
    row(
        "packets dropped in XDP",
        with.dropped.map_or("-".into(), |d| grouped(d as u64)),
        "-".into(),
    );
    let ratio = |f: &Figures| {
        format!(
            "{}/{} ({})",
            f.phone_ok,
            f.phone_ok + f.phone_failed,
            pct(f.phone_ok, f.phone_ok + f.phone_failed)
        )
    };
    row("phone registrations OK", ratio(&with), ratio(&without));
    row("phone registration time p50", ms(with.p50), ms(without.p50));
    row("phone registration time p99", ms(with.p99), ms(without.p99));
    println!(
        "\n(Registration time: REGISTER to 200 OK including the 401 challenge, from SIPp's -trace_rtt, 1 ms resolution;\n\
         a registration fails when a response does not come within {PHONE_TIMEOUT_MS} ms. All processes share this machine's cores.)"
    );
    Ok(())
}
