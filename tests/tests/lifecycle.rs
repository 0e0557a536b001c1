//! The filter without its agent: the same robots, from fresh addresses, against kamailio
//! while the agent runs, after it was stopped (SIGTERM, the documented way: the filter stays
//! attached) and after a second agent was killed (SIGKILL). Every rule that needs no agent
//! gives the same verdicts: the scanner User-Agent ban, the destination rule of a premium
//! call, the brute force banned by the PBX's answers, the enumerator that learns at most
//! five extensions; and the office's phone registers throughout. Also: one agent per pin
//! set, and `status` telling whether one runs.
//!
//! Needs root, kamailio, SIPp, python3 and `target/<profile>/sipfilter`.

use std::time::Duration;

use sipfilter_tests::{
    agent::{sipfilter, AgentProcess},
    kamailio::{Registrar, UnknownUsers},
    lab::{as_refs, dictionary_args, enumerator_args, guesses, office_users, registers, replies, sipp_stat, Lab},
    sipp::sipp_done,
};

/// What the robots of one round got, and what the phone got.
#[derive(Debug, PartialEq, Eq)]
struct Verdicts {
    /// The scanner's ban reason (it sent one OPTIONS with `sipcli/v1.8`).
    scanner_ban: Option<String>,
    /// INVITEs to +232 that reached kamailio.
    premium_calls_reached: usize,
    /// The brute force's ban reason, and the 200 OKs it got.
    brute_force_ban: Option<String>,
    brute_force_ok: usize,
    /// Whether at most 7 guesses reached kamailio (the failure budget of 5, a few in flight).
    brute_force_stopped_early: bool,
    /// Whether the enumerator learned at most five extensions, and its ban reason.
    enumerator_learned_at_most_five: bool,
    enumerator_banned: bool,
    /// The phone's registrations in this round (of 3).
    phone_registered: u64,
}

/// One UDP datagram from `from`:5060 (an address of the LAN namespace) to the PBX's 5060.
fn send_udp(lab: &Lab, from: &str, payload: &str) -> anyhow::Result<()> {
    let (from, to): (std::net::SocketAddr, std::net::SocketAddr) =
        (format!("{from}:5060").parse()?, format!("{}:5060", lab.ip(1)).parse()?);
    let payload = payload.as_bytes().to_vec();
    lab.lan.run(move || {
        std::net::UdpSocket::bind(from)?.send_to(&payload, to)?;
        Ok(())
    })
}

fn request(method: &str, from: &str, user: &str, to: &str, pbx: &str, user_agent: &str) -> String {
    format!(
        "{method} sip:{to}@{pbx} SIP/2.0\r\nVia: SIP/2.0/UDP {from}:5060;branch=z9hG4bK-{user}-{method}\r\n\
         From: <sip:{user}@{pbx}>;tag=1\r\nTo: <sip:{to}@{pbx}>\r\nCall-ID: {user}-{method}@{from}\r\n\
         CSeq: 1 {method}\r\nContact: <sip:{user}@{from}:5060>\r\nMax-Forwards: 70\r\nUser-Agent: {user_agent}\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// The robots of one round, each from its own fresh address `NET.base+k`, and the phone at
/// NET.3 registering three times meanwhile.
fn round(lab: &Lab, reg: &Registrar, users: &[(String, String)], base: u8) -> anyhow::Result<Verdicts> {
    let [brute, scanner, caller, enumerator] =
        [0, 1, 2, 3].map(|k| lab.add_lan_address(base + k).expect("a LAN address"));
    let phone = lab.ip(3);
    let pbx = lab.ip(1);
    let tag = base.to_string();
    let mut phone_sipp = lab.sipp(
        &format!("phone-{tag}"),
        "register_auth.xml",
        &phone,
        &vec![format!("202;{}", users[2].1); 3],
        &["-r", "1", "-m", "3", "-recv_timeout", "3000"],
    )?;

    send_udp(
        lab,
        &scanner,
        &request("OPTIONS", &scanner, "100", "100", &pbx, "sipcli/v1.8"),
    )?;
    send_udp(
        lab,
        &caller,
        &request(
            "INVITE",
            &caller,
            "202",
            "+23276123456",
            &pbx,
            "Yealink SIP-T46S 66.86.0.15",
        ),
    )?;

    let dictionary = guesses("201", &users[1].1, 30);
    let mut brute_sipp = lab.sipp(
        &format!("brute-{tag}"),
        "register_auth.xml",
        &brute,
        &dictionary,
        &dictionary_args("u1", "15"),
    )?;
    let csv: Vec<String> = (200..300).map(|e| e.to_string()).collect();
    let mut enum_sipp = lab.sipp(
        &format!("enumerator-{tag}"),
        "register_probe.xml",
        &enumerator,
        &csv,
        &[enumerator_args("un"), vec!["-timeout", "20"]].concat(),
    )?;
    sipp_done(&mut brute_sipp, Duration::from_secs(40))?;
    let _ = enum_sipp.wait(Duration::from_secs(40));
    sipp_done(&mut phone_sipp, Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(300));

    let reason = |ip: &str| lab.ban_of(ip).map(|b| b["reason"].as_str().unwrap_or("").to_owned());
    let (_, credentialed) = registers(reg, &brute, None);
    let premium = reg
        .requests()
        .iter()
        .filter(|r| r.method == "INVITE" && r.source == caller)
        .count();
    let v = Verdicts {
        scanner_ban: reason(&scanner),
        premium_calls_reached: premium,
        brute_force_ban: reason(&brute),
        brute_force_ok: replies(reg, &brute, 200).len(),
        brute_force_stopped_early: credentialed <= 7,
        enumerator_learned_at_most_five: sipp_stat(&enum_sipp, "Successful call") <= 5,
        enumerator_banned: lab.ban_of(&enumerator).is_some(),
        phone_registered: sipp_stat(&phone_sipp, "Successful call"),
    };
    eprintln!(
        "round from .{base}: {v:?} ({credentialed} guesses reached kamailio, the enumerator learned {})",
        sipp_stat(&enum_sipp, "Successful call")
    );
    Ok(v)
}

fn status(lab: &Lab) -> anyhow::Result<(i32, serde_json::Value)> {
    let out = sipfilter(None, &lab.bpffs.pin_dir(), &["status", "--json"])?;
    let json = serde_json::from_slice(&out.stdout)
        .map_err(|e| anyhow::anyhow!("status --json: {e}: {}", String::from_utf8_lossy(&out.stderr)))?;
    Ok((out.status.code().unwrap_or(-1), json))
}

#[test]
fn without_its_agent_the_filter_gives_the_same_verdicts() -> anyhow::Result<()> {
    let lab = Lab::new("10.246.0")?;
    let users = office_users(None);
    let reg = lab.registrar(UnknownUsers::NotFound, &as_refs(&users))?;
    // The defaults (scanner User-Agents on), leaving the filter attached when stopped.
    let agent = lab.agent_named("agent1", "", false)?;

    // One agent per pin set: a second is refused, naming the first.
    let second = sipfilter(
        Some(&lab.pbx),
        &lab.bpffs.pin_dir(),
        &["run", "--iface", &lab.pbx_if, "--metrics-listen", "off"],
    )?;
    let err = String::from_utf8_lossy(&second.stderr).to_string();
    assert!(!second.status.success(), "a second agent started: {err}");
    assert!(
        err.contains(&format!("another agent (PID {})", agent.pid())) && err.lines().count() == 1,
        "{err}"
    );
    let (code, s) = status(&lab)?;
    assert_eq!(code, 0, "{s:#}");
    assert_eq!(s["agent"]["pid"], agent.pid(), "{s:#}");
    assert_eq!(s["program_tables"]["ingress"], true, "{s:#}");
    assert_eq!(s["program_tables"]["egress"], true, "{s:#}");
    let ifaces: Vec<&str> = s["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["interface"].as_str().unwrap())
        .collect();
    assert_eq!(ifaces, vec![lab.pbx_if.as_str()], "real interfaces only: {s:#}");
    // The answers program under its interface (a tcx link on this kernel).
    let egress = s["interfaces"][0]["egress"].as_str().unwrap_or_default();
    assert!(egress.starts_with("answers program "), "{s:#}");
    // From another PID namespace (a container's CLI): the agent is running, its PID not
    // visible there.
    let out = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(sipfilter_tests::agent::sipfilter_bin())
        .arg("--pin-dir")
        .arg(lab.bpffs.pin_dir())
        .args(["status", "--json"])
        .output()?;
    let other: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(out.status.code(), Some(0), "{other:#}");
    assert_eq!(other["agent"]["running"], true, "{other:#}");
    assert!(other["agent"]["pid"].is_null(), "{other:#}");

    let running = round(&lab, &reg, &users, 10)?;
    assert_eq!(
        running,
        Verdicts {
            scanner_ban: Some("scanner".into()),
            premium_calls_reached: 0,
            brute_force_ban: Some("auth_failure".into()),
            brute_force_ok: 0,
            brute_force_stopped_early: true,
            enumerator_learned_at_most_five: true,
            enumerator_banned: true,
            phone_registered: 3,
        },
        "with the agent running"
    );

    let log = agent.stop()?;
    assert!(log.contains("the filter stays attached"), "{log}");
    let (code, s) = status(&lab)?;
    assert_eq!(code, 3, "status without an agent: {s:#}");
    assert_eq!(s["agent"]["running"], false);
    assert_eq!(s["program_tables"]["ingress"], true, "{s:#}");
    let stopped = round(&lab, &reg, &users, 20)?;
    assert_eq!(stopped, running, "after SIGTERM");

    // Another agent adopts the filter (and retires the first load's programs), then dies.
    let mut agent2: AgentProcess = lab.agent_named("agent2", "", false)?;
    assert!(agent2.log().contains("took over the attachment"), "{}", agent2.log());
    assert!(
        agent2.log().contains("retired the programs of 1 earlier load"),
        "{}",
        agent2.log()
    );
    agent2.signal(libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(300));
    let (code, _) = status(&lab)?;
    assert_eq!(code, 3);
    let killed = round(&lab, &reg, &users, 30)?;
    assert_eq!(killed, running, "after SIGKILL");
    drop(agent2);

    // `detach` takes the programs' tables with the attachment.
    let out = sipfilter(Some(&lab.pbx), &lab.bpffs.pin_dir(), &["detach"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, s) = status(&lab)?;
    assert!(s["program_tables"].is_null(), "{s:#}");
    Ok(())
}

/// An upgrade over maps of another layout (here: the counters and ban maps replaced by ones
/// of an older size, as a version that added a counter or a ban field finds them): the new
/// agent does not refuse to start (under systemd, a restart loop with the old program left
/// unmanaged) but sets those two aside in one logged sentence, keeps every other map as it is
/// (the known phone and its devices carry over untouched) and restores the bans from the
/// state file; the banned robot reaches the PBX at no moment, and the phone registers before
/// and after.
#[test]
fn only_maps_of_another_layout_are_set_aside_and_everything_else_carries_over() -> anyhow::Result<()> {
    let lab = Lab::new("10.247.0")?;
    let users = office_users(None);
    let reg = lab.registrar(UnknownUsers::NotFound, &as_refs(&users))?;
    let pin = lab.bpffs.pin_dir();
    let agent = lab.agent_named("agent1", "", false)?;
    let robot = lab.add_lan_address(9)?;
    let (phone, pbx) = (lab.ip(3), lab.ip(1));
    let out = sipfilter(None, &pin, &["ban", "add", &robot, "--for", "2h"])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let register_phone = |name: &str| -> anyhow::Result<u64> {
        let mut p = lab.sipp(
            name,
            "register_auth.xml",
            &phone,
            &[format!("202;{}", users[2].1)],
            &["-m", "1", "-recv_timeout", "3000"],
        )?;
        sipp_done(&mut p, Duration::from_secs(20))?;
        Ok(sipp_stat(&p, "Successful call"))
    };
    assert_eq!(register_phone("phone-before")?, 1);
    assert!(lab.is_known(&phone), "the phone is known");
    let robot_register = request("REGISTER", &robot, "201", "201", &pbx, "Yealink SIP-T46S 66.86.0.15");
    send_udp(&lab, &robot, &robot_register)?;
    let log = agent.stop()?;
    assert!(log.contains("the filter stays attached"), "{log}");

    let devices = |lab: &Lab| lab.devices_of(&phone);
    let devices_before = devices(&lab);
    assert!(!devices_before.is_empty(), "the phone's device is recorded");

    // What an older version left: a counters map and a ban table of other sizes.
    for (name, kind, key, value, entries) in [
        ("counters", "percpu_array", "4", "16", "1"),
        ("ban_table", "hash", "20", "8", "1024"),
    ] {
        std::fs::remove_file(pin.join(name))?;
        let made = std::process::Command::new("bpftool")
            .args(["map", "create"])
            .arg(pin.join(name))
            .args([
                "type", kind, "key", key, "value", value, "entries", entries, "name", name,
            ])
            .output()?;
        assert!(
            made.status.success(),
            "bpftool: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    send_udp(&lab, &robot, &robot_register)?;

    let agent2 = lab.agent_named("agent2", "", false)?;
    let log2 = agent2.log();
    eprintln!("the upgraded agent's start:\n{log2}\nthe phone's devices before: {devices_before:?}");
    assert!(
        log2.contains("maps counters, ban_table, ban_events, call_events pinned under"),
        "{log2}"
    );
    assert!(log2.contains("made by another version (counters:"), "{log2}");
    assert!(log2.contains("kept every other map as it is"), "{log2}");
    assert!(log2.contains("restoring from the state file: bans"), "{log2}");
    assert!(log2.contains("restored 1 ban(s)"), "{log2}");
    assert!(
        !log2.contains("known source(s)"),
        "known sources were kept, not restored:\n{log2}"
    );
    assert!(log2.contains("took over the attachment"), "{log2}");
    send_udp(&lab, &robot, &robot_register)?;
    let ban = lab
        .ban_of(&robot)
        .unwrap_or_else(|| panic!("the CLI ban was lost:\n{log2}"));
    assert!(ban["expires_in_secs"].as_u64().unwrap() > 3600, "{ban:#}");
    assert!(lab.is_known(&phone), "the known phone was lost:\n{log2}");
    assert_eq!(
        devices(&lab),
        devices_before,
        "the phone's devices carried over as they were"
    );
    assert_eq!(register_phone("phone-after")?, 1);
    std::thread::sleep(Duration::from_millis(300));
    let reached = reg.requests().iter().filter(|r| r.source == robot).count();
    assert_eq!(reached, 0, "the banned robot reached the PBX during the upgrade");
    let stats = sipfilter(None, &pin, &["stats", "--json"])?;
    assert!(stats.status.success(), "the CLI works on the new maps");
    Ok(())
}

/// The bpftool map type of each map a release may have laid out otherwise.
fn map_type(name: &str) -> &'static str {
    match name {
        "counters" => "percpu_array",
        "config" | "rate_state" => "array",
        "rate_overflow" | "devices" => "lru_hash",
        other => panic!("no map type known for {other}: add it here"),
    }
}

/// An upgrade from every earlier release (`sipfilter::releases`): the pins laid out as that
/// release left them (maps of its layouts, none of the maps it did not have), with a ban and
/// an allowlist entry made by the CLI. The new agent starts (never a refusal, never a restart
/// loop), sets aside exactly the maps whose layout changed (and the event rings, whose records
/// may have), keeps every other map as it is — the ban with its time left, the list entry —
/// and the CLI works on the result.
#[test]
fn an_upgrade_from_every_release_keeps_what_its_layouts_allow() -> anyhow::Result<()> {
    use sipfilter::releases::RELEASES;
    let lab = Lab::new("10.248.0")?;
    let pin = lab.bpffs.pin_dir();
    let current = RELEASES.last().unwrap().layouts;
    for (i, release) in RELEASES[..RELEASES.len() - 1].iter().enumerate() {
        let robot = format!("198.51.100.{}", 10 + i);
        let trunk = format!("203.0.113.{}", 10 + i);
        let agent = lab.agent_named(&format!("agent-{}", release.version), "", false)?;
        for args in [
            vec!["ban", "add", robot.as_str(), "--for", "2h"],
            vec!["allow", "add", trunk.as_str()],
        ] {
            let out = sipfilter(None, &pin, &args)?;
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        agent.stop()?;
        // The pins as `release` left them.
        let mut replaced = Vec::new();
        for (name, key, value, entries) in current {
            let path = pin.join(name);
            match release.layouts.iter().find(|l| l.0 == *name) {
                Some(old) if (old.1, old.2, old.3) == (*key, *value, *entries) => {}
                Some(old) => {
                    std::fs::remove_file(&path)?;
                    let made = std::process::Command::new("bpftool")
                        .args(["map", "create"])
                        .arg(&path)
                        .args(["type", map_type(name)])
                        .args(["key", &old.1.to_string(), "value", &old.2.to_string()])
                        .args(["entries", &old.3.to_string(), "name", name])
                        .output()?;
                    assert!(
                        made.status.success(),
                        "bpftool: {}",
                        String::from_utf8_lossy(&made.stderr)
                    );
                    replaced.push(*name);
                }
                None => std::fs::remove_file(&path)?,
            }
        }
        let agent = lab.agent_named(&format!("agent-after-{}", release.version), "", false)?;
        let log = agent.log();
        eprintln!(
            "upgrade from {} ({}): set aside {replaced:?}\n{log}",
            release.version, release.commit
        );
        if replaced.is_empty() {
            assert!(!log.contains("made by another version"), "{log}");
        } else {
            let named = format!("the maps {}, ban_events, call_events pinned under", replaced.join(", "));
            assert!(log.contains(&named), "expected {named:?}:\n{log}");
        }
        assert!(log.contains("ready"), "{log}");
        assert!(
            !log.contains("ban(s) from"),
            "the ban table was kept, not restored:\n{log}"
        );
        let ban = lab
            .ban_of(&robot)
            .unwrap_or_else(|| panic!("the ban was lost in the upgrade from {}:\n{log}", release.version));
        assert!(ban["expires_in_secs"].as_u64().unwrap() > 3600, "{ban:#}");
        let allowed = lab.cli_json(&["allow", "list", "--json"]);
        assert!(
            allowed.to_string().contains(&trunk),
            "the allowlist entry was lost: {allowed:#}"
        );
        let stats = sipfilter(None, &pin, &["stats", "--json"])?;
        assert!(stats.status.success(), "{}", String::from_utf8_lossy(&stats.stderr));
        agent.stop()?;
        // The set-aside maps of this round go (an operator removes them once done).
        for entry in std::fs::read_dir(pin.parent().unwrap())? {
            let path = entry?.path();
            if path.to_string_lossy().contains("-previous-") {
                std::fs::remove_dir_all(&path)?;
            }
        }
    }
    Ok(())
}
