//! `sipfilter allow|deny add|del|list`: the two CIDR lists.

use std::time::Duration;

use anyhow::bail;
use serde_json::json;
use sipfilter::{addr::display_source, clock::boot_ns, filter_maps::ListKind, Cidr, FilterMaps};
use sipfilter_common::maps::PERMANENT;

use sipfilter::duration::{format_ns, parse_duration};

use super::{
    audit::{duration_word, Audit},
    duration_ns, ipv6_prefix_len,
    output::{count, human_expiry, json_remaining, print_json, Table},
    parse_cidr,
};

pub const ALLOW_EXAMPLES: &str = "\
Examples:
  sipfilter allow add 192.0.2.0/24               never limit, ban or deny the office network
  sipfilter allow add 198.51.100.7 --for 2h      allow a travelling phone for two hours
  sipfilter allow del 192.0.2.0/24               remove exactly this entry
  sipfilter allow list --json                    the entries in force, for scripts

Allowlisting lifts every ban the entry covers (they are printed). Entries never expire
unless --for is given.";

pub const DENY_EXAMPLES: &str = "\
Examples:
  sipfilter deny add 203.0.113.0/24              drop all SIP traffic from a range
  sipfilter deny add 2001:db8:bad::/48 --for 7d  deny a range for a week
  sipfilter deny del 203.0.113.0/24              remove exactly this entry
  sipfilter deny list --json                     the entries in force, for scripts
  sipfilter import blocklist.txt                 add many at once

The allowlist takes precedence over the denylist. Entries never expire unless --for is given.";

#[derive(clap::Subcommand)]
pub enum ListCommand {
    /// Add an address or CIDR (replacing the entry for exactly that CIDR, if any).
    Add {
        /// An address (203.0.113.7, 2001:db8::5) or a CIDR (198.51.100.0/24).
        #[arg(value_parser = parse_cidr, value_name = "ADDR|CIDR")]
        cidr: Cidr,
        /// The entry ends after DURATION: 30s, 10m, 4h, 7d, 1h30m [default: never].
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
        duration: Option<Duration>,
        /// Never expires (the default; for symmetry with `ban add`).
        #[arg(long, conflicts_with = "duration")]
        permanent: bool,
    },
    /// Remove the entry for exactly this CIDR.
    Del {
        /// An address (203.0.113.7, 2001:db8::5) or a CIDR (198.51.100.0/24).
        #[arg(value_parser = parse_cidr, value_name = "ADDR|CIDR")]
        cidr: Cidr,
    },
    /// List the entries in force.
    List {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Where the agent's files are (for the names the allowlist's addresses come from).
        #[command(flatten)]
        state: super::state_folder::StateArgs,
    },
}

fn list_name(kind: ListKind) -> &'static str {
    match kind {
        ListKind::Allow => "allowlist",
        ListKind::Deny => "denylist",
    }
}

/// Whether two CIDRs name the same list entry (host bits do not count).
pub fn same_cidr(a: &Cidr, b: &Cidr) -> bool {
    a.map_prefix_len() == b.map_prefix_len() && a.key_bytes() == b.key_bytes()
}

/// The trail's name for a change to a list: `allow_add`, `deny_del` …
fn trail_event(kind: ListKind, change: &str) -> String {
    match kind {
        ListKind::Allow => format!("allow_{change}"),
        ListKind::Deny => format!("deny_{change}"),
    }
}

pub fn run(maps: &mut FilterMaps, audit: &mut Audit, kind: ListKind, cmd: ListCommand) -> anyhow::Result<()> {
    match cmd {
        ListCommand::Add {
            cidr,
            duration,
            permanent: _,
        } => add(maps, audit, kind, &cidr, duration),
        ListCommand::Del { cidr } => {
            if !maps.list_remove(kind, &cidr)? {
                bail!("{cidr} is not on the {}", list_name(kind));
            }
            println!("removed {cidr} from the {}", list_name(kind));
            audit.record(&trail_event(kind, "del"), cidr.to_string(), "reason=manual");
            Ok(())
        }
        ListCommand::List { json, state } => {
            let names = match kind {
                ListKind::Allow => {
                    crate::agent::allow_names::read(&crate::agent::allow_names::path_for(&state.state_file()?))
                }
                ListKind::Deny => Vec::new(),
            };
            list(maps, kind, json, &names)
        }
    }
}

fn add(
    maps: &mut FilterMaps,
    audit: &mut Audit,
    kind: ListKind,
    cidr: &Cidr,
    duration: Option<Duration>,
) -> anyhow::Result<()> {
    let now = boot_ns();
    let expires = duration.map_or(PERMANENT, |d| now.saturating_add(duration_ns(d)));
    let existed = maps.list(kind)?.iter().any(|(c, _)| same_cidr(c, cidr));
    let lifted = maps.list_add(kind, cidr, expires)?;
    let how_long = duration.map_or("permanently".to_string(), |d| {
        format!("for {}", format_ns(duration_ns(d)))
    });
    let verb = if existed { "updated" } else { "added" };
    println!("{verb} {cidr} on the {} {how_long}", list_name(kind));
    audit.record(
        &trail_event(kind, "add"),
        cidr.to_string(),
        format!(
            "reason=manual {}{}",
            duration_word(duration.map(duration_ns)),
            if existed { " replaced=true" } else { "" }
        ),
    );
    if !lifted.is_empty() {
        let prefix = ipv6_prefix_len(maps)?;
        let names: Vec<String> = lifted.iter().map(|k| display_source(k, prefix)).collect();
        for n in &names {
            audit.record("lift", n.clone(), format!("reason=allowlisted kind=source by={cidr}"));
        }
        println!("lifted {} ban(s) it covers: {}", names.len(), names.join(", "));
    }
    if kind == ListKind::Deny {
        let allowed_by = maps
            .list(ListKind::Allow)?
            .into_iter()
            .find(|(c, e)| e.expires_ns > now && c.contains(cidr));
        if let Some((by, _)) = allowed_by {
            println!("note: {cidr} is allowlisted by {by}, which takes precedence: its packets still pass");
        }
    }
    Ok(())
}

/// The names (from `allow-names.json`) an allowlist entry stands for.
fn names_of(c: &Cidr, names: &[crate::agent::allow_names::NameEntry]) -> Vec<String> {
    names
        .iter()
        .filter(|n| n.addresses.iter().any(|a| Cidr::host(*a).to_string() == c.to_string()))
        .map(|n| n.name.clone())
        .collect()
}

fn list(
    maps: &FilterMaps,
    kind: ListKind,
    json: bool,
    names: &[crate::agent::allow_names::NameEntry],
) -> anyhow::Result<()> {
    let now = boot_ns();
    let entries: Vec<_> = maps
        .list(kind)?
        .into_iter()
        .filter(|(_, e)| e.expires_ns > now)
        .collect();
    if json {
        let items: Vec<_> = entries
            .iter()
            .map(|(c, e)| {
                json!({
                    "cidr": c.to_string(),
                    "expires_ns": e.expires_ns,
                    "expires_in_secs": json_remaining(e.expires_ns, now),
                    "permanent": e.expires_ns == PERMANENT,
                    "names": names_of(c, names),
                })
            })
            .collect();
        return print_json(&items.into());
    }
    if entries.is_empty() {
        println!("the {} is empty", list_name(kind));
        return Ok(());
    }
    let mut t = Table::new(&[("CIDR", false), ("EXPIRES", false), ("NAME", false)]);
    for (c, e) in &entries {
        t.row(vec![
            c.to_string(),
            human_expiry(e.expires_ns, now),
            names_of(c, names).join(", "),
        ]);
    }
    print!("{}", t.render());
    for n in names.iter().filter(|n| n.error.is_some()) {
        println!(
            "note: {} does not resolve now ({}); its last addresses stay allowlisted",
            n.name,
            n.error.as_deref().unwrap_or("")
        );
    }
    println!(
        "{} on the {}",
        count(entries.len(), "entry", "entries"),
        list_name(kind)
    );
    Ok(())
}
