//! `sipfilter import FILE`: a blocklist into the denylist.
//!
//! Two formats, told apart by the first non-blank character: `{` is APIBAN's JSON
//! (`{"ipaddress": ["192.0.2.1", ...], "ID": "..."}`), anything else is plain lines of
//! addresses or CIDRs, with `#` or `;` comments (whole-line or trailing) and blank lines.

use std::{
    collections::{HashMap, HashSet},
    io::Read as _,
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;
use serde_json::json;
use sipfilter::{blocklist::parse, clock::boot_ns, filter_maps::ListKind, Cidr, FilterMaps};
use sipfilter_common::maps::PERMANENT;

use sipfilter::duration::{format_ns, parse_duration};

use super::{
    audit::{duration_word, Audit},
    duration_ns,
    output::{grouped, print_json},
};

pub const EXAMPLES: &str = "\
Examples:
  sipfilter import blocklist.txt                 one address or CIDR per line, # comments
  sipfilter import apiban.json --for 7d          APIBAN's JSON; entries end after a week
  curl -s https://apiban.org/api/KEY/banned | sipfilter import -
  sipfilter import blocklist.txt --json          the report as JSON

Plain files: one address or CIDR per line; blank lines and comments (# or ;, whole-line or
after the address) are skipped. APIBAN files: {\"ipaddress\": [...], \"ID\": ...}.
Entries already on the denylist count as duplicates: with --for, an end earlier than the new
one is moved later; without it, a timed entry keeps its end (a permanent import does not make
a timed ban permanent behind your back: the report names them); --permanent makes every entry
of the file permanent, the timed ones included (named too). Bad lines are reported with their
line number (APIBAN: array index).";

/// How many rejected lines the human report lists (the JSON report lists all).
const SHOW_REJECTED: usize = 100;

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The blocklist file, or - for standard input.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// The imported entries end after DURATION (30s, 10m, 4h, 7d) [default: never].
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration, allow_hyphen_values = true)]
    duration: Option<Duration>,
    /// Every entry of the file permanent, also those already on the denylist with an end.
    #[arg(long, conflicts_with = "duration")]
    permanent: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Default, Debug, PartialEq, Eq)]
pub struct Report {
    pub added: usize,
    pub repeated_in_file: usize,
    pub already_listed: usize,
    /// Already listed with an earlier end, moved to the import's (`--for`).
    pub extended: usize,
    /// Already listed with an end, kept (an import without `--for` or `--permanent`).
    pub kept_timed: Vec<String>,
    /// Already listed with an end, now permanent (`--permanent`).
    pub made_permanent: Vec<String>,
}

/// What an import does to an entry already on the denylist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Existing {
    /// `--for`: an earlier end is moved to the import's.
    ExtendTo(u64),
    /// No duration given: the entry keeps its end, timed or not.
    Keep,
    /// `--permanent`: every entry ends never.
    MakePermanent,
}

pub fn run(maps: &mut FilterMaps, audit: &mut Audit, args: ImportArgs) -> anyhow::Result<()> {
    let from_stdin = args.file.as_os_str() == "-";
    let text = if from_stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read standard input")?;
        s
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?
    };
    let name = if from_stdin {
        "standard input".to_string()
    } else {
        args.file.display().to_string()
    };
    let parsed = parse(&text).with_context(|| format!("cannot import {name}"))?;

    let now = boot_ns();
    let expires = args.duration.map_or(PERMANENT, |d| now.saturating_add(duration_ns(d)));
    let existing = match (args.duration, args.permanent) {
        (Some(_), _) => Existing::ExtendTo(expires),
        (None, true) => Existing::MakePermanent,
        (None, false) => Existing::Keep,
    };
    let applied = apply(maps, &parsed.entries, expires, existing, now);
    let report = match &applied {
        Ok(r) => r,
        Err((r, _)) => r,
    };
    if report.added + report.extended + report.made_permanent.len() > 0 {
        audit.record(
            "import",
            name.clone(),
            format!(
                "reason=manual {} added={} extended={} made_permanent={} list=deny",
                duration_word(args.duration.map(duration_ns)),
                report.added,
                report.extended,
                report.made_permanent.len()
            ),
        );
    }
    let report = match applied {
        Ok(r) => r,
        Err((_, e)) => return Err(e),
    };

    if args.json {
        let loc = parsed.format.loc_name();
        let rejected: Vec<_> = parsed
            .rejected
            .iter()
            .map(|r| json!({ loc: r.loc, "text": r.text, "error": r.error }))
            .collect();
        return print_json(&json!({
            "file": name,
            "format": parsed.format.name(),
            "added": report.added,
            "duplicates": report.repeated_in_file + report.already_listed,
            "repeated_in_file": report.repeated_in_file,
            "already_listed": report.already_listed,
            "extended": report.extended,
            "kept_timed": report.kept_timed,
            "made_permanent": report.made_permanent,
            "rejected_count": parsed.rejected.len(),
            "rejected": rejected,
            "expires_in_secs": args.duration.map(|d| d.as_secs()),
        }));
    }
    let how_long = args
        .duration
        .map_or("permanently".into(), |d| format!("for {}", format_ns(duration_ns(d))));
    println!(
        "imported {name} ({} format) into the denylist {how_long}: {} added, {} duplicates ({} repeated in the file, {} already listed), {} rejected",
        parsed.format.name(),
        grouped(report.added as u64),
        grouped((report.repeated_in_file + report.already_listed) as u64),
        grouped(report.repeated_in_file as u64),
        grouped(report.already_listed as u64),
        grouped(parsed.rejected.len() as u64),
    );
    if report.extended > 0 {
        println!(
            "  {} already listed with an earlier end now end {how_long}",
            grouped(report.extended as u64)
        );
    }
    for (entries, what) in [
        (
            &report.kept_timed,
            "already listed with an end keep it (`--permanent` makes them permanent)",
        ),
        (&report.made_permanent, "already listed with an end are permanent now"),
    ] {
        if entries.is_empty() {
            continue;
        }
        let shown: Vec<&str> = entries.iter().take(SHOW_REJECTED).map(String::as_str).collect();
        let more = entries.len().saturating_sub(SHOW_REJECTED);
        println!(
            "  {} {what}: {}{}",
            grouped(entries.len() as u64),
            shown.join(", "),
            if more > 0 {
                format!(" … and {more} more (--json lists them all)")
            } else {
                String::new()
            }
        );
    }
    for r in parsed.rejected.iter().take(SHOW_REJECTED) {
        println!("  rejected {} {}: {}", parsed.format.loc_name(), r.loc, r.error);
    }
    if parsed.rejected.len() > SHOW_REJECTED {
        println!(
            "  ... and {} more (--json lists them all)",
            parsed.rejected.len() - SHOW_REJECTED
        );
    }
    Ok(())
}

/// Writes the entries to the denylist: one read of the list, then one insert per new or
/// changed entry. On an error, what was done until then comes with it.
fn apply(
    maps: &mut FilterMaps,
    entries: &[(usize, Cidr)],
    expires: u64,
    on_existing: Existing,
    now: u64,
) -> Result<Report, (Report, anyhow::Error)> {
    let existing: HashMap<([u8; 16], u32), u64> = match maps.list(ListKind::Deny) {
        Ok(l) => l
            .into_iter()
            .filter(|(_, e)| e.expires_ns > now)
            .map(|(c, e)| ((c.key_bytes(), c.map_prefix_len()), e.expires_ns))
            .collect(),
        Err(e) => return Err((Report::default(), e)),
    };
    let mut seen = HashSet::with_capacity(entries.len());
    let mut report = Report::default();
    for (loc, cidr) in entries {
        let key = (cidr.key_bytes(), cidr.map_prefix_len());
        if !seen.insert(key) {
            report.repeated_in_file += 1;
            continue;
        }
        if let Some(&old) = existing.get(&key) {
            report.already_listed += 1;
            let new_end = match on_existing {
                Existing::ExtendTo(end) if end > old => Some(end),
                Existing::MakePermanent if old != PERMANENT => Some(PERMANENT),
                Existing::Keep if old != PERMANENT => {
                    report.kept_timed.push(cidr.to_string());
                    None
                }
                _ => None,
            };
            if let Some(end) = new_end {
                if let Err(e) = maps.list_add(ListKind::Deny, cidr, end) {
                    return Err((report, e.context(format!("stopped at line/index {loc}"))));
                }
                match end {
                    PERMANENT => report.made_permanent.push(cidr.to_string()),
                    _ => report.extended += 1,
                }
            }
            continue;
        }
        if let Err(e) = maps.list_add(ListKind::Deny, cidr, expires) {
            let added = report.added;
            return Err((
                report,
                e.context(format!("stopped at line/index {loc} after adding {added}")),
            ));
        }
        report.added += 1;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipfilter::blocklist::{Format, Parsed};

    fn cidrs(p: &Parsed) -> Vec<(usize, String)> {
        p.entries.iter().map(|(l, c)| (*l, c.to_string())).collect()
    }

    #[test]
    fn plain_lines_with_comments_and_blanks() {
        let text = "# a blocklist\n\n192.0.2.1\n  198.51.100.0/24   # trailing comment\n203.0.113.5 ; SBL123\n2001:db8::/32\n\t\n";
        let p = parse(text).unwrap();
        assert_eq!(p.format, Format::Plain);
        assert_eq!(
            cidrs(&p),
            vec![
                (3, "192.0.2.1".into()),
                (4, "198.51.100.0/24".into()),
                (5, "203.0.113.5".into()),
                (6, "2001:db8::/32".into())
            ]
        );
        assert!(p.rejected.is_empty());
    }

    #[test]
    fn plain_bad_lines_are_rejected_with_line_numbers() {
        let text = "192.0.2.1\nnot-an-ip\n10.0.0.0/33\n1.2.3.4 5.6.7.8\r\n192.0.2.2\r\n";
        let p = parse(text).unwrap();
        assert_eq!(cidrs(&p), vec![(1, "192.0.2.1".into()), (5, "192.0.2.2".into())]);
        let locs: Vec<usize> = p.rejected.iter().map(|r| r.loc).collect();
        assert_eq!(locs, vec![2, 3, 4]);
        assert!(p.rejected[0].error.contains("not-an-ip"), "{:?}", p.rejected[0]);
        assert!(p.rejected[1].error.contains("10.0.0.0/33"));
        assert!(p.rejected[2].error.contains("more than one field"));
    }

    #[test]
    fn apiban_json() {
        let text = r#"  {"ipaddress": ["192.0.2.1", "bogus", 7, "2001:db8::1"], "ID": "1234567"}"#;
        let p = parse(text).unwrap();
        assert_eq!(p.format, Format::Apiban);
        assert_eq!(cidrs(&p), vec![(0, "192.0.2.1".into()), (3, "2001:db8::1".into())]);
        let locs: Vec<usize> = p.rejected.iter().map(|r| r.loc).collect();
        assert_eq!(locs, vec![1, 2]);
    }

    #[test]
    fn apiban_nothing_new_and_broken_documents() {
        let p = parse(r#"{"ipaddress":["no new bans"], "ID":"none"}"#).unwrap();
        assert!(p.entries.is_empty() && p.rejected.is_empty());
        assert!(parse(r#"{"ipaddress": ["192.0.2.1""#).is_err());
        assert!(parse(r#"{"ID": "1"}"#).is_err());
        assert!(parse(r#"{"ipaddress": "192.0.2.1"}"#).is_err());
    }

    #[test]
    fn empty_file_is_plain_and_empty() {
        let p = parse("").unwrap();
        assert_eq!(
            p,
            Parsed {
                format: Format::Plain,
                entries: vec![],
                rejected: vec![]
            }
        );
    }
}
