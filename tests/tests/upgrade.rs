//! The real upgrade, package to package: the .deb of an earlier release is installed with
//! dpkg and its agent (`/usr/sbin/sipfilter run`, with options that release had) watches a
//! real registrar (kamailio) in a namespace lab; real traffic makes the state an operator
//! would lose: a phone registers (a known source and its device), a robot cracks an
//! extension whose password is its number (a `cracked` ban and a cracked extension), another
//! guesses passwords (an `auth_failure` ban), the CLI bans an address `--for 2h` and
//! allowlists a trunk. Then, while the banned addresses keep sending and the phone keeps
//! registering, the old agent is stopped (SIGTERM: the filter stays attached), this version's
//! .deb is installed over the old one and its agent starts on the same pins and state file.
//! Checked: no packet of a banned address reached kamailio at any moment; the bans (with their
//! time left, not restarted), the known source, its device, the cracked extension and the list
//! entry are all there; the agent said what it kept and what it set aside; the phone registers
//! before, during and after. The package is purged at the end, passed or failed.
//!
//! `#[ignore]`d: `cargo xtask upgrade-test [--from VERSION|COMMIT]` builds both packages and
//! runs it with SIPFILTER_UPGRADE_OLD_DEB, SIPFILTER_UPGRADE_NEW_DEB and SIPFILTER_UPGRADE_FROM
//! (the old release's version) set. Needs root, dpkg, kamailio, SIPp; installs and purges the
//! `sipfilter` package on this machine (refuses if it is installed already).

use std::{
    collections::BTreeMap,
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde_json::Value;
use sipfilter_tests::{
    kamailio::{Registrar, UnknownUsers},
    lab::{dictionary_args, guesses, sipp_stat, Lab, STRONG},
    netns::{spawn_in, Background},
    sipp::{sipp_args, sipp_done},
};

const INSTALLED: &str = "/usr/sbin/sipfilter";
/// The phone's extension and password (strong); 202's password is its number, 201 is strong.
const PHONE_EXT: &str = "203";
const PHONE_PW: &str = "Pw-203-Xk4-q9Lm";
/// A trunk the CLI allowlists.
const TRUNK: &str = "203.0.113.7";
/// The Call-ID prefix of what the banned addresses send during the upgrade.
const SENDER_CALL_ID: &str = "upgrade-sender-";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Purges the package when the test ends, passed or failed (after the agents and the lab
/// went: declared first, dropped last).
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let out = Command::new("dpkg").args(["--purge", "sipfilter"]).output();
        match out {
            Ok(o) if o.status.success() => eprintln!("purged the sipfilter package"),
            Ok(o) => eprintln!("dpkg --purge sipfilter failed: {}", text(&o)),
            Err(e) => eprintln!("cannot run dpkg --purge: {e}"),
        }
    }
}

/// `dpkg -i DEB` (non-interactive: the conffile, unedited, follows the package); its output
/// and how long it took.
fn dpkg_install(deb: &Path) -> anyhow::Result<(String, Duration)> {
    let started = Instant::now();
    let out = Command::new("dpkg")
        .args(["--force-confdef", "--force-confold", "-i"])
        .arg(deb)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(std::process::Stdio::null())
        .output()
        .context("cannot run dpkg")?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!("dpkg -i {} failed:\n{}", deb.display(), text(&out));
    }
    Ok((text(&out), took))
}

fn installed_version() -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "sipfilter"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The installed CLI on the lab's pins.
fn cli(pin: &Path, args: &[&str]) -> anyhow::Result<Output> {
    Command::new(INSTALLED)
        .arg("--pin-dir")
        .arg(pin)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {INSTALLED}"))
}

fn cli_ok(pin: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = cli(pin, args)?;
    if !out.status.success() {
        bail!("sipfilter {args:?} failed: {}", text(&out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cli_json(pin: &Path, args: &[&str]) -> anyhow::Result<Value> {
    let out = cli_ok(pin, args)?;
    serde_json::from_str(&out).with_context(|| format!("sipfilter {args:?}: not JSON: {out}"))
}

/// The installed agent on the lab's PBX interface, with a configuration, state file and pins
/// of the lab's own, using only options every release has; waits until it is ready.
fn start_agent(lab: &Lab, name: &str) -> anyhow::Result<Background> {
    let dir = lab.subdir("agent");
    let config = dir.join("sipfilter.toml");
    // The lab's usual configuration: robots here do not announce themselves.
    std::fs::write(&config, "[scanners]\nuser_agents = []\n")?;
    let state = dir.join("state.json");
    let pin = lab.bpffs.pin_dir();
    let args = [
        INSTALLED,
        "--pin-dir",
        pin.to_str().unwrap(),
        "run",
        "--config",
        config.to_str().unwrap(),
        "--iface",
        &lab.pbx_if,
        "--state-file",
        state.to_str().unwrap(),
        "--metrics-listen",
        "off",
    ];
    let mut agent = lab.pbx.spawn(name, &args, &dir)?;
    agent.wait_for_output("ready", Duration::from_secs(30))?;
    Ok(agent)
}

/// What the filter holds, read with the installed CLI.
#[derive(Debug)]
struct Held {
    /// source → (reason, seconds left; None when permanent).
    bans: BTreeMap<String, (String, Option<u64>)>,
    /// (source, extension) of every known source.
    known: Vec<(String, String)>,
    /// The phone's devices: (port, registered lines, failures, successes).
    devices: Vec<(u64, Value, u64, u64)>,
    /// (extension, source) of every cracked extension.
    cracked: Vec<(String, String)>,
    allowed: String,
    /// Requests dropped as from a banned source (the counters, summed over CPUs).
    banned_drops: u64,
}

fn held(pin: &Path, phone: &str) -> anyhow::Result<Held> {
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let bans = cli_json(pin, &["ban", "list", "--json"])?
        .as_array()
        .context("ban list")?
        .iter()
        .map(|b| (s(&b["source"]), (s(&b["reason"]), b["expires_in_secs"].as_u64())))
        .collect();
    let mut known: Vec<(String, String)> = cli_json(pin, &["known", "list", "--json"])?
        .as_array()
        .context("known list")?
        .iter()
        .map(|k| (s(&k["source"]), s(&k["extension"])))
        .collect();
    known.sort();
    let devices = cli_json(pin, &["sources", "--json"])?
        .as_array()
        .context("sources")?
        .iter()
        .filter(|x| x["source"] == phone)
        .flat_map(|x| x["devices"].as_array().cloned().unwrap_or_default())
        .map(|d| {
            (
                d["port"].as_u64().unwrap_or(0),
                d["registered"].clone(),
                d["failures"].as_u64().unwrap_or(0),
                d["successes"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let mut cracked: Vec<(String, String)> = cli_json(pin, &["cracked", "list", "--json"])?
        .as_array()
        .context("cracked list")?
        .iter()
        .map(|c| (s(&c["extension"]), s(&c["source"])))
        .collect();
    cracked.sort();
    let allowed = cli_json(pin, &["allow", "list", "--json"])?.to_string();
    let stats = cli_json(pin, &["stats", "--json"])?;
    let banned_drops = stats["outcomes"]["banned"].as_u64().unwrap_or(0);
    Ok(Held {
        bans,
        known,
        devices,
        cracked,
        allowed,
        banned_drops,
    })
}

/// One REGISTER of the phone (SIPp, in a folder of its own): whether it succeeded.
fn phone_registers(ns: &str, dir: &Path, phone: &str, pbx: &str) -> anyhow::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/register_auth.xml");
    std::fs::copy(scenario, dir.join("register_auth.xml"))?;
    std::fs::write(
        dir.join("accounts.csv"),
        format!("SEQUENTIAL\n{PHONE_EXT};{PHONE_PW}\n"),
    )?;
    let target = format!("{pbx}:5060");
    let args = sipp_args(
        "register_auth.xml",
        Some(&target),
        phone,
        &["-inf", "accounts.csv", "-m", "1", "-recv_timeout", "3000"],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut p = spawn_in(ns, "phone", &args, dir)?;
    sipp_done(&mut p, Duration::from_secs(20))?;
    Ok(sipp_stat(&p, "Successful call") == 1)
}

/// The phone registering once a second on a thread of its own until `stop`: (attempts,
/// successes).
fn phone_loop(
    ns: String,
    dir: PathBuf,
    phone: String,
    pbx: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<anyhow::Result<(u64, u64)>> {
    std::thread::spawn(move || {
        let (mut attempts, mut ok) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            attempts += 1;
            if phone_registers(&ns, &dir.join(format!("during-{attempts}")), &phone, &pbx)? {
                ok += 1;
            }
            std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
        }
        Ok((attempts, ok))
    })
}

/// REGISTERs from each of `from` (addresses of the LAN namespace, port 5060) to the PBX
/// every 10 ms until `stop`, on a thread inside the namespace; counts what it sent.
fn banned_sender(
    ns: &str,
    from: Vec<String>,
    pbx: String,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path)?;
        // SAFETY: a valid namespace fd; setns only changes this thread's namespace.
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) } != 0 {
            bail!("setns({path}): {}", std::io::Error::last_os_error());
        }
        let to: SocketAddr = format!("{pbx}:5060").parse()?;
        let sockets = from
            .iter()
            .map(|ip| Ok((ip.clone(), UdpSocket::bind(format!("{ip}:5060"))?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for (ip, s) in &sockets {
                n += 1;
                let msg = format!(
                    "REGISTER sip:{pbx} SIP/2.0\r\nVia: SIP/2.0/UDP {ip}:5060;branch=z9hG4bK-up{n}\r\n\
                     From: <sip:201@{pbx}>;tag=up{n}\r\nTo: <sip:201@{pbx}>\r\nCall-ID: {SENDER_CALL_ID}{n}@{ip}\r\n\
                     CSeq: 1 REGISTER\r\nContact: <sip:201@{ip}:5060>\r\nMax-Forwards: 70\r\n\
                     User-Agent: Yealink SIP-T46S 66.86.0.15\r\nContent-Length: 0\r\n\r\n"
                );
                s.send_to(msg.as_bytes(), to)?;
                sent.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    })
}

/// Whether release `from` had a devices table (any commit not among the releases is taken to).
fn has_devices(from: &str) -> bool {
    use sipfilter::releases::RELEASES;
    RELEASES
        .iter()
        .find(|r| r.version == from)
        .is_none_or(|r| r.layouts.iter().any(|l| l.0 == "devices"))
}

/// The maps whose layout differs between release `from` and this version (those the new
/// agent must set aside), when `from` is a release; None for another commit.
fn changed_layouts(from: &str) -> Option<Vec<&'static str>> {
    use sipfilter::releases::RELEASES;
    let old = RELEASES.iter().find(|r| r.version == from)?;
    let new = RELEASES.last()?.layouts;
    Some(
        new.iter()
            .filter(|n| old.layouts.iter().any(|o| o.0 == n.0 && o != *n))
            .map(|n| n.0)
            .collect(),
    )
}

fn requests_from(reg: &Registrar, ips: &[String]) -> usize {
    reg.requests().iter().filter(|r| ips.contains(&r.source)).count()
}

#[test]
#[ignore = "installs packages: run by `cargo xtask upgrade-test`"]
fn a_package_upgrade_keeps_the_state_made_by_real_traffic_and_never_stops_dropping() -> anyhow::Result<()> {
    let var =
        |name: &str| std::env::var(name).with_context(|| format!("{name} is not set: run `cargo xtask upgrade-test`"));
    let (old_deb, new_deb, from) = (
        PathBuf::from(var("SIPFILTER_UPGRADE_OLD_DEB")?),
        PathBuf::from(var("SIPFILTER_UPGRADE_NEW_DEB")?),
        var("SIPFILTER_UPGRADE_FROM")?,
    );
    let status = Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", "sipfilter"])
        .output()?;
    if text(&status).contains("install ok installed") {
        bail!("sipfilter is already installed on this machine: this test installs and purges it");
    }
    let _purge = Purge;
    let (said, took) = dpkg_install(&old_deb)?;
    let old_version = installed_version();
    eprintln!(
        "installed {} ({from}, package version {old_version}) in {:.1} s:\n{said}",
        old_deb.display(),
        took.as_secs_f64()
    );

    let lab = Lab::new("10.251.0")?;
    let pin = lab.bpffs.pin_dir();
    let (pbx, cracker, phone) = (lab.ip(1), lab.ip(2), lab.ip(3));
    let guesser = lab.add_lan_address(4)?;
    let cli_banned = lab.add_lan_address(5)?;
    let banned = vec![cracker.clone(), guesser.clone(), cli_banned.clone()];
    let reg = lab.registrar(
        UnknownUsers::NotFound,
        &[("201", STRONG), ("202", "202"), (PHONE_EXT, PHONE_PW)],
    )?;
    let mut old_agent = start_agent(&lab, "agent-old")?;

    // The phone registers: a known source, its device.
    let mut before_ok = 0;
    for i in 0..3 {
        before_ok += phone_registers(&lab.lan.name, &lab.subdir(&format!("phone-before-{i}")), &phone, &pbx)? as u64;
    }
    // A robot tries every extension with its number as the password: it cracks 202.
    let csv: Vec<String> = (200..=203).map(|e| format!("{e};{e}")).collect();
    let mut crack = lab.sipp(
        "cracker",
        "register_auth.xml",
        &cracker,
        &csv,
        &["-r", "2", "-rp", "1000", "-m", "4", "-recv_timeout", "3000"],
    )?;
    old_agent.wait_for_output("CRACKED extension=202", Duration::from_secs(20))?;
    sipp_done(&mut crack, Duration::from_secs(30))?;
    // Another guesses 201's password: banned at its failure budget.
    let mut guess = lab.sipp(
        "guesser",
        "register_auth.xml",
        &guesser,
        &guesses("201", "never-guessed", 41),
        &dictionary_args("u1", "15"),
    )?;
    sipp_done(&mut guess, Duration::from_secs(40))?;
    // The operator's ban and allowlist entry.
    cli_ok(&pin, &["ban", "add", &cli_banned, "--for", "2h"])?;
    cli_ok(&pin, &["allow", "add", TRUNK])?;

    let before = held(&pin, &phone)?;
    let before_at = Instant::now();
    eprintln!("made by {from}'s agent: {before:#?}\nthe phone registered {before_ok} of 3");
    assert_eq!(
        before_ok,
        3,
        "the phone registers under {from}:\n{}",
        old_agent.output()
    );
    assert_eq!(
        before.bans.get(&cracker).map(|b| b.0.as_str()),
        Some("cracked"),
        "{before:#?}"
    );
    assert_eq!(
        before.bans.get(&guesser).map(|b| b.0.as_str()),
        Some("auth_failure"),
        "{before:#?}"
    );
    assert_eq!(
        before.bans.get(&cli_banned).map(|b| b.0.as_str()),
        Some("manual"),
        "{before:#?}"
    );
    assert!(
        before.known.iter().any(|k| k.0 == phone),
        "the phone is known: {before:#?}"
    );
    // Releases before 0.2.0 had no devices table.
    let devices_kept = has_devices(&from);
    assert!(
        !devices_kept || !before.devices.is_empty(),
        "the phone's device is recorded: {before:#?}"
    );
    assert_eq!(before.cracked, vec![("202".to_owned(), cracker.clone())], "{before:#?}");
    assert!(before.allowed.contains(TRUNK), "{before:#?}");

    // The upgrade, with the banned addresses sending and the phone registering throughout.
    let reached_before = requests_from(&reg, &banned);
    let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let sender = banned_sender(&lab.lan.name, banned.clone(), pbx.clone(), stop.clone(), sent.clone());
    let phone_during = phone_loop(
        lab.lan.name.clone(),
        lab.subdir("phone-during"),
        phone.clone(),
        pbx.clone(),
        stop.clone(),
    );
    std::thread::sleep(Duration::from_secs(2));

    old_agent.stop(libc::SIGTERM, Duration::from_secs(10));
    let old_log = old_agent.output();
    assert!(old_log.contains("the filter stays attached"), "{old_log}");
    let stopped_at = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let (said, took) = dpkg_install(&new_deb)?;
    let new_version = installed_version();
    eprintln!(
        "upgraded to {} (package version {new_version}) in {:.1} s:\n{said}",
        new_deb.display(),
        took.as_secs_f64()
    );
    assert_ne!(new_version, old_version, "dpkg installed another version");
    let version = cli_ok(&pin, &["--version"])?;
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    let new_agent = start_agent(&lab, "agent-new")?;
    let without_agent = stopped_at.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    sender.join().map_err(|_| anyhow::anyhow!("the sender panicked"))??;
    let (during_attempts, during_ok) = phone_during
        .join()
        .map_err(|_| anyhow::anyhow!("the phone's thread panicked"))??;
    std::thread::sleep(Duration::from_millis(500));

    let new_log = new_agent.output();
    eprintln!("the new agent's start:\n{new_log}");
    let after = held(&pin, &phone)?;
    let elapsed = before_at.elapsed().as_secs();
    eprintln!("after the upgrade: {after:#?}");

    // No packet of a banned address reached kamailio, at any moment.
    let sent = sent.load(Ordering::Relaxed);
    let reached = requests_from(&reg, &banned) - reached_before;
    let of_the_sender = reg
        .requests()
        .iter()
        .filter(|r| r.call_id.starts_with(SENDER_CALL_ID))
        .count();
    let dropped = after.banned_drops.saturating_sub(before.banned_drops);
    eprintln!(
        "the banned addresses sent {sent} REGISTERs during the upgrade ({:.1} s without an agent); \
         {reached} reached kamailio; the banned-drop counter grew by {dropped}",
        without_agent.as_secs_f64()
    );
    assert!(sent > 100, "the sender sent {sent}");
    assert_eq!(
        reached, 0,
        "requests of banned addresses reached kamailio during the upgrade"
    );
    assert_eq!(of_the_sender, 0);

    // What the new agent said it kept and set aside.
    assert!(new_log.contains("took over the attachment"), "{new_log}");
    match changed_layouts(&from) {
        Some(changed) if changed.is_empty() => {
            assert!(new_log.contains("reusing the maps pinned under"), "{new_log}");
            assert!(
                !new_log.contains("made by another version"),
                "nothing to set aside:\n{new_log}"
            );
            assert!(
                !new_log.contains("restored"),
                "everything was kept, nothing restored:\n{new_log}"
            );
            assert!(
                dropped >= sent,
                "the counters were kept and counted every drop: {dropped} < {sent}"
            );
        }
        Some(changed) => {
            assert!(
                new_log.contains("made by another version"),
                "{changed:?} set aside:\n{new_log}"
            );
            for name in &changed {
                assert!(new_log.contains(name), "{name} set aside:\n{new_log}");
            }
        }
        None => eprintln!("{from} is not a release: what the agent set aside is not predicted"),
    }

    // Everything is still there: the bans with the time they had left.
    assert_eq!(
        after.bans.keys().collect::<Vec<_>>(),
        before.bans.keys().collect::<Vec<_>>(),
        "{after:#?}"
    );
    for (source, (reason, left)) in &before.bans {
        let (r, l) = &after.bans[source];
        assert_eq!(r, reason, "{source}");
        if let (Some(left), Some(l)) = (left, l) {
            assert!(
                *l <= *left && *l + elapsed + 5 >= *left,
                "{source}: {left} s left before, {l} s after {elapsed} s"
            );
        } else {
            assert_eq!(left.is_none(), l.is_none(), "{source}: permanent before and after");
        }
    }
    assert!(after.bans[&cli_banned].1.unwrap() > 3600, "{after:#?}");
    assert_eq!(after.known, before.known, "the known sources");
    assert_eq!(after.cracked, before.cracked, "the cracked extensions");
    assert!(after.allowed.contains(TRUNK), "{after:#?}");
    // The phone's device: the same port and lines; it only registered more.
    if devices_kept {
        assert_eq!(after.devices.len(), before.devices.len(), "{after:#?}");
    }
    for (a, b) in after.devices.iter().zip(&before.devices) {
        assert_eq!(
            (a.0, &a.1, a.2),
            (b.0, &b.1, b.2),
            "the phone's device (port, lines, failures)"
        );
        assert!(a.3 >= b.3, "its successes");
    }

    // The phone registered while the agents changed, and registers after.
    let mut after_ok = 0;
    for i in 0..3 {
        after_ok += phone_registers(&lab.lan.name, &lab.subdir(&format!("phone-after-{i}")), &phone, &pbx)? as u64;
    }
    eprintln!(
        "the phone registered {before_ok} of 3 before, {during_ok} of {during_attempts} during the upgrade, {after_ok} of 3 after"
    );
    assert_eq!(
        during_ok, during_attempts,
        "the phone's registrations during the upgrade"
    );
    assert_eq!(after_ok, 3, "{}", new_agent.output());
    let still = held(&pin, &phone)?;
    assert!(still.known.iter().any(|k| k.0 == phone));
    eprintln!(
        "kept: {} ban(s), {} known source(s), {} device(s) of the phone, {} cracked extension(s), the allowlist entry",
        after.bans.len(),
        after.known.len(),
        after.devices.len(),
        after.cracked.len()
    );
    drop(new_agent);
    drop(reg);
    drop(lab);
    Ok(())
}
