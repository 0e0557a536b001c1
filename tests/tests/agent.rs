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
            "-6", "neigh", "replace", pbx, "lladdr", &mac, "dev", &self.lan_if, "nud", "permanent",
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
        // The time it had left, less the second we waited (and rounding).
        assert!(
            (had - 4..=had).contains(&left),
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
    assert_eq!(get(r#"sipfilter_build_info{version="0.1.0"}"#), 1.0);
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
