//! `sipfilter ban add|del|list`.

use std::time::Duration;

use anyhow::bail;
use serde_json::json;
use sipfilter::{
    addr::display_source,
    clock::boot_ns,
    filter_maps::{reason_name, ListKind},
    Cidr, FilterMaps,
};
use sipfilter_common::{counters::ban_reason, maps::PERMANENT, Method};

use sipfilter::duration::{format_ns, parse_duration};

use super::{
    audit::{duration_word, Audit},
    duration_ns, ipv6_prefix_len,
    lists::same_cidr,
    output::{count, human_expiry, json_remaining, print_json, Table},
    parse_cidr,
};

/// A ban without `--for` or `--permanent` lasts an hour: long enough to stop an attack in
/// progress, short enough that a mistyped address heals itself.
pub const DEFAULT_BAN: Duration = Duration::from_secs(3600);

pub const EXAMPLES: &str = "\
Examples:
  sipfilter ban add 203.0.113.7                  ban one address for 1 hour (the default)
  sipfilter ban add 203.0.113.7 --for 4h         ban it for four hours
  sipfilter ban add 2001:db8:1:2::5 --for 7d     ban one IPv6 address for a week
  sipfilter ban add 2001:db8:1:2::/64 --for 7d   ban its whole /64
  sipfilter ban add 198.51.100.0/24 --for 30m    ban a range (kept as a timed denylist entry)
  sipfilter ban add 203.0.113.9 --permanent      ban until `sipfilter ban del 203.0.113.9`
  sipfilter ban del 203.0.113.7                  lift a ban
  sipfilter ban list --json                      active bans, for scripts

An address is banned in the kernel's ban table (IPv6 too: one address, not its prefix). A
CIDR cannot be one ban-table entry; it becomes a denylist entry that expires, shown by `ban
list` with kind \"cidr\". Allowlisted sources are never banned.
Durations: 30s, 10m, 4h, 7d, 2w, combinations such as 1h30m, or plain seconds.";

#[derive(clap::Subcommand)]
pub enum BanCommand {
    /// Ban an address or a CIDR.
    Add(AddArgs),
    /// Lift the ban of an address, or the ban (denylist entry) of exactly this CIDR.
    Del {
        /// An address (203.0.113.7, 2001:db8::5) or a CIDR (198.51.100.0/24).
        #[arg(value_parser = parse_cidr, value_name = "ADDR|CIDR")]
        target: Cidr,
    },
    /// List the bans in force: sources (ban table) and CIDRs (timed denylist entries).
    List {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub struct AddArgs {
    /// An address (203.0.113.7, 2001:db8::5) or a CIDR (198.51.100.0/24).
    #[arg(value_parser = parse_cidr, value_name = "ADDR|CIDR")]
    target: Cidr,
    /// How long: 30s, 10m, 4h, 7d, 1h30m, or seconds [default: 1h].
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    duration: Option<Duration>,
    /// Never expires; lifted only by `sipfilter ban del`.
    #[arg(long, conflicts_with = "duration")]
    permanent: bool,
    /// Why, for the record: written into the audit trail (`sipfilter events`). The kernel's
    /// ban record holds the code "manual", not text.
    #[arg(long, value_name = "TEXT")]
    reason: Option<String>,
}

pub fn run(maps: &mut FilterMaps, audit: &mut Audit, cmd: BanCommand) -> anyhow::Result<()> {
    match cmd {
        BanCommand::Add(args) => add(maps, audit, args),
        BanCommand::Del { target } => del(maps, audit, &target),
        BanCommand::List { json } => list(maps, json),
    }
}

fn add(maps: &mut FilterMaps, audit: &mut Audit, args: AddArgs) -> anyhow::Result<()> {
    let prefix = ipv6_prefix_len(maps)?;
    let now = boot_ns();
    let length_ns = (!args.permanent).then(|| duration_ns(args.duration.unwrap_or(DEFAULT_BAN)));
    let how_long = length_ns.map_or("permanently".to_string(), |d| format!("for {}", format_ns(d)));
    let target = args.target;
    // The operator's words go into the audit trail after the duration.
    let trail_detail = |kind: &str| {
        let mut d = format!("reason=manual {} kind={kind}", duration_word(length_ns));
        if let Some(text) = &args.reason {
            d.push_str(&format!(" comment={text}"));
        }
        d
    };

    if let Some(key) = target.as_source_key(prefix) {
        let shown = display_source(&key, prefix);
        if let Some(by) = maps.allowlist_match(&key)? {
            bail!(
                "refusing to ban {shown}: it is allowlisted by {by}, and an allowlisted source is never banned (remove it with `sipfilter allow del {by}` first)"
            );
        }
        maps.add_ban(&key, length_ns, ban_reason::MANUAL)?;
        audit.record("ban", shown.clone(), trail_detail("source"));
        let note = if shown != target.to_string() {
            format!(" (the configured /{prefix} source prefix of {target})")
        } else {
            String::new()
        };
        println!("banned {shown} {how_long}{note}");
    } else {
        let allow = maps.list(ListKind::Allow)?;
        let in_force = allow.iter().filter(|(_, e)| e.expires_ns > now).map(|(c, _)| *c);
        if let Some(by) = in_force.clone().find(|c| c.contains(&target)) {
            bail!(
                "refusing to ban {target}: it is allowlisted by {by}, and an allowlisted source is never banned (remove it with `sipfilter allow del {by}` first)"
            );
        }
        let exempt: Vec<String> = in_force.filter(|c| target.contains(c)).map(|c| c.to_string()).collect();
        let previous = maps
            .list(ListKind::Deny)?
            .into_iter()
            .find(|(c, _)| same_cidr(c, &target))
            .map(|(_, e)| e);
        let expires = length_ns.map_or(PERMANENT, |d| now.saturating_add(d));
        maps.list_add(ListKind::Deny, &target, expires)?;
        audit.record("ban", target.to_string(), trail_detail("cidr"));
        let kind = if expires == PERMANENT {
            "a permanent denylist entry, listed by `sipfilter deny list`"
        } else {
            "a timed denylist entry, listed by `sipfilter ban list` as kind cidr"
        };
        println!("banned {target} {how_long} (a CIDR is stored as {kind})");
        if let Some(p) = previous {
            if p.expires_ns > now {
                println!(
                    "note: this replaces its denylist entry that ended {}",
                    human_expiry(p.expires_ns, now)
                );
            }
        }
        if !exempt.is_empty() {
            println!("note: allowlisted inside it, and still passed: {}", exempt.join(", "));
        }
    }
    if let Some(reason) = &args.reason {
        println!("reason: {reason} (recorded in the audit trail, `sipfilter events`; the ban itself carries the reason code \"manual\")");
    }
    Ok(())
}

fn del(maps: &mut FilterMaps, audit: &mut Audit, target: &Cidr) -> anyhow::Result<()> {
    let prefix = ipv6_prefix_len(maps)?;
    let now = boot_ns();
    let mut removed = false;
    if let Some(key) = target.as_source_key(prefix) {
        if maps.remove_ban(&key)? {
            // A clean slate: with its bucket still empty the next packet would ban it again.
            maps.remove_rate_state(&key)?;
            println!("lifted the ban on {}", display_source(&key, prefix));
            audit.record("lift", display_source(&key, prefix), "reason=removed kind=source");
            removed = true;
        }
    }
    let exact = maps
        .list(ListKind::Deny)?
        .into_iter()
        .find(|(c, _)| same_cidr(c, target));
    if let Some((cidr, entry)) = exact {
        maps.list_remove(ListKind::Deny, &cidr)?;
        let what = if entry.expires_ns == PERMANENT {
            "permanent"
        } else {
            "timed"
        };
        println!("removed the {what} denylist entry {cidr}");
        audit.record("lift", cidr.to_string(), "reason=removed kind=cidr");
        removed = true;
    }
    if !removed {
        bail!("{target} is not banned: it is neither in the ban table nor a denylist entry");
    }
    let covering = maps
        .list(ListKind::Deny)?
        .into_iter()
        .find(|(c, e)| e.expires_ns > now && c.contains(target));
    if let Some((c, e)) = covering {
        println!(
            "note: {target} is still dropped: it lies inside denylist entry {c} ({})",
            human_expiry(e.expires_ns, now)
        );
    }
    Ok(())
}

struct Row {
    source: String,
    kind: &'static str,
    reason: &'static str,
    strike: Option<u32>,
    method: Option<&'static str>,
    banned_at_ns: Option<u64>,
    expires_ns: u64,
}

fn list(maps: &FilterMaps, json: bool) -> anyhow::Result<()> {
    let prefix = ipv6_prefix_len(maps)?;
    let now = boot_ns();
    let mut bans: Vec<_> = maps.bans()?.into_iter().filter(|(_, b)| b.expires_ns > now).collect();
    bans.sort_by_key(|(k, _)| *k);
    let mut rows: Vec<Row> = bans
        .into_iter()
        .map(|(key, ban)| Row {
            source: display_source(&key, prefix),
            kind: "source",
            reason: reason_name(ban.reason),
            strike: Some(ban.strike),
            method: (ban.reason != ban_reason::MANUAL)
                .then(|| Method::from_u8(ban.method).map_or("unknown", |m| m.name())),
            banned_at_ns: Some(ban.banned_at_ns),
            expires_ns: ban.expires_ns,
        })
        .collect();
    rows.extend(
        maps.list(ListKind::Deny)?
            .into_iter()
            .filter(|(_, e)| e.expires_ns != PERMANENT && e.expires_ns > now)
            .map(|(cidr, e)| Row {
                source: cidr.to_string(),
                kind: "cidr",
                reason: if e.reason == 0 {
                    reason_name(ban_reason::MANUAL)
                } else {
                    reason_name(e.reason as u8)
                },
                strike: None,
                method: None,
                banned_at_ns: None,
                expires_ns: e.expires_ns,
            }),
    );

    if json {
        let items: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({
                    "source": r.source,
                    "kind": r.kind,
                    "reason": r.reason,
                    "strike": r.strike,
                    "method": r.method,
                    "banned_at_ns": r.banned_at_ns,
                    "banned_secs_ago": r.banned_at_ns.map(|t| now.saturating_sub(t) / 1_000_000_000),
                    "expires_ns": r.expires_ns,
                    "expires_in_secs": json_remaining(r.expires_ns, now),
                    "permanent": r.expires_ns == PERMANENT,
                })
            })
            .collect();
        return print_json(&items.into());
    }
    if rows.is_empty() {
        println!("no bans in force");
        return Ok(());
    }
    let mut t = Table::new(&[
        ("SOURCE", false),
        ("KIND", false),
        ("REASON", false),
        ("STRIKE", true),
        ("METHOD", false),
        ("BANNED", false),
        ("EXPIRES", false),
    ]);
    for r in &rows {
        t.row(vec![
            r.source.clone(),
            r.kind.into(),
            r.reason.into(),
            r.strike.map_or("-".into(), |s| s.to_string()),
            r.method.unwrap_or("-").into(),
            r.banned_at_ns
                .map_or("-".into(), |t| format!("{} ago", format_ns(now.saturating_sub(t)))),
            human_expiry(r.expires_ns, now),
        ]);
    }
    print!("{}", t.render());
    let cidrs = rows.iter().filter(|r| r.kind == "cidr").count();
    println!(
        "{} in force ({}, {})",
        count(rows.len(), "ban", "bans"),
        count(rows.len() - cidrs, "source", "sources"),
        count(cidrs, "CIDR", "CIDRs")
    );
    Ok(())
}
