//! The audit trail (`sipfilter events`): bans, lifts, cracked extensions and blocked calls,
//! one JSON object per line with its wall-clock time, in `events.jsonl` beside the state file.
//! Kept across restarts and bounded: past [`MAX_BYTES`] the file becomes `events.jsonl.1`
//! (replacing the previous one) and a new one starts, so at most twice that is kept.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

/// Size at which the file is rotated.
pub const MAX_BYTES: u64 = 4 << 20;

/// One entry of the trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Seconds since the Unix epoch (UTC).
    pub time: u64,
    /// `ban`, `lift`, `cracked` or `blocked_call`.
    pub event: String,
    /// The source (address or prefix), or for `cracked` the source that guessed it.
    pub source: String,
    /// What else there is to say, as `key=value` words (the reason, the extension, the number).
    pub detail: String,
}

impl Event {
    pub fn now(event: &str, source: impl Into<String>, detail: impl Into<String>) -> Event {
        Event {
            time: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            event: event.into(),
            source: source.into(),
            detail: detail.into(),
        }
    }
}

/// Where the trail lives for a state file.
pub fn path_for(state_file: &Path) -> PathBuf {
    state_file.with_file_name("events.jsonl")
}

fn rotated(path: &Path) -> PathBuf {
    path.with_extension("jsonl.1")
}

/// Appends events (root-only file), rotating first when the file is full.
pub fn append(path: &Path, events: &[Event]) -> anyhow::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    if std::fs::metadata(path).is_ok_and(|m| m.len() >= MAX_BYTES) {
        std::fs::rename(path, rotated(path)).with_context(|| format!("cannot rotate {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let mut text = String::new();
    for e in events {
        text.push_str(&serde_json::to_string(e)?);
        text.push('\n');
    }
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Every event kept, oldest first (the rotated file, then the current one), and how many lines
/// did not parse.
pub fn read(path: &Path) -> anyhow::Result<(Vec<Event>, usize)> {
    let mut events = Vec::new();
    let mut bad = 0;
    for p in [rotated(path), path.to_owned()] {
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
        };
        for l in text.lines() {
            match serde_json::from_str(l) {
                Ok(e) => events.push(e),
                Err(_) => bad += 1,
            }
        }
    }
    Ok((events, bad))
}

/// Events appended after `seen` lines (of the current file; a rotation starts it over).
pub fn read_after(path: &Path, seen: &mut usize) -> anyhow::Result<Vec<Event>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() < *seen {
        // Rotated: the new file's lines are all new.
        *seen = 0;
    }
    let new = lines[*seen..]
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    *seen = lines.len();
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trail_rotates_and_reads_back_in_order() {
        let dir = std::env::temp_dir().join(format!("sipfilter-events-{}", std::process::id()));
        let path = dir.join("events.jsonl");
        let big = "x".repeat(1024);
        let mut n = 0u64;
        while std::fs::metadata(&path).map_or(0, |m| m.len()) < MAX_BYTES {
            append(
                &path,
                &[Event {
                    time: n,
                    event: "ban".into(),
                    source: "198.51.100.7".into(),
                    detail: big.clone(),
                }],
            )
            .unwrap();
            n += 1;
        }
        append(&path, &[Event::now("lift", "198.51.100.7", "expired")]).unwrap();
        assert!(rotated(&path).exists());
        let (events, bad) = read(&path).unwrap();
        assert_eq!((events.len() as u64, bad), (n + 1, 0));
        assert_eq!(events.last().unwrap().event, "lift");
        let mut seen = 0;
        assert_eq!(read_after(&path, &mut seen).unwrap().len(), 1);
        append(&path, &[Event::now("ban", "203.0.113.9", "reason=scanner")]).unwrap();
        assert_eq!(read_after(&path, &mut seen).unwrap()[0].source, "203.0.113.9");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
