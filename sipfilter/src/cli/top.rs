//! `sipfilter top`: the busiest sources from the rate-state map.

use std::{
    collections::HashMap,
    io::{IsTerminal as _, Write as _},
    path::Path,
    time::{Duration, Instant},
};

use serde_json::json;
use sipfilter::{addr::display_source, clock::boot_ns, filter_maps::reason_name, FilterMaps};
use sipfilter_common::{Ban, RateState, SourceKey};

use super::{
    ipv6_prefix_len,
    output::{grouped, human_expiry, json_remaining, print_json, Table},
};

pub const EXAMPLES: &str = "\
Examples:
  sipfilter top                                  refresh every second until Ctrl-C
  sipfilter top --sort drops -n 50               the 50 sources with the most drops
  sipfilter top --once                           print once (also the default when piped)
  sipfilter top --json                           once, as JSON

TIER is allowlisted, known (registered cleanly) or unknown; FAIL, 404 and OK count the PBX's
credential failures, not-found answers and successes to the source, TRIED the extensions that
failed recently. REQUESTS and DROPS count SIP messages since the source was first seen (the rate-state map
forgets quiet sources when it fills); REQ/S and DROP/S, shown while refreshing, are the
rates over the last refresh, and refreshing sorts by them: the busiest sources right now.
--once and --json sort by the totals.";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    Requests,
    Drops,
}

#[derive(clap::Args)]
pub struct TopArgs {
    /// How many sources to show.
    #[arg(short = 'n', long = "count", value_name = "N", default_value_t = 20)]
    count: usize,
    /// Order by requests or by drops.
    #[arg(long, value_enum, value_name = "COLUMN", default_value_t = SortBy::Requests)]
    sort: SortBy,
    /// Print once and exit (the default when standard output is not a terminal).
    #[arg(long)]
    once: bool,
    /// Print once, as JSON.
    #[arg(long)]
    json: bool,
}

struct Sample {
    sources: Vec<(SourceKey, RateState)>,
    /// Every tracked source's totals, for the next refresh's rates.
    all: Totals,
    bans: HashMap<SourceKey, Ban>,
    /// Devices (source ports) the answers saw under each source.
    devices: HashMap<SourceKey, usize>,
    total: usize,
    now_ns: u64,
}

/// The busiest `count` sources. With `previous` totals (refreshing), "busiest" means most
/// messages since the previous refresh, so a flood that started a moment ago is on top even
/// when older sources have larger totals; otherwise, largest totals.
fn sample(
    maps: &FilterMaps,
    pin_dir: &Path,
    sort: SortBy,
    count: usize,
    previous: Option<&Totals>,
) -> anyhow::Result<Sample> {
    let mut sources = maps.rate_states()?;
    let total = sources.len();
    let since = |k: &SourceKey, s: &RateState| -> (u64, u64) {
        let (pr, pd) = previous.and_then(|p| p.get(k)).copied().unwrap_or((0, 0));
        (s.requests.saturating_sub(pr), s.drops.saturating_sub(pd))
    };
    sources.sort_by(|(ka, a), (kb, b)| {
        let key = |k: &SourceKey, s: &RateState| {
            let (r, d) = if previous.is_some() {
                since(k, s)
            } else {
                (s.requests, s.drops)
            };
            match sort {
                SortBy::Requests => (r, d, s.requests),
                SortBy::Drops => (d, r, s.drops),
            }
        };
        key(kb, b).cmp(&key(ka, a)).then(ka.cmp(kb))
    });
    let all: Totals = sources.iter().map(|(k, st)| (*k, (st.requests, st.drops))).collect();
    sources.truncate(count);
    let now_ns = boot_ns();
    let bans = maps
        .bans()?
        .into_iter()
        .filter(|(_, b)| b.expires_ns > now_ns)
        .collect();
    let devices = sipfilter::devices::pinned_devices(pin_dir)?
        .into_iter()
        .map(|(k, list)| (k, list.len()))
        .collect();
    Ok(Sample {
        sources,
        all,
        bans,
        devices,
        total,
        now_ns,
    })
}

pub fn run(maps: &FilterMaps, pin_dir: &Path, args: TopArgs) -> anyhow::Result<()> {
    let prefix = ipv6_prefix_len(maps)?;
    if args.json {
        let s = sample(maps, pin_dir, args.sort, args.count, None)?;
        let items: Vec<_> = s
            .sources
            .iter()
            .map(|(k, st)| {
                let ban = s.bans.get(k);
                json!({
                    "source": display_source(k, prefix),
                    "tier": tier(st, s.now_ns),
                    "requests": st.requests,
                    "drops": st.drops,
                    "failures": st.answers.failures,
                    "not_found": st.answers.not_found,
                    "successes": st.answers.successes,
                    "extensions_failed": extensions_failed(st),
                    "devices": s.devices.get(k).copied().unwrap_or(0),
                    "banned": ban.is_some(),
                    "ban_reason": ban.map(|b| reason_name(b.reason)),
                    "ban_expires_in_secs": ban.map(|b| json_remaining(b.expires_ns, s.now_ns)),
                })
            })
            .collect();
        return print_json(&json!({ "tracked_sources": s.total, "sources": items }));
    }
    if args.once || !std::io::stdout().is_terminal() {
        let s = sample(maps, pin_dir, args.sort, args.count, None)?;
        print!("{}", render(&s, prefix, None));
        return Ok(());
    }
    // Like top(1): redraw every second until interrupted (Ctrl-C ends the process).
    let mut previous: Option<(Instant, Totals)> = None;
    loop {
        let s = sample(maps, pin_dir, args.sort, args.count, previous.as_ref().map(|(_, p)| p))?;
        let taken = Instant::now();
        let rates = previous.as_ref().map(|(at, prev)| (taken.duration_since(*at), prev));
        let body = render(&s, prefix, Some(rates));
        let mut out = std::io::stdout().lock();
        write!(
            out,
            "\x1b[H\x1b[2Jsipfilter top: {} sources tracked, by {} (Ctrl-C to quit)\n\n{body}",
            grouped(s.total as u64),
            match args.sort {
                SortBy::Requests => "requests",
                SortBy::Drops => "drops",
            }
        )?;
        out.flush()?;
        drop(out);
        previous = Some((taken, s.all));
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Requests and drops per source at the previous refresh.
type Totals = HashMap<SourceKey, (u64, u64)>;
type Rates<'a> = Option<(Duration, &'a Totals)>;

/// `rates`: None prints totals only; Some(None) is the first refresh (rates not known yet).
fn render(s: &Sample, prefix: u8, rates: Option<Rates<'_>>) -> String {
    if s.sources.is_empty() {
        return "no SIP sources seen yet\n".into();
    }
    let mut columns = vec![("SOURCE", false), ("TIER", false), ("REQUESTS", true), ("DROPS", true)];
    if rates.is_some() {
        columns.extend([("REQ/S", true), ("DROP/S", true)]);
    }
    columns.extend([
        ("FAIL", true),
        ("404", true),
        ("OK", true),
        ("DEVICES", true),
        ("TRIED", false),
        ("BANNED", false),
    ]);
    let mut t = Table::new(&columns);
    for (k, st) in &s.sources {
        let mut row = vec![
            display_source(k, prefix),
            tier(st, s.now_ns).into(),
            grouped(st.requests),
            grouped(st.drops),
        ];
        if let Some(r) = rates {
            let (req, drop) = match r.and_then(|(dt, prev)| prev.get(k).map(|p| (dt, *p))) {
                Some((dt, (pr, pd))) if dt.as_secs_f64() > 0.0 => {
                    let per =
                        |now: u64, then: u64| format!("{:.1}", now.saturating_sub(then) as f64 / dt.as_secs_f64());
                    (per(st.requests, pr), per(st.drops, pd))
                }
                _ => ("-".into(), "-".into()),
            };
            row.extend([req, drop]);
        }
        let tried = extensions_failed(st);
        row.extend([
            st.answers.failures.to_string(),
            st.answers.not_found.to_string(),
            st.answers.successes.to_string(),
            s.devices.get(k).copied().unwrap_or(0).to_string(),
            if tried.is_empty() { "-".into() } else { tried },
        ]);
        row.push(
            s.bans
                .get(k)
                .map_or("-".into(), |b| human_expiry(b.expires_ns, s.now_ns)),
        );
        t.row(row);
    }
    t.render()
}

/// The source's trust tier, from what its slot caches (the program refreshes it whenever
/// userspace changes a list or a known source).
fn tier(st: &RateState, now: u64) -> &'static str {
    if st.allow_until_ns > now {
        "allowlisted"
    } else if st.answers.known_until_ns > now {
        "known"
    } else {
        "unknown"
    }
}

/// The extensions that failed recently (credential failures and not-found answers).
fn extensions_failed(st: &RateState) -> String {
    st.answers
        .failed
        .iter()
        .map(sipfilter_common::scan::ext_str)
        .filter(|e| !e.is_empty())
        .collect::<Vec<_>>()
        .join(",")
}
