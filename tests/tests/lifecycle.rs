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
    lab::{as_refs, enumerator_args, guesses, office_users, registers, replies, sipp_stat, Lab},
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
        &[
            "-t",
            "u1",
            "-r",
            "20",
            "-m",
            "40",
            "-recv_timeout",
            "1500",
            "-timeout",
            "15",
        ],
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

/// An upgrade over maps of another layout (here: the counters map replaced by one of an older
/// size, as a version that added a counter finds them): the new agent does not refuse to
/// start (under systemd, a restart loop with the old program left unmanaged) but sets the
/// old maps aside in one logged sentence and restores the state file; the banned robot
/// reaches the PBX at no moment, and the phone registers before and after.
#[test]
fn maps_of_another_layout_are_set_aside_and_the_state_file_restores_bans_and_known_sources() -> anyhow::Result<()> {
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

    // What an older version left: a counters map of another size.
    std::fs::remove_file(pin.join("counters"))?;
    let made = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(pin.join("counters"))
        .args([
            "type",
            "percpu_array",
            "key",
            "4",
            "value",
            "16",
            "entries",
            "1",
            "name",
            "counters",
        ])
        .output()?;
    assert!(
        made.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    send_udp(&lab, &robot, &robot_register)?;

    let agent2 = lab.agent_named("agent2", "", false)?;
    let log2 = agent2.log();
    assert!(log2.contains("made by another version (counters:"), "{log2}");
    assert!(log2.contains("moved them to"), "{log2}");
    assert!(log2.contains("restored 1 ban(s)"), "{log2}");
    assert!(log2.contains("took over the attachment"), "{log2}");
    send_udp(&lab, &robot, &robot_register)?;
    let ban = lab
        .ban_of(&robot)
        .unwrap_or_else(|| panic!("the CLI ban was lost:\n{log2}"));
    assert!(ban["expires_in_secs"].as_u64().unwrap() > 3600, "{ban:#}");
    assert!(lab.is_known(&phone), "the known phone was lost:\n{log2}");
    assert_eq!(register_phone("phone-after")?, 1);
    std::thread::sleep(Duration::from_millis(300));
    let reached = reg.requests().iter().filter(|r| r.source == robot).count();
    assert_eq!(reached, 0, "the banned robot reached the PBX during the upgrade");
    let stats = sipfilter(None, &pin, &["stats", "--json"])?;
    assert!(stats.status.success(), "the CLI works on the new maps");
    Ok(())
}
