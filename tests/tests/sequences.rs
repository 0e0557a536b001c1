//! Sequences of real packets through the real program: bursts, bans, expiry, IPv6 prefixes,
//! allow/deny lists, monitor mode, escalation, ban scope, runtime config and restarts.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use sipfilter::{addr::source_key, filter_maps::ListKind, Cidr};
use sipfilter_common::{
    config::{FLAG_MONITOR, FLAG_SCOPE_ALL},
    counters::ban_reason,
    maps::PERMANENT,
    ClassLimit, KernelConfig, Method, Outcome, RateClass, Verdict, NS_PER_SEC,
};
use sipfilter_tests::{
    harness::{TestFilter, XDP_DROP, XDP_PASS},
    packet::PacketBuilder as P,
};

fn v4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, last)
}

fn register(src: Ipv4Addr) -> Vec<u8> {
    P::sip4(src, "REGISTER").build().bytes
}

/// Limits small enough to reach in a few packets, and a ban long enough to outlast the test.
fn small_limits() -> KernelConfig {
    let mut c = KernelConfig::default();
    c.limits[RateClass::Register as usize] = ClassLimit {
        rate_per_sec: 1,
        burst: 10,
    };
    c.limits[RateClass::Invite as usize] = ClassLimit {
        rate_per_sec: 1,
        burst: 5,
    };
    c.limits[RateClass::Other as usize] = ClassLimit {
        rate_per_sec: 1,
        burst: 20,
    };
    c
}

#[test]
fn burst_within_limit_passes_then_first_excess_packet_drops_and_bans() -> anyhow::Result<()> {
    let mut f = TestFilter::new()?;
    let attacker = v4(66);
    let frame = register(attacker);
    let burst = KernelConfig::default().limits[0].burst as usize;

    // A whole burst at once passes: the default lets an office re-register after a power cut.
    let (passed, dropped) = f.run_n(&frame, burst)?;
    assert_eq!((passed, dropped), (burst, 0));
    assert!(f.ban_events().is_empty());

    // The first packet over the limit is dropped and bans the source in the same instant.
    f.expect(&frame, XDP_DROP, "first REGISTER over the burst")?;
    let events = f.ban_events();
    assert_eq!(events.len(), 1, "one ban event: {events:?}");
    let e = events[0];
    assert_eq!(e.source, source_key(attacker.into(), 64));
    assert_eq!(e.reason, ban_reason::RATE + RateClass::Register as u8);
    assert_eq!(e.method, Method::Register as u8);
    assert_eq!(e.strike, 1);
    assert_eq!(e.duration_ns, 300 * NS_PER_SEC);
    assert_eq!(e.monitor, 0);
    let ban = f.maps().ban(&e.source)?.expect("ban stored");
    assert_eq!(ban.expires_ns - ban.banned_at_ns, 300 * NS_PER_SEC);

    // Later packets from the source drop as banned, whatever their method; no new events.
    f.expect(
        &P::sip4(attacker, "OPTIONS").build().bytes,
        XDP_DROP,
        "OPTIONS from the banned source",
    )?;
    f.expect(&frame, XDP_DROP, "REGISTER from the banned source")?;
    assert!(f.ban_events().is_empty());
    // SIP over TCP from it drops too (a ban covers every SIP transport) ...
    f.expect(
        &P::sip4(attacker, "REGISTER").tcp().build().bytes,
        XDP_DROP,
        "SIP over TCP from the banned source",
    )?;
    // ... and its non-SIP traffic still flows under the default "sip" scope.
    f.expect(
        &P::udp4(
            attacker,
            Ipv4Addr::new(192, 0, 2, 1),
            40000,
            443,
            b"GET / HTTP/1.1\r\n\r\n",
        )
        .tcp()
        .build()
        .bytes,
        XDP_PASS,
        "TCP to port 443 from the banned source",
    )?;
    // Another source is unaffected.
    f.expect(&register(v4(67)), XDP_PASS, "REGISTER from another source")?;

    // What `top` shows for it: every SIP message, and every one dropped (1 over the limit,
    // 3 while banned, one of them over TCP).
    let (_, state) = f
        .maps()
        .rate_states()?
        .into_iter()
        .find(|(k, _)| *k == e.source)
        .expect("slot");
    assert_eq!((state.requests, state.drops), (burst as u64 + 4, 4));

    let c = f.counters()?;
    assert_eq!(c.outcome(Outcome::RateRegister), 1);
    assert_eq!(c.outcome(Outcome::Banned), 3);
    assert_eq!(c.bans[RateClass::Register as usize], 1);
    assert_eq!(c.verdict(Verdict::Drop), 4);
    Ok(())
}

#[test]
fn flood_at_200_per_second_is_banned_within_its_first_second_at_default_limits() -> anyhow::Result<()> {
    // Real time: 200 REGISTERs/s paced by the wall clock (the program reads CLOCK_BOOTTIME).
    let mut f = TestFilter::new()?;
    let frame = register(v4(90));
    let start = std::time::Instant::now();
    let mut sent = 0u32;
    let banned_at = loop {
        let due = start + Duration::from_micros(5_000 * sent as u64);
        if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(wait);
        }
        sent += 1;
        if f.run(&frame)? == XDP_DROP {
            break start.elapsed();
        }
        assert!(sent < 400, "not banned after {sent} packets");
    };
    assert!(
        banned_at < Duration::from_secs(1),
        "banned after {banned_at:?} ({sent} packets)"
    );
    assert_eq!(f.ban_events().len(), 1);
    Ok(())
}

#[test]
fn office_of_50_phones_behind_one_nat_reregistering_at_once_is_not_banned() -> anyhow::Result<()> {
    let f = TestFilter::new()?;
    let nat = v4(50);
    // Each phone: REGISTER, (401 goes out), REGISTER with credentials; plus one SUBSCRIBE.
    for phone in 0..50 {
        for _ in 0..2 {
            let frame = P::udp4(
                nat,
                Ipv4Addr::new(192, 0, 2, 1),
                5060,
                5060,
                &sipfilter_tests::packet::sip_request("REGISTER", &format!("2{phone:02}")),
            )
            .build()
            .bytes;
            f.expect(&frame, XDP_PASS, "phone REGISTER")?;
        }
        f.expect(&P::sip4(nat, "SUBSCRIBE").build().bytes, XDP_PASS, "phone SUBSCRIBE")?;
    }
    assert!(f.loaded.maps.bans()?.is_empty());
    Ok(())
}

#[test]
fn expired_ban_no_longer_drops() -> anyhow::Result<()> {
    let mut c = small_limits();
    c.ban_base_ns = 200_000_000; // 0.2 s
    let mut f = TestFilter::with_config(&c)?;
    let src = v4(70);
    let frame = register(src);
    let (_, dropped) = f.run_n(&frame, 11)?;
    assert_eq!(dropped, 1);
    f.expect(&frame, XDP_DROP, "inside the ban")?;
    std::thread::sleep(Duration::from_millis(300));
    // The ban has passed; the bucket refilled by 0.3 tokens... plus the ban time: the bucket
    // was empty, so wait for at least one token at 1/s.
    std::thread::sleep(Duration::from_millis(800));
    f.expect(&frame, XDP_PASS, "after the ban expired")?;
    // The expired entry is still in the table (the agent sweeps it); the program ignored it.
    assert!(f.maps().ban(&source_key(src.into(), 64))?.is_some());

    // A ban written by userspace that ended 50 ms ago does not drop either. (The program's
    // clock is jiffies-based and good to half a tick, 2 ms at HZ=250.)
    let other = v4(71);
    let key = source_key(other.into(), 64);
    let now = sipfilter::clock::boot_ns();
    let ban = sipfilter_common::Ban {
        expires_ns: now - 50_000_000,
        banned_at_ns: now - NS_PER_SEC,
        strike: 1,
        reason: ban_reason::MANUAL,
        method: 0,
        monitor: 0,
        _pad: 0,
    };
    f.maps().insert_ban(&key, &ban)?;
    f.expect(&register(other), XDP_PASS, "past-expiry ban")?;
    Ok(())
}

#[test]
fn an_ipv6_flood_bans_its_own_address_not_its_neighbours_in_the_slash_64() -> anyhow::Result<()> {
    let mut f = TestFilter::with_config(&small_limits())?;
    let flooder: Ipv6Addr = "2001:db8:aa:1::1".parse()?;
    let phone: Ipv6Addr = "2001:db8:aa:1:ffff:ffff:ffff:fffe".parse()?;
    let fa = P::sip6(flooder, "REGISTER").build().bytes;
    assert_eq!(f.run_n(&fa, 12)?, (10, 2));
    let events = f.ban_events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        sipfilter::addr::display_source(&events[0].source, 128),
        flooder.to_string()
    );
    // The phone sharing the /64 keeps its whole budget (it used to lose its service).
    assert_eq!(f.run_n(&P::sip6(phone, "REGISTER").build().bytes, 10)?, (10, 0));
    Ok(())
}

#[test]
fn allowlisted_source_sending_a_flood_is_never_banned() -> anyhow::Result<()> {
    let mut f = TestFilter::with_config(&small_limits())?;
    let trunk = v4(10);
    f.maps()
        .list_add(ListKind::Allow, &"203.0.113.0/28".parse()?, PERMANENT)?;
    f.maps()
        .list_add(ListKind::Allow, &"2001:db8:7::/48".parse()?, PERMANENT)?;
    for method in ["REGISTER", "INVITE", "OPTIONS"] {
        assert_eq!(
            f.run_n(&P::sip4(trunk, method).build().bytes, 500)?,
            (500, 0),
            "{method}"
        );
    }
    let v6trunk: Ipv6Addr = "2001:db8:7:1::5".parse()?;
    assert_eq!(f.run_n(&P::sip6(v6trunk, "INVITE").build().bytes, 200)?, (200, 0));
    assert!(f.maps().bans()?.is_empty());
    assert!(f.ban_events().is_empty());
    // Allowlisted sources have a slot (caching their status and counting their messages for
    // `top`), and nothing of theirs is ever dropped.
    let states = f.maps().rate_states()?;
    assert_eq!(states.iter().map(|(_, s)| s.requests).sum::<u64>(), 1700);
    assert!(states.iter().all(|(_, s)| s.drops == 0));
    assert_eq!(f.counters()?.outcome(Outcome::Allowlisted), 1700);

    // Userspace refuses to ban an allowlisted source, and allowlisting lifts a ban.
    let err = f
        .maps()
        .add_ban(&source_key(trunk.into(), 64), None, ban_reason::MANUAL)
        .unwrap_err();
    assert!(err.to_string().contains("allowlisted"), "{err}");
    let later = v4(100);
    f.maps()
        .add_ban(&source_key(later.into(), 64), None, ban_reason::MANUAL)?;
    f.expect(&register(later), XDP_DROP, "manually banned")?;
    let lifted = f.maps().list_add(ListKind::Allow, &Cidr::from(later), PERMANENT)?;
    assert_eq!(lifted, vec![source_key(later.into(), 64)]);
    f.expect(&register(later), XDP_PASS, "allowlisted after its ban")?;
    Ok(())
}

#[test]
fn denylisted_sources_drop_and_their_neighbours_pass() -> anyhow::Result<()> {
    let mut f = TestFilter::new()?;
    f.maps()
        .list_add(ListKind::Deny, &"198.18.0.0/15".parse()?, PERMANENT)?;
    f.maps()
        .list_add(ListKind::Deny, &"2001:db8:bad::/48".parse()?, PERMANENT)?;
    f.expect(
        &P::sip4(Ipv4Addr::new(198, 19, 3, 4), "OPTIONS").build().bytes,
        XDP_DROP,
        "inside the /15",
    )?;
    f.expect(
        &P::sip4(Ipv4Addr::new(198, 20, 0, 1), "OPTIONS").build().bytes,
        XDP_PASS,
        "just outside",
    )?;
    f.expect(
        &P::sip6("2001:db8:bad:1::9".parse()?, "INVITE").build().bytes,
        XDP_DROP,
        "inside the /48",
    )?;
    f.expect(
        &P::sip6("2001:db8:bae::9".parse()?, "INVITE").build().bytes,
        XDP_PASS,
        "outside the /48",
    )?;
    // A denylisted source sending non-SIP traffic is untouched under the default scope.
    f.expect(
        &P::udp4(Ipv4Addr::new(198, 19, 3, 4), v4(1), 1234, 53, b"dns")
            .build()
            .bytes,
        XDP_PASS,
        "DNS",
    )?;
    // Deny does not ban: no ban entry, no event.
    assert!(f.maps().bans()?.is_empty());
    assert!(f.ban_events().is_empty());
    assert_eq!(f.counters()?.outcome(Outcome::Denylisted), 2);

    // A timed entry stops applying when it expires.
    let now = sipfilter::clock::boot_ns();
    f.maps()
        .list_add(ListKind::Deny, &"192.0.2.128/25".parse()?, now + 200_000_000)?;
    let frame = P::sip4(Ipv4Addr::new(192, 0, 2, 200), "OPTIONS").build().bytes;
    f.expect(&frame, XDP_DROP, "timed deny in force")?;
    std::thread::sleep(Duration::from_millis(300));
    f.expect(&frame, XDP_PASS, "timed deny expired")?;
    Ok(())
}

#[test]
fn monitor_mode_counts_would_drop_but_passes_everything() -> anyhow::Result<()> {
    let mut c = small_limits();
    c.flags |= FLAG_MONITOR;
    let mut f = TestFilter::with_config(&c)?;
    f.maps().list_add(ListKind::Deny, &"192.0.2.0/24".parse()?, PERMANENT)?;
    let frame = register(v4(80));
    assert_eq!(f.run_n(&frame, 30)?, (30, 0));
    f.expect(
        &P::sip4(Ipv4Addr::new(192, 0, 2, 9), "INVITE").build().bytes,
        XDP_PASS,
        "denylisted in monitor mode",
    )?;
    let counters = f.counters()?;
    // 10 accepted, the 11th empties the bucket and bans, 19 more hit the ban, 1 denylisted.
    assert_eq!(counters.verdict(Verdict::WouldDrop), 21);
    assert_eq!(counters.verdict(Verdict::Drop), 0);
    assert_eq!(counters.verdict(Verdict::Pass), 10);
    assert_eq!(counters.outcome(Outcome::RateRegister), 1);
    assert_eq!(counters.outcome(Outcome::Banned), 19);
    // The ban is recorded so the operator sees who would be banned.
    let events = f.ban_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].monitor, 1);

    let key = source_key(v4(80).into(), 64);
    assert_eq!(
        f.maps().ban(&key)?.map(|b| b.monitor),
        Some(1),
        "the ban is marked as a monitor-mode ban"
    );

    // Turning monitor mode off at runtime enforces at once: the denylist, and the buckets.
    // (The agent lifts the bans recorded in monitor mode when it turns it off: they never
    // dropped anything, so nobody has checked them.)
    c.flags &= !FLAG_MONITOR;
    f.set_config(&c)?;
    f.expect(
        &P::sip4(Ipv4Addr::new(192, 0, 2, 9), "INVITE").build().bytes,
        XDP_DROP,
        "denylisted, monitor off",
    )?;
    assert_eq!(f.maps().lift_monitor_bans()?, 1);
    assert!(f.maps().ban(&key)?.is_none());
    let other = register(v4(81));
    assert_eq!(f.run_n(&other, 11)?, (10, 1), "a new flood is cut off for real");
    assert_eq!(
        f.maps().ban(&source_key(v4(81).into(), 64))?.map(|b| b.monitor),
        Some(0)
    );
    Ok(())
}

#[test]
fn escalation_doubles_a_repeat_offenders_ban_up_to_the_cap() -> anyhow::Result<()> {
    let mut c = small_limits();
    c.limits[RateClass::Register as usize] = ClassLimit {
        rate_per_sec: 1_000,
        burst: 3,
    };
    c.ban_base_ns = 100_000_000; // 0.1 s
    c.ban_max_ns = 300_000_000; // cap 0.3 s
    let mut f = TestFilter::with_config(&c)?;
    let src = v4(77);
    let frame = register(src);
    let mut durations = Vec::new();
    for _ in 0..4 {
        // Flood until banned (the bucket refills while banned, so a burst is allowed again).
        let mut sent = 0;
        while f.run(&frame)? == XDP_PASS {
            sent += 1;
            assert!(sent < 10_000, "never banned");
        }
        let events = f.ban_events();
        assert_eq!(events.len(), 1);
        durations.push((events[0].strike, events[0].duration_ns / 1_000_000));
        let ban = f.maps().ban(&events[0].source)?.unwrap();
        std::thread::sleep(Duration::from_nanos(ban.expires_ns - ban.banned_at_ns) + Duration::from_millis(30));
    }
    assert_eq!(durations, vec![(1, 100), (2, 200), (3, 300), (4, 300)]);
    let history = f.maps().offense_history(&source_key(src.into(), 64))?.unwrap();
    assert_eq!(history.strikes, 4);

    // Outside the window, the count starts again.
    c.escalation_window_ns = 1; // the window ends as soon as the ban does
    f.set_config(&c)?;
    while f.run(&frame)? == XDP_PASS {}
    assert_eq!(f.ban_events()[0].strike, 1);
    Ok(())
}

#[test]
fn ban_scope_all_drops_every_packet_of_a_banned_or_denylisted_source() -> anyhow::Result<()> {
    let mut c = small_limits();
    c.flags |= FLAG_SCOPE_ALL;
    let mut f = TestFilter::with_config(&c)?;
    let src = v4(88);
    f.maps()
        .add_ban(&source_key(src.into(), 64), Some(60 * NS_PER_SEC), ban_reason::MANUAL)?;
    f.maps().list_add(ListKind::Deny, &"192.0.2.0/24".parse()?, PERMANENT)?;
    f.expect(
        &P::sip4(src, "REGISTER").tcp().build().bytes,
        XDP_DROP,
        "TCP from banned",
    )?;
    f.expect(
        &P::udp4(src, v4(1), 1000, 53, b"x").build().bytes,
        XDP_DROP,
        "DNS from banned",
    )?;
    f.expect(
        &P::sip4(src, "REGISTER").fragment(20, false).build().bytes,
        XDP_DROP,
        "fragment from banned",
    )?;
    f.expect(
        &P::sip4(Ipv4Addr::new(192, 0, 2, 5), "x").icmp().build().bytes,
        XDP_DROP,
        "ICMP from denylisted",
    )?;
    f.expect(
        &P::sip4(v4(89), "REGISTER").tcp().build().bytes,
        XDP_PASS,
        "TCP from a clean source",
    )?;
    Ok(())
}

#[test]
fn thresholds_change_at_runtime_without_reload_or_losing_bans() -> anyhow::Result<()> {
    let mut c = small_limits();
    let mut f = TestFilter::with_config(&c)?;
    let banned = v4(30);
    assert_eq!(f.run_n(&register(banned), 11)?, (10, 1));
    c.limits[RateClass::Register as usize] = ClassLimit {
        rate_per_sec: 1,
        burst: 3,
    };
    f.set_config(&c)?;
    assert_eq!(
        f.run_n(&register(v4(31)), 4)?,
        (3, 1),
        "the new burst applies to a new source"
    );
    f.expect(&register(banned), XDP_DROP, "the earlier ban survives the change")?;
    Ok(())
}

#[test]
fn state_survives_a_restart_of_the_loader() -> anyhow::Result<()> {
    let c = small_limits();
    let f = TestFilter::with_config(&c)?;
    let banned = v4(40);
    let busy = v4(41);
    assert_eq!(f.run_n(&register(banned), 11)?, (10, 1));
    assert_eq!(f.run_n(&register(busy), 8)?, (8, 0));
    let reloading = std::time::Instant::now();
    let mut f = f.reload(&c)?;
    // As if the restart took no time (it takes seconds in the emulated kernel-test VM, and
    // at 1/s the kept bucket would refill to the full burst a fresh one has).
    f.rewind_clock(reloading.elapsed())?;
    f.expect(&register(banned), XDP_DROP, "ban after restart")?;
    // The bucket kept its level: 2 tokens left (3 with a tick of the clock's calibration);
    // a fresh bucket would let 10 of these 12 through.
    let (passed, _) = f.run_n(&register(busy), 12)?;
    assert!((2..=3).contains(&passed), "{passed} passed after a restart");
    assert_eq!(f.maps().bans()?.len(), 2);
    Ok(())
}

#[test]
fn two_active_sources_sharing_a_rate_state_slot_keep_separate_buckets() -> anyhow::Result<()> {
    let mut f = TestFilter::with_config(&small_limits())?;
    // Find two addresses whose keys land in one slot under this installation's seed.
    let seed = f.maps().read_config()?.hash_seed;
    let mut seen = std::collections::HashMap::new();
    let (a, b) = (0u32..)
        .map(|i| Ipv4Addr::from(0xc612_0000 + i)) // 198.18.0.0/15, benchmarking space
        .find_map(|addr| {
            let slot = source_key(addr.into(), 64).slot(seed);
            seen.insert(slot, addr).map(|earlier| (earlier, addr))
        })
        .expect("a collision");
    // They take turns: without the overflow table each would reset the other's buckets and
    // the REGISTER flood of `a` would never empty its bucket.
    for i in 0..11 {
        let want = if i < 10 { XDP_PASS } else { XDP_DROP };
        f.expect(&register(a), want, &format!("REGISTER #{} from {a}", i + 1))?;
        f.expect(
            &P::sip4(b, "OPTIONS").build().bytes,
            XDP_PASS,
            &format!("OPTIONS #{} from {b}", i + 1),
        )?;
    }
    let events = f.ban_events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].source, source_key(a.into(), 64));
    let states = f.maps().rate_states()?;
    let of = |x: Ipv4Addr| {
        states
            .iter()
            .find(|(k, _)| *k == source_key(x.into(), 64))
            .map(|(_, s)| (s.requests, s.drops))
    };
    assert_eq!(of(a), Some((11, 1)));
    assert_eq!(of(b), Some((11, 0)));
    Ok(())
}

#[test]
fn ipv6_list_entries_finer_than_the_source_prefix_apply_to_their_address_only() -> anyhow::Result<()> {
    let mut f = TestFilter::with_config(&small_limits())?;
    // Entries no longer than the /64 source prefix: list status is cached per /64.
    f.maps()
        .list_add(ListKind::Deny, &"2001:db8:bad::/48".parse()?, PERMANENT)?;
    assert!(f.maps().read_config()?.v6_lists_by_prefix());
    f.expect(
        &P::sip6("2001:db8:bad:1::1".parse()?, "OPTIONS").build().bytes,
        XDP_DROP,
        "inside the /48",
    )?;
    f.expect(
        &P::sip6("2001:db8:bae::1".parse()?, "OPTIONS").build().bytes,
        XDP_PASS,
        "outside the /48",
    )?;

    // One allowlisted trunk address inside a /64 shared with others.
    let trunk: Ipv6Addr = "2001:db8:aa:1::5".parse()?;
    let neighbour: Ipv6Addr = "2001:db8:aa:1::6".parse()?;
    f.maps().list_add(ListKind::Allow, &Cidr::from(trunk), PERMANENT)?;
    // The neighbour empties its bucket and is banned...
    assert_eq!(f.run_n(&P::sip6(neighbour, "REGISTER").build().bytes, 11)?, (10, 1));
    assert_eq!(f.ban_events().len(), 1);
    // ...yet the trunk, inside that /64, keeps passing, and the neighbour stays banned.
    assert_eq!(f.run_n(&P::sip6(trunk, "REGISTER").build().bytes, 50)?, (50, 0));
    f.expect(
        &P::sip6(neighbour, "OPTIONS").build().bytes,
        XDP_DROP,
        "the banned neighbour",
    )?;

    // Removing the /128: the deny still applies.
    assert!(f.maps().list_remove(ListKind::Allow, &Cidr::from(trunk))?);
    f.expect(
        &P::sip6("2001:db8:bad:2::9".parse()?, "OPTIONS").build().bytes,
        XDP_DROP,
        "cached deny",
    )?;
    Ok(())
}

#[test]
fn an_expired_narrow_list_entry_stops_hiding_a_wider_one_once_swept() -> anyhow::Result<()> {
    let mut f = TestFilter::with_config(&small_limits())?;
    let now = sipfilter::clock::boot_ns();
    f.maps()
        .list_add(ListKind::Deny, &"203.0.113.0/24".parse()?, PERMANENT)?;
    // A timed entry inside it (what `ban add 203.0.113.0/28 --for …` stores).
    f.maps()
        .list_add(ListKind::Deny, &"203.0.113.0/28".parse()?, now + 200_000_000)?;
    f.maps()
        .list_add(ListKind::Allow, &"198.51.100.0/24".parse()?, PERMANENT)?;
    f.maps()
        .list_add(ListKind::Allow, &"198.51.100.10/32".parse()?, now + 200_000_000)?;
    let denied = P::sip4(v4(5), "OPTIONS").build().bytes;
    let trunk = register(Ipv4Addr::new(198, 51, 100, 10));
    f.expect(&denied, XDP_DROP, "inside both deny entries")?;
    assert_eq!(f.run_n(&trunk, 20)?, (20, 0));
    std::thread::sleep(Duration::from_millis(300));
    // The agent (every second) and every CLI command sweep expired entries.
    assert_eq!(f.maps().sweep_expired()?, (0, 2));
    f.expect(&denied, XDP_DROP, "the /24 still denies once the /28 has expired")?;
    assert_eq!(
        f.run_n(&trunk, 20)?,
        (20, 0),
        "the /24 still allowlists once the /32 has expired"
    );
    assert!(f.maps().bans()?.is_empty());
    Ok(())
}

#[test]
fn scope_all_lets_an_allowlisted_address_inside_a_banned_ipv6_prefix_through() -> anyhow::Result<()> {
    let mut c = small_limits();
    c.flags |= FLAG_SCOPE_ALL;
    let mut f = TestFilter::with_config(&c)?;
    let trunk: Ipv6Addr = "2001:db8:aa:1::5".parse()?;
    let neighbour: Ipv6Addr = "2001:db8:aa:1::6".parse()?;
    f.maps().list_add(ListKind::Allow, &Cidr::from(trunk), PERMANENT)?;
    assert_eq!(f.run_n(&P::sip6(neighbour, "REGISTER").build().bytes, 11)?, (10, 1));
    // Non-SIP traffic (RTP, say) of the /64: dropped for the neighbour, passed for the trunk.
    let rtp = |src| {
        P::udp6(src, "2001:db8::1".parse().unwrap(), 40000, 20000, b"rtp")
            .build()
            .bytes
    };
    f.expect(&rtp(neighbour), XDP_DROP, "RTP from the banned neighbour")?;
    f.expect(
        &rtp(trunk),
        XDP_PASS,
        "RTP from the allowlisted trunk in the banned /64",
    )?;
    Ok(())
}

#[test]
fn maps_pinned_by_an_incompatible_version_are_refused_with_what_to_do() -> anyhow::Result<()> {
    let bpffs = sipfilter_tests::harness::PrivateBpffs::new()?;
    // A "previous version" whose ban table held 8-byte values.
    let dir = bpffs.pin_dir();
    std::fs::create_dir_all(&dir)?;
    let ban_table = dir.join("ban_table");
    sipfilter_tests::netns::sh(&[
        "bpftool",
        "map",
        "create",
        ban_table.to_str().unwrap(),
        "type",
        "hash",
        "key",
        "16",
        "value",
        "8",
        "entries",
        "16",
        "name",
        "ban_table",
    ])?;
    let err = match sipfilter::Loaded::load(&dir, &KernelConfig::default()) {
        Ok(_) => anyhow::bail!("an incompatible pin was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("incompatible sipfilter version (ban_table: keys of 16 bytes, values of 8 bytes"),
        "{err}"
    );
    assert!(err.contains("detach; rm -r"), "{err}");
    Ok(())
}

/// A spoofed flood that has filled the ban table: a new offender's ban cannot be stored
/// (counted), its packet is still dropped, and no ban already in the table is evicted (the
/// table is a plain hash, not an LRU).
#[test]
fn a_full_ban_table_keeps_its_bans_and_still_drops_new_offenders() -> anyhow::Result<()> {
    let mut f = TestFilter::with_config(&small_limits())?;
    let capacity = sipfilter_common::maps::BAN_TABLE_SIZE;
    let mut filled = 0u32;
    for i in 0..capacity {
        let a = Ipv4Addr::from(0x0b00_0000 + i);
        if f.maps()
            .add_ban(&source_key(a.into(), 128), Some(3600 * NS_PER_SEC), ban_reason::MANUAL)
            .is_err()
        {
            break;
        }
        filled += 1;
    }
    assert!(filled as f64 > capacity as f64 * 0.99, "filled {filled} of {capacity}");
    let offender = v4(200);
    let frame = register(offender);
    let burst = small_limits().limits[RateClass::Register as usize].burst as usize;
    let (_, dropped) = f.run_n(&frame, burst + 5)?;
    assert!(dropped >= 5, "a new offender is still dropped ({dropped})");
    let c = f.counters()?;
    assert!(c.ban_table_full >= 1, "the ban that did not fit is counted");
    // Every ban in the table is still there.
    let bans = f.maps().bans()?.len();
    assert!(bans as u32 >= filled, "{bans} bans after, {filled} before");
    let first = source_key(Ipv4Addr::from(0x0b00_0000).into(), 128);
    assert!(f.maps().ban(&first)?.is_some(), "the oldest ban kept");
    Ok(())
}

/// One million spoofed source addresses, one REGISTER each, through the real program, with a
/// registered phone's REGISTERs in between: every one of the phone's passes (and keeps its
/// budget), no real ban is evicted, and the flood's per-packet cost is reported.
#[test]
fn a_million_spoofed_sources_leave_a_registered_phone_and_the_real_bans_alone() -> anyhow::Result<()> {
    use aya::programs::{TestRun as _, TestRunOptions};
    let mut config = KernelConfig::default();
    config.flags |= sipfilter_common::config::FLAG_TRUST;
    let mut f = TestFilter::with_config(&config)?;
    let phone_ip = v4(20);
    {
        let mut phone = sipfilter_tests::peer::Peer::new(&f, phone_ip);
        assert_eq!(phone.login("201", "200 OK"), Some(sipfilter_tests::harness::TC_ACT_OK));
    }
    let robot = v4(66);
    f.maps().add_ban(
        &source_key(robot.into(), 128),
        Some(3600 * NS_PER_SEC),
        ban_reason::MANUAL,
    )?;
    let mut frame = register(Ipv4Addr::new(10, 0, 0, 1));
    const SRC_AT: usize = 14 + 12;
    let phone_frame = register(phone_ip);
    let (mut phone_passed, mut total_ns) = (0, 0u128);
    let n = 1_000_000u32;
    let prog = f.loaded.program()?;
    for i in 0..n {
        let a = Ipv4Addr::from(0x0a00_0000 | (i.wrapping_mul(2_654_435_761) & 0x00ff_ffff));
        frame[SRC_AT..SRC_AT + 4].copy_from_slice(&a.octets());
        let r = prog.test_run(TestRunOptions {
            data_in: Some(&frame),
            repeat: 1,
            ..Default::default()
        })?;
        total_ns += r.duration.as_nanos();
        if i % 10_000 == 0 {
            let action = prog
                .test_run(TestRunOptions {
                    data_in: Some(&phone_frame),
                    repeat: 1,
                    ..Default::default()
                })?
                .return_value;
            phone_passed += usize::from(action == XDP_PASS);
        }
    }
    eprintln!(
        "1,000,000 spoofed sources: {:.0} ns per packet (kernel-measured, single runs); the phone passed {phone_passed} of 100",
        total_ns as f64 / f64::from(n)
    );
    assert_eq!(phone_passed, 100, "every REGISTER of the registered phone passed");
    assert!(
        f.maps().ban(&source_key(robot.into(), 128))?.is_some(),
        "the real ban is kept"
    );
    assert!(
        f.maps().ban(&source_key(phone_ip.into(), 128))?.is_none(),
        "the phone is not banned"
    );
    Ok(())
}

/// A source the agent marked at its open-connection limit has its SYNs dropped while the mark
/// is fresh (the agent stamps it anew every second); a mark the agent stopped renewing (it
/// was stopped or killed) lapses after CONNECTION_MARK_TTL_NS, so an office is not kept out
/// for good by the count of a stopped agent.
#[test]
fn a_connection_limit_mark_holds_while_renewed_and_lapses_without_the_agent() -> anyhow::Result<()> {
    let f = TestFilter::new()?;
    let office = v4(120);
    let syn = |port: u16| {
        P::udp4(office, Ipv4Addr::new(192, 0, 2, 1), port, 5060, b"")
            .syn()
            .build()
            .bytes
    };
    f.expect(&syn(40000), XDP_PASS, "a SYN before any mark")?;
    let mut marks = sipfilter::connections::ConnectionMaps::open_pinned(&f.loaded.pin_dir)?;
    let key = source_key(office.into(), 128);
    let now = sipfilter::clock::boot_ns();
    marks.mark(&key, now)?;
    f.expect(&syn(40001), XDP_DROP, "a SYN while the fresh mark holds")?;
    marks.mark(
        &key,
        now - sipfilter_common::maps::CONNECTION_MARK_TTL_NS - 1_000_000_000,
    )?;
    f.expect(&syn(40002), XDP_PASS, "a SYN once the mark lapsed")?;
    Ok(())
}
