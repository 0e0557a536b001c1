//! The XDP program against the reference model (`tests/src/model.rs`): generated frames —
//! valid ones from every layer, then truncated, bit-flipped or random, most of them from a
//! pool of 24 sources (some allowlisted, some denylisted, some known, the rest unknown) so
//! that buckets empty and bans are made — through the real program with BPF_PROG_TEST_RUN, one after another on one loaded
//! program (its per-source state accumulates), comparing the verdict, the outcome and method
//! counters, and every 1,000 frames the ban table, with the model's. 100,000 frames here;
//! `cargo xtask soak` runs millions. The seed is printed, and `SIPFILTER_SEED=N` replays a
//! run.

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

#[test]
fn the_program_agrees_with_the_model() -> anyhow::Result<()> {
    let seed: u64 = std::env::var("SIPFILTER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let frames: u64 = std::env::var("SIPFILTER_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
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
