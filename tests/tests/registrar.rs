//! Sources judged by the PBX's answers, end to end: a real registrar (kamailio, configured
//! by each test, `tests/src/kamailio.rs`) in a PBX namespace, the agent (`sipfilter run`:
//! XDP on ingress, the answers program on the egress of the same veth end) and real clients
//! in a LAN namespace: SIPVicious (`svcrack`, `svwar`) and SIPp (`tests/scenarios/`).
//! Each test asserts what reached the registrar (kamailio's own log) and who was banned,
//! with which reason.
//!
//! Needs root, kamailio, SIPp, SIPVicious and `target/<profile>/sipfilter`
//! (`cargo build -p sipfilter`). Every test has its own /24 (10.23x.0.0), namespaces,
//! bpffs and folder, so they run in parallel.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use sipfilter_tests::{
    kamailio::UnknownUsers,
    lab::{as_refs, enumerator_args, numbering, office_users, registers, replies, sipp_stat, Lab, STRONG},
    sipp::sipp_done,
};

/// A dictionary of `len` wrong passwords, with `right` at 1-based position `at` if given.
fn dictionary(lab: &Lab, len: usize, right: Option<(usize, &str)>) -> PathBuf {
    let words: Vec<String> = (1..=len)
        .map(|i| match right {
            Some((at, pw)) if at == i => pw.to_owned(),
            _ => format!("guess{i:03}"),
        })
        .collect();
    let path = lab.dir.path().join(format!("dict-{len}.txt"));
    std::fs::write(&path, words.join("\n") + "\n").unwrap();
    path
}

/// svcrack's dictionary brute force on 201 (the right password 30th in the dictionary).
/// svcrack sends its first REGISTER without credentials (CSeq 1), then each guess as CSeq 2
/// of that same Call-ID, with a new Via branch and the nonce of the last challenge; while it
/// waits for an answer it sends more REGISTERs without credentials (CSeq 1, new Call-IDs).
/// Every guess is answered 401: the failure budget of an unknown source (5) must stop it.
fn dictionary_brute_force(net: &str, unknown: UnknownUsers) -> anyhow::Result<()> {
    let lab = Lab::new(net)?;
    let robot = lab.ip(2);
    let agent = lab.agent()?;
    let reg = lab.registrar(unknown, &[("201", STRONG), ("202", "Pw-202-xyz")])?;
    let dict = dictionary(&lab, 40, Some((30, STRONG)));
    let mut svcrack = lab.sipvicious(
        "svcrack",
        "sipvicious_svcrack",
        &robot,
        &["-u", "201", "-d", dict.to_str().unwrap(), "--maximumtime", "3"],
    )?;
    let banned = lab.wait_for_ban(&robot, Duration::from_secs(20));
    svcrack.wait(Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(300));
    let (all, credentialed) = registers(&reg, &robot, None);
    let ok = replies(&reg, &robot, 200);
    let challenges = replies(&reg, &robot, 401).len();
    let log = agent.log();
    lab.dump(&agent);
    eprintln!(
        "svcrack ({unknown:?}): kamailio received {all} REGISTERs from the robot, {credentialed} with credentials; \
         answered {challenges} 401, {} 200; guesses: {}; ban {banned:?}\nsvcrack said:\n{}",
        ok.len(),
        numbering(&reg, &robot),
        svcrack.output()
    );
    assert!(
        ok.is_empty(),
        "kamailio accepted the robot's guess: {ok:?}\n{}",
        reg.log()
    );
    assert!(!log.contains("CRACKED"), "nothing was cracked:\n{log}");
    assert!(
        !svcrack.output().contains("The password for"),
        "svcrack found the password:\n{}",
        svcrack.output()
    );
    let ban = banned.unwrap_or_else(|| panic!("the robot {robot} was not banned:\n{log}"));
    assert_eq!(ban["reason"], "auth_failure", "{ban:#}");
    assert!(
        log.contains(&format!("ban source={robot} reason=auth_failure method=REGISTER")),
        "the agent logs the ban:\n{log}"
    );
    assert!(
        (1..=7).contains(&credentialed),
        "{credentialed} guesses reached kamailio (expected the 5 of the failure budget, a few in flight)"
    );
    Ok(())
}

#[test]
fn svcrack_dictionary_is_banned_before_the_right_password_404_registrar() -> anyhow::Result<()> {
    dictionary_brute_force("10.231.0", UnknownUsers::NotFound)
}

#[test]
fn svcrack_dictionary_is_banned_before_the_right_password_asterisk_like_registrar() -> anyhow::Result<()> {
    dictionary_brute_force("10.232.0", UnknownUsers::Challenge)
}

/// svwar probes a random extension first (404: it learns what "no such user" looks like),
/// then REGISTERs 200..299 as fast as it can; 201..220 exist (401), the rest are 404.
#[test]
fn svwar_enumeration_is_banned_before_it_learns_the_extensions() -> anyhow::Result<()> {
    let lab = Lab::new("10.233.0")?;
    let robot = lab.ip(2);
    let agent = lab.agent()?;
    let accounts: Vec<(String, String)> = (201..=220).map(|e| (e.to_string(), format!("Pw-{e}-secret"))).collect();
    let users: Vec<(&str, &str)> = accounts.iter().map(|(u, p)| (u.as_str(), p.as_str())).collect();
    let reg = lab.registrar(UnknownUsers::NotFound, &users)?;
    let mut svwar = lab.sipvicious(
        "svwar",
        "sipvicious_svwar",
        &robot,
        &["-e200-299", "-m", "REGISTER", "--maximumtime", "3"],
    )?;
    let banned = lab.wait_for_ban(&robot, Duration::from_secs(20));
    svwar.wait(Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(300));
    let (all, _) = registers(&reg, &robot, None);
    let not_found = replies(&reg, &robot, 404);
    let challenged = replies(&reg, &robot, 401);
    let log = agent.log();
    lab.dump(&agent);
    eprintln!(
        "svwar: kamailio received {all} REGISTERs; answered 404 {} times ({not_found:?}), 401 {} times ({challenged:?}); \
         ban {banned:?}\nsvwar said:\n{}",
        not_found.len(),
        challenged.len(),
        svwar.output()
    );
    let ban = banned.unwrap_or_else(|| panic!("svwar {robot} was not banned:\n{log}"));
    // The real extensions come first in this range, so svwar is caught by its challenges
    // (eight extensions in a row from one port, no credentials) before five not-founds.
    assert_eq!(ban["reason"], "enumeration", "{ban:#}");
    assert!(
        log.contains(&format!("ban source={robot} reason=enumeration method=REGISTER")),
        "the agent logs the ban:\n{log}"
    );
    assert!(
        challenged.len() <= 9 && not_found.len() <= 5,
        "kamailio answered 401 {} and 404 {} times to svwar: it learned too much",
        challenged.len(),
        not_found.len()
    );
    // The scan stopped: nothing past the first not-found extensions after the accounts.
    let reached: Vec<u32> = reg
        .requests()
        .iter()
        .filter(|r| r.source == robot)
        .filter_map(|r| r.to_user.parse().ok())
        .filter(|e| (200..300).contains(e))
        .collect();
    assert!(
        reached.iter().all(|&e| e < 230),
        "svwar's scan went on after the ban: {reached:?}"
    );
    Ok(())
}

/// svwar over a range with no extension in it: every answer is a 404, and the fifth bans.
#[test]
fn svwar_over_an_empty_range_is_banned_at_the_fifth_not_found() -> anyhow::Result<()> {
    let lab = Lab::new("10.238.0")?;
    let robot = lab.ip(2);
    let agent = lab.agent()?;
    let reg = lab.registrar(UnknownUsers::NotFound, &[("201", STRONG)])?;
    let mut svwar = lab.sipvicious(
        "svwar",
        "sipvicious_svwar",
        &robot,
        &["-e100-160", "-m", "REGISTER", "--maximumtime", "3"],
    )?;
    let banned = lab.wait_for_ban(&robot, Duration::from_secs(20));
    svwar.wait(Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(300));
    let not_found = replies(&reg, &robot, 404);
    let log = agent.log();
    eprintln!(
        "svwar (empty range): kamailio answered 404 {} times; ban {banned:?}",
        not_found.len()
    );
    let ban = banned.unwrap_or_else(|| panic!("svwar {robot} was not banned:\n{log}"));
    assert_eq!(ban["reason"], "not_found", "{ban:#}");
    // svwar's own probe of a random user first, then the range: five not-founds ban.
    assert!(
        (5..=6).contains(&not_found.len()),
        "kamailio answered 404 {} times to svwar (expected the 5 of the not-found budget)",
        not_found.len()
    );
    Ok(())
}

#[test]
fn password_equals_extension_robot_cracks_202_which_is_then_quarantined() -> anyhow::Result<()> {
    let lab = Lab::new("10.234.0")?;
    let (robot, second) = (lab.ip(2), lab.ip(3));
    let mut agent = lab.agent()?;
    let reg = lab.registrar(
        UnknownUsers::NotFound,
        &[("201", STRONG), ("202", "202"), ("203", "Pw-203-good")],
    )?;
    // 200 does not exist, 201 has a strong password, 202's is "202".
    let csv: Vec<String> = (200..=203).map(|e| format!("{e};{e}")).collect();
    let mut sipp = lab.sipp(
        "robot",
        "register_auth.xml",
        &robot,
        &csv,
        &["-r", "2", "-rp", "1000", "-m", "4", "-recv_timeout", "3000"],
    )?;
    agent.wait_for_log("CRACKED extension=202", Duration::from_secs(15))?;
    sipp_done(&mut sipp, Duration::from_secs(30))?;
    let log = agent.log();
    lab.dump(&agent);
    let line = log.lines().find(|l| l.contains("CRACKED")).unwrap();
    eprintln!("agent: {line}");
    assert!(line.contains(&format!("source={robot}")), "{line}");
    assert!(line.contains("change its password"), "{line}");
    let ban = lab
        .ban_of(&robot)
        .unwrap_or_else(|| panic!("the robot is not banned:\n{log}"));
    assert_eq!(ban["reason"], "cracked", "{ban:#}");
    assert!(log.contains(&format!("ban source={robot} reason=cracked")), "{log}");
    let cracked = lab.cli_json(&["cracked", "list", "--json"]);
    let entry = cracked.as_array().unwrap().iter().find(|c| c["extension"] == "202");
    let entry = entry.unwrap_or_else(|| panic!("202 is not on the cracked list: {cracked:#}"));
    assert_eq!(entry["source"], robot.as_str(), "{entry:#}");
    // kamailio accepted the guess, the filter withheld its 200 OK: SIPp never saw it.
    assert_eq!(
        replies(&reg, &robot, 200),
        vec!["202".to_owned()],
        "kamailio's 200s to the robot"
    );
    assert_eq!(sipp_stat(&sipp, "Successful call"), 0, "the robot saw a 200 OK");
    let robot_203 = registers(&reg, &robot, Some("203")).0;
    assert_eq!(robot_203, 0, "the banned robot's REGISTER for 203 reached kamailio");

    // Quarantine is switched on by the agent within a second.
    std::thread::sleep(Duration::from_millis(1500));
    let csv = ["202;202;0023276123456".to_owned()];
    let mut call = lab.sipp(
        "call202",
        "invite_auth.xml",
        &second,
        &csv,
        &["-m", "1", "-recv_timeout", "2000"],
    )?;
    sipp_done(&mut call, Duration::from_secs(20))?;
    let mut reg202 = lab.sipp(
        "reg202",
        "register_auth.xml",
        &second,
        &["202;202".to_owned()],
        &["-m", "1", "-recv_timeout", "2000"],
    )?;
    sipp_done(&mut reg202, Duration::from_secs(20))?;
    let mut reg203 = lab.sipp(
        "reg203",
        "register_auth.xml",
        &second,
        &["203;Pw-203-good".to_owned()],
        &["-m", "1", "-recv_timeout", "3000"],
    )?;
    sipp_done(&mut reg203, Duration::from_secs(20))?;
    std::thread::sleep(Duration::from_millis(300));
    let from_second: Vec<_> = reg.requests().into_iter().filter(|r| r.source == second).collect();
    eprintln!("from the second address kamailio received: {from_second:?}");
    assert!(
        from_second.iter().all(|r| r.from_user != "202" && r.to_user != "202"),
        "a request for the cracked 202 reached kamailio from {second}: {from_second:?}"
    );
    assert_eq!(sipp_stat(&call, "Successful call"), 0);
    assert_eq!(sipp_stat(&reg202, "Successful call"), 0);
    assert_eq!(
        registers(&reg, &second, Some("203")).1,
        1,
        "203's REGISTER with credentials"
    );
    assert_eq!(replies(&reg, &second, 200), vec!["203".to_owned()]);
    assert_eq!(sipp_stat(&reg203, "Successful call"), 1, "203 registered from {second}");
    assert!(lab.ban_of(&second).is_none(), "quarantine drops, it does not ban");
    let stats = lab.cli_json(&["stats", "--json"]);
    let quarantined = stats["outcomes"]["quarantined"].as_u64().unwrap();
    eprintln!("quarantined: {quarantined} requests (with SIPp's retransmissions)");
    assert!(
        quarantined >= 2,
        "the INVITE and REGISTER for 202 were quarantined: {stats:#}"
    );
    Ok(())
}

#[test]
fn fifty_phones_behind_one_new_address_all_register() -> anyhow::Result<()> {
    let lab = Lab::new("10.235.0")?;
    let office = lab.ip(2);
    let agent = lab.agent()?;
    let accounts: Vec<(String, String)> = (300..350).map(|e| (e.to_string(), format!("Pw-{e}-phone"))).collect();
    let users: Vec<(&str, &str)> = accounts.iter().map(|(u, p)| (u.as_str(), p.as_str())).collect();
    let reg = lab.registrar(UnknownUsers::NotFound, &users)?;
    let csv: Vec<String> = accounts.iter().map(|(u, p)| format!("{u};{p}")).collect();
    let start = Instant::now();
    let mut phones = lab.sipp(
        "phones",
        "register_auth.xml",
        &office,
        &csv,
        &[
            "-r",
            "200",
            "-rp",
            "1000",
            "-m",
            "50",
            "-l",
            "50",
            "-recv_timeout",
            "20000",
        ],
    )?;
    let all = reg.wait_until(Duration::from_secs(30), |_, rep| {
        rep.iter().filter(|r| r.destination == office && r.code == 200).count() >= 50
    });
    let to_50th = start.elapsed();
    sipp_done(&mut phones, Duration::from_secs(40))?;
    let sipp_time = start.elapsed();
    let (requests, _) = registers(&reg, &office, None);
    eprintln!(
        "50 phones behind {office}: kamailio sent its 50th 200 OK {:.0} ms after SIPp started (SIPp done after {:.0} ms); \
         kamailio received {requests} REGISTERs",
        to_50th.as_secs_f64() * 1000.0,
        sipp_time.as_secs_f64() * 1000.0
    );
    assert!(
        all,
        "kamailio did not accept 50 registrations: {:?}",
        replies(&reg, &office, 200).len()
    );
    assert_eq!(
        (sipp_stat(&phones, "Successful call"), sipp_stat(&phones, "Failed call")),
        (50, 0),
        "the phones' registrations (successful, failed)"
    );
    assert!(lab.ban_of(&office).is_none(), "the office was banned:\n{}", agent.log());
    assert!(!agent.log().contains("sipfilter: ban "), "{}", agent.log());
    assert!(lab.is_known(&office), "the office became known");
    Ok(())
}

#[test]
fn a_known_source_that_starts_guessing_is_banned_later() -> anyhow::Result<()> {
    let lab = Lab::new("10.236.0")?;
    let office = lab.ip(2);
    let agent = lab.agent()?;
    let reg = lab.registrar(UnknownUsers::NotFound, &[("201", "Pw-201-phone"), ("205", STRONG)])?;
    let mut phone = lab.sipp(
        "phone",
        "register_auth.xml",
        &office,
        &["201;Pw-201-phone".to_owned()],
        &["-m", "1", "-recv_timeout", "3000"],
    )?;
    sipp_done(&mut phone, Duration::from_secs(20))?;
    assert_eq!(sipp_stat(&phone, "Successful call"), 1, "the office's phone registered");
    assert!(lab.is_known(&office), "the office became known");

    let dict = dictionary(&lab, 80, None);
    let mut svcrack = lab.sipvicious(
        "svcrack",
        "sipvicious_svcrack",
        &office,
        &["-u", "205", "-d", dict.to_str().unwrap(), "--maximumtime", "3"],
    )?;
    let banned = lab.wait_for_ban(&office, Duration::from_secs(20));
    svcrack.wait(Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(300));
    let (all, credentialed) = registers(&reg, &office, Some("205"));
    let log = agent.log();
    lab.dump(&agent);
    eprintln!(
        "known source guessing 205: kamailio received {all} REGISTERs for 205, {credentialed} with credentials \
         ({}); ban {banned:?}",
        numbering(&reg, &office)
    );
    let ban = banned.unwrap_or_else(|| panic!("the known source {office} was not banned:\n{log}"));
    assert_eq!(ban["reason"], "auth_failure", "{ban:#}");
    assert!(
        (15..=25).contains(&credentialed),
        "{credentialed} guesses reached kamailio: a known source gets 20 failures (an unknown one 5)"
    );
    Ok(())
}

#[test]
fn one_guess_every_two_seconds_is_banned_within_thirty_seconds() -> anyhow::Result<()> {
    let lab = Lab::new("10.237.0")?;
    let robot = lab.ip(2);
    let agent = lab.agent()?;
    let reg = lab.registrar(UnknownUsers::NotFound, &[("201", STRONG)])?;
    let csv: Vec<String> = (1..=20).map(|i| format!("201;slow{i:02}")).collect();
    let start = Instant::now();
    let _robot = lab.sipp(
        "slow",
        "register_auth.xml",
        &robot,
        &csv,
        &["-r", "1", "-rp", "2000", "-m", "20", "-recv_timeout", "2000"],
    )?;
    let banned = lab.wait_for_ban(&robot, Duration::from_secs(36));
    let after = start.elapsed();
    let (all, credentialed) = registers(&reg, &robot, None);
    let log = agent.log();
    lab.dump(&agent);
    eprintln!(
        "one guess every 2 s: banned after {:.1} s; kamailio received {all} REGISTERs, {credentialed} with credentials \
         ({}); ban {banned:?}",
        after.as_secs_f64(),
        numbering(&reg, &robot)
    );
    let ban = banned.unwrap_or_else(|| panic!("not banned within 36 s:\n{log}"));
    assert_eq!(ban["reason"], "auth_failure", "{ban:#}");
    assert!(after <= Duration::from_secs(30), "banned only after {after:?}");
    Ok(())
}

/// The Friday-evening call: a robot that has 201's password calls +232 (Sierra Leone) in all
/// three dial formats from an address sipfilter has never seen, through a PBX that challenges
/// INVITEs with 407. None of its INVITEs reaches the PBX; a phone's national call through the
/// same PBX connects. Default configuration (the shipped high-risk list).
#[test]
fn premium_calls_never_reach_the_pbx_while_a_national_call_connects() -> anyhow::Result<()> {
    let lab = Lab::new("10.240.0")?;
    let (robot, phone) = (lab.ip(2), lab.ip(3));
    let agent = lab.agent_with("")?;
    let reg = lab.registrar(UnknownUsers::NotFound, &[("201", "Pw-201-weak"), ("2000", STRONG)])?;
    let numbers = ["+23276123456", "0023276123456", "01123276123456"];
    let csv: Vec<String> = numbers.iter().map(|n| format!("201;Pw-201-weak;{n}")).collect();
    let mut calls = lab.sipp(
        "robot-calls",
        "invite_auth.xml",
        &robot,
        &csv,
        &["-m", "3", "-r", "3", "-recv_timeout", "2000"],
    )?;
    let mut national = lab.sipp(
        "phone-call",
        "invite_auth.xml",
        &phone,
        &[format!("2000;{STRONG};0301234567")],
        &["-m", "1", "-recv_timeout", "4000"],
    )?;
    sipp_done(&mut calls, Duration::from_secs(30))?;
    sipp_done(&mut national, Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(500));
    let invites_from_robot: Vec<_> = reg
        .requests()
        .into_iter()
        .filter(|r| r.source == robot && r.method == "INVITE")
        .collect();
    let fraud = lab.cli_json(&[
        "fraud",
        "list",
        "--json",
        "--state-file",
        lab.dir.path().join("agent/state.json").to_str().unwrap(),
    ]);
    lab.dump(&agent);
    eprintln!("fraud list: {fraud:#}");
    assert!(
        invites_from_robot.is_empty(),
        "the robot's INVITEs reached kamailio: {invites_from_robot:?}"
    );
    assert_eq!(sipp_stat(&calls, "Successful call"), 0, "no premium call connected");
    assert_eq!(
        sipp_stat(&national, "Successful call"),
        1,
        "the phone's national call connected:\n{}",
        reg.log()
    );
    assert!(
        reg.log().contains("SFK CALL from=2000 to=0301234567"),
        "kamailio placed the national call:\n{}",
        reg.log()
    );
    let blocked = fraud.as_array().expect("a JSON array");
    assert_eq!(
        blocked.len(),
        3,
        "one record per call, all three dial formats: {fraud:#}"
    );
    for b in blocked {
        assert_eq!(b["number"], "+23276123456", "{b:#}");
        assert_eq!(b["extension"], "201", "{b:#}");
        assert_eq!(b["source"], robot, "{b:#}");
        assert_eq!(b["rule"], "destination", "{b:#}");
    }
    assert!(
        agent.log().contains(&format!(
            "blocked call source={robot} extension=201 number=+23276123456 rule=destination"
        )),
        "one log line per blocked call:\n{}",
        agent.log()
    );
    assert!(
        lab.ban_of(&robot).is_none(),
        "a denied destination drops the call, it does not ban"
    );
    Ok(())
}

/// SIPVicious as it comes (User-Agent "friendly-scanner"): svmap's probe gets no answer;
/// the robot is banned as a scanner on its first packet.
#[test]
fn svmap_as_it_comes_gets_no_answer() -> anyhow::Result<()> {
    let lab = Lab::new("10.239.0")?;
    let mapper = lab.ip(2);
    let agent = lab.agent_with("")?;
    let reg = lab.registrar(UnknownUsers::NotFound, &[("201", STRONG)])?;
    let mut svmap = lab.sipvicious("svmap", "sipvicious_svmap", &mapper, &["--timeout", "2"])?;
    svmap.wait(Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(300));
    lab.dump(&agent);
    eprintln!("svmap said:\n{}", svmap.output());
    let reached: Vec<_> = reg.requests().into_iter().filter(|r| r.source == mapper).collect();
    assert!(reached.is_empty(), "svmap reached kamailio: {reached:?}");
    assert!(
        !svmap.output().contains(&format!("{}:5060", lab.ip(1))),
        "svmap found the PBX:\n{}",
        svmap.output()
    );
    let ban = lab
        .ban_of(&mapper)
        .unwrap_or_else(|| panic!("svmap was not banned:\n{}", agent.log()));
    assert_eq!(ban["reason"], "scanner", "{ban:#}");
    assert!(
        agent
            .log()
            .contains(&format!("ban source={mapper} reason=scanner method=OPTIONS")),
        "{}",
        agent.log()
    );
    Ok(())
}

/// svwar as it comes: banned as a scanner on its first REGISTER; it learns no extension.
#[test]
fn svwar_as_it_comes_learns_nothing() -> anyhow::Result<()> {
    let lab = Lab::new("10.241.0")?;
    let robot = lab.ip(2);
    let agent = lab.agent_with("")?;
    let accounts: Vec<(String, String)> = (201..=220).map(|e| (e.to_string(), format!("Pw-{e}-secret"))).collect();
    let users: Vec<(&str, &str)> = accounts.iter().map(|(u, p)| (u.as_str(), p.as_str())).collect();
    let reg = lab.registrar(UnknownUsers::NotFound, &users)?;
    let mut svwar = lab.sipvicious(
        "svwar",
        "sipvicious_svwar",
        &robot,
        &["-e200-299", "-m", "REGISTER", "--maximumtime", "3"],
    )?;
    svwar.wait(Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(300));
    lab.dump(&agent);
    eprintln!("svwar said:\n{}", svwar.output());
    let (reached, _) = registers(&reg, &robot, None);
    assert_eq!(reached, 0, "svwar's REGISTERs reached kamailio");
    assert!(
        !svwar.output().contains("| 201"),
        "svwar found 201:\n{}",
        svwar.output()
    );
    let ban = lab
        .ban_of(&robot)
        .unwrap_or_else(|| panic!("svwar was not banned:\n{}", agent.log()));
    assert_eq!(ban["reason"], "scanner", "{ban:#}");
    Ok(())
}

/// The seed's robot with a phone's User-Agent (SIPp, "Yealink SIP-T46S"): REGISTER with
/// password = extension from 200 upwards, 100 a second, one port; 201 is weak, the second
/// extension it tries. It must be caught at 201's 200 OK: ban, CRACKED, quarantine, and the
/// 200 OK withheld, so the robot never learns the password. The office next door registers.
#[test]
fn the_seed_robot_from_200_does_not_crack_201_its_second_extension() -> anyhow::Result<()> {
    let lab = Lab::new("10.240.0")?;
    let (robot, office) = (lab.ip(2), lab.ip(3));
    let mut agent = lab.agent()?;
    let users = office_users(Some("201"));
    let reg = lab.registrar(UnknownUsers::NotFound, &as_refs(&users))?;
    let csv: Vec<String> = (200..220).map(|e| format!("{e};{e}")).collect();
    let mut sipp = lab.sipp(
        "robot",
        "register_auth.xml",
        &robot,
        &csv,
        &["-r", "100", "-rp", "1000", "-m", "20", "-recv_timeout", "2000"],
    )?;
    agent.wait_for_log("CRACKED extension=201", Duration::from_secs(15))?;
    sipp_done(&mut sipp, Duration::from_secs(30))?;
    std::thread::sleep(Duration::from_millis(300));
    let log = agent.log();
    let line = log.lines().find(|l| l.contains("CRACKED")).unwrap().to_owned();
    let ban = lab
        .ban_of(&robot)
        .unwrap_or_else(|| panic!("the robot is not banned:\n{log}"));
    let (all, credentialed) = registers(&reg, &robot, None);
    let later: Vec<_> = reg
        .requests()
        .into_iter()
        .filter(|r| r.source == robot && !["200", "201"].contains(&r.to_user.as_str()))
        .collect();
    let learned = sipp_stat(&sipp, "Successful call");
    eprintln!(
        "seed robot: {line}\nkamailio received {all} REGISTERs from it ({credentialed} with credentials), {} for \
         extensions after 201; the robot saw {learned} 200 OK",
        later.len()
    );
    assert_eq!(ban["reason"], "cracked", "{ban:#}");
    assert!(line.contains(&format!("source={robot} device={robot}:5060")), "{line}");
    assert!(log.contains("rule=moved-on-to-a-2xx"), "{log}");
    assert_eq!(
        replies(&reg, &robot, 200),
        vec!["201".to_owned()],
        "kamailio accepted the guess"
    );
    assert_eq!(learned, 0, "the robot saw the 200 OK");
    assert!(
        later.len() <= 2,
        "REGISTERs after the crack reached kamailio: {later:?}"
    );
    let cracked = lab.cli_json(&["cracked", "list", "--json"]);
    assert!(
        cracked.as_array().unwrap().iter().any(|c| c["extension"] == "201"),
        "{cracked:#}"
    );
    // The office's phone (another address) registers its own extension.
    let mut phone = lab.sipp(
        "phone",
        "register_auth.xml",
        &office,
        &[format!("205;{}", users[5].1)],
        &["-m", "1", "-recv_timeout", "3000"],
    )?;
    sipp_done(&mut phone, Duration::from_secs(20))?;
    assert_eq!(sipp_stat(&phone, "Successful call"), 1, "the office's phone registered");
    assert!(lab.ban_of(&office).is_none());
    Ok(())
}

/// An enumerator with a phone's User-Agent: REGISTER for 200..299 without credentials, five
/// calls at a time, each from a new source port (SIPp `-t un`), retransmitting as a phone
/// would. What it learns is the 401s it sees (200..219 exist); it must learn at most five
/// and be banned, while a phone of another address registers.
fn threaded_enumerator(net: &str, unknown: UnknownUsers) -> anyhow::Result<()> {
    let lab = Lab::new(net)?;
    let (robot, office) = (lab.ip(2), lab.ip(3));
    let agent = lab.agent()?;
    let users = office_users(None);
    let reg = lab.registrar(unknown, &as_refs(&users))?;
    let csv: Vec<String> = (200..300).map(|e| e.to_string()).collect();
    let mut sipp = lab.sipp("enumerator", "register_probe.xml", &robot, &csv, &enumerator_args("un"))?;
    sipp_done(&mut sipp, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_millis(300));
    let learned = sipp_stat(&sipp, "Successful call");
    let (reached, _) = registers(&reg, &robot, None);
    let challenged = replies(&reg, &robot, 401).len();
    let ban = lab.ban_of(&robot);
    let stats = lab.cli_json(&["stats", "--json"]);
    eprintln!(
        "threaded enumerator ({unknown:?}): learned {learned} extensions; {reached} REGISTERs reached kamailio, \
         it sent {challenged} 401s; ban {:?}; withheld {}",
        ban.as_ref().map(|b| b["reason"].clone()),
        stats["withheld_challenges"]
    );
    let ban = ban.unwrap_or_else(|| panic!("the enumerator is not banned:\n{}", agent.log()));
    assert!(
        ["enumeration", "not_found"].contains(&ban["reason"].as_str().unwrap()),
        "{ban:#}"
    );
    assert!(learned <= 5, "the enumerator learned {learned} extensions");
    let mut phone = lab.sipp(
        "phone",
        "register_auth.xml",
        &office,
        &[format!("207;{}", users[7].1)],
        &["-m", "1", "-recv_timeout", "3000"],
    )?;
    sipp_done(&mut phone, Duration::from_secs(20))?;
    assert_eq!(sipp_stat(&phone, "Successful call"), 1, "the phone registered");
    assert!(lab.ban_of(&office).is_none());
    Ok(())
}

#[test]
fn a_threaded_enumerator_with_a_new_port_per_request_learns_at_most_five_404_registrar() -> anyhow::Result<()> {
    threaded_enumerator("10.241.0", UnknownUsers::NotFound)
}

#[test]
fn a_threaded_enumerator_with_a_new_port_per_request_learns_at_most_five_asterisk_like_registrar() -> anyhow::Result<()>
{
    threaded_enumerator("10.242.0", UnknownUsers::Challenge)
}

/// An office of 19 phones behind one address, known since yesterday; the administrator has
/// changed four passwords and those phones still hold the old ones. Three rounds of
/// registrations (each call from its own port, as NAT gives every phone one): nobody is
/// banned or called cracked, every healthy phone registers every round.
#[test]
fn an_office_with_four_stale_passwords_after_a_change_is_never_banned() -> anyhow::Result<()> {
    let lab = Lab::new("10.243.0")?;
    let office = lab.ip(2);
    let agent = lab.agent()?;
    let users: Vec<(String, String)> = office_users(None).into_iter().take(19).collect();
    let reg = lab.registrar(UnknownUsers::NotFound, &as_refs(&users))?;
    let stale = ["203", "207", "211", "215"];
    let round = |name: &str, with_stale: bool| -> anyhow::Result<(u64, u64)> {
        let csv: Vec<String> = users
            .iter()
            .map(|(u, p)| {
                if with_stale && stale.contains(&u.as_str()) {
                    format!("{u};old-{p}")
                } else {
                    format!("{u};{p}")
                }
            })
            .collect();
        let mut sipp = lab.sipp(
            name,
            "register_auth.xml",
            &office,
            &csv,
            &[
                "-t",
                "un",
                "-max_socket",
                "1000",
                "-r",
                "40",
                "-rp",
                "1000",
                "-m",
                "19",
                "-recv_timeout",
                "3000",
            ],
        )?;
        sipp_done(&mut sipp, Duration::from_secs(30))?;
        Ok((sipp_stat(&sipp, "Successful call"), sipp_stat(&sipp, "Failed call")))
    };
    assert_eq!(round("yesterday", false)?, (19, 0), "the office registered yesterday");
    assert!(lab.is_known(&office));
    let mut got = Vec::new();
    for r in 0..3 {
        got.push(round(&format!("round{r}"), true)?);
    }
    let log = agent.log();
    eprintln!("office with 4 stale passwords, 3 rounds (registered, refused): {got:?}");
    assert_eq!(got, vec![(15, 4); 3], "{log}");
    assert!(lab.ban_of(&office).is_none(), "the office was banned:\n{log}");
    assert!(
        !log.contains("CRACKED") && !log.contains("SUSPECT") && !log.contains("sipfilter: ban "),
        "{log}"
    );
    let cracked = lab.cli_json(&["cracked", "list", "--json"]);
    assert!(cracked.as_array().unwrap().is_empty(), "{cracked:#}");
    let refused = replies(&reg, &office, 401).len();
    assert!(refused >= 19 + 3 * 23, "kamailio's challenges and refusals: {refused}");
    Ok(())
}

/// Unusual and malformed SIP (what parser torture tests hold), each message once, from a
/// registered phone's address but another port; then the phone refreshes its registration.
/// Nothing makes the address a cracker or bans it.
#[test]
fn odd_and_malformed_messages_from_a_registered_phones_address_ban_nobody() -> anyhow::Result<()> {
    let lab = Lab::new("10.244.0")?;
    let office = lab.ip(2);
    let agent = lab.agent()?;
    let users = office_users(None);
    let _reg = lab.registrar(UnknownUsers::NotFound, &as_refs(&users))?;
    let phone_csv = [format!("201;{}", users[1].1)];
    let mut phone = lab.sipp(
        "phone",
        "register_auth.xml",
        &office,
        &phone_csv,
        &["-m", "1", "-recv_timeout", "3000"],
    )?;
    sipp_done(&mut phone, Duration::from_secs(20))?;
    assert_eq!(sipp_stat(&phone, "Successful call"), 1);
    let pbx = lab.ip(1);
    let users_odd = [
        "",
        "%32%30%31",
        "201%00",
        "a b",
        "+4930123",
        "*97",
        "201;user=phone",
        "sip:201",
        "'201'",
        "2",
        "ÿÿÿÿ",
        "201\\",
        "..",
        "%",
        "0000000000000000000000000000000000000000",
    ];
    let mut messages: Vec<String> = Vec::new();
    for (i, u) in users_odd.iter().enumerate() {
        for method in ["REGISTER", "INVITE", "OPTIONS"] {
            messages.push(format!(
                "{method} sip:{u}@{pbx} SIP/2.0\r\nVia: SIP/2.0/UDP {office}:5099;branch=z9hG4bK-t{i}{method}\r\n\
                 From: <sip:{u}@{pbx}>;tag=t{i}\r\nTo: <sip:{u}@{pbx}>\r\nCall-ID: torture-{i}-{method}\r\n\
                 CSeq: 1 {method}\r\nMax-Forwards: 70\r\nContact: <sip:{u}@{office}:5099>\r\nContent-Length: 0\r\n\r\n"
            ));
        }
    }
    // Broken headers: duplicated To and CSeq, no CSeq, a negative Content-Length, folded lines.
    messages.push(format!(
        "REGISTER sip:{pbx} SIP/2.0\r\nVia: SIP/2.0/UDP {office}:5099;branch=z9hG4bK-d1\r\nFrom: <sip:201@{pbx}>;tag=d\r\n\
         To: <sip:201@{pbx}>\r\nTo: <sip:202@{pbx}>\r\nCall-ID: dup-1\r\nCSeq: 1 REGISTER\r\nCSeq: 2 REGISTER\r\nContent-Length: 0\r\n\r\n"
    ));
    messages.push(format!(
        "REGISTER sip:{pbx} SIP/2.0\r\nVia: SIP/2.0/UDP {office}:5099;branch=z9hG4bK-d2\r\nFrom: <sip:203@{pbx}>;tag=d\r\n\
         To: <sip:203@{pbx}>\r\nCall-ID: dup-2\r\nContent-Length: -5\r\n\r\n"
    ));
    messages.push(format!(
        "REGISTER sip:{pbx} SIP/2.0\r\nVia: SIP/2.0/UDP {office}:5099;branch=z9hG4bK-d3\r\nFrom: <sip:204@{pbx}>;tag=d\r\n\
         To:\r\n <sip:204@{pbx}>\r\nCall-ID: dup-3\r\nCSeq: 1 REGISTER\r\nAuthorization: Digest username=\"204\"\r\nContent-Length: 0\r\n\r\n"
    ));
    let sent = messages.len();
    let office_ip = office.clone();
    let target = format!("{pbx}:5060");
    lab.lan.run(move || {
        let s = std::net::UdpSocket::bind(format!("{office_ip}:5099"))?;
        for m in &messages {
            s.send_to(m.as_bytes(), &target)?;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    })?;
    std::thread::sleep(Duration::from_millis(500));
    // The phone refreshes, twice.
    for n in 0..2 {
        let mut phone = lab.sipp(
            &format!("refresh{n}"),
            "register_auth.xml",
            &office,
            &phone_csv,
            &["-m", "1", "-recv_timeout", "3000"],
        )?;
        sipp_done(&mut phone, Duration::from_secs(20))?;
        assert_eq!(
            sipp_stat(&phone, "Successful call"),
            1,
            "refresh {n}: the phone was cut off:\n{}",
            agent.log()
        );
    }
    let log = agent.log();
    eprintln!(
        "{sent} odd and malformed messages from the phone's address, port 5099: no ban; the phone refreshed twice"
    );
    assert!(lab.ban_of(&office).is_none(), "{log}");
    assert!(!log.contains("CRACKED") && !log.contains("sipfilter: ban "), "{log}");
    Ok(())
}

/// A reboot keeps the devices: a phone registers two lines and fails once on a third from
/// one port; the agent stops (detaching) and the pins go, as after a reboot; the next agent
/// finds new maps and puts the device back from the state file (lines, counts and last
/// failure as they were) before any packet; the phone then registers again, on the same
/// device, and is not banned.
#[test]
fn a_reboot_keeps_the_devices_of_a_known_source() -> anyhow::Result<()> {
    let lab = Lab::new("10.249.0")?;
    let users = office_users(None);
    let _reg = lab.registrar(UnknownUsers::NotFound, &as_refs(&users))?;
    let phone = lab.ip(3);
    let agent = lab.agent()?;
    let register = |name: &str, lines: &[String]| -> anyhow::Result<u64> {
        let m = lines.len().to_string();
        let mut p = lab.sipp(
            name,
            "register_auth.xml",
            &phone,
            lines,
            &["-m", &m, "-recv_timeout", "3000"],
        )?;
        sipp_done(&mut p, Duration::from_secs(20))?;
        Ok(sipp_stat(&p, "Successful call"))
    };
    let lines = [format!("202;{}", users[2].1), format!("203;{}", users[3].1)];
    let stale = format!("204;{}", users[5].1);
    assert_eq!(register("phone", &lines)?, 2);
    assert_eq!(register("phone-stale", &[stale])?, 0);
    assert!(lab.is_known(&phone), "the phone is known:\n{}", agent.log());
    let devices = || lab.devices_of(&phone);
    let before = devices();
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0]["port"], 5060, "{before:?}");
    assert_eq!(before[0]["registered"], serde_json::json!(["202", "203"]), "{before:?}");
    assert_eq!(before[0]["last_failed"], "204", "{before:?}");

    let log = agent.stop()?;
    let pin = lab.bpffs.pin_dir();
    std::fs::remove_dir_all(&pin)?;
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lab.dir.path().join("agent/state.json"))?)?;
    assert_eq!(state["version"], sipfilter::state_file::VERSION, "{state:#}");
    assert_eq!(state["devices"].as_array().map(Vec::len), Some(1), "{state:#}\n{log}");

    let agent2 = lab.agent()?;
    assert!(agent2.log().contains("created maps under"), "{}", agent2.log());
    assert!(agent2.log().contains("restored 1 device(s)"), "{}", agent2.log());
    // Back before any packet (`sources` lists a source once it sends one): read the map.
    let key = sipfilter_common::SourceKey::from_v4(phone.parse::<std::net::Ipv4Addr>()?.octets());
    let pinned = sipfilter::devices::pinned_devices(&pin)?;
    let restored: Vec<serde_json::Value> = pinned
        .get(&key)
        .into_iter()
        .flatten()
        .map(|(port, d)| {
            let ext = sipfilter_common::scan::ext_str;
            let registered: Vec<&str> = d.registered.iter().map(ext).filter(|s| !s.is_empty()).collect();
            serde_json::json!({"port": port, "registered": registered, "last_failed": ext(&d.failed),
                               "failures": d.failures, "not_found": d.not_found, "successes": d.successes})
        })
        .collect();
    assert_eq!(restored, before, "the device after the reboot");

    assert_eq!(register("phone-after", &lines[..1])?, 1, "{}", agent2.log());
    let after = devices();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["registered"], before[0]["registered"], "{after:?}");
    assert_eq!(after[0]["failures"], before[0]["failures"], "{after:?}");
    assert_eq!(
        after[0]["successes"],
        before[0]["successes"].as_u64().unwrap() + 1,
        "{after:?}"
    );
    assert!(lab.ban_of(&phone).is_none(), "{}", agent2.log());
    assert!(lab.is_known(&phone));
    Ok(())
}
