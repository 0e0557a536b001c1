//! Calls, not packets: the destination and call-burst rules over sequences of real INVITEs
//! through the real programs (retransmissions, the retry with credentials after a 407, known
//! and unknown sources, monitor mode).

use std::{net::Ipv4Addr, time::Duration};

use sipfilter::config::Config;
use sipfilter_common::{
    calls::call_verdict, config::FLAG_MONITOR, counters::ban_reason, scan::ext_str, Outcome, SourceKey,
};
use sipfilter_tests::{
    harness::{TestFilter, TC_ACT_OK, XDP_DROP, XDP_PASS},
    packet::PacketBuilder as P,
    peer::Peer,
};

fn addr(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, last)
}

fn settings() -> Config {
    Config::default()
}

/// An INVITE from extension 201 to `number`, call `call`, CSeq `cseq` (2 with credentials,
/// as a phone retries after a 407).
fn invite(src: Ipv4Addr, number: &str, call: u32, cseq: u32) -> Vec<u8> {
    P::request4(src, invite_text(src, number, call, cseq).as_bytes())
        .build()
        .bytes
}

fn invite_text(src: Ipv4Addr, number: &str, call: u32, cseq: u32) -> String {
    let auth = if cseq > 1 {
        "Proxy-Authorization: Digest username=\"201\", realm=\"pbx\", nonce=\"n\", uri=\"sip:x\", response=\"r\"\r\n"
    } else {
        ""
    };
    format!(
        "INVITE sip:{number}@pbx.example SIP/2.0\r\n\
         Via: SIP/2.0/UDP {src}:5060;branch=z9hG4bK-{call}-{cseq}\r\n\
         From: <sip:201@pbx.example>;tag={call}\r\n\
         To: <sip:{number}@pbx.example>\r\n\
         Call-ID: call-{call}@{src}\r\n\
         CSeq: {cseq} INVITE\r\n\
         {auth}\
         User-Agent: Yealink SIP-T46S 66.86.0.15\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

fn ban_of(f: &TestFilter, src: Ipv4Addr) -> Option<&'static str> {
    f.loaded
        .maps
        .bans()
        .unwrap()
        .into_iter()
        .find(|(k, _)| *k == SourceKey::from_v4(src.octets()))
        .map(|(_, b)| ban_reason::name(b.reason))
}

#[test]
fn a_robot_dialing_one_number_from_a_new_address_is_cut_off_after_three_calls() -> anyhow::Result<()> {
    let mut f = TestFilter::with_settings(&settings())?;
    let robot = addr(20);
    let uk = "+442079460000";
    for call in 1..=3 {
        f.expect(&invite(robot, uk, call, 1), XDP_PASS, "a first INVITE")?;
        // Retransmitted, then sent again with credentials after the 407: the same call.
        f.expect(&invite(robot, uk, call, 1), XDP_PASS, "its retransmission")?;
        f.expect(&invite(robot, uk, call, 2), XDP_PASS, "its retry with credentials")?;
    }
    assert_eq!(f.counters()?.calls_checked, 3, "three calls, nine INVITEs");
    f.expect(&invite(robot, uk, 4, 1), XDP_DROP, "the fourth call within a minute")?;
    let c = f.counters()?;
    assert_eq!(c.outcome(Outcome::CallBurst), 1);
    assert_eq!(c.calls_blocked[call_verdict::BURST_NUMBER as usize - 1], 1);
    assert_eq!(ban_of(&f, robot), Some("call_burst"), "an unknown source is banned");
    let events = f.call_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].verdict, call_verdict::BURST_NUMBER);
    assert_eq!((events[0].known, ext_str(&events[0].extension)), (0, "201"));
    Ok(())
}

#[test]
fn an_unknown_source_placing_many_international_calls_is_banned() -> anyhow::Result<()> {
    let mut f = TestFilter::with_settings(&settings())?;
    let robot = addr(21);
    for call in 1..=5 {
        let number = format!("+4420794600{call:02}");
        f.expect(&invite(robot, &number, call, 1), XDP_PASS, "an international call")?;
    }
    f.expect(&invite(robot, "+442079460099", 6, 1), XDP_DROP, "the sixth in a minute")?;
    assert_eq!(ban_of(&f, robot), Some("call_burst"));
    let events = f.call_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].verdict, call_verdict::BURST_INTERNATIONAL);
    // National calls are not international calls: another unknown source may place many.
    let office = addr(22);
    for call in 1..=8 {
        f.expect(&invite(office, "0301234567", call, 1), XDP_PASS, "a national call")?;
    }
    assert_eq!(ban_of(&f, office), None);
    Ok(())
}

#[test]
fn a_known_phone_over_the_limit_is_reported_not_banned_and_can_call_again_later() -> anyhow::Result<()> {
    let mut f = TestFilter::with_settings(&settings())?;
    let ip = addr(23);
    {
        let mut phone = Peer::new(&f, ip);
        assert_eq!(phone.login("201", "200 OK"), Some(TC_ACT_OK));
    }
    let number = "+33142000000";
    for call in 1..=3 {
        f.expect(&invite(ip, number, call, 1), XDP_PASS, "a call")?;
    }
    f.expect(&invite(ip, number, 4, 1), XDP_DROP, "the fourth call to one number")?;
    f.expect(
        &invite(ip, number, 4, 1),
        XDP_DROP,
        "its retransmission keeps the verdict",
    )?;
    assert_eq!(ban_of(&f, ip), None, "a registered phone is reported, not banned");
    let events = f.call_events();
    assert_eq!(events.len(), 1, "one event per call, not per retransmission");
    assert_eq!(events[0].known, 1);
    // Other numbers are fine meanwhile (a known source has no international-calls limit).
    for call in 10..=16 {
        f.expect(
            &invite(ip, &format!("+3314200{call:04}"), call, 1),
            XDP_PASS,
            "another number",
        )?;
    }
    f.advance_clock(Duration::from_secs(61))?;
    f.expect(&invite(ip, number, 5, 1), XDP_PASS, "a minute later")?;
    Ok(())
}

#[test]
fn a_denied_destination_drops_the_call_without_banning_and_reports_it_once() -> anyhow::Result<()> {
    let mut f = TestFilter::with_settings(&settings())?;
    let ip = addr(24);
    f.expect(&invite(ip, "+23276123456", 1, 1), XDP_DROP, "a call to Sierra Leone")?;
    f.expect(&invite(ip, "+23276123456", 1, 1), XDP_DROP, "its retransmission")?;
    f.expect(&invite(ip, "0023276123456", 2, 1), XDP_DROP, "the same number, 00 form")?;
    assert_eq!(
        ban_of(&f, ip),
        None,
        "a phone dialing a blocked country is not an attacker"
    );
    assert_eq!(f.call_events().len(), 2, "two calls");
    let rules = f.loaded.request_rules.destinations();
    assert!(
        rules.contains(&("232".to_string(), true, 2)),
        "the +232 rule counted its two calls: {:?}",
        rules.iter().filter(|r| r.2 != 0).collect::<Vec<_>>()
    );
    f.expect(&invite(ip, "0301234567", 3, 1), XDP_PASS, "its national call")?;
    assert_eq!(f.counters()?.outcome(Outcome::Destination), 3);
    Ok(())
}

#[test]
fn monitor_mode_counts_blocked_calls_and_drops_none() -> anyhow::Result<()> {
    let mut f = TestFilter::with_settings(&settings())?;
    let mut k = f.loaded.maps.read_config()?;
    k.flags |= FLAG_MONITOR;
    f.set_config(&k)?;
    let ip = addr(25);
    f.expect(&invite(ip, "+23276123456", 1, 1), XDP_PASS, "monitor: passed")?;
    let c = f.counters()?;
    assert_eq!(c.outcome(Outcome::Destination), 1);
    let events = f.call_events();
    assert_eq!((events.len(), events[0].monitor), (1, 1));
    Ok(())
}

#[test]
fn calls_can_be_turned_off_and_allow_rules_open_a_range() -> anyhow::Result<()> {
    let off = Config::parse("[calls]\nenabled = false\n", std::path::Path::new("t.toml"))?;
    let f = TestFilter::with_settings(&off)?;
    f.expect(&invite(addr(26), "+23276123456", 1, 1), XDP_PASS, "calls off")?;
    let no_list = Config::parse(
        "[calls]\nhigh_risk_destinations = false\n",
        std::path::Path::new("t.toml"),
    )?;
    let f = TestFilter::with_settings(&no_list)?;
    f.expect(
        &invite(addr(27), "+23276123456", 1, 1),
        XDP_PASS,
        "the shipped list off",
    )?;
    let opened = Config::parse("[calls]\nallow = [\"+232 76\"]\n", std::path::Path::new("t.toml"))?;
    let f = TestFilter::with_settings(&opened)?;
    f.expect(&invite(addr(28), "+23276123456", 1, 1), XDP_PASS, "allowed range")?;
    f.expect(&invite(addr(29), "+23277123456", 1, 1), XDP_DROP, "the rest of +232")?;
    Ok(())
}

#[test]
fn a_scanners_invite_is_banned_for_its_name_and_places_no_call() -> anyhow::Result<()> {
    let mut f = TestFilter::with_settings(&settings())?;
    let ip = addr(30);
    let text = invite_text(ip, "+23276123456", 1, 1).replace("Yealink SIP-T46S 66.86.0.15", "friendly-scanner");
    f.expect(
        &P::request4(ip, text.as_bytes()).build().bytes,
        XDP_DROP,
        "svmap's INVITE",
    )?;
    assert_eq!(ban_of(&f, ip), Some("scanner"));
    assert!(f.call_events().is_empty(), "no call was placed, none reported");
    assert_eq!(f.counters()?.calls_checked, 0);
    Ok(())
}
