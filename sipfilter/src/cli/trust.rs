//! `sipfilter sources`, `sipfilter known list|del` and `sipfilter cracked list|clear`: what
//! the PBX's answers taught the filter about each source and extension.

use anyhow::bail;
use serde_json::json;
use sipfilter::{addr::display_source, clock::boot_ns, Cidr, FilterMaps, TrustMaps};
use sipfilter_common::{answers::level, devices::DeviceState, scan::ext_str, SourceKey, TrustConfig};
use std::collections::BTreeMap;

use super::{
    ipv6_prefix_len,
    output::{human_expiry, print_json, Table},
    parse_cidr,
};
use sipfilter::duration::format_ns;

pub const SOURCES_EXAMPLES: &str = "\
Examples:
  sipfilter sources                every source the filter tracks, with its tier and answers
  sipfilter sources --json         the same, for scripts

Under each source, its devices (source ports: every phone behind a NAT has its own), with the
lines each registered, its failures and the extension it last failed on.

Tiers: allowlisted (configured), known (a clean 2xx to a REGISTER within the known time),
unknown (everyone else, on the tight limits and failure budgets).";

pub const KNOWN_EXAMPLES: &str = "\
Examples:
  sipfilter known list             sources that earned trust by registering cleanly
  sipfilter known del 192.0.2.10   make a source unknown again (its next packet sees it)";

pub const CRACKED_EXAMPLES: &str = "\
Examples:
  sipfilter cracked list           extensions whose password was guessed
  sipfilter cracked clear 201      after changing extension 201's password

While an extension is on the list (and quarantine is on), REGISTER and INVITE for it from
sources that are neither known nor allowlisted are dropped.";

#[derive(clap::Args)]
pub struct SourcesArgs {
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand)]
pub enum KnownCommand {
    /// List the known sources.
    List {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Forget a known source.
    Del {
        /// The source address.
        #[arg(value_parser = parse_cidr, value_name = "ADDR")]
        addr: Cidr,
    },
}

#[derive(clap::Subcommand)]
pub enum CrackedCommand {
    /// List the cracked extensions.
    List {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Clear an extension from the list (its password has been changed).
    Clear {
        /// The extension (the URI user).
        #[arg(value_name = "EXT")]
        extension: String,
    },
}

fn tier(allowed: bool, known_until: u64, now: u64) -> &'static str {
    if allowed {
        "allowlisted"
    } else if known_until > now {
        "known"
    } else {
        "unknown"
    }
}

/// The lines a device registered.
fn lines(d: &DeviceState) -> Vec<&str> {
    d.registered.iter().map(ext_str).filter(|s| !s.is_empty()).collect()
}

/// One device under a source, as `sources` shows it.
fn device_json(port: u16, d: &DeviceState, now: u64) -> serde_json::Value {
    json!({"port": port, "registered": lines(d), "last_failed": ext_str(&d.failed),
           "failures": d.failures, "not_found": d.not_found, "successes": d.successes,
           "last_answer_ago_seconds": now.saturating_sub(d.last_answer_ns) / 1_000_000_000})
}

pub fn sources(
    maps: &FilterMaps,
    trust: &TrustMaps,
    devices: &BTreeMap<SourceKey, Vec<(u16, DeviceState)>>,
    args: SourcesArgs,
) -> anyhow::Result<()> {
    let now = boot_ns();
    let prefix = ipv6_prefix_len(maps)?;
    let policy = TrustConfig::default();
    let mut rows = Vec::new();
    for (key, st) in maps.rate_states()? {
        let allowed = maps.allowlist_match(&key)?.is_some();
        let known_until = trust.known(&key)?.map_or(0, |k| k.until_ns);
        let a = &st.answers;
        let tried: Vec<&str> = a.failed.iter().map(ext_str).filter(|s| !s.is_empty()).collect();
        rows.push((
            display_source(&key, prefix),
            tier(allowed, known_until, now),
            a.failures,
            a.not_found,
            a.challenges,
            a.successes,
            level(a.failure_debt_ns, &policy.unknown.failures, now),
            tried.join(","),
            st.requests,
            st.drops,
            devices.get(&key).cloned().unwrap_or_default(),
        ));
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.8));
    if args.json {
        let list: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({"source": r.0, "tier": r.1, "failures": r.2, "not_found": r.3, "challenges": r.4,
                       "successes": r.5, "failure_budget_used": r.6, "extensions_failed": r.7,
                       "messages": r.8, "dropped": r.9,
                       "devices": r.10.iter().map(|(p, d)| device_json(*p, d, now)).collect::<Vec<_>>()})
            })
            .collect();
        return print_json(&json!(list));
    }
    let mut t = Table::new(&[
        ("SOURCE", false),
        ("TIER", false),
        ("FAILURES", true),
        ("NOT FOUND", true),
        ("CHALLENGES", true),
        ("SUCCESSES", true),
        ("FAILED EXTENSIONS", false),
        ("MESSAGES", true),
        ("DROPPED", true),
    ]);
    for r in &rows {
        t.row(vec![
            r.0.clone(),
            r.1.into(),
            r.2.to_string(),
            r.3.to_string(),
            r.4.to_string(),
            r.5.to_string(),
            if r.7.is_empty() { "-".into() } else { r.7.clone() },
            r.8.to_string(),
            r.9.to_string(),
        ]);
        // Its devices (source ports) below it: what each registered and failed.
        for (port, d) in &r.10 {
            let lines = lines(d);
            t.row(vec![
                format!("  └ port {port}"),
                if lines.is_empty() {
                    "-".into()
                } else {
                    format!("lines {}", lines.join(","))
                },
                d.failures.to_string(),
                d.not_found.to_string(),
                "".into(),
                d.successes.to_string(),
                if ext_str(&d.failed).is_empty() {
                    "-".into()
                } else {
                    ext_str(&d.failed).into()
                },
                "".into(),
                "".into(),
            ]);
        }
    }
    print!("{}", t.render());
    Ok(())
}

pub fn known(
    maps: &mut FilterMaps,
    trust: &mut TrustMaps,
    audit: &mut super::audit::Audit,
    cmd: KnownCommand,
) -> anyhow::Result<()> {
    let now = boot_ns();
    let prefix = ipv6_prefix_len(maps)?;
    match cmd {
        KnownCommand::List { json } => {
            let mut list: Vec<_> = trust
                .known_sources()?
                .into_iter()
                .filter(|(_, k)| k.until_ns > now)
                .collect();
            list.sort_by_key(|(key, _)| *key);
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|(key, k)| {
                        json!({"source": display_source(key, prefix), "extension": ext_str(&k.extension),
                               "last_success_ago_seconds": now.saturating_sub(k.last_success_ns) / 1_000_000_000,
                               "known_for_seconds": (k.until_ns - now) / 1_000_000_000})
                    })
                    .collect();
                return print_json(&json!(v));
            }
            let mut t = Table::new(&[
                ("SOURCE", false),
                ("EXTENSION", false),
                ("LAST SUCCESS", false),
                ("KNOWN", false),
            ]);
            for (key, k) in &list {
                t.row(vec![
                    display_source(key, prefix),
                    ext_str(&k.extension).into(),
                    format!("{} ago", format_ns(now.saturating_sub(k.last_success_ns))),
                    human_expiry(k.until_ns, now).replace("in ", "for "),
                ]);
            }
            print!("{}", t.render());
            Ok(())
        }
        KnownCommand::Del { addr } => {
            let Some(key) = addr.as_source_key(prefix) else {
                bail!("{addr} is a range; give the address of one source");
            };
            if !trust.remove_known(&key)? {
                bail!("{addr} is not a known source");
            }
            // The program caches the status per source: make it look again.
            maps.bump_generation()?;
            audit.record("known_del", display_source(&key, prefix), "");
            println!("{addr} is unknown again");
            Ok(())
        }
    }
}

pub fn cracked(
    maps: &mut FilterMaps,
    trust: &mut TrustMaps,
    audit: &mut super::audit::Audit,
    cmd: CrackedCommand,
) -> anyhow::Result<()> {
    let now = boot_ns();
    let prefix = ipv6_prefix_len(maps)?;
    match cmd {
        CrackedCommand::List { json } => {
            let mut list = trust.cracked()?;
            list.sort_by(|a, b| ext_str(&a.0).cmp(ext_str(&b.0)));
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|(ext, c)| {
                        json!({"extension": ext_str(ext), "source": display_source(&c.source, prefix),
                               "ago_seconds": now.saturating_sub(c.at_ns) / 1_000_000_000,
                               "failures": c.failures, "other_extensions": c.other_extensions})
                    })
                    .collect();
                return print_json(&json!(v));
            }
            let mut t = Table::new(&[
                ("EXTENSION", false),
                ("SOURCE", false),
                ("WHEN", false),
                ("AFTER FAILURES", true),
            ]);
            for (ext, c) in &list {
                t.row(vec![
                    ext_str(ext).into(),
                    display_source(&c.source, prefix),
                    format!("{} ago", format_ns(now.saturating_sub(c.at_ns))),
                    c.failures.to_string(),
                ]);
            }
            print!("{}", t.render());
            Ok(())
        }
        CrackedCommand::Clear { extension } => {
            if extension.is_empty() || extension.len() > sipfilter_common::scan::EXT_LEN {
                bail!("'{extension}' is not an extension (1 to 16 characters)");
            }
            if !trust.clear_cracked(&extension)? {
                bail!("extension {extension} is not on the cracked list");
            }
            audit.record("cracked_clear", extension.clone(), "");
            println!("cleared extension {extension} from the cracked list");
            Ok(())
        }
    }
}
