//! The agent end to end: the real `sipfilter run` in a namespace of its own, attached to a
//! veth whose other end carries real UDP traffic from another namespace.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use anyhow::Context as _;
use sipfilter_tests::{
    agent::{sample, scrape, sipfilter, AgentProcess},
    harness::PrivateBpffs,
    netns::{veth_pair, Netns},
    packet::sip_request,
};

const PBX: &str = "10.203.0.1";
const ATTACKER: &str = "10.203.0.2";
const PHONE: &str = "10.203.0.3";
const OTHER: &str = "10.203.0.4";
/// The REGISTER burst of a source that never registered (an unknown source; the senders in
/// these tests get no answers, so none becomes known).
const UNKNOWN_BURST: usize = sipfilter_common::config::defaults::UNKNOWN_REGISTER.burst as usize;

/// Two namespaces: "lan" (attacker, phone and another host) and "pbx" (the agent and a UDP
/// listener on 5060), a private bpffs for the pins, and a folder for state, logs and configs.
struct Lab {
    lan: Netns,
    pbx: Netns,
    lan_if: String,
    pbx_if: String,
    /// The lab's IPv4 /24 (first three octets): the PBX is .1, the LAN hosts .2 to .4.
    net: String,
    bpffs: PrivateBpffs,
    dir: PathBuf,
}

impl Lab {
    fn new(name: &str) -> anyhow::Result<Lab> {
        Lab::with_net(name, "10.203.0")
    }

    /// A lab on the /24 `net` (e.g. "10.204.0"): tests that run at the same time keep apart.
    fn with_net(name: &str, net: &str) -> anyhow::Result<Lab> {
        let lan = Netns::new("lan")?;
        let pbx = Netns::new("pbx")?;
        let (lan_if, pbx_if) = veth_pair(
            &lan,
            &[&format!("{net}.2/24"), &format!("{net}.3/24"), &format!("{net}.4/24")],
            &pbx,
            &[&format!("{net}.1/24")],
        )?;
        let dir = std::env::temp_dir().join(format!("sipfilter-agent-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Lab {
            lan,
            pbx,
            lan_if,
            pbx_if,
            net: net.to_string(),
            bpffs: PrivateBpffs::new()?,
            dir,
        })
    }

    fn pin_dir(&self) -> PathBuf {
        self.bpffs.pin_dir()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn state_file(&self) -> String {
        self.path("state.json").display().to_string()
    }

    /// Starts the agent on the PBX interface with this lab's state file, plus `extra` args.
    fn agent(&self, name: &str, extra: &[&str]) -> anyhow::Result<AgentProcess> {
        let state = self.state_file();
        let mut args = vec!["--iface", &self.pbx_if, "--state-file", &state];
        args.extend_from_slice(extra);
        AgentProcess::start(&self.pbx, &self.pin_dir(), &self.dir, name, &args)
    }

    /// `sipfilter ARGS…` against this lab's pins, from the root namespace.
    fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = sipfilter(None, &self.pin_dir(), args)?;
        anyhow::ensure!(
            out.status.success(),
            "sipfilter {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// An IPv4 address of this lab's /24.
    fn v4(&self, last: u8) -> String {
        format!("{}.{last}", self.net)
    }

    /// A UDP socket on port 5060 of a LAN address (IPv4 or IPv6).
    fn sender(&self, addr: &str) -> anyhow::Result<UdpSocket> {
        let _inside = self.lan.enter()?;
        Ok(UdpSocket::bind(sip_addr(addr))?)
    }

    /// Counts what reaches the PBX's IPv4 address.
    fn receiver(&self) -> anyhow::Result<Receiver> {
        self.receiver_at(&self.v4(1))
    }

    /// Counts what reaches `addr` (an address of the PBX end), port 5060.
    fn receiver_at(&self, addr: &str) -> anyhow::Result<Receiver> {
        let socket = {
            let _inside = self.pbx.enter()?;
            UdpSocket::bind(sip_addr(addr))?
        };
        Receiver::spawn(socket)
    }

    /// IPv6: `pbx` on the PBX end and `lan` on the LAN end, all on-link in one /48 (so an
    /// address of another /64 of the lab reaches the PBX too), usable at once (`nodad`). The
    /// LAN end knows the PBX's link address from the start: no neighbour discovery holds up
    /// (or drops) the first packets of a flood.
    fn add_ipv6(&self, pbx: &str, lan: &[String]) -> anyhow::Result<()> {
        self.pbx
            .ip(&["-6", "addr", "add", &format!("{pbx}/48"), "dev", &self.pbx_if, "nodad"])?;
        for addr in lan {
            self.lan
                .ip(&["-6", "addr", "add", &format!("{addr}/48"), "dev", &self.lan_if, "nodad"])?;
        }
        let link = self.pbx.ip(&["link", "show", "dev", &self.pbx_if])?;
        let mac = link
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .context("PBX end has no link address")?
            .to_string();
        self.lan.ip(&[
            "-6",
            "neigh",
            "replace",
            pbx,
            "lladdr",
            &mac,
            "dev",
            &self.lan_if,
            "nud",
            "permanent",
        ])?;
        Ok(())
    }

    fn has_xdp(&self) -> anyhow::Result<bool> {
        Ok(self.pbx.ip(&["link", "show", "dev", &self.pbx_if])?.contains(" xdp"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Counts datagrams by source on a thread, so the socket buffer never overflows.
struct Receiver {
    counts: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn spawn(socket: UdpSocket) -> anyhow::Result<Receiver> {
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (counts.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                if let Ok((_, from)) = socket.recv_from(&mut buf) {
                    *c.lock().unwrap().entry(from).or_default() += 1;
                }
            }
        });
        Ok(Receiver {
            counts,
            stop,
            thread: Some(thread),
        })
    }

    /// Datagrams received from `addr` (port 5060), after letting in-flight ones land.
    fn from(&self, addr: &str) -> usize {
        std::thread::sleep(Duration::from_millis(200));
        self.counts.lock().unwrap().get(&sip_addr(addr)).copied().unwrap_or(0)
    }

    /// Datagrams received from all sources.
    fn total(&self) -> usize {
        std::thread::sleep(Duration::from_millis(200));
        self.counts.lock().unwrap().values().sum()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Port 5060 of an IPv4 or IPv6 address.
fn sip_addr(addr: &str) -> SocketAddr {
    let ip: IpAddr = addr.parse().unwrap_or_else(|_| panic!("{addr} is not an IP address"));
    SocketAddr::new(ip, 5060)
}

/// Sends `n` copies of a SIP request, paced so the veth ring never overflows.
fn send(socket: &UdpSocket, method: &str, n: usize) -> anyhow::Result<()> {
    send_to(socket, PBX, method, n)
}

/// [`send`] to the PBX address `pbx`.
fn send_to(socket: &UdpSocket, pbx: &str, method: &str, n: usize) -> anyhow::Result<()> {
    let msg = sip_request(method, "1000");
    let pbx = sip_addr(pbx);
    for i in 0..n {
        if i % 20 == 19 {
            std::thread::sleep(Duration::from_millis(1));
        }
        socket.send_to(&msg, pbx)?;
    }
    Ok(())
}

fn ban_list(lab: &Lab) -> anyhow::Result<Vec<serde_json::Value>> {
    let v: serde_json::Value = serde_json::from_str(&lab.cli(&["ban", "list", "--json"])?)?;
    Ok(v.as_array().context("ban list --json is an array")?.clone())
}

fn banned_sources(lab: &Lab) -> anyhow::Result<Vec<String>> {
    Ok(ban_list(lab)?
        .iter()
        .filter_map(|b| b["source"].as_str().map(str::to_owned))
        .collect())
}

fn saved_sources(lab: &Lab) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(lab.state_file())?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    Ok(v["bans"]
        .as_array()
        .context("bans")?
        .iter()
        .filter_map(|b| b["source"].as_str().map(str::to_owned))
        .collect())
}

/// Polls until `f` holds (the agent saves the state file once a second).
fn eventually(what: &str, mut f: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<()> {
    for _ in 0..60 {
        if f()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("timed out waiting for: {what}")
}

#[test]
fn restart_and_reboot_keep_every_ban_with_its_time_left() -> anyhow::Result<()> {
    let mut lab = Lab::new("restart")?;
    let rx = lab.receiver()?;
    let attacker = lab.sender(ATTACKER)?;
    let mut agent = lab.agent("agent1", &[])?;

    send(&attacker, "REGISTER", 300)?;
    agent.wait_for_log(
        &format!("ban source={ATTACKER} reason=rate_register method=REGISTER duration=300s strike=1"),
        Duration::from_secs(5),
    )?;
    assert_eq!(rx.from(ATTACKER), UNKNOWN_BURST, "one burst reaches the PBX");
    // A ban added with the CLI while the agent runs reaches the state file.
    lab.cli(&["ban", "add", "10.203.0.9", "--for", "1h"])?;
    eventually("CLI ban in the state file", || {
        Ok(saved_sources(&lab)?.contains(&"10.203.0.9".to_string()))
    })?;

    // Stopped agent: the filter stays attached and keeps dropping the banned source.
    let log = agent.stop()?;
    assert!(log.contains("the filter stays attached"), "{log}");
    assert!(lab.has_xdp()?, "XDP program still attached after the agent stopped");
    send(&attacker, "REGISTER", 20)?;
    assert_eq!(rx.from(ATTACKER), UNKNOWN_BURST, "no gap while the agent is stopped");

    // CLI edits while the agent is stopped are in force at once and reach the state file
    // when it starts again.
    lab.cli(&["ban", "del", "10.203.0.9"])?;
    lab.cli(&["ban", "add", "10.203.0.8", "--for", "2h"])?;
    // List entries added with the CLI outlive a reboot too.
    lab.cli(&["deny", "add", "198.51.100.0/24", "--for", "2h"])?;
    lab.cli(&["allow", "add", "10.203.0.50"])?;
    let mut agent = lab.agent("agent2", &[])?;
    assert!(agent.log().contains("took over the attachment"), "{}", agent.log());
    eventually("state file follows the CLI", || {
        let saved = saved_sources(&lab)?;
        Ok(saved.contains(&"10.203.0.8".to_string()) && !saved.contains(&"10.203.0.9".to_string()))
    })?;
    let before: HashMap<String, i64> = ban_list(&lab)?
        .iter()
        .map(|b| {
            (
                b["source"].as_str().unwrap().to_owned(),
                b["expires_in_secs"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    // Two bans of sources, and the timed deny entry, which `ban list` shows as a CIDR ban.
    assert_eq!(before.len(), 3, "{before:?}");
    agent.wait_for_log("ready", Duration::from_secs(1))?;
    agent.stop()?;

    // A "reboot": pins gone (fresh bpffs), attachment gone. One more ban in the state file
    // has already expired and must not come back.
    sipfilter(None, &lab.pin_dir(), &["detach"])?;
    assert!(!lab.has_xdp()?);
    let mut state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(lab.state_file())?)?;
    state["bans"].as_array_mut().unwrap().push(serde_json::json!({
        "source": "10.203.0.7", "expires_unix_ms": 1_000_000_000_000u64, "strike": 1, "reason": "manual", "method": 15
    }));
    std::fs::write(lab.state_file(), serde_json::to_string(&state)?)?;
    lab.bpffs = PrivateBpffs::new()?;
    std::thread::sleep(Duration::from_secs(1));
    let agent = lab.agent("agent3", &[])?;
    assert!(
        agent.log().contains("restored 2 ban(s)") && agent.log().contains("1 had expired"),
        "{}",
        agent.log()
    );
    assert!(
        agent
            .log()
            .contains("restored 2 allow/deny entr(ies) added with the CLI"),
        "{}",
        agent.log()
    );
    let list = |kind: &str| -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(&lab.cli(&[kind, "list", "--json"])?)?)
    };
    let deny = list("deny")?;
    assert_eq!(deny[0]["cidr"], "198.51.100.0/24", "{deny}");
    let left = deny[0]["expires_in_secs"].as_i64().unwrap();
    assert!(
        (7190..=7200).contains(&left),
        "the deny entry kept its time: {left}s left"
    );
    let allow = list("allow")?;
    assert_eq!(
        (allow[0]["cidr"].as_str(), allow[0]["permanent"].as_bool()),
        (Some("10.203.0.50"), Some(true)),
        "{allow}"
    );
    let after = ban_list(&lab)?;
    assert_eq!(after.len(), 3, "{after:?}");
    for b in &after {
        let source = b["source"].as_str().unwrap();
        let left = b["expires_in_secs"].as_i64().unwrap();
        let had = before[source];
        // The time it had left, less the seconds the restart took (a loaded CI machine).
        assert!(
            (had - 8..=had).contains(&left),
            "{source}: had {had}s left, now {left}s"
        );
    }
    send(&attacker, "REGISTER", 20)?;
    assert_eq!(rx.from(ATTACKER), UNKNOWN_BURST, "still banned after the reboot");
    drop(agent);
    sipfilter(None, &lab.pin_dir(), &["detach"])?;
    Ok(())
}

#[test]
fn sighup_changes_the_rate_in_place_and_a_bad_file_keeps_the_old_config() -> anyhow::Result<()> {
    // The rate limits alone (trust tiers off, as `[trust] enabled = false` leaves them).
    let lab = Lab::new("sighup")?;
    let config = lab.path("sipfilter.toml");
    std::fs::write(
        &config,
        "[limits.register]\nrate = 1\nburst = 10\n\n[agent]\nmetrics_listen = \"off\"\n[trust]\nenabled = false\n",
    )?;
    let rx = lab.receiver()?;
    let config_arg = config.display().to_string();
    let mut agent = lab.agent("agent", &["--config", &config_arg, "--detach-on-exit"])?;

    send(&lab.sender(ATTACKER)?, "REGISTER", 30)?;
    agent.wait_for_log(&format!("ban source={ATTACKER}"), Duration::from_secs(5))?;
    assert_eq!(rx.from(ATTACKER), 10);

    std::fs::write(
        &config,
        "[limits.register]\nrate = 1\nburst = 50\n\n[agent]\nmetrics_listen = \"off\"\n[trust]\nenabled = false\n",
    )?;
    agent.signal(libc::SIGHUP);
    agent.wait_for_log("reloaded", Duration::from_secs(5))?;
    send(&lab.sender(PHONE)?, "REGISTER", 40)?;
    assert_eq!(rx.from(PHONE), 40, "the new burst of 50 applies at once");
    assert_eq!(
        banned_sources(&lab)?,
        vec![ATTACKER.to_string()],
        "the ban survives the reload"
    );

    // Changing the IPv6 source prefix would re-key every ban: refused on reload.
    std::fs::write(
        &config,
        "[limits.register]\nrate = 1\nburst = 50\n[ban]\nipv6_prefix = 48\n[agent]\nmetrics_listen = \"off\"\n[trust]\nenabled = false\n",
    )?;
    agent.signal(libc::SIGHUP);
    agent.wait_for_log("ban.ipv6_prefix changed (/64 to /48)", Duration::from_secs(5))?;

    std::fs::write(&config, "[limits.register]\nrate = 1\nburst = 0\n")?;
    agent.signal(libc::SIGHUP);
    let want = format!(
        "reload failed, keeping the running configuration: {config_arg}:3: limits.register.burst: 0 is out of range"
    );
    agent.wait_for_log(&want, Duration::from_secs(5))?;
    send(&lab.sender(OTHER)?, "REGISTER", 45)?;
    assert_eq!(rx.from(OTHER), 45, "the running configuration (burst 50) still applies");
    // The reloads kept the phone's bucket: it had 10 of its 50 left (plus ~1/s of refill).
    send(&lab.sender(PHONE)?, "REGISTER", 20)?;
    let phone_total = rx.from(PHONE);
    assert!(
        (50..=54).contains(&phone_total),
        "the phone's bucket was kept: {phone_total} of 60 passed"
    );
    let log = agent.stop()?;
    assert!(log.contains("detached from"), "{log}");
    assert!(!lab.has_xdp()?, "--detach-on-exit detaches");
    Ok(())
}

#[test]
fn bad_input_is_refused_in_one_sentence_before_anything_is_attached() -> anyhow::Result<()> {
    let lab = Lab::new("bad")?;
    let config = lab.path("bad.toml");
    std::fs::write(&config, "# thresholds\n[limits.invite]\nrate = 10\nburst = -5\n")?;
    let config_arg = config.display().to_string();
    let run = |args: &[&str]| sipfilter(Some(&lab.pbx), &lab.pin_dir(), args);

    let out = run(&["run", "--config", &config_arg, "--iface", &lab.pbx_if])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim(),
        format!("sipfilter: {config_arg}:4: limits.invite.burst: -5 is out of range (1-1000000)")
    );
    assert!(!lab.has_xdp()?, "nothing attached");
    assert!(!lab.pin_dir().exists(), "nothing pinned");

    let out = run(&["run", "--iface", "nope0"])?;
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "sipfilter: interface nope0 does not exist"
    );
    assert_eq!(out.status.code(), Some(1));

    let out = run(&["run", "--iface", &lab.pbx_if, "--metrics-listen", "everywhere"])?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'everywhere' is not ADDR:PORT"));

    // Without root privileges.
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.pbx.name,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ])
        .arg(sipfilter_tests::agent::sipfilter_bin())
        .args([
            "--pin-dir",
            &lab.pin_dir().display().to_string(),
            "run",
            "--iface",
            &lab.pbx_if,
        ])
        .output()?;
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "sipfilter: sipfilter run must run as root: it loads an XDP program and pins its maps"
    );
    assert!(!lab.has_xdp()?);
    Ok(())
}

#[test]
fn metrics_pass_promtool_and_count_what_was_sent() -> anyhow::Result<()> {
    let lab = Lab::new("metrics")?;
    let rx = lab.receiver()?;
    let mut agent = lab.agent("agent", &["--detach-on-exit"])?;
    send(&lab.sender(ATTACKER)?, "REGISTER", 200)?;
    let phone = lab.sender(PHONE)?;
    send(&phone, "OPTIONS", 10)?;
    send(&phone, "INVITE", 5)?;
    agent.wait_for_log(&format!("ban source={ATTACKER}"), Duration::from_secs(5))?;
    // The phone never registered, so it is unknown: stealth keeps its OPTIONS from the PBX
    // (a scanner's probe looks the same), its INVITEs fit the unknown burst.
    assert_eq!(rx.from(PHONE), 5);

    // A client that connects and says nothing does not hold the agent up: bans are still
    // logged and other scrapes still answered while it hangs on.
    let _silent = {
        let _inside = lab.pbx.enter()?;
        std::net::TcpStream::connect("127.0.0.1:9460")?
    };
    send(&lab.sender(OTHER)?, "REGISTER", 160)?;
    agent.wait_for_log(&format!("ban source={OTHER}"), Duration::from_secs(2))?;
    let text = scrape(&lab.pbx, "127.0.0.1:9460")?;
    let check = sh_stdin(&["promtool", "check", "metrics"], &text)?;
    assert!(
        check.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let get = |s: &str| sample(&text, s).unwrap_or_else(|| panic!("no sample {s} in:\n{text}"));
    // CrowdSec is not configured: none of its metrics (an `up 0` would fire a generic alert).
    assert!(!text.contains("sipfilter_crowdsec_"), "{text}");
    // Nor allowlist names' (none configured).
    assert!(!text.contains("sipfilter_allow_name"), "{text}");
    assert_eq!(get(r#"sipfilter_sip_messages_total{method="REGISTER"}"#), 360.0);
    assert_eq!(get(r#"sipfilter_sip_messages_total{method="OPTIONS"}"#), 10.0);
    assert_eq!(get(r#"sipfilter_sip_messages_total{method="INVITE"}"#), 5.0);
    // Two unknown flooders: 20 pass each (the unknown burst), the next 130 are throttled
    // (dropped, no ban), the 151st empties the flood bucket and bans, the rest drop as
    // banned; the phone's 10 OPTIONS drop for stealth.
    assert_eq!(get(r#"sipfilter_packets_total{action="drop"}"#), 330.0);
    assert_eq!(get(r#"sipfilter_packet_reasons_total{reason="rate_register"}"#), 2.0);
    assert_eq!(get(r#"sipfilter_packet_reasons_total{reason="throttled"}"#), 260.0);
    assert_eq!(get(r#"sipfilter_packet_reasons_total{reason="banned"}"#), 58.0);
    assert_eq!(get(r#"sipfilter_packet_reasons_total{reason="stealth"}"#), 10.0);
    assert_eq!(get(r#"sipfilter_packet_reasons_total{reason="accepted"}"#), 45.0);
    assert_eq!(get(r#"sipfilter_bans_total{reason="rate_register"}"#), 2.0);
    assert_eq!(get(r#"sipfilter_ban_events_total{reason="rate_register"}"#), 2.0);
    assert_eq!(get("sipfilter_active_bans"), 2.0);
    assert!(get("sipfilter_program_runs_total") >= 375.0);
    assert!(get("sipfilter_program_run_seconds_total") > 0.0);
    assert_eq!(get(r#"sipfilter_build_info{version="0.4.0"}"#), 1.0);
    assert!(!text.contains(ATTACKER), "no per-IP labels");

    // Localhost only by default: not reachable from the LAN.
    let refused = {
        let _inside = lab.lan.enter()?;
        std::net::TcpStream::connect_timeout(&format!("{PBX}:9460").parse()?, Duration::from_secs(2)).is_err()
    };
    assert!(
        refused,
        "the metrics endpoint must not be reachable from other hosts by default"
    );
    Ok(())
}

fn sh_stdin(args: &[&str], input: &str) -> anyhow::Result<std::process::Output> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(args[0])
        .args(&args[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", args[0]))?;
    child.stdin.take().unwrap().write_all(input.as_bytes())?;
    Ok(child.wait_with_output()?)
}

#[test]
fn without_native_xdp_it_falls_back_to_generic_mode_and_detach_says_what_it_removed() -> anyhow::Result<()> {
    let lab = Lab::new("generic")?;
    // Loopback has no native XDP support.
    let state = lab.state_file();
    let agent = AgentProcess::start(
        &lab.pbx,
        &lab.pin_dir(),
        &lab.dir,
        "agent",
        &[
            "--iface",
            "lo",
            "--iface",
            &lab.pbx_if,
            "--state-file",
            &state,
            "--metrics-listen",
            "off",
        ],
    )?;
    let log = agent.log();
    assert!(log.contains("warning: lo has no native XDP"), "{log}");
    assert!(log.contains("attached to lo in generic mode"), "{log}");
    assert!(
        log.contains(&format!("attached to {} in native mode", lab.pbx_if)),
        "{log}"
    );
    assert!(lab.pbx.ip(&["link", "show", "dev", "lo"])?.contains("xdpgeneric"));
    agent.stop()?;

    let one = sipfilter(None, &lab.pin_dir(), &["detach", "--iface", "lo"])?;
    let text = String::from_utf8_lossy(&one.stdout);
    assert!(text.starts_with("detached sipfilter from lo (link "), "{text}");
    assert!(!lab.pbx.ip(&["link", "show", "dev", "lo"])?.contains("xdp"));
    assert!(lab.has_xdp()?, "the other interface keeps its filter");

    // --mode native refuses instead of falling back (now that no pinned link is adopted).
    let out = std::process::Command::new("timeout")
        .args(["30", "ip", "netns", "exec", &lab.pbx.name])
        .arg(sipfilter_tests::agent::sipfilter_bin())
        .args(["--pin-dir", &lab.pin_dir().display().to_string()])
        .args([
            "run",
            "--iface",
            "lo",
            "--mode",
            "native",
            "--metrics-listen",
            "off",
            "--state-file",
            &state,
        ])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("lo does not support native XDP"), "{err}");

    let rest = sipfilter(None, &lab.pin_dir(), &["detach"])?;
    assert!(String::from_utf8_lossy(&rest.stdout).contains(&format!("detached sipfilter from {}", lab.pbx_if)));
    assert!(!lab.has_xdp()?);
    Ok(())
}

#[test]
fn ending_monitor_mode_lifts_the_bans_it_recorded() -> anyhow::Result<()> {
    let lab = Lab::new("monitor")?;
    let config = lab.path("sipfilter.toml");
    std::fs::write(&config, "monitor = true\n[agent]\nmetrics_listen = \"off\"\n")?;
    let rx = lab.receiver()?;
    let config_arg = config.display().to_string();
    let mut agent = lab.agent("agent", &["--config", &config_arg, "--detach-on-exit"])?;
    send(&lab.sender(ATTACKER)?, "REGISTER", 200)?;
    agent.wait_for_log(
        &format!("ban source={ATTACKER} reason=rate_register method=REGISTER duration=300s strike=1 monitor=true"),
        Duration::from_secs(5),
    )?;
    assert_eq!(rx.from(ATTACKER), 200, "monitor mode drops nothing");
    assert_eq!(
        banned_sources(&lab)?,
        vec![ATTACKER.to_string()],
        "but records who would be banned"
    );

    std::fs::write(&config, "monitor = false\n[agent]\nmetrics_listen = \"off\"\n")?;
    agent.signal(libc::SIGHUP);
    agent.wait_for_log("monitor mode is off: lifted 1 ban(s)", Duration::from_secs(5))?;
    assert!(banned_sources(&lab)?.is_empty());
    // From now on it enforces: the same flood is cut off after its burst.
    send(&lab.sender(PHONE)?, "REGISTER", 200)?;
    assert_eq!(rx.from(PHONE), UNKNOWN_BURST);
    Ok(())
}

// IPv6: each address is its own source; the agent bans the whole /64 only on evidence.

/// The addresses of an IPv6 /64 of a lab: `prefix` is its first four groups.
fn v6(prefix: &str, host: u32) -> String {
    format!("{prefix}::{host:x}")
}

fn deny_cidrs(lab: &Lab) -> anyhow::Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(&lab.cli(&["deny", "list", "--json"])?)?;
    Ok(v.as_array()
        .context("deny list --json is an array")?
        .iter()
        .filter_map(|e| e["cidr"].as_str().map(str::to_owned))
        .collect())
}

#[test]
fn ipv6_a_flood_bans_its_address_and_a_phone_in_the_same_64_keeps_registering() -> anyhow::Result<()> {
    let lab = Lab::with_net("v6-address", "10.204.0")?;
    let pbx6 = "2001:db8:204::1";
    let attacker = v6("2001:db8:204:1", 0xa);
    let phone = v6("2001:db8:204:1", 0xb);
    lab.add_ipv6(pbx6, &[attacker.clone(), phone.clone()])?;
    let rx = lab.receiver_at(pbx6)?;
    let mut agent = lab.agent("agent", &["--detach-on-exit", "--metrics-listen", "off"])?;
    let phone_socket = lab.sender(&phone)?;

    send_to(&phone_socket, pbx6, "REGISTER", 5)?;
    send_to(&lab.sender(&attacker)?, pbx6, "REGISTER", 300)?;
    agent.wait_for_log(
        &format!("ban source={attacker} reason=rate_register method=REGISTER duration=300s strike=1"),
        Duration::from_secs(5),
    )?;
    send_to(&phone_socket, pbx6, "REGISTER", 10)?;
    // The banned address keeps flooding: 12,000 more, more than the /64's whole aggregate
    // budget (4,840, refilling 520/s) between two of the agent's checks (every 3 s). Dropped
    // at the filter, they must not count toward the prefix.
    let attacker_socket = lab.sender(&attacker)?;
    for _ in 0..2 {
        send_to(&attacker_socket, pbx6, "REGISTER", 12_000)?;
        // (2 each: the phone, unknown here, stays within its own REGISTER burst of 20.)
        send_to(&phone_socket, pbx6, "REGISTER", 2)?;
        std::thread::sleep(Duration::from_millis(3500));
    }
    eprintln!("agent log:\n{}\ndeny list: {:?}", agent.log(), deny_cidrs(&lab)?);
    assert_eq!(rx.from(&attacker), UNKNOWN_BURST, "the attacker's burst, then nothing");
    assert_eq!(
        rx.from(&phone),
        19,
        "every REGISTER of the phone next door reached the PBX"
    );

    let bans = ban_list(&lab)?;
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(
        bans[0]["source"],
        attacker.as_str(),
        "the address is banned, not its /64: {bans:?}"
    );
    assert_eq!(bans[0]["reason"], "rate_register", "{bans:?}");
    assert!(deny_cidrs(&lab)?.is_empty(), "one banned address does not ban its /64");
    let log = agent.stop()?;
    assert!(!log.contains("reason=prefix"), "{log}");
    Ok(())
}

#[test]
fn ipv6_three_banned_addresses_ban_their_64() -> anyhow::Result<()> {
    let lab = Lab::with_net("v6-evidence", "10.205.0")?;
    let pbx6 = "2001:db8:205::1";
    let flooders: Vec<String> = (0xa..=0xc).map(|h| v6("2001:db8:205:1", h)).collect();
    let fresh = v6("2001:db8:205:1", 0xd);
    let elsewhere = v6("2001:db8:205:2", 0x9);
    let mut all = flooders.clone();
    all.extend([fresh.clone(), elsewhere.clone()]);
    lab.add_ipv6(pbx6, &all)?;
    let rx = lab.receiver_at(pbx6)?;
    let mut agent = lab.agent("agent", &["--detach-on-exit", "--metrics-listen", "off"])?;

    let mut started = std::time::Instant::now();
    for (i, addr) in flooders.iter().enumerate() {
        started = std::time::Instant::now();
        send_to(&lab.sender(addr)?, pbx6, "REGISTER", 200)?;
        agent.wait_for_log(
            &format!("ban source={addr} reason=rate_register"),
            Duration::from_secs(5),
        )?;
        if i < 2 {
            assert!(
                !agent.log().contains("reason=prefix"),
                "banned the /64 after {} address(es)",
                i + 1
            );
        }
    }
    agent.wait_for_log(
        "ban source=2001:db8:205:1::/64 reason=prefix duration=300s (several of its addresses were banned)",
        Duration::from_secs(5),
    )?;
    eprintln!(
        "ipv6 evidence: prefix ban logged {:?} after the third address began its flood",
        started.elapsed()
    );
    assert_eq!(deny_cidrs(&lab)?, vec!["2001:db8:205:1::/64".to_string()]);
    let prefix_ban = ban_list(&lab)?
        .into_iter()
        .find(|b| b["source"] == "2001:db8:205:1::/64")
        .context("the prefix ban is in `ban list`")?;
    assert_eq!(
        (prefix_ban["kind"].as_str(), prefix_ban["reason"].as_str()),
        (Some("cidr"), Some("prefix"))
    );
    for addr in &flooders {
        assert_eq!(rx.from(addr), UNKNOWN_BURST, "{addr}");
    }

    send_to(&lab.sender(&fresh)?, pbx6, "REGISTER", 10)?;
    assert_eq!(
        rx.from(&fresh),
        0,
        "a fresh address of the banned /64 gets nothing through"
    );
    send_to(&lab.sender(&elsewhere)?, pbx6, "REGISTER", 10)?;
    assert_eq!(rx.from(&elsewhere), 10, "another /64 is not affected");
    Ok(())
}

#[test]
fn ipv6_rotation_under_every_address_limit_exhausts_the_prefix_budget() -> anyhow::Result<()> {
    // 60 addresses × 140 REGISTERs: each stays under its own flood bucket (150), so no address
    // is banned; together 8,400 messages against the /64's budget of 4 × (150 + 60 + 1000) =
    // 4,840 (refilling 520/s). Checked every 3 s: even when a check falls in the middle of the
    // rotation, the next one finds the budget exhausted (40 × 140 = 5,600 would not be: half
    // before a check, half after, the 3 s of refill cover it).
    let lab = Lab::with_net("v6-rotation", "10.206.0")?;
    let pbx6 = "2001:db8:206::1";
    let rotating: Vec<String> = (0..60).map(|h| v6("2001:db8:206:1", 0x100 + h)).collect();
    let fresh = v6("2001:db8:206:1", 0xffff);
    let elsewhere = v6("2001:db8:206:2", 0x9);
    let mut all = rotating.clone();
    all.extend([fresh.clone(), elsewhere.clone()]);
    lab.add_ipv6(pbx6, &all)?;
    let rx = lab.receiver_at(pbx6)?;
    let mut agent = lab.agent("agent", &["--detach-on-exit", "--metrics-listen", "off"])?;
    let sockets = rotating
        .iter()
        .map(|a| lab.sender(a))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let started = std::time::Instant::now();
    for s in &sockets {
        send_to(s, pbx6, "REGISTER", 140)?;
    }
    let sent_in = started.elapsed();
    agent.wait_for_log(
        "ban source=2001:db8:206:1::/64 reason=prefix duration=300s (its addresses together exceeded its aggregate budget)",
        Duration::from_secs(10),
    )?;
    let banned_after = started.elapsed();
    eprintln!("ipv6 rotation: 8400 REGISTERs sent in {sent_in:?}, prefix ban logged {banned_after:?} after the first");
    assert!(
        banned_after < Duration::from_secs(8),
        "prefix ban after {banned_after:?}"
    );
    let through = rx.total();
    assert_eq!(
        through,
        60 * UNKNOWN_BURST,
        "each address: its unknown burst, the rest throttled"
    );
    let log = agent.log();
    assert!(
        !log.contains("reason=rate_register"),
        "no address reached its own limit:\n{log}"
    );
    assert_eq!(deny_cidrs(&lab)?, vec!["2001:db8:206:1::/64".to_string()]);

    send_to(&lab.sender(&fresh)?, pbx6, "REGISTER", 10)?;
    assert_eq!(
        rx.from(&fresh),
        0,
        "a fresh address of the rotating /64 gets nothing through"
    );
    send_to(&lab.sender(&elsewhere)?, pbx6, "REGISTER", 10)?;
    assert_eq!(rx.from(&elsewhere), 10, "another /64 is not affected");
    Ok(())
}

// Earned trust: known sources and cracked extensions, learnt from a registrar's answers,
// survive a restart and a reboot.

/// What a registrar answers, without a registrar: every REGISTER (from any source) to
/// `users` (extension → password) gets 401 without credentials, 200 with the right password
/// (this "digest" carries it in clear: `response="PASSWORD"`), 401 with a wrong one; a
/// REGISTER for another extension gets 404. Headers copied from the request, as RFC 3261
/// §8.2.6 asks; the answers leave through the PBX end, where the agent's answers program
/// reads them. Other requests are counted, not answered.
struct Responder {
    /// Every request received: its source, its To user, and the answer sent (0: none).
    seen: Arc<Mutex<Vec<(SocketAddr, String, u16)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The value of the first header `name` (case-insensitive), without the name.
fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The user of the first `sip:` URI in a header value.
fn uri_user(value: &str) -> String {
    let rest = value.split_once("sip:").map_or("", |(_, r)| r);
    rest.split(['@', '>', ';']).next().unwrap_or("").to_string()
}

fn registrar_answer(msg: &str, users: &HashMap<String, String>) -> Option<(u16, String)> {
    if !msg.starts_with("REGISTER ") {
        return None;
    }
    let ext = uri_user(header(msg, "To")?);
    let status = match (users.get(&ext), header(msg, "Authorization")) {
        (None, _) => "404 Not Found",
        (Some(_), None) => "401 Unauthorized",
        (Some(pw), Some(auth)) if auth.contains(&format!("response=\"{pw}\"")) => "200 OK",
        (Some(_), Some(_)) => "401 Unauthorized",
    };
    let mut out = format!("SIP/2.0 {status}\r\n");
    for h in ["Via", "From", "To", "Call-ID", "CSeq"] {
        let v = header(msg, h)?;
        let v = if h == "To" {
            format!("{v};tag=srv")
        } else {
            v.to_string()
        };
        out.push_str(&format!("{h}: {v}\r\n"));
    }
    if status.starts_with("401") {
        out.push_str("WWW-Authenticate: Digest realm=\"pbx.example\", nonce=\"5f1f0c0ffee\"\r\n");
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    Some((status[..3].parse().unwrap(), out))
}

impl Responder {
    fn spawn(lab: &Lab, users: &[(&str, &str)]) -> anyhow::Result<Responder> {
        let socket = {
            let _inside = lab.pbx.enter()?;
            UdpSocket::bind(sip_addr(&lab.v4(1)))?
        };
        socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        let users: HashMap<String, String> = users.iter().map(|(u, p)| (u.to_string(), p.to_string())).collect();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let to = header(&msg, "To").map(uri_user).unwrap_or_default();
                let mut code = 0;
                if let Some((status, answer)) = registrar_answer(&msg, &users) {
                    if socket.send_to(answer.as_bytes(), from).is_ok() {
                        code = status;
                    }
                }
                c.lock().unwrap().push((from, to, code));
            }
        });
        Ok(Responder {
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// Requests received from `addr` (port 5060) for extension `ext` (any: None).
    fn from(&self, addr: &str, ext: Option<&str>) -> usize {
        std::thread::sleep(Duration::from_millis(200));
        let key = sip_addr(addr);
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(from, to, _)| *from == key && ext.is_none_or(|e| e == to))
            .count()
    }

    /// The answers sent to `addr`, in order.
    fn answers_to(&self, addr: &str) -> Vec<u16> {
        let key = sip_addr(addr);
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(from, _, code)| *from == key && *code != 0)
            .map(|(_, _, code)| *code)
            .collect()
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A phone (or a robot) registering: each REGISTER is a new request (new Via branch, next
/// CSeq), as after a challenge.
struct Registering {
    socket: UdpSocket,
    local: String,
    pbx: SocketAddr,
    cseq: u32,
}

impl Registering {
    fn new(lab: &Lab, addr: &str) -> anyhow::Result<Registering> {
        let socket = lab.sender(addr)?;
        socket.set_read_timeout(Some(Duration::from_millis(700)))?;
        Ok(Registering {
            socket,
            local: addr.to_string(),
            pbx: sip_addr(&lab.v4(1)),
            cseq: 0,
        })
    }

    /// Sends a REGISTER for `ext` (with credentials when `password` is given) and returns
    /// the status code of the answer, if one arrives.
    fn register(&mut self, ext: &str, password: Option<&str>) -> anyhow::Result<Option<u16>> {
        self.cseq += 1;
        let (local, cseq) = (&self.local, self.cseq);
        let auth = password.map_or(String::new(), |pw| {
            format!(
                "Authorization: Digest username=\"{ext}\", realm=\"pbx.example\", nonce=\"5f1f0c0ffee\", \
                 uri=\"sip:pbx.example\", response=\"{pw}\"\r\n"
            )
        });
        let msg = format!(
            "REGISTER sip:pbx.example SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local}:5060;branch=z9hG4bK-{ext}-{cseq}\r\n\
             From: <sip:{ext}@pbx.example>;tag={ext}\r\n\
             To: <sip:{ext}@pbx.example>\r\n\
             Call-ID: reg-{ext}@{local}\r\n\
             CSeq: {cseq} REGISTER\r\n\
             {auth}\
             Content-Length: 0\r\n\r\n"
        );
        self.socket.send_to(msg.as_bytes(), self.pbx)?;
        let mut buf = [0u8; 4096];
        match self.socket.recv_from(&mut buf) {
            Ok((n, _)) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                Ok(text
                    .strip_prefix("SIP/2.0 ")
                    .and_then(|r| r.get(..3))
                    .and_then(|c| c.parse().ok()))
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

fn cli_json(lab: &Lab, args: &[&str]) -> anyhow::Result<Vec<serde_json::Value>> {
    let v: serde_json::Value = serde_json::from_str(&lab.cli(args)?)?;
    Ok(v.as_array().with_context(|| format!("{args:?} is an array"))?.clone())
}

fn known(lab: &Lab) -> anyhow::Result<Vec<(String, String)>> {
    Ok(cli_json(lab, &["known", "list", "--json"])?
        .iter()
        .map(|k| {
            (
                k["source"].as_str().unwrap_or("").to_owned(),
                k["extension"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect())
}

fn cracked(lab: &Lab) -> anyhow::Result<Vec<(String, String)>> {
    Ok(cli_json(lab, &["cracked", "list", "--json"])?
        .iter()
        .map(|k| {
            (
                k["extension"].as_str().unwrap_or("").to_owned(),
                k["source"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect())
}

#[test]
fn known_sources_and_cracked_extensions_survive_restart_and_reboot() -> anyhow::Result<()> {
    let mut lab = Lab::with_net("trust", "10.207.0")?;
    let (robot, phone, other) = (lab.v4(2), lab.v4(3), lab.v4(4));
    let pbx = Responder::spawn(&lab, &[("201", "Pw-201-phone"), ("202", "202")])?;
    let mut agent = lab.agent("agent1", &["--metrics-listen", "off"])?;

    // The phone: REGISTER, 401, REGISTER with credentials, 200: known.
    let mut p = Registering::new(&lab, &phone)?;
    assert_eq!(p.register("201", None)?, Some(401));
    assert_eq!(p.register("201", Some("Pw-201-phone"))?, Some(200));
    eventually("the phone is known", || {
        Ok(known(&lab)? == vec![(phone.clone(), "201".to_string())])
    })?;

    // The password = extension robot: 200 is not found, 201 refuses "201", 202 takes "202".
    let mut r = Registering::new(&lab, &robot)?;
    assert_eq!(r.register("200", None)?, Some(404));
    assert_eq!(r.register("201", None)?, Some(401));
    assert_eq!(r.register("201", Some("201"))?, Some(401));
    assert_eq!(r.register("202", None)?, Some(401));
    assert_eq!(
        r.register("202", Some("202"))?,
        None,
        "the cracked guess's 200 is withheld"
    );
    assert_eq!(
        pbx.answers_to(&robot),
        vec![404, 401, 401, 401, 200],
        "the PBX did answer 200"
    );
    agent.wait_for_log(&format!("ban source={robot} reason=cracked"), Duration::from_secs(5))?;
    eventually("202 is cracked", || {
        Ok(cracked(&lab)? == vec![("202".to_string(), robot.clone())])
    })?;
    eventually("both in the state file", || {
        let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(lab.state_file())?)?;
        Ok(state["known"].as_array().is_some_and(|k| k.len() == 1)
            && state["cracked"].as_array().is_some_and(|c| c.len() == 1))
    })?;
    agent.stop()?;
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(lab.state_file())?)?;
    assert_eq!(
        (
            state["known"][0]["source"].as_str(),
            state["known"][0]["extension"].as_str()
        ),
        (Some(phone.as_str()), Some("201")),
        "{state:#}"
    );
    assert_eq!(
        (
            state["cracked"][0]["extension"].as_str(),
            state["cracked"][0]["source"].as_str()
        ),
        (Some("202"), Some(robot.as_str())),
        "{state:#}"
    );

    // A restart keeps the pinned maps.
    let agent = lab.agent("agent2", &["--metrics-listen", "off"])?;
    assert!(agent.log().contains("took over the attachment"), "{}", agent.log());
    assert_eq!(known(&lab)?, vec![(phone.clone(), "201".to_string())]);
    assert_eq!(cracked(&lab)?, vec![("202".to_string(), robot.clone())]);
    agent.stop()?;

    // An IPv6 phone known too (written into the state file as the agent saves one): the
    // program keys sources by the full address, so it must come back under it, not under
    // its /64 (the ban prefix).
    let phone6 = "2001:db8:207::5";
    let mut saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(lab.state_file())?)?;
    let mut known6 = saved["known"][0].clone();
    known6["source"] = serde_json::json!(phone6);
    saved["known"].as_array_mut().context("known is an array")?.push(known6);
    std::fs::write(lab.state_file(), serde_json::to_string_pretty(&saved)?)?;

    // A reboot: pins and attachment gone; the state file brings both back.
    sipfilter(None, &lab.pin_dir(), &["detach"])?;
    assert!(!lab.has_xdp()?);
    lab.bpffs = PrivateBpffs::new()?;
    let mut agent = lab.agent("agent3", &["--metrics-listen", "off"])?;
    assert!(
        agent
            .log()
            .contains("restored 2 known source(s) and 1 cracked extension(s)"),
        "{}",
        agent.log()
    );
    let mut want = vec![
        (phone.clone(), "201".to_string()),
        (phone6.to_string(), "201".to_string()),
    ];
    want.sort();
    let mut got = known(&lab)?;
    got.sort();
    assert_eq!(got, want, "the IPv6 phone under its full address");
    assert_eq!(cracked(&lab)?, vec![("202".to_string(), robot.clone())]);

    // And in force: the known phone's OPTIONS reach the PBX, an unknown source's do not
    // (stealth); quarantine keeps unknown sources away from the cracked 202.
    agent.wait_for_log("quarantine on", Duration::from_secs(5))?;
    send_to(&p.socket, &lab.v4(1), "OPTIONS", 5)?;
    assert_eq!(pbx.from(&phone, Some("1000")), 5, "the known phone's OPTIONS");
    let mut o = Registering::new(&lab, &other)?;
    send_to(&o.socket, &lab.v4(1), "OPTIONS", 5)?;
    assert_eq!(pbx.from(&other, None), 0, "an unknown source's OPTIONS");
    assert_eq!(o.register("202", Some("202"))?, None);
    assert_eq!(
        pbx.from(&other, Some("202")),
        0,
        "quarantine: REGISTER for 202 from an unknown source"
    );
    assert_eq!(o.register("201", None)?, Some(401), "other extensions are open");
    drop(agent);
    sipfilter(None, &lab.pin_dir(), &["detach"])?;
    Ok(())
}

/// The answers program through a clsact filter (what kernels before 6.6 have, forced here
/// where tcx exists): it judges answers the same, a restarted agent replaces its filter rather
/// than adding a second one, and `--detach-on-exit` removes it.
#[test]
fn the_answers_program_works_through_a_clsact_filter_too() -> anyhow::Result<()> {
    let lab = Lab::with_net("clsact", "10.208.0")?;
    let phone = lab.v4(3);
    let _pbx = Responder::spawn(&lab, &[("201", "Pw-201-phone")])?;
    let config = lab.path("sipfilter.toml");
    std::fs::write(&config, "[agent]\negress = \"clsact\"\nmetrics_listen = \"off\"\n")?;
    let config_arg = config.display().to_string();
    let filters = || lab.pbx.exec(&["tc", "filter", "show", "dev", &lab.pbx_if, "egress"]);
    let mut agent = lab.agent("agent1", &["--config", &config_arg])?;
    agent.wait_for_log("answers program on the egress", Duration::from_secs(5))?;
    assert!(agent.log().contains("(clsact)"), "{}", agent.log());
    let shown = filters()?;
    assert_eq!(shown.matches("sipfilter_answers").count(), 1, "{shown}");

    let mut p = Registering::new(&lab, &phone)?;
    assert_eq!(p.register("201", None)?, Some(401));
    assert_eq!(p.register("201", Some("Pw-201-phone"))?, Some(200));
    eventually("the phone is known", || {
        Ok(known(&lab)? == vec![(phone.clone(), "201".to_string())])
    })?;

    agent.stop()?;
    let mut agent = lab.agent("agent2", &["--config", &config_arg, "--detach-on-exit"])?;
    agent.wait_for_log("answers program on the egress", Duration::from_secs(5))?;
    let shown = filters()?;
    assert_eq!(
        shown.matches("sipfilter_answers").count(),
        1,
        "one filter after a restart: {shown}"
    );
    agent.stop()?;
    let shown = filters()?;
    assert!(!shown.contains("sipfilter_answers"), "detached: {shown}");
    Ok(())
}

/// The egress attach path follows the kernel: tcx from 6.6, a clsact filter before (Debian
/// 12's 6.1; `cargo xtask test` runs this in its kernel-test VM too). `sipfilter status`
/// names the kernel and the path, and the answers are read either way.
#[test]
fn the_egress_attach_path_follows_the_kernel_and_status_names_both() -> anyhow::Result<()> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?.trim().to_owned();
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>());
    let (major, minor) = match (numbers.next(), numbers.next()) {
        (Some(Ok(a)), Some(Ok(b))) => (a, b),
        _ => anyhow::bail!("cannot read the kernel release {release:?}"),
    };
    let expected = if (major, minor) >= (6, 6) { "tcx" } else { "clsact" };

    let lab = Lab::with_net("egresspath", "10.210.0")?;
    let phone = lab.v4(3);
    let _pbx = Responder::spawn(&lab, &[("201", "Pw-201-phone")])?;
    let mut agent = lab.agent("agent", &[])?;
    agent.wait_for_log("answers program on the egress", Duration::from_secs(10))?;
    assert!(
        agent.log().contains(&format!("({expected})")),
        "kernel {release}: expected {expected}: {}",
        agent.log()
    );
    let status: serde_json::Value = serde_json::from_str(&lab.cli(&["status", "--json"])?)?;
    assert_eq!(status["kernel"].as_str(), Some(release.as_str()), "{status}");
    let path = status["egress_attach"].as_str().unwrap_or("");
    assert!(path.starts_with(expected), "kernel {release}: status says {path:?}");

    let mut p = Registering::new(&lab, &phone)?;
    assert_eq!(p.register("201", None)?, Some(401));
    assert_eq!(p.register("201", Some("Pw-201-phone"))?, Some(200));
    eventually("the phone is known", || {
        Ok(known(&lab)? == vec![(phone.clone(), "201".to_string())])
    })?;
    agent.stop()?;
    Ok(())
}

/// `Type=notify`: the agent tells systemd (the socket in `$NOTIFY_SOCKET`) when it is ready,
/// reloading and stopping.
#[test]
fn the_agent_notifies_systemd_when_ready_reloading_and_stopping() -> anyhow::Result<()> {
    let lab = Lab::with_net("notify", "10.209.0")?;
    let socket_path = lab.path("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path)?;
    socket.set_read_timeout(Some(Duration::from_secs(20)))?;
    let config = lab.path("sipfilter.toml");
    std::fs::write(&config, "[agent]\nmetrics_listen = \"off\"\n")?;
    let bin = sipfilter_tests::agent::sipfilter_bin();
    let (notify, pin, state) = (
        format!("NOTIFY_SOCKET={}", socket_path.display()),
        lab.pin_dir().display().to_string(),
        lab.state_file(),
    );
    let mut agent = lab.pbx.spawn(
        "agent",
        &[
            "env",
            &notify,
            bin.to_str().unwrap(),
            "--pin-dir",
            &pin,
            "run",
            "--config",
            config.to_str().unwrap(),
            "--iface",
            &lab.pbx_if,
            "--state-file",
            &state,
            "--detach-on-exit",
        ],
        &lab.dir,
    )?;
    let mut buf = [0u8; 512];
    let mut next = || -> anyhow::Result<String> {
        loop {
            match socket.recv(&mut buf) {
                Ok(n) => return Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
                // A signal meant for another test's child can land on this thread.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
    };
    let ready = next()?;
    assert!(ready.starts_with("READY=1\nSTATUS=filtering SIP on "), "{ready}");
    agent.signal(libc::SIGHUP);
    assert_eq!(next()?, "RELOADING=1");
    assert_eq!(next()?, "READY=1");
    agent.signal(libc::SIGTERM);
    assert_eq!(next()?, "STOPPING=1");
    agent.wait(Duration::from_secs(10))?;
    Ok(())
}

/// `sipfilter events --json` for this lab's agent.
fn trail(lab: &Lab) -> anyhow::Result<Vec<serde_json::Value>> {
    let out = lab.cli(&["events", "--json", "--state-file", &lab.state_file()])?;
    out.lines()
        .map(|l| serde_json::from_str(l).context("an events line is JSON"))
        .collect()
}

fn has_event(events: &[serde_json::Value], event: &str, source: &str, reason: &str) -> bool {
    events
        .iter()
        .any(|e| e["event"] == event && e["source"] == source && e["reason"] == reason)
}

/// The entries for `event` on `source`.
fn entries<'a>(events: &'a [serde_json::Value], event: &str, source: &str) -> Vec<&'a serde_json::Value> {
    events
        .iter()
        .filter(|e| e["event"] == event && e["source"] == source)
        .collect()
}

#[test]
fn the_audit_trail_records_bans_and_lifts_with_their_times_across_restarts() -> anyhow::Result<()> {
    let lab = Lab::with_net("events", "10.212.0")?;
    let attacker_ip = lab.v4(2);
    let attacker = lab.sender(&attacker_ip)?;
    let agent = lab.agent("agent1", &[])?;
    send_to(&attacker, &lab.v4(1), "REGISTER", 300)?;
    eventually("the flood's ban in the trail", || {
        Ok(has_event(&trail(&lab)?, "ban", &attacker_ip, "rate_register"))
    })?;
    let flood = trail(&lab)?;
    let ban = entries(&flood, "ban", &attacker_ip)[0].clone();
    assert_eq!(
        (ban["origin"].as_str(), ban["method"].as_str()),
        (Some("sipfilter"), Some("REGISTER")),
        "{ban}"
    );
    assert!(
        ban["detail"]
            .as_str()
            .is_some_and(|d| d.contains("duration=300s") && !d.contains("reason=") && !d.contains("method=")),
        "reason and method are fields of their own, not words of the detail: {ban}"
    );
    // An operator lifts it; another ban (with the operator's words) runs out.
    lab.cli(&["ban", "del", &attacker_ip])?;
    let short = lab.v4(9);
    lab.cli(&["ban", "add", &short, "--for", "2s", "--reason", "lab test"])?;
    eventually("the expiry", || Ok(has_event(&trail(&lab)?, "lift", &short, "expired")))?;
    let events = trail(&lab)?;
    let lifts = entries(&events, "lift", &attacker_ip);
    assert_eq!(
        lifts.len(),
        1,
        "the operator's lift, once (not again by the agent): {lifts:?}"
    );
    assert_eq!(
        (lifts[0]["origin"].as_str(), lifts[0]["reason"].as_str()),
        (Some("cli"), Some("removed"))
    );
    let manual = entries(&events, "ban", &short);
    assert_eq!(manual.len(), 1, "{manual:?}");
    assert_eq!(
        (manual[0]["origin"].as_str(), manual[0]["reason"].as_str()),
        (Some("cli"), Some("manual"))
    );
    let detail = manual[0]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("duration=2s") && detail.ends_with("comment=lab test"),
        "{detail}"
    );
    assert_eq!(
        entries(&events, "lift", &short)[0]["origin"],
        "sipfilter",
        "an expiry is the filter's"
    );

    // The agent's housekeeping round, every second, shows in `status`.
    let status = |lab: &Lab| -> anyhow::Result<serde_json::Value> {
        let out = sipfilter(None, &lab.pin_dir(), &["status", "--json"])?;
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let first = status(&lab)?["agent"].clone();
    assert!(
        first["last_housekeeping_secs_ago"].as_f64().is_some_and(|s| s < 2.5),
        "{first}"
    );
    std::thread::sleep(Duration::from_millis(2100));
    let second = status(&lab)?["agent"].clone();
    assert!(
        second["last_housekeeping_epoch_secs"].as_u64() > first["last_housekeeping_epoch_secs"].as_u64(),
        "the rounds go on: {first} then {second}"
    );

    agent.stop()?;
    // While no agent runs, the operator's changes still reach the trail the agent named under
    // its pins, and `events --pin-dir` finds it without being told the state file.
    let stopped = status(&lab)?["agent"].clone();
    assert!(
        stopped["last_housekeeping_epoch_secs"].as_u64() >= second["last_housekeeping_epoch_secs"].as_u64(),
        "its last contact: {stopped}"
    );
    let offline = lab.v4(20);
    lab.cli(&["ban", "add", &offline, "--for", "1h"])?;
    lab.cli(&["ban", "del", &offline])?;
    lab.cli(&["deny", "add", "198.51.100.0/24", "--for", "1h"])?;
    lab.cli(&["allow", "add", "192.0.2.7"])?;
    lab.cli(&["allow", "del", "192.0.2.7"])?;
    let out = sipfilter(None, &lab.pin_dir(), &["events", "--json"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let by_pins: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    for (event, source, reason) in [
        ("ban", offline.as_str(), "manual"),
        ("lift", offline.as_str(), "removed"),
        ("deny_add", "198.51.100.0/24", "manual"),
        ("allow_add", "192.0.2.7", "manual"),
        ("allow_del", "192.0.2.7", "manual"),
    ] {
        let found = entries(&by_pins, event, source);
        assert!(
            found.len() == 1 && found[0]["origin"] == "cli" && found[0]["reason"] == reason,
            "{event} {source} by the CLI with the agent stopped: {found:?}"
        );
    }
    assert!(
        by_pins.len() >= events.len() + 5,
        "nothing earlier lost: {} then {}",
        events.len(),
        by_pins.len()
    );
    let table = sipfilter(None, &lab.pin_dir(), &["events"])?;
    assert!(
        String::from_utf8_lossy(&table.stderr)
            .contains(&format!("audit trail: {}", lab.path("events.jsonl").display())),
        "says where it reads: {}",
        String::from_utf8_lossy(&table.stderr)
    );

    let _agent = lab.agent("agent2", &[])?;
    std::thread::sleep(Duration::from_millis(2500));
    let after = trail(&lab)?;
    assert_eq!(
        entries(&after, "lift", &offline).len(),
        1,
        "the offline lift is not recorded again"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    for e in &after {
        let t = e["time"].as_u64().context("time")?;
        assert!(t <= now && now - t < 600, "wall-clock times: {e}");
    }
    let table = lab.cli(&["events", "--state-file", &lab.state_file()])?;
    assert!(table.contains("ban") && table.contains(&attacker_ip), "{table}");

    // Pins no agent ever named: it says where it looked instead of "no events".
    let elsewhere = lab.path("no-pins");
    let out = sipfilter(None, &elsewhere, &["events"])?;
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!(
            "no agent has named its files under the pins in {}",
            elsewhere.display()
        )),
        "{said}"
    );
    Ok(())
}

/// "Restrict registrations to my location — but I have a dynamic IP": an allowlist entry given
/// as a name follows its address (new in before old out) and keeps its last good answer when
/// the resolver dies. The name server is the test's own, in the agent's namespace.
#[test]
fn an_allowlisted_name_follows_its_address_and_keeps_the_last_good_one() -> anyhow::Result<()> {
    let lab = Lab::with_net("names", "10.213.0")?;
    let (old_ip, new_ip) = (lab.v4(2), lab.v4(3));
    let dns = {
        let _inside = lab.pbx.enter()?;
        sipfilter_tests::dns::DnsServer::start(UdpSocket::bind("127.0.0.1:5353")?)?
    };
    dns.set("office.dyn.test", &[old_ip.parse()?], 300);
    let config = lab.path("sipfilter.toml");
    std::fs::write(
        &config,
        "[lists]\nallow = [\"office.dyn.test\"]\n[agent]\ndns_server = \"127.0.0.1:5353\"\nmetrics_listen = \"off\"\n",
    )?;
    let mut agent = lab.agent("agent", &["--config", config.to_str().unwrap()])?;
    assert!(
        agent.log().contains(&format!("allowlisted {old_ip} (office.dyn.test)")),
        "{}",
        agent.log()
    );
    // The office floods: its address is allowlisted through the name, never banned.
    let office = lab.sender(&old_ip)?;
    send_to(&office, &lab.v4(1), "REGISTER", 300)?;
    std::thread::sleep(Duration::from_millis(500));
    assert!(!banned_sources(&lab)?.contains(&old_ip), "{}", agent.log());
    let state = lab.state_file();
    let listed = |lab: &Lab| -> anyhow::Result<Vec<(String, Vec<String>)>> {
        let v: serde_json::Value =
            serde_json::from_str(&lab.cli(&["allow", "list", "--json", "--state-file", &state])?)?;
        Ok(v.as_array()
            .context("array")?
            .iter()
            .map(|e| {
                let names = e["names"].as_array().map_or(Vec::new(), |n| {
                    n.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect()
                });
                (e["cidr"].as_str().unwrap_or("").to_owned(), names)
            })
            .collect())
    };
    assert!(
        listed(&lab)?.contains(&(old_ip.clone(), vec!["office.dyn.test".to_owned()])),
        "{:?}",
        listed(&lab)?
    );
    // The address changes; a reload resolves the name again.
    dns.set("office.dyn.test", &[new_ip.parse()?], 300);
    agent.signal(libc::SIGHUP);
    agent.wait_for_log(&format!("removed {old_ip} from the allowlist"), Duration::from_secs(10))?;
    let log = agent.log();
    let added = log
        .find(&format!("allowlisted {new_ip} (office.dyn.test)"))
        .context("new address added")?;
    let removed = log
        .find(&format!("removed {old_ip} from the allowlist"))
        .context("old removed")?;
    assert!(
        added < removed,
        "the new address comes in before the old one goes:\n{log}"
    );
    let now = listed(&lab)?;
    assert!(
        now.iter().any(|(c, _)| *c == new_ip) && !now.iter().any(|(c, _)| *c == old_ip),
        "{now:?}"
    );
    // The resolver dies: the last good answer stays in force.
    dns.silence(true);
    agent.signal(libc::SIGHUP);
    agent.wait_for_log("cannot resolve office.dyn.test", Duration::from_secs(10))?;
    assert!(listed(&lab)?.iter().any(|(c, _)| *c == new_ip), "kept");
    let table = lab.cli(&["allow", "list", "--state-file", &state])?;
    assert!(table.contains("does not resolve now"), "{table}");
    drop(dns);
    Ok(())
}

/// The agent's resident memory (KiB).
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("VmRSS")
}

#[test]
fn kill_9_in_the_middle_of_a_flood_stops_no_drop_and_loses_no_ban() -> anyhow::Result<()> {
    let lab = Lab::with_net("kill9", "10.216.0")?;
    let rx = lab.receiver()?;
    let attacker_ip = lab.v4(2);
    let attacker = lab.sender(&attacker_ip)?;
    let agent = lab.agent("agent1", &[])?;
    lab.cli(&["ban", "add", &lab.v4(9), "--for", "1h"])?;
    send_to(&attacker, &lab.v4(1), "REGISTER", 300)?;
    eventually("the flood banned", || Ok(banned_sources(&lab)?.contains(&attacker_ip)))?;
    // SIGKILL: no clean stop, no last state file write.
    // SAFETY: kill on a pid this test started.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(300));
    assert!(lab.has_xdp()?, "the program stays attached without its agent");
    let reached = rx.from(&attacker_ip);
    send_to(&attacker, &lab.v4(1), "REGISTER", 100)?;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rx.from(&attacker_ip), reached, "dropping never stopped");
    drop(agent);
    let agent2 = lab.agent("agent2", &[])?;
    assert!(agent2.log().contains("took over the attachment"), "{}", agent2.log());
    let bans = banned_sources(&lab)?;
    assert!(
        bans.contains(&attacker_ip) && bans.contains(&lab.v4(9)),
        "every ban kept: {bans:?}"
    );
    Ok(())
}

/// Unmounts a test's tmpfs when dropped.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_state_folder_is_reported_once_and_written_again_when_space_returns() -> anyhow::Result<()> {
    let lab = Lab::with_net("full", "10.217.0")?;
    let small = lab.path("small");
    std::fs::create_dir_all(&small)?;
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16k", "tmpfs"])
        .arg(&small)
        .status()?;
    anyhow::ensure!(status.success(), "cannot mount a tmpfs");
    let _mounted = Mounted(small.clone());
    let state = small.join("state.json");
    let args = [
        "--iface",
        &lab.pbx_if,
        "--state-file",
        state.to_str().context("path")?,
        "--metrics-listen",
        "127.0.0.1:9460",
    ];
    let mut agent = AgentProcess::start(&lab.pbx, &lab.pin_dir(), &lab.dir, "agent", &args)?;
    // 2,000 CLI list entries: the state file outgrows the 16 KiB folder.
    let list: String = (0..2000u32)
        .map(|i| format!("172.{}.{}.0/24\n", 16 + (i >> 8), i & 255))
        .collect();
    let file = lab.path("blocklist.txt");
    std::fs::write(&file, list)?;
    lab.cli(&["import", file.to_str().context("path")?, "--for", "1h"])?;
    agent.wait_for_log("cannot write the state file", Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_secs(3));
    let log = agent.log();
    assert_eq!(
        log.matches("cannot write the state file").count(),
        1,
        "said once:\n{log}"
    );
    let metrics = sipfilter_tests::agent::scrape(&lab.pbx, "127.0.0.1:9460")?;
    let failures = sipfilter_tests::agent::sample(&metrics, "sipfilter_state_write_failures_total").unwrap_or(0.0);
    assert!(failures >= 2.0, "every failed write counted: {failures}");
    // Filtering goes on: a banned source is still dropped.
    lab.cli(&["ban", "add", &lab.v4(2), "--for", "1h"])?;
    let rx = lab.receiver()?;
    let banned = lab.sender(&lab.v4(2))?;
    send_to(&banned, &lab.v4(1), "REGISTER", 10)?;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rx.from(&lab.v4(2)), 0, "dropped while the state folder is full");
    // Space returns: written again, with everything.
    let status = std::process::Command::new("mount")
        .args(["-o", "remount,size=8m"])
        .arg(&small)
        .status()?;
    anyhow::ensure!(status.success(), "cannot grow the tmpfs");
    agent.wait_for_log("again", Duration::from_secs(10))?;
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state)?)?;
    assert!(
        saved["lists"].as_array().context("lists")?.len() >= 2000,
        "the whole state saved"
    );
    agent.stop()?;
    Ok(())
}

#[test]
fn a_sighup_storm_while_traffic_flows_loses_no_ban_and_leaks_no_memory() -> anyhow::Result<()> {
    let lab = Lab::with_net("hupstorm", "10.218.0")?;
    let config = lab.path("sipfilter.toml");
    std::fs::write(&config, "[agent]\nmetrics_listen = \"off\"\n")?;
    let mut agent = lab.agent("agent", &["--config", config.to_str().context("path")?])?;
    let attacker_ip = lab.v4(2);
    let attacker = lab.sender(&attacker_ip)?;
    send_to(&attacker, &lab.v4(1), "REGISTER", 300)?;
    eventually("the flood banned", || Ok(banned_sources(&lab)?.contains(&attacker_ip)))?;
    lab.cli(&["ban", "add", &lab.v4(9), "--for", "1h"])?;
    // Warm up (the first reloads allocate what later ones reuse), then measure.
    for _ in 0..20 {
        agent.signal(libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_secs(1));
    let pid = agent.pid();
    let before = rss_kib(pid)?;
    let phone = lab.sender(&lab.v4(3))?;
    for i in 0..300 {
        agent.signal(libc::SIGHUP);
        if i % 10 == 0 {
            send_to(&phone, &lab.v4(1), "OPTIONS", 2)?;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kib(pid)?;
    let reloads = agent.log().matches("reloaded").count();
    eprintln!("{reloads} reloads logged; resident {before} KiB before, {after} KiB after");
    assert!(reloads >= 50, "the agent reloaded many times: {reloads}");
    let bans = banned_sources(&lab)?;
    assert!(
        bans.contains(&attacker_ip) && bans.contains(&lab.v4(9)),
        "no ban lost: {bans:?}"
    );
    assert!(
        after < before + 4096,
        "no leak: {before} KiB before, {after} KiB after 300 reloads"
    );
    agent.wait_for_log("ready", Duration::from_secs(1))?;
    Ok(())
}

#[test]
fn an_interface_deleted_and_created_again_is_attached_again() -> anyhow::Result<()> {
    let lab = Lab::with_net("ifback", "10.219.0")?;
    let mut agent = lab.agent("agent", &[])?;
    lab.pbx.exec(&["ip", "link", "del", &lab.pbx_if])?;
    agent.wait_for_log(&format!("{} is gone", lab.pbx_if), Duration::from_secs(5))?;
    // The same names again, as a VLAN or a USB NIC comes back.
    let status = std::process::Command::new("ip")
        .args([
            "link",
            "add",
            &lab.lan_if,
            "netns",
            &lab.lan.name,
            "type",
            "veth",
            "peer",
            "name",
        ])
        .args([&lab.pbx_if, "netns", &lab.pbx.name])
        .status()?;
    anyhow::ensure!(status.success(), "cannot create the veth pair again");
    for a in [lab.v4(2), lab.v4(3)] {
        lab.lan
            .exec(&["ip", "addr", "add", &format!("{a}/24"), "dev", &lab.lan_if])?;
    }
    lab.pbx
        .exec(&["ip", "addr", "add", &format!("{}/24", lab.v4(1)), "dev", &lab.pbx_if])?;
    lab.lan.exec(&["ip", "link", "set", &lab.lan_if, "up"])?;
    lab.pbx.exec(&["ip", "link", "set", &lab.pbx_if, "up"])?;
    agent.wait_for_log(&format!("{} is back", lab.pbx_if), Duration::from_secs(5))?;
    assert!(agent.log().contains("attached again"), "{}", agent.log());
    assert!(lab.has_xdp()?, "XDP on the new interface");
    // And it filters: a flood through the new interface is banned.
    let attacker_ip = lab.v4(2);
    let attacker = lab.sender(&attacker_ip)?;
    send_to(&attacker, &lab.v4(1), "REGISTER", 300)?;
    eventually("the flood through the new interface banned", || {
        Ok(banned_sources(&lab)?.contains(&attacker_ip))
    })?;
    Ok(())
}

#[test]
fn a_truncated_garbage_or_future_state_file_is_moved_aside_and_the_pins_kept() -> anyhow::Result<()> {
    let lab = Lab::with_net("badstate", "10.220.0")?;
    let agent = lab.agent("agent0", &[])?;
    lab.cli(&["ban", "add", &lab.v4(9), "--for", "1h"])?;
    eventually("the ban saved", || Ok(saved_sources(&lab)?.contains(&lab.v4(9))))?;
    agent.stop()?;
    let good = std::fs::read_to_string(lab.state_file())?;
    let version = format!("\"version\": {}", sipfilter::state_file::VERSION);
    let future = good.replacen(&version, "\"version\": 99", 1);
    assert_ne!(future, good, "the state file names its version");
    for (i, (what, text)) in [
        ("truncated", good[..good.len() / 2].to_string()),
        ("garbage", "\u{0}\u{1}not json at all".to_string()),
        ("from a future version", future),
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(lab.state_file(), &text)?;
        let agent = lab.agent(&format!("agent{}", i + 1), &[])?;
        let log = agent.log();
        let said: Vec<&str> = log.lines().filter(|l| l.contains("moved it to")).collect();
        assert_eq!(said.len(), 1, "{what}: one sentence:\n{log}");
        if what == "from a future version" {
            assert!(said[0].contains("newer sipfilter"), "{what}: {}", said[0]);
        }
        let aside = std::fs::read_dir(&lab.dir)?
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("state.corrupt-"));
        assert!(aside, "{what}: the bad file kept for a human");
        assert!(
            banned_sources(&lab)?.contains(&lab.v4(9)),
            "{what}: the pinned ban kept"
        );
        agent.stop()?;
        for e in std::fs::read_dir(&lab.dir)?.filter_map(|e| e.ok()) {
            if e.file_name().to_string_lossy().starts_with("state.corrupt-") {
                std::fs::remove_file(e.path())?;
            }
        }
    }
    Ok(())
}

/// What an unprivileged user of the machine could reach: nothing of sipfilter's but the
/// metrics on localhost. The pins, the state folder and every file the agent writes there are
/// root's alone, whatever the umask.
#[test]
fn nothing_of_the_agents_is_readable_by_other_users() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let lab = Lab::with_net("perms", "10.221.0")?;
    let state_dir = lab.path("var-lib-sipfilter");
    let state = state_dir.join("state.json");
    let config = lab.path("sipfilter.toml");
    std::fs::write(
        &config,
        "[lists]\nallow = [\"office.perms.test\"]\n[agent]\ndns_server = \"127.0.0.1:5353\"\n",
    )?;
    // A permissive umask, as a shell might have: the agent must not rely on it.
    // SAFETY: umask has no preconditions; it is restored below.
    let old = unsafe { libc::umask(0o000) };
    let started = AgentProcess::start(
        &lab.pbx,
        &lab.pin_dir(),
        &lab.dir,
        "agent",
        &[
            "--config",
            config.to_str().context("path")?,
            "--iface",
            &lab.pbx_if,
            "--state-file",
            state.to_str().context("path")?,
        ],
    );
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let agent = started?;
    let attacker = lab.sender(&lab.v4(2))?;
    send_to(&attacker, &lab.v4(1), "REGISTER", 300)?;
    eventually("the state, trail and names written", || {
        Ok(state.exists() && state_dir.join("events.jsonl").exists() && state_dir.join("allow-names.json").exists())
    })?;
    let mode = |p: &std::path::Path| -> anyhow::Result<u32> { Ok(std::fs::metadata(p)?.permissions().mode() & 0o777) };
    assert_eq!(mode(&lab.pin_dir())?, 0o700, "the pin folder");
    assert_eq!(mode(&state_dir)?, 0o700, "the state folder the agent created");
    for f in ["state.json", "events.jsonl", "allow-names.json"] {
        assert_eq!(mode(&state_dir.join(f))? & 0o077, 0, "{f} is root's alone");
    }
    let links = lab.pin_dir().join("links");
    assert_eq!(mode(&links)? & 0o077, 0, "the pinned links");
    // The metrics listen on the namespace's loopback only, by default.
    let listening = lab.pbx.exec(&["ss", "-ltnH"])?;
    assert!(
        listening
            .lines()
            .all(|l| !l.contains("9460") || l.contains("127.0.0.1:9460")),
        "metrics on localhost only:\n{listening}"
    );
    drop(agent);
    Ok(())
}
