//! `sipfilter stats`: the program's counters, summed over CPUs.

use serde_json::{json, Map, Value};
use sipfilter::{request_rules::RequestRuleMaps, FilterMaps};
use sipfilter_common::{
    config::transport,
    counters::{ban_reason, AnswerKind},
    Counters, Method, Outcome, Verdict,
};

use super::output::{grouped, print_json, Table};

pub const EXAMPLES: &str = "\
Examples:
  sipfilter stats                                packets by action and reason, SIP messages by method,
                                                 bans by reason, the PBX's answers by kind
  sipfilter stats --json | jq .outcomes.banned   one counter, for scripts
  watch -n1 sipfilter stats                      follow them

Counters count since the maps were created (they survive agent restarts).";

#[derive(clap::Args)]
pub struct StatsArgs {
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

pub fn run(maps: &FilterMaps, pin_dir: &std::path::Path, args: StatsArgs) -> anyhow::Result<()> {
    let c = maps.counters()?;
    // The request rules' own counts (per token, per destination rule), when their maps exist.
    let rules = RequestRuleMaps::open_pinned(pin_dir).ok();
    if args.json {
        let mut v = to_json(&c);
        if let Some(r) = &rules {
            v["requests"]["rules"] = rules_json(r, &c)?;
        }
        return print_json(&v);
    }
    print!("{}", render(&c));
    if let Some(r) = &rules {
        print!("{}", rules_table(r, &c)?);
    }
    Ok(())
}

/// Scanner tokens with their matches and the destination rules that decided calls, busiest
/// first.
/// (token, matches) and (prefix, deny, calls).
type RuleCounts = (Vec<(String, u64)>, Vec<(String, bool, u64)>);

fn rule_counts(r: &RequestRuleMaps, c: &Counters) -> anyhow::Result<RuleCounts> {
    let mut tokens: Vec<(String, u64)> = r
        .scanner_tokens()?
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, c.scanner_tokens.get(i).copied().unwrap_or(0)))
        .filter(|(_, n)| *n != 0)
        .collect();
    tokens.sort_by_key(|t| std::cmp::Reverse(t.1));
    let mut destinations: Vec<(String, bool, u64)> = r.destinations().into_iter().filter(|d| d.2 != 0).collect();
    destinations.sort_by_key(|d| std::cmp::Reverse(d.2));
    Ok((tokens, destinations))
}

fn rules_json(r: &RequestRuleMaps, c: &Counters) -> anyhow::Result<Value> {
    let (tokens, destinations) = rule_counts(r, c)?;
    Ok(json!({
        "scanner_tokens": tokens.iter().map(|(t, n)| json!({"token": t, "matches": n})).collect::<Vec<_>>(),
        "destinations": destinations
            .iter()
            .map(|(p, deny, n)| json!({"prefix": format!("+{p}"), "action": if *deny { "deny" } else { "allow" }, "calls": n}))
            .collect::<Vec<_>>(),
    }))
}

fn rules_table(r: &RequestRuleMaps, c: &Counters) -> anyhow::Result<String> {
    let (tokens, destinations) = rule_counts(r, c)?;
    let mut out = String::new();
    if !tokens.is_empty() {
        let mut t = Table::new(&[("SCANNER TOKEN", false), ("MATCHES", true)]);
        for (tok, n) in &tokens {
            t.row(vec![tok.clone(), grouped(*n)]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    if !destinations.is_empty() {
        let mut t = Table::new(&[("DESTINATION RULE", false), ("ACTION", false), ("CALLS", true)]);
        for (p, deny, n) in destinations.iter().take(20) {
            t.row(vec![
                format!("+{p}"),
                if *deny { "deny" } else { "allow" }.into(),
                grouped(*n),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    Ok(out)
}

fn named<T: Copy>(all: &[T], name: impl Fn(T) -> &'static str, get: impl Fn(T) -> u64) -> Value {
    let mut m = Map::new();
    for &x in all {
        m.insert(name(x).into(), get(x).into());
    }
    Value::Object(m)
}

/// The transports, by their counter slot.
const TRANSPORTS: [usize; transport::COUNT] = [transport::UDP, transport::TCP, transport::TLS, transport::WEBSOCKET];

pub fn to_json(c: &Counters) -> Value {
    let packets: u64 = c.verdicts.iter().sum();
    json!({
        "packets": packets,
        "verdicts": named(&Verdict::ALL, Verdict::name, |v| c.verdict(v)),
        "outcomes": named(&Outcome::ALL, Outcome::name, |o| c.outcome(o)),
        "methods": named(&Method::ALL, Method::name, |m| c.method(m)),
        "transports": named(&TRANSPORTS, |t| transport::NAMES[t], |t| c.transports[t]),
        "segments_uninspected": c.segments_uninspected,
        "bans": named(&ban_reason::KERNEL, ban_reason::name, |r| c.bans[ban_reason::slot(r)]),
        "answers": named(&AnswerKind::ALL, AnswerKind::name, |k| c.answers[k as usize]),
        "cracked": c.cracked,
        "promoted": c.promoted,
        "withheld": c.withheld,
        "suspect": c.suspect,
        "withheld_challenges": c.withheld_challenges,
        "uninspected": c.uninspected,
        "requests": {
            "scanner_matches": c.scanner_tokens.iter().sum::<u64>(),
            "calls_checked": c.calls_checked,
            "calls_blocked": named(&CALL_RULES, call_rule_name, |i| c.calls_blocked[i]),
            "uninspected": c.requests_uninspected,
        },
        "ban_table_full": c.ban_table_full,
        "events_lost": c.events_lost,
    })
}

/// The call-rule kinds, as `Counters::calls_blocked` orders them.
const CALL_RULES: [usize; 3] = [0, 1, 2];

fn call_rule_name(i: usize) -> &'static str {
    sipfilter_common::calls::call_verdict::name(i as u32 + 1)
}

fn percent(n: u64, total: u64) -> String {
    if total == 0 {
        "-".into()
    } else {
        format!("{:.1}%", n as f64 * 100.0 / total as f64)
    }
}

fn section<T: Copy>(
    out: &mut String,
    title: &'static str,
    all: &[T],
    name: impl Fn(T) -> &'static str,
    get: impl Fn(T) -> u64,
) {
    let total: u64 = all.iter().map(|&x| get(x)).sum();
    let mut t = Table::new(&[(title, false), ("COUNT", true), ("SHARE", true)]);
    for &x in all {
        t.row(vec![name(x).into(), grouped(get(x)), percent(get(x), total)]);
    }
    out.push_str(&t.render());
    out.push('\n');
}

pub fn render(c: &Counters) -> String {
    let mut out = String::new();
    let packets: u64 = c.verdicts.iter().sum();
    out.push_str(&format!("{} packets seen\n\n", grouped(packets)));
    section(&mut out, "ACTION", &Verdict::ALL, Verdict::name, |v| c.verdict(v));
    section(&mut out, "REASON", &Outcome::ALL, Outcome::name, |o| c.outcome(o));
    section(&mut out, "SIP METHOD", &Method::ALL, Method::name, |m| c.method(m));
    section(
        &mut out,
        "TRANSPORT",
        &TRANSPORTS,
        |t| transport::NAMES[t],
        |t| c.transports[t],
    );
    section(&mut out, "BANS BY REASON", &ban_reason::KERNEL, ban_reason::name, |r| {
        c.bans[ban_reason::slot(r)]
    });
    section(&mut out, "PBX ANSWERS", &AnswerKind::ALL, AnswerKind::name, |k| {
        c.answers[k as usize]
    });
    let mut t = Table::new(&[("TRUST", false), ("COUNT", true)]);
    t.row(vec!["extensions cracked".into(), grouped(c.cracked)]);
    t.row(vec!["clean REGISTER successes (known)".into(), grouped(c.promoted)]);
    t.row(vec!["2xx withheld from a cracking source".into(), grouped(c.withheld)]);
    t.row(vec![
        "2xx withheld once as suspect (nobody banned)".into(),
        grouped(c.suspect),
    ]);
    t.row(vec![
        "challenges and not-founds withheld (unanswered challenges)".into(),
        grouped(c.withheld_challenges),
    ]);
    t.row(vec![
        "answers not inspected (beyond the bound)".into(),
        grouped(c.uninspected),
    ]);
    out.push_str(&t.render());
    out.push('\n');
    let mut t = Table::new(&[("REQUEST RULES", false), ("COUNT", true)]);
    t.row(vec![
        "requests with a scanner User-Agent".into(),
        grouped(c.scanner_tokens.iter().sum()),
    ]);
    t.row(vec!["new calls checked".into(), grouped(c.calls_checked)]);
    for i in CALL_RULES {
        t.row(vec![
            format!("calls blocked: {}", call_rule_name(i)),
            grouped(c.calls_blocked[i]),
        ]);
    }
    t.row(vec![
        "requests not inspected (beyond the bound)".into(),
        grouped(c.requests_uninspected),
    ]);
    t.row(vec![
        "TCP segments starting no message (not judged)".into(),
        grouped(c.segments_uninspected),
    ]);
    out.push_str(&t.render());
    out.push('\n');
    let mut t = Table::new(&[("PROBLEM", false), ("COUNT", true)]);
    t.row(vec!["ban table full".into(), grouped(c.ban_table_full)]);
    t.row(vec!["ban events lost".into(), grouped(c.events_lost)]);
    out.push_str(&t.render());
    out
}
