//! Sources judged by the PBX's answers, through the real programs: requests through the XDP
//! program, the PBX's answers through the answers (TC) program, in the order a registrar
//! would see and send them. Minutes-long cases move the programs' clock instead of waiting.

use std::{net::Ipv4Addr, time::Duration};

use sipfilter::addr::source_key;
use sipfilter_common::{
    config::{defaults, FLAG_QUARANTINE, FLAG_STEALTH, FLAG_TRUST, FLAG_WITHHOLD},
    counters::ban_reason,
    scan::{ext_from, ext_str},
    KernelConfig, Outcome,
};
use sipfilter_tests::{
    harness::{TestFilter, TC_ACT_OK, TC_ACT_SHOT, XDP_DROP, XDP_PASS},
    packet::{sip_answer, sip_request_from, PacketBuilder as P},
    peer::Peer,
};

fn trusted_config() -> KernelConfig {
    let mut c = KernelConfig::default();
    c.flags |= FLAG_TRUST | FLAG_STEALTH | FLAG_WITHHOLD;
    c
}

fn addr(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, last)
}

#[test]
fn a_phone_that_registers_cleanly_becomes_known_and_gets_the_office_limits() -> anyhow::Result<()> {
    let mut f = TestFilter::with_config(&trusted_config())?;
    let mut phone = Peer::new(&f, addr(20));
    assert_eq!(phone.login("201", "200 OK"), Some(TC_ACT_OK));
    let key = source_key(addr(20).into(), 64);
    let known = f.loaded.trust.known(&key)?.expect("the phone's address is known");
    assert_eq!(ext_str(&known.extension), "201");
    assert_eq!(f.counters()?.promoted, 1);
    // Known: the NAT-office burst (150) applies, where an unknown source gets 20.
    let burst = defaults::REGISTER.burst as usize;
    let (passed, _) = f.run_n(
        &P::request4(addr(20), &sip_request_from("REGISTER", "202", "202", 9))
            .build()
            .bytes,
        burst,
    )?;
    assert_eq!(passed, burst);
    let unknown_burst = defaults::UNKNOWN_REGISTER.burst as usize;
    let stranger = P::request4(addr(21), &sip_request_from("REGISTER", "203", "203", 1))
        .build()
        .bytes;
    assert_eq!(f.run_n(&stranger, unknown_burst + 1)?, (unknown_burst, 1));
    assert!(f.ban_events().iter().all(|e| e.source != key));
    Ok(())
}

#[test]
fn dictionary_brute_force_is_banned_at_the_fifth_wrong_password() -> anyhow::Result<()> {
    let mut f = TestFilter::with_config(&trusted_config())?;
    let mut robot = Peer::new(&f, addr(66));
    assert_eq!(robot.register("201"), XDP_PASS);
    robot.answer("401 Unauthorized", "REGISTER", "201", "201");
    // svcrack style: one REGISTER with credentials per guess, each re-challenged.
    let mut guesses = 0;
    while robot.register("201") == XDP_PASS {
        guesses += 1;
        robot.answer("401 Unauthorized", "REGISTER", "201", "201");
        assert!(guesses < 50, "never banned");
    }
    assert_eq!(guesses, 5, "the fifth failure bans; the sixth guess is dropped");
    let events = f.ban_events();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.reason, ban_reason::AUTH_FAILURE);
    assert_eq!(e.failures, 5);
    assert_eq!(ext_str(&e.extension), "201");
    Ok(())
}

#[test]
fn a_retransmitted_challenge_is_not_a_failure() -> anyhow::Result<()> {
    let f = TestFilter::with_config(&trusted_config())?;
    let mut phone = Peer::new(&f, addr(30));
    assert_eq!(phone.register("201"), XDP_PASS);
    for _ in 0..10 {
        // The PBX answers each retransmission of the same REGISTER (same CSeq) again.
        phone.answer("401 Unauthorized", "REGISTER", "201", "201");
    }
    assert!(f.loaded.maps.bans()?.is_empty());
    assert_eq!(phone.login("201", "200 OK"), Some(TC_ACT_OK));
    Ok(())
}

#[test]
fn enumeration_is_banned_at_the_fifth_not_found() -> anyhow::Result<()> {
    let mut f = TestFilter::with_config(&trusted_config())?;
    let mut robot = Peer::new(&f, addr(67));
    let mut probed = 0;
    for ext in 100..200 {
        let ext = ext.to_string();
        if robot.register(&ext) != XDP_PASS {
            break;
        }
        probed += 1;
        robot.answer("404 Not Found", "REGISTER", &ext, &ext);
    }
    assert_eq!(probed, 5);
    let events = f.ban_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].reason, ban_reason::NOT_FOUND);
    assert_eq!(events[0].not_found, 5);
    Ok(())
}

#[test]
fn the_password_equals_extension_robot_cracks_202_and_is_caught_with_its_proof_withheld() -> anyhow::Result<()> {
    let mut f = TestFilter::with_config(&trusted_config())?;
    let mut robot = Peer::new(&f, addr(68));
    // 200 does not exist, 201 has another password, 202's password is "202".
    assert_eq!(robot.register("200"), XDP_PASS);
    robot.answer("404 Not Found", "REGISTER", "200", "200");
    assert_eq!(robot.login("201", "401 Unauthorized"), Some(TC_ACT_OK));
    assert_eq!(
        robot.login("202", "200 OK"),
        Some(TC_ACT_SHOT),
        "the 200 OK that proves the guess is withheld"
    );
    assert_eq!(robot.register("203"), XDP_DROP, "banned");
    let events = f.ban_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].reason, ban_reason::CRACKED);
    assert_eq!(ext_str(&events[0].extension), "202");
    let cracked = f.loaded.trust.cracked()?;
    assert_eq!(cracked.len(), 1);
    assert_eq!(cracked[0].0, ext_from("202"));
    assert_eq!(cracked[0].1.source, source_key(addr(68).into(), 64));
    assert_eq!(cracked[0].1.other_extensions, 2);
    assert!(f.loaded.trust.known(&source_key(addr(68).into(), 64))?.is_none());
    assert_eq!(f.counters()?.cracked, 1);
    assert_eq!(f.counters()?.withheld, 1);

    // Quarantine (the agent switches it on while an extension is cracked): the robot's next
    // step from a second address fails; the real phone of 202, known, keeps working.
    let mut k = f.maps().read_config()?;
    k.flags |= FLAG_QUARANTINE;
    f.set_config(&k)?;
    let mut phone = Peer::new(&f, addr(20));
    assert_eq!(
        phone.login("210", "200 OK"),
        Some(TC_ACT_OK),
        "the office becomes known"
    );
    let mut second = Peer::new(&f, addr(69));
    let before = f.counters()?.outcome(Outcome::Quarantined);
    assert_eq!(second.register("202"), XDP_DROP, "REGISTER for 202 from a new address");
    assert_eq!(
        second.send("INVITE", "202", "0023276123456"),
        XDP_DROP,
        "the test call from 202"
    );
    assert_eq!(f.counters()?.outcome(Outcome::Quarantined) - before, 2);
    assert_eq!(second.register("204"), XDP_PASS, "other extensions are not quarantined");
    assert_eq!(
        phone.register("202"),
        XDP_PASS,
        "202's own phone, from its known address"
    );
    assert_eq!(phone.send("INVITE", "202", "030123456"), XDP_PASS);
    assert!(f.ban_events().is_empty(), "quarantine drops, it does not ban");
    Ok(())
}

#[test]
fn stealth_silences_probes_from_unknown_sources_only() -> anyhow::Result<()> {
    let mut f = TestFilter::with_config(&trusted_config())?;
    let mut scanner = Peer::new(&f, addr(70));
    assert_eq!(scanner.send("OPTIONS", "100", "100"), XDP_DROP);
    assert_eq!(f.counters()?.outcome(Outcome::Stealth), 1);
    let mut phone = Peer::new(&f, addr(20));
    phone.login("201", "200 OK");
    assert_eq!(
        phone.send("OPTIONS", "201", "201"),
        XDP_PASS,
        "a known phone's keep-alive"
    );
    assert!(f.ban_events().is_empty());
    Ok(())
}

#[test]
fn an_office_with_a_misconfigured_phone_is_never_banned_in_five_minutes() -> anyhow::Result<()> {
    let mut f = TestFilter::with_config(&trusted_config())?;
    let office = addr(40);
    let mut peer = Peer::new(&f, office);
    for ext in ["201", "202", "203"] {
        assert_eq!(peer.login(ext, "200 OK"), Some(TC_ACT_OK));
    }
    // Extension 299 has a wrong password: it fails every 15 s for five minutes, while the
    // others keep refreshing their registrations.
    for tick in 0..20 {
        f.advance_clock(Duration::from_secs(15))?;
        let mut peer = Peer::new(&f, office);
        peer.cseq = 1000 + tick * 10;
        let got = peer.login("299", "401 Unauthorized");
        assert_eq!(got, Some(TC_ACT_OK), "tick {tick}: the office was cut off");
        for ext in ["201", "202", "203"] {
            assert_eq!(peer.login(ext, "200 OK"), Some(TC_ACT_OK), "tick {tick}, {ext}");
        }
    }
    assert!(f.ban_events().is_empty());
    Ok(())
}

#[test]
fn a_known_source_that_starts_guessing_is_banned_later() -> anyhow::Result<()> {
    let mut f = TestFilter::with_config(&trusted_config())?;
    let mut src = Peer::new(&f, addr(50));
    assert_eq!(src.login("201", "200 OK"), Some(TC_ACT_OK));
    let mut guesses = 0;
    while src.register("205") == XDP_PASS {
        src.answer("401 Unauthorized", "REGISTER", "205", "205");
        guesses += 1;
        assert!(guesses < 100, "never banned");
    }
    // The first answer is a first challenge; then the known budget's 20 failures.
    assert_eq!(guesses, 21);
    assert_eq!(f.ban_events()[0].reason, ban_reason::AUTH_FAILURE);
    Ok(())
}

#[test]
fn one_guess_every_two_seconds_is_banned_within_half_a_minute() -> anyhow::Result<()> {
    let mut f = TestFilter::with_config(&trusted_config())?;
    let robot = addr(71);
    let mut cseq = 1;
    let mut elapsed = 0;
    loop {
        let mut p = Peer::new(&f, robot);
        p.cseq = cseq;
        if p.register("201") != XDP_PASS {
            break;
        }
        p.answer("401 Unauthorized", "REGISTER", "201", "201");
        cseq = p.cseq;
        f.advance_clock(Duration::from_secs(2))?;
        elapsed += 2;
        assert!(elapsed <= 30, "not banned after {elapsed} s");
    }
    assert_eq!(f.ban_events()[0].reason, ban_reason::AUTH_FAILURE);
    Ok(())
}

#[test]
fn fifty_phones_behind_an_unknown_nat_address_all_register_after_a_power_cut() -> anyhow::Result<()> {
    let mut f = TestFilter::with_config(&trusted_config())?;
    let nat = addr(90);
    // Each phone: REGISTER until answered (SIP timer A: retransmit after 0.5 s, doubling),
    // then the REGISTER with credentials the same way, until its 200 OK.
    struct Phone {
        ext: String,
        cseq: u32,
        authenticated: bool,
        registered: bool,
        next_ms: u64,
        interval_ms: u64,
    }
    let mut phones: Vec<Phone> = (0..50)
        .map(|i| Phone {
            ext: format!("{}", 300 + i),
            cseq: 1,
            authenticated: false,
            registered: false,
            next_ms: 0,
            interval_ms: 500,
        })
        .collect();
    let mut now_ms = 0;
    while phones.iter().any(|p| !p.registered) {
        for p in phones.iter_mut().filter(|p| !p.registered && p.next_ms <= now_ms) {
            // Behind the NAT each phone has a port of its own.
            let port = 20000 + p.ext.parse::<u16>()?;
            let pbx = Ipv4Addr::new(192, 0, 2, 1);
            let req = P::udp4(
                nat,
                pbx,
                port,
                5060,
                &sip_request_from("REGISTER", &p.ext, &p.ext, p.cseq),
            )
            .build()
            .bytes;
            if f.run(&req)? == XDP_PASS {
                let status = if p.authenticated { "200 OK" } else { "401 Unauthorized" };
                let ans = P::udp4(
                    pbx,
                    nat,
                    5060,
                    port,
                    &sip_answer(status, "REGISTER", p.cseq, &p.ext, &p.ext),
                )
                .build()
                .bytes;
                f.run_answer(&ans)?;
                if p.authenticated {
                    p.registered = true;
                } else {
                    p.authenticated = true;
                    p.cseq += 1;
                    p.next_ms = now_ms;
                    p.interval_ms = 500;
                    continue;
                }
            } else {
                p.next_ms = now_ms + p.interval_ms;
                p.interval_ms = (p.interval_ms * 2).min(4_000);
            }
        }
        f.advance_clock(Duration::from_millis(100))?;
        now_ms += 100;
        assert!(now_ms < 60_000, "not all registered after a minute");
    }
    eprintln!("50 phones behind one unknown address registered within {now_ms} ms");
    assert!(f.ban_events().is_empty(), "the office was banned");
    assert!(f.loaded.trust.known(&source_key(nat.into(), 64))?.is_some());
    assert!(now_ms <= 5_000, "took {now_ms} ms");
    Ok(())
}

#[test]
fn stealth_all_silences_every_request_but_register_from_unknown_sources() -> anyhow::Result<()> {
    let mut c = trusted_config();
    c.flags |= sipfilter_common::config::FLAG_STEALTH_ALL;
    let f = TestFilter::with_config(&c)?;
    let mut stranger = Peer::new(&f, addr(80));
    assert_eq!(stranger.send("INVITE", "100", "0049301234"), XDP_DROP);
    assert_eq!(stranger.send("MESSAGE", "100", "200"), XDP_DROP);
    assert_eq!(stranger.register("100"), XDP_PASS, "REGISTER is how trust is earned");
    let mut phone = Peer::new(&f, addr(20));
    assert_eq!(phone.login("201", "200 OK"), Some(TC_ACT_OK));
    assert_eq!(
        phone.send("INVITE", "201", "0049301234"),
        XDP_PASS,
        "a known phone calls"
    );
    assert_eq!(f.counters()?.outcome(Outcome::Stealth), 2);
    Ok(())
}

#[test]
fn monitor_mode_records_what_it_would_do_and_drops_nothing() -> anyhow::Result<()> {
    let mut c = trusted_config();
    c.flags |= sipfilter_common::config::FLAG_MONITOR;
    let mut f = TestFilter::with_config(&c)?;
    let mut robot = Peer::new(&f, addr(68));
    assert_eq!(robot.register("200"), XDP_PASS);
    robot.answer("404 Not Found", "REGISTER", "200", "200");
    assert_eq!(robot.login("201", "401 Unauthorized"), Some(TC_ACT_OK));
    assert_eq!(
        robot.login("202", "200 OK"),
        Some(TC_ACT_OK),
        "monitor mode withholds nothing"
    );
    assert_eq!(
        robot.send("OPTIONS", "1", "1"),
        XDP_PASS,
        "banned (in monitor mode): passed"
    );
    let events = f.ban_events();
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].reason, events[0].monitor), (ban_reason::CRACKED, 1));
    assert_eq!(
        f.loaded.trust.cracked()?.len(),
        1,
        "the cracked extension is still recorded"
    );
    let mut k = f.maps().read_config()?;
    k.flags |= FLAG_QUARANTINE;
    f.set_config(&k)?;
    let mut second = Peer::new(&f, addr(69));
    assert_eq!(second.register("202"), XDP_PASS, "would be quarantined");
    let counters = f.counters()?;
    assert_eq!(counters.outcome(Outcome::Quarantined), 1);
    // The banned robot's OPTIONS and the quarantined REGISTER.
    assert_eq!(counters.verdict(sipfilter_common::Verdict::WouldDrop), 2);
    assert_eq!(counters.verdict(sipfilter_common::Verdict::Drop), 0);
    assert_eq!(counters.withheld, 0);
    Ok(())
}

/// One device behind an office's address: its extension, whether its password is stale,
/// and its CSeq numbering (kept between rounds, as a phone keeps its Call-ID).
struct Phone {
    ip: Ipv4Addr,
    port: u16,
    ext: String,
    stale: bool,
    cseq: u32,
}

impl Phone {
    /// One registration as a phone does it: REGISTER, 401, REGISTER with credentials, the
    /// PBX's answer; a withheld 2xx is retransmitted once (RFC 3261's timer E) and the PBX
    /// answers it again. Some(true): registered; Some(false): refused (stale); None: a
    /// REGISTER dropped or the retransmission's 2xx withheld too.
    fn register(&mut self, f: &TestFilter) -> Option<bool> {
        let mut p = Peer {
            f,
            ip: self.ip,
            port: self.port,
            cseq: self.cseq,
        };
        let status = if self.stale { "401 Unauthorized" } else { "200 OK" };
        let got = p.login_with_credentials(&self.ext, status);
        let out = match got {
            None => None,
            Some(TC_ACT_OK) => Some(!self.stale),
            Some(_) => {
                // Withheld: the phone retransmits, the PBX answers the same request again.
                (p.answer_again(status, &self.ext) == TC_ACT_OK).then_some(!self.stale)
            }
        };
        self.cseq = p.cseq + 10;
        out
    }
}

/// Bans among the events (SUSPECT alerts are not bans).
fn bans(events: &[sipfilter_common::BanEvent]) -> Vec<&sipfilter_common::BanEvent> {
    events.iter().filter(|e| e.reason != ban_reason::SUSPECT).collect()
}

#[test]
fn the_seed_robot_is_caught_at_its_first_2xx_with_the_weak_extension_second_or_fifth() -> anyhow::Result<()> {
    for weak_at in [2usize, 5] {
        let mut f = TestFilter::with_config(&trusted_config())?;
        // The seed's robot: password = extension, from 200 upwards, one port, a phone's
        // User-Agent (these programs never see it: the scanner rule is off here).
        let ip = addr(100 + weak_at as u8);
        let mut robot = Peer::device(&f, ip, 40123);
        let mut answers = Vec::new();
        for (i, ext) in (200..210).map(|e| e.to_string()).enumerate() {
            let weak = i + 1 == weak_at;
            match robot.login_with_credentials(&ext, if weak { "200 OK" } else { "401 Unauthorized" }) {
                Some(v) => answers.push((ext, v)),
                None => break,
            }
        }
        // The robot saw its guesses refused and the right one's 200 OK withheld; then nothing.
        let learned: Vec<_> = answers
            .iter()
            .filter(|(_, v)| *v == TC_ACT_OK)
            .map(|(e, _)| e.clone())
            .collect();
        assert_eq!(answers.len(), weak_at, "weak {weak_at}: {answers:?}");
        assert_eq!(
            answers.last().unwrap().1,
            TC_ACT_SHOT,
            "the 2xx is withheld: {answers:?}"
        );
        assert_eq!(learned.len(), weak_at - 1, "only its refusals passed");
        let events = f.ban_events();
        let b = bans(&events);
        assert_eq!(b.len(), 1, "{events:?}");
        assert_eq!(b[0].reason, ban_reason::CRACKED);
        assert_eq!(b[0].device_port, 40123, "the ban names the device");
        let weak_ext = (199 + weak_at).to_string();
        assert_eq!(ext_str(&b[0].extension), weak_ext);
        let cracked = f.loaded.trust.cracked()?;
        assert_eq!(cracked.len(), 1);
        assert_eq!(ext_str(&cracked[0].0), weak_ext, "quarantined");
        assert_eq!(f.counters()?.withheld, 1);
        // A phone of another address is untouched by it.
        let mut phone = Peer::device(&f, addr(99), 5062);
        assert_eq!(phone.login_with_credentials("210", "200 OK"), Some(TC_ACT_OK));
    }
    Ok(())
}

/// An office behind one address, known from yesterday: a power cut, all its phones register
/// at once, `stale` of them with the password the administrator has just changed; each
/// retries every 15 s for five minutes; at 3 minutes the stale phones are given the new one.
/// Nobody is banned, no healthy phone ever waits, the stale ones get in once fixed.
fn office_after_a_power_cut(phones: usize, stale: usize, last: u8) -> anyhow::Result<()> {
    let mut f = TestFilter::with_config(&trusted_config())?;
    let ip = addr(last);
    let mut office: Vec<Phone> = (0..phones)
        .map(|i| Phone {
            ip,
            port: 20000 + i as u16,
            ext: (200 + i).to_string(),
            // The stale ones spread among the others.
            stale: stale != 0 && i % (phones / stale) == phones / stale - 1 && i / (phones / stale) < stale,
            cseq: 1,
        })
        .collect();
    assert_eq!(office.iter().filter(|p| p.stale).count(), stale);
    // Yesterday: every phone registered with the old passwords (the address is known).
    for p in office.iter_mut() {
        let was = p.stale;
        p.stale = false;
        assert_eq!(p.register(&f), Some(true));
        p.stale = was;
    }
    f.advance_clock(Duration::from_secs(24 * 3600))?;
    let mut refused = 0;
    for tick in 0..20 {
        if tick == 12 {
            for p in office.iter_mut() {
                p.stale = false;
            }
        }
        for p in office.iter_mut() {
            let stale = p.stale;
            let got = p.register(&f);
            assert_eq!(
                got,
                Some(!stale),
                "tick {tick}, {} (stale {stale}): the office was cut off",
                p.ext
            );
            refused += stale as usize;
        }
        f.advance_clock(Duration::from_secs(15))?;
    }
    let events = f.ban_events();
    assert!(events.is_empty(), "{phones} phones, {stale} stale: {events:?}");
    let c = f.counters()?;
    assert_eq!((c.withheld, c.suspect, c.withheld_challenges), (0, 0, 0));
    assert_eq!(refused, stale * 12);
    assert!(f.loaded.trust.cracked()?.is_empty());
    eprintln!(
        "{phones} phones, {stale} stale: every healthy registration passed, {refused} refusals, no ban, no alert"
    );
    Ok(())
}

#[test]
fn offices_of_20_and_50_phones_with_stale_passwords_after_a_power_cut_are_never_banned() -> anyhow::Result<()> {
    for (n, (phones, stale)) in [(20, 0), (20, 1), (20, 4), (20, 10), (50, 10)].into_iter().enumerate() {
        office_after_a_power_cut(phones, stale, 120 + n as u8)?;
    }
    Ok(())
}

#[test]
fn a_never_seen_office_whose_first_phones_are_stale_withholds_one_2xx_and_bans_nobody() -> anyhow::Result<()> {
    let mut f = TestFilter::with_config(&trusted_config())?;
    let ip = addr(130);
    // Four stale phones answer first, then the healthy ones: failures on four extensions,
    // then a 2xx, from other devices: ambiguous. One 2xx is withheld and alerted; the phone
    // retransmits and gets in; the office becomes known.
    let mut office: Vec<Phone> = (0..20)
        .map(|i| Phone {
            ip,
            port: 30000 + i as u16,
            ext: (300 + i).to_string(),
            stale: i < 4,
            cseq: 1,
        })
        .collect();
    for p in office.iter_mut() {
        let stale = p.stale;
        assert_eq!(p.register(&f), Some(!stale), "{}", p.ext);
    }
    let events = f.ban_events();
    assert!(bans(&events).is_empty(), "{events:?}");
    let alerts: Vec<_> = events.iter().filter(|e| e.reason == ban_reason::SUSPECT).collect();
    assert_eq!(alerts.len(), 1, "{events:?}");
    assert_eq!(ext_str(&alerts[0].extension), "304");
    assert_eq!(alerts[0].device_port, 30004);
    assert_eq!(f.counters()?.suspect, 1);
    assert!(f.loaded.trust.known(&source_key(ip.into(), 64))?.is_some());
    assert!(f.loaded.trust.cracked()?.is_empty());
    Ok(())
}

#[test]
fn a_known_device_that_moves_on_to_a_2xx_has_it_withheld_once_and_is_not_banned() -> anyhow::Result<()> {
    let mut f = TestFilter::with_config(&trusted_config())?;
    let ip = addr(131);
    let mut phone = Peer::device(&f, ip, 5062);
    assert_eq!(phone.login_with_credentials("201", "200 OK"), Some(TC_ACT_OK));
    // A robot on another device of the known address: fails 202, then guesses 203.
    let mut robot = Peer::device(&f, ip, 41000);
    assert_eq!(robot.login_with_credentials("202", "401 Unauthorized"), Some(TC_ACT_OK));
    assert_eq!(robot.login_with_credentials("203", "200 OK"), Some(TC_ACT_SHOT));
    // It moved on without retransmitting: it never learned 203's password. The phone stays.
    assert_eq!(robot.login_with_credentials("204", "401 Unauthorized"), Some(TC_ACT_OK));
    assert_eq!(phone.login_with_credentials("201", "200 OK"), Some(TC_ACT_OK));
    let events = f.ban_events();
    assert!(bans(&events).is_empty(), "{events:?}");
    let alert = events
        .iter()
        .find(|e| e.reason == ban_reason::SUSPECT)
        .expect("an alert");
    assert_eq!((ext_str(&alert.extension), alert.device_port), ("203", 41000));
    Ok(())
}

#[test]
fn an_enumerator_from_one_port_or_a_new_port_per_request_learns_at_most_five_extensions() -> anyhow::Result<()> {
    // 200..219 exist; the PBX answers the others 404 (kamailio) or challenges everyone
    // (Asterisk-like). Five threads walk 200..299 in chunks of 20, interleaved, with no
    // credentials ever; from one port, or a new source port for every REGISTER.
    for (n, (challenge_all, new_ports)) in [(false, false), (false, true), (true, false), (true, true)]
        .into_iter()
        .enumerate()
    {
        let mut f = TestFilter::with_config(&trusted_config())?;
        let ip = addr(140 + n as u8);
        let mut learned = Vec::new();
        let mut sent = 0;
        // Five REGISTERs a second (under every flood limit: the answers must stop it),
        // each extension once (a dropped one is not retried).
        for i in 0..100u16 {
            let ext = (200 + (i % 5) * 20 + i / 5).to_string();
            let port = if new_ports { 42000 + i } else { 42000 };
            f.advance_clock(Duration::from_millis(200))?;
            let mut probe = Peer::device(&f, ip, port);
            probe.cseq = i as u32 * 3;
            if probe.register(&ext) != XDP_PASS {
                continue;
            }
            sent += 1;
            let exists = ext.parse::<u16>()? < 220;
            let status = if exists || challenge_all {
                "401 Unauthorized"
            } else {
                "404 Not Found"
            };
            // What the robot learns: an extension answered differently from one that does
            // not exist (a 401 where the PBX answers 404 to strangers).
            if probe.answer(status, "REGISTER", &ext, &ext) == TC_ACT_OK && exists {
                learned.push(ext);
            }
        }
        let c = f.counters()?;
        let events = f.ban_events();
        let b = bans(&events);
        eprintln!(
            "challenge all {challenge_all}, new port per request {new_ports}: {sent} REGISTERs passed, \
             401s to existing extensions passed {learned:?}, {} answers withheld, banned {:?}",
            c.withheld_challenges,
            b.first().map(|e| ban_reason::name(e.reason))
        );
        assert!(learned.len() <= 5, "learned {learned:?}");
        assert!(!b.is_empty(), "never banned");
        assert!(matches!(b[0].reason, ban_reason::ENUMERATION | ban_reason::NOT_FOUND));
        if challenge_all {
            assert!(c.withheld_challenges > 0);
        }
        // A phone elsewhere registers meanwhile.
        let mut phone = Peer::device(&f, addr(150 + n as u8), 5060);
        assert_eq!(phone.login_with_credentials("201", "200 OK"), Some(TC_ACT_OK));
    }
    Ok(())
}

/// A source shut out (banned, or in a denylisted range) learns nothing more from the PBX's
/// answers to what it sent before: over TCP the PBX's own stack would otherwise resend them
/// to it. Its neighbour, not listed, gets its challenge; a 1xx is never withheld.
#[test]
fn answers_to_a_banned_or_denylisted_source_are_withheld() -> anyhow::Result<()> {
    let mut f = TestFilter::with_config(&trusted_config())?;
    let (robot, listed, phone) = (addr(40), addr(41), addr(42));
    for ip in [robot, listed, phone] {
        assert_eq!(Peer::new(&f, ip).register("201"), XDP_PASS);
    }
    f.maps()
        .add_ban(&source_key(robot.into(), 128), None, ban_reason::MANUAL)?;
    f.maps().list_add(
        sipfilter::filter_maps::ListKind::Deny,
        &"198.51.100.41/32".parse()?,
        sipfilter_common::maps::PERMANENT,
    )?;
    // The answers to those REGISTERs (CSeq 1).
    let answered = |ip: Ipv4Addr, status: &str| {
        let mut peer = Peer::new(&f, ip);
        peer.cseq = 1;
        peer.answer(status, "REGISTER", "201", "201")
    };
    assert_eq!(answered(robot, "401 Unauthorized"), TC_ACT_SHOT);
    assert_eq!(answered(robot, "404 Not Found"), TC_ACT_SHOT);
    assert_eq!(answered(robot, "100 Trying"), TC_ACT_OK);
    assert_eq!(answered(listed, "401 Unauthorized"), TC_ACT_SHOT);
    assert_eq!(answered(phone, "401 Unauthorized"), TC_ACT_OK);
    Ok(())
}
