//! `sipfilter events`: the audit trail — bans, lifts, list changes, cracked extensions and
//! blocked calls, with wall-clock times and who made them (origin `sipfilter` or `cli`), from
//! the agent's `events.jsonl` beside its state file (kept across restarts, rotated at 4 MiB).
//! The trail is the one the agent of `--pin-dir` named, unless --state-file or --config say.

use std::{path::Path, time::Duration};

use anyhow::bail;

use sipfilter::{event_log, fraud_file::utc};

pub const EXAMPLES: &str = "\
Examples:
  sipfilter events                         the trail, oldest first
  sipfilter events --follow                then every new entry as the agent writes it
  sipfilter events --json | jq 'select(.origin == \"cli\")'    the operators' changes
  sipfilter events --pin-dir /sys/fs/bpf/lab       the trail of the agent of those pins
  sipfilter events --state-file /tmp/lab/state.json

Says on stderr which file it reads and why. Exits 1 when no agent named its trail under the
pins and there is none at the packaged or default place either.";

#[derive(clap::Args)]
pub struct EventsArgs {
    #[command(flatten)]
    state: super::state_folder::StateArgs,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Keep printing new entries (Ctrl-C to stop).
    #[arg(long)]
    follow: bool,
}

fn print(e: &event_log::Event, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(e)?);
    } else {
        println!(
            "{}  {:<16}  {:<39}  {:<9}  {}",
            utc(e.time),
            e.event,
            e.source,
            e.origin,
            e.words()
        );
    }
    Ok(())
}

pub fn run(pin_dir: &Path, args: EventsArgs) -> anyhow::Result<()> {
    let located = args.state.locate(pin_dir)?;
    let why = &located.why;
    let path = event_log::path_for(&located.file);
    let exists = path.exists() || path.with_extension("jsonl.1").exists();
    // A guessed place without a trail is most likely the wrong place: said, not "no events".
    if !exists && located.guessed && !args.follow {
        bail!("no audit trail at {} ({why})", path.display());
    }
    if !args.json {
        eprintln!("audit trail: {} ({why})", path.display());
    }
    let (events, bad) = event_log::read(&path)?;
    if !args.json && events.is_empty() && !args.follow {
        println!("no events recorded in {}", path.display());
    }
    for e in &events {
        print(e, args.json)?;
    }
    if bad != 0 {
        eprintln!("warning: {bad} unreadable line(s) in {} skipped", path.display());
    }
    if args.follow {
        // Lines of the current file already printed (the rotated file came before them).
        let mut seen = std::fs::read_to_string(&path).map_or(0, |t| t.lines().count());
        loop {
            std::thread::sleep(Duration::from_millis(500));
            for e in event_log::read_after(&path, &mut seen)? {
                print(&e, args.json)?;
            }
        }
    }
    Ok(())
}
