//! The XDP program against the reference model (`tests/src/model.rs`): generated frames —
//! valid ones from every layer, then truncated, bit-flipped or random, most of them from a
//! pool of 24 sources (some allowlisted, some denylisted, some known, the rest unknown) so
//! that buckets empty and bans are made — through the real program with BPF_PROG_TEST_RUN, one after another on one loaded
//! program (its per-source state accumulates), comparing the verdict, the outcome and method
//! counters, and every 1,000 frames the ban table, with the model's. 100,000 frames here;
//! `cargo xtask soak` runs millions. The seed is printed, and `SIPFILTER_SEED=N` replays a
//! run. A second test does the same for the judgement of answers with the devices under
//! each source (3,000 generated registrations; `SIPFILTER_STEPS=N` for more).

use std::{collections::BTreeSet, net::IpAddr};

use sipfilter::{addr::source_key, filter_maps::ListKind, Cidr};
use sipfilter_common::{
    config::{FLAG_SCANNER_USER_AGENTS, FLAG_STEALTH, FLAG_TRUST},
    ClassLimit, KernelConfig, KnownSource, Method, Outcome, SourceKey,
};
use sipfilter_tests::{
    harness::{TestFilter, XDP_DROP, XDP_PASS},
    model::{self, Expected, Model, Rng},
};

fn hex(f: &[u8]) -> String {
    f.iter().map(|b| format!("{b:02x}")).collect()
}

/// Share of the frames sent from the pool (the rest from random addresses).
const FROM_POOL: u64 = 90;
/// Bursts (REGISTER, INVITE, other): in a 100,000-frame run the pool's sources that are on
/// no list empty one about half way through, so a run judges full, emptying and banned
/// sources side by side.
const BURSTS: [u64; 3] = [120, 60, 600];
/// Unknown sources' tight bursts: they throttle an unknown source before its flood burst
/// bans it.
const UNKNOWN_BURSTS: [u64; 3] = [10, 5, 50];

/// The run's seed: `SIPFILTER_SEED`, else the clock (printed, so a run can be replayed).
fn seed() -> u64 {
    std::env::var("SIPFILTER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// A count from the environment variable `var`, else `default`.
fn count(var: &str, default: u64) -> u64 {
    std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

#[test]
fn the_program_agrees_with_the_model() -> anyhow::Result<()> {
    let seed = seed();
    let frames = count("SIPFILTER_FRAMES", 100_000);
    eprintln!(
        "differential: seed {seed} (SIPFILTER_SEED={seed} replays it), {frames} + {} frames",
        frames / 2
    );
    // With the scanner User-Agents on, every unknown source's request is read, so stealth
    // waits for the read; without them stealth comes before the buckets. Both orders, the
    // second on half as many frames.
    agree(seed, frames, true)?;
    agree(seed.wrapping_add(1), frames / 2, false)
}

/// Runs `frames` generated frames through the program and the model; `scanners`: the
/// scanner User-Agent rules on.
fn agree(seed: u64, frames: u64, scanners: bool) -> anyhow::Result<()> {
    // The model's configuration: trust tiers and stealth on, the scanner User-Agents (the
    // shipped tokens) as asked, the bursts above, the pool's lists and known sources.
    let limit = |burst: u64| ClassLimit {
        rate_per_sec: 1,
        burst: burst as u32,
    };
    let config = KernelConfig {
        limits: BURSTS.map(limit),
        unknown_limits: UNKNOWN_BURSTS.map(limit),
        flags: FLAG_TRUST | FLAG_STEALTH | if scanners { FLAG_SCANNER_USER_AGENTS } else { 0 },
        ..KernelConfig::default()
    };
    let mut filter = TestFilter::with_config(&config)?;
    let (allow, deny) = (
        model::networks(model::POOL_ALLOWLIST),
        model::networks(model::POOL_DENYLIST),
    );
    for (kind, list) in [(ListKind::Allow, &allow), (ListKind::Deny, &deny)] {
        for (addr, len) in list {
            let cidr: Cidr = format!("{addr}/{len}").parse()?;
            filter.maps().list_add(kind, &cidr, u64::MAX)?;
        }
    }
    let settings = sipfilter::config::Config::default();
    filter.loaded.request_rules.write(&settings)?;
    let known = model::pool_known();
    let prefix = config.ipv6_prefix_len();
    for addr in &known {
        let record = KnownSource {
            until_ns: u64::MAX,
            last_success_ns: 0,
            extension: [0; 16],
        };
        filter.loaded.trust.insert_known(&source_key(*addr, prefix), &record)?;
    }
    filter.maps().bump_generation()?;
    // Stop the program's clock: it reads jiffies × 1 ns, a few ns a second, so no bucket
    // refills and no ban ends during the run (a token is 10⁹ nano-tokens at 1/s).
    let mut k = filter.maps().read_config()?;
    k.ns_per_jiffy = 1;
    k.jiffies_offset_ns = 0;
    filter.maps().write_config(&k)?;

    let pool = model::pool();
    let mut m = Model::new(BURSTS, UNKNOWN_BURSTS, &allow, &deny, &known);
    if scanners {
        m = m.with_scanners(settings.scanner_rules());
    }
    let mut r = Rng::new(seed);
    let mut before = filter.counters()?;
    let mut disagreements = Vec::new();
    let mut by_outcome = std::collections::BTreeMap::<&str, u64>::new();
    for i in 0..frames {
        let frame = model::frame_among(&mut r, &pool, FROM_POOL);
        let want = m.judge(&frame);
        let action = filter.run(&frame)?;
        let after = filter.counters()?;
        let outcome = Outcome::ALL
            .iter()
            .copied()
            .find(|o| after.outcome(*o) != before.outcome(*o));
        let method = Method::ALL
            .iter()
            .copied()
            .find(|m| after.method(*m) != before.method(*m));
        let got = Expected {
            outcome: outcome.unwrap_or(Outcome::NotIp),
            method,
        };
        let want_action = if want.outcome.drops() { XDP_DROP } else { XDP_PASS };
        if got != want || action != want_action || outcome.is_none() {
            disagreements.push(format!(
                "frame {i}: program {got:?} (action {action}), model {want:?}\n  {}",
                hex(&frame)
            ));
        }
        if (i + 1) % 1000 == 0 || i + 1 == frames {
            if let Some(d) = compare_bans(&mut filter, &m, prefix)? {
                disagreements.push(format!("after frame {i}: {d}"));
            }
        }
        if disagreements.len() >= 10 {
            break;
        }
        *by_outcome.entry(want.outcome.name()).or_default() += 1;
        before = after;
    }
    eprintln!(
        "scanner User-Agents {}: frames by outcome: {by_outcome:?}; {} sources banned",
        if scanners { "on" } else { "off" },
        m.banned.len()
    );
    assert!(
        disagreements.is_empty(),
        "the program and the model disagree (seed {seed}, scanner User-Agents {scanners}):\n{}",
        disagreements.join("\n")
    );
    // The run exercised what it is for: bans made, lists hit, buckets emptied.
    for o in [
        Outcome::Banned,
        Outcome::Allowlisted,
        Outcome::Denylisted,
        Outcome::Accepted,
        Outcome::Throttled,
        Outcome::Stealth,
        Outcome::Scanner,
    ] {
        if o == Outcome::Scanner && !scanners {
            continue;
        }
        assert!(
            by_outcome.get(o.name()).is_some_and(|n| *n > 0),
            "no {} frame",
            o.name()
        );
    }
    Ok(())
}

/// The ban table against the model's bans: None when they hold the same sources.
fn compare_bans(filter: &mut TestFilter, m: &Model, prefix: u8) -> anyhow::Result<Option<String>> {
    let table: BTreeSet<SourceKey> = filter.maps().bans()?.into_iter().map(|(k, _)| k).collect();
    let model: BTreeSet<SourceKey> = m.banned.iter().map(|a: &IpAddr| source_key(*a, prefix)).collect();
    if table == model {
        return Ok(None);
    }
    let only_table: Vec<_> = table.difference(&model).collect();
    let only_model: Vec<_> = model.difference(&table).collect();
    Ok(Some(format!(
        "ban table differs: only in the table {only_table:?}, only in the model {only_model:?}"
    )))
}

/// The judgement of answers, with the devices under each source: random registrations by
/// devices (source ports) of a few addresses — right and wrong passwords, unknown users,
/// probes that never answer their challenge, retransmissions of a withheld 2xx — through the
/// real XDP and answers programs, against the shared judgement (`AnswerState::judge` with a
/// `DeviceState` per device, run here on the host) under a model of what the programs keep
/// around it: which request is dropped because its source is banned, when the ingress
/// program counts credentials (an unknown source's answered challenges), the device table's
/// admission, the known and cracked records, and which answer is withheld. What it catches:
/// the kernel side keeping, caching or plumbing the state otherwise than the logic says.
#[test]
fn the_answers_program_agrees_with_the_judgement_model() -> anyhow::Result<()> {
    use sipfilter_common::{
        answers::{charge, Answer, AnswerClass, AnswerState, Judgement},
        config::{FLAG_TRUST, FLAG_WITHHOLD},
        devices::{DeviceState, NEW_DEVICE_BUDGET},
        scan::ext_from,
        TrustConfig, NS_PER_SEC,
    };
    use sipfilter_tests::{
        harness::{TC_ACT_OK, TC_ACT_SHOT},
        peer::Peer,
    };
    use std::{collections::HashMap, net::Ipv4Addr};

    let seed = seed();
    let steps = count("SIPFILTER_STEPS", 3_000);
    eprintln!("judgement differential: seed {seed} (SIPFILTER_SEED={seed} replays it), {steps} registrations");
    // No flood limit or stealth in the way, bans that outlast the run: only the answers judge.
    let big = ClassLimit {
        rate_per_sec: 100_000,
        burst: 1_000_000,
    };
    let mut config = KernelConfig {
        limits: [big; 3],
        unknown_limits: [big; 3],
        flags: FLAG_TRUST | FLAG_WITHHOLD,
        ..KernelConfig::default()
    };
    config.ban_base_ns = 30 * 24 * 3600 * NS_PER_SEC;
    config.ban_max_ns = config.ban_base_ns;
    let mut f = TestFilter::with_config(&config)?;
    let mut k = f.maps().read_config()?;
    k.ns_per_jiffy = 1;
    f.maps().write_config(&k)?;
    let trust = TrustConfig::default();

    struct Source {
        answers: AnswerState,
        banned: bool,
    }
    let mut sources: HashMap<Ipv4Addr, Source> = HashMap::new();
    let mut devices: HashMap<(Ipv4Addr, u16), DeviceState> = HashMap::new();
    let mut r = Rng::new(seed);
    // Event times: whole 100 ms steps plus one µs per step, so no two events are a whole
    // number of seconds apart (the budgets' boundaries) and a tick of the kernel's jiffies
    // between setting the clock and running cannot tip a comparison.
    let mut model_now: u64 = 1_000 * NS_PER_SEC;
    let mut disagreements = Vec::new();
    let mut tally: HashMap<&'static str, u64> = HashMap::new();
    for step in 0..steps {
        model_now += r.below(30) * NS_PER_SEC / 10 + 1_000;
        // The programs' clock reads exactly the model's time now.
        let jiffies = f.loaded.clock_sample()?.jiffies;
        let mut k = f.maps().read_config()?;
        k.jiffies_offset_ns = model_now.wrapping_sub(jiffies);
        f.maps().write_config(&k)?;
        let now = model_now;

        // 24 addresses; the first rotates its port on every request (it outgrows its device
        // budget), the others use a few ports mostly.
        let ip = Ipv4Addr::new(198, 19, 0, 1 + r.below(24) as u8);
        let port = if ip.octets()[3] == 1 {
            10_000 + step as u16
        } else {
            let spread = if r.chance(20) { 40 } else { 4 };
            5060 + 2 * r.below(spread) as u16
        };
        let ext = (200 + r.below(8)).to_string();
        // What the PBX answers: a stranger 404, a wrong password, the right one; a probe
        // never answers its challenge.
        // Addresses 17..24 behave as robots (mostly probes and wrong guesses), the rest as
        // offices (mostly right passwords).
        let kind = r.below(100);
        let robot = ip.octets()[3] > 16;
        let (probe, not_found, right) = if robot {
            (kind < 40, (40..55).contains(&kind), kind >= 97)
        } else {
            (kind < 10, (10..20).contains(&kind), kind >= 60)
        };
        let src = sources.entry(ip).or_insert(Source {
            answers: AnswerState::default(),
            banned: false,
        });
        // Every request its own CSeq (and so its own identity, which the model compares as
        // the programs compare the identity they read).
        let mut peer = Peer::device(&f, ip, port);
        peer.cseq = step as u32 * 10;

        // The model of the ingress program for one request (`creds`: with credentials).
        let ingress = |src: &mut Source, creds: bool| -> bool {
            if src.banned {
                return false;
            }
            let a = &mut src.answers;
            let known = a.known_until_ns > now;
            if !known {
                if a.enumerating(now, trust.unknown.enumeration_challenges) {
                    src.banned = true;
                    return false;
                }
                let challenged = (a.first_challenges != 0 && a.credentialed == 0) || a.unanswered != 0;
                if creds && challenged {
                    a.credentialed = a.credentialed.wrapping_add(1);
                    a.unanswered = a.unanswered.saturating_sub(1);
                }
            }
            true
        };
        // The model of the answers program for one answer: the TC action.
        let mut egress = |src: &mut Source, code: u16, cseq: u32| -> u32 {
            if src.banned && AnswerClass::withheld_from_banned(code) {
                return TC_ACT_SHOT;
            }
            let known = src.answers.known_until_ns > now;
            let device = match devices.get_mut(&(ip, port)) {
                Some(d) => Some(d),
                None => {
                    if charge(&mut src.answers.device_debt_ns, &NEW_DEVICE_BUDGET, now) {
                        None
                    } else {
                        devices.insert((ip, port), DeviceState::new(now));
                        devices.get_mut(&(ip, port))
                    }
                }
            };
            let answer = Answer {
                code,
                method: Method::Register,
                cseq,
                ext: ext_from(&ext),
                port,
            };
            match src.answers.judge(&answer, known, device, &trust, now) {
                Judgement::Nothing => TC_ACT_OK,
                Judgement::Withhold | Judgement::Suspect { .. } => TC_ACT_SHOT,
                Judgement::Ban(_) => {
                    src.banned = true;
                    if AnswerClass::withheld_from_banned(code) {
                        TC_ACT_SHOT
                    } else {
                        TC_ACT_OK
                    }
                }
                Judgement::Cracked { .. } => {
                    src.banned = true;
                    src.answers.known_until_ns = 0;
                    TC_ACT_SHOT
                }
                Judgement::Promote => {
                    src.answers.known_until_ns = now + trust.known_ttl_secs as u64 * NS_PER_SEC;
                    TC_ACT_OK
                }
            }
        };

        let mut check = |what: &str, program: u32, model: u32| {
            if program != model && disagreements.len() < 20 {
                disagreements.push(format!(
                    "step {step} ({ip}:{port}, {ext}, {what}): program {program}, model {model}"
                ));
            }
        };
        // REGISTER without credentials, and its answer.
        let want = ingress(src, false);
        let got = peer.register(&ext) == XDP_PASS;
        check("REGISTER", got as u32, want as u32);
        if got && want {
            let status = if not_found { "404 Not Found" } else { "401 Unauthorized" };
            let code = if not_found { 404 } else { 401 };
            let want = egress(src, code, peer.cseq);
            check("its first answer", peer.answer(status, "REGISTER", &ext, &ext), want);
            if !not_found && !probe {
                // With credentials, and the verdict on them.
                let want = ingress(src, true);
                let got = peer.register_with_credentials(&ext) == XDP_PASS;
                check("REGISTER with credentials", got as u32, want as u32);
                if got && want {
                    let (status, code) = if right {
                        ("200 OK", 200)
                    } else {
                        ("401 Unauthorized", 401)
                    };
                    let want = egress(src, code, peer.cseq);
                    let action = peer.answer(status, "REGISTER", &ext, &ext);
                    check("its answer", action, want);
                    *tally
                        .entry(if action == TC_ACT_SHOT { "withheld" } else { "passed" })
                        .or_default() += 1;
                    if action == TC_ACT_SHOT && want == TC_ACT_SHOT && r.chance(50) {
                        // A phone retransmits; the PBX answers the same request again.
                        let want = if src.banned {
                            None
                        } else {
                            Some(egress(src, code, peer.cseq))
                        };
                        if let Some(want) = want {
                            check("the retransmission's answer", peer.answer_again(status, &ext), want);
                            *tally.entry("retransmitted").or_default() += 1;
                        }
                    }
                }
            }
        } else {
            *tally.entry("dropped").or_default() += 1;
        }
    }
    if let Some(first) = disagreements.first() {
        // What each side kept for the source of the first disagreement.
        let ip: Ipv4Addr = first.split(['(', ':']).nth(1).unwrap_or("").trim().parse()?;
        let key = source_key(IpAddr::V4(ip), 64);
        let kernel = f
            .maps()
            .rate_states()?
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, s)| s.answers);
        eprintln!(
            "first disagreement: {first}\nprogram: {kernel:?}\nmodel:   {:?}",
            sources.get(&ip).map(|s| s.answers)
        );
        let kernel_devices = sipfilter::devices::pinned_devices(&f.loaded.pin_dir)?;
        for (port, d) in kernel_devices.get(&key).into_iter().flatten() {
            let m = devices.get(&(ip, *port));
            if m != Some(d) {
                eprintln!("device {port}: program {d:?}\n           model {m:?}");
            }
        }
    }
    let banned = sources.values().filter(|s| s.banned).count();
    let events = f.ban_events();
    let program_banned: BTreeSet<_> = events
        .iter()
        .filter(|e| e.reason != sipfilter_common::counters::ban_reason::SUSPECT)
        .map(|e| e.source)
        .collect();
    let model_banned: BTreeSet<_> = sources
        .iter()
        .filter(|(_, s)| s.banned)
        .map(|(ip, _)| source_key(IpAddr::V4(*ip), 64))
        .collect();
    eprintln!(
        "judgement differential: {tally:?}; {banned} of {} sources banned; {} devices",
        sources.len(),
        devices.len()
    );
    assert!(
        disagreements.is_empty(),
        "the programs and the judgement model disagree (seed {seed}):\n{}",
        disagreements.join("\n")
    );
    assert_eq!(program_banned, model_banned, "banned sources (seed {seed})");
    // The run exercised what it is for.
    for what in ["withheld", "passed", "dropped"] {
        assert!(tally.get(what).is_some_and(|n| *n > 0), "no {what} answer: {tally:?}");
    }
    Ok(())
}
