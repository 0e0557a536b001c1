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

/// Who made a change: the filter itself (its programs and its agent: bans, expiries, cracked
/// extensions, blocked calls).
pub const ORIGIN_SIPFILTER: &str = "sipfilter";
/// An operator with the `sipfilter` command line (`ban`, `allow`, `deny`, `import`, `known`,
/// `cracked`), as CrowdSec's decisions carry `cscli`.
pub const ORIGIN_CLI: &str = "cli";

/// One entry of the trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Seconds since the Unix epoch (UTC).
    pub time: u64,
    /// `ban`, `lift`, `cracked`, `suspect`, `blocked_call`, `connection_limit`; an operator's
    /// `allow_add`, `allow_del`, `deny_add`, `deny_del`, `import`, `known_del`, `cracked_clear`.
    pub event: String,
    /// The source (address or prefix), or for `cracked` the source that guessed it; for
    /// `import` the file; for `cracked_clear` the extension.
    pub source: String,
    /// Who made the change ([`ORIGIN_SIPFILTER`], [`ORIGIN_CLI`]). Lines written before the
    /// field existed were all the agent's.
    #[serde(default = "origin_sipfilter")]
    pub origin: String,
    /// Why (`rate_register`, `expired`, `removed`, `manual` …), when there is a reason.
    #[serde(default)]
    pub reason: Option<String>,
    /// The SIP method that drew a ban.
    #[serde(default)]
    pub method: Option<String>,
    /// What else there is to say, as `key=value` words (the duration, the extension, the number).
    #[serde(default)]
    pub detail: String,
}

fn origin_sipfilter() -> String {
    ORIGIN_SIPFILTER.to_string()
}

impl Event {
    /// An entry by the filter itself, now. `detail` may carry `reason=` and `method=` words:
    /// they become the entry's own fields.
    pub fn now(event: &str, source: impl Into<String>, detail: impl Into<String>) -> Event {
        let mut e = Event {
            time: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            event: event.into(),
            source: source.into(),
            origin: origin_sipfilter(),
            reason: None,
            method: None,
            detail: detail.into(),
        };
        e.split_detail();
        e
    }

    /// The same entry, made by `origin`.
    pub fn by(mut self, origin: &str) -> Event {
        self.origin = origin.into();
        self
    }

    /// Moves the `reason=` and `method=` words of the detail into their fields (the agent's
    /// log lines, and trail lines written before the fields existed, carry them there).
    fn split_detail(&mut self) {
        if self.reason.is_some() || self.method.is_some() {
            return;
        }
        let mut rest = Vec::new();
        let mut words = self.detail.split(' ').filter(|w| !w.is_empty());
        while let Some(word) = words.next() {
            if word.starts_with("comment=") {
                // An operator's free text ends the line, taken as it is.
                rest.push(word);
                rest.extend(words.by_ref());
                break;
            }
            match (word.strip_prefix("reason="), word.strip_prefix("method=")) {
                (Some(r), _) if self.reason.is_none() => self.reason = Some(r.to_string()),
                (_, Some(m)) if self.method.is_none() => self.method = Some(m.to_string()),
                _ => rest.push(word),
            }
        }
        self.detail = rest.join(" ");
    }

    /// The entry as one line for people: `reason=… method=… detail`.
    pub fn words(&self) -> String {
        let mut out = Vec::new();
        if let Some(r) = &self.reason {
            out.push(format!("reason={r}"));
        }
        if let Some(m) = &self.method {
            out.push(format!("method={m}"));
        }
        if !self.detail.is_empty() {
            out.push(self.detail.clone());
        }
        out.join(" ")
    }
}

/// One line of the trail, whichever version wrote it.
fn parse_line(line: &str) -> Option<Event> {
    let mut e: Event = serde_json::from_str(line).ok()?;
    e.split_detail();
    Some(e)
}

/// Where the trail lives for a state file.
pub fn path_for(state_file: &Path) -> PathBuf {
    state_file.with_file_name("events.jsonl")
}

fn rotated(path: &Path) -> PathBuf {
    path.with_extension("jsonl.1")
}

fn lock_path(path: &Path) -> PathBuf {
    path.with_extension("lock")
}

/// Appends events (root-only file), rotating first when the file is full. The agent and the
/// CLI both append: an exclusive flock on `events.lock` beside the trail makes each append
/// (and a rotation) whole, so two writers neither interleave lines nor rotate twice.
pub fn append(path: &Path, events: &[Event]) -> anyhow::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
    }
    use std::os::unix::fs::OpenOptionsExt as _;
    let lock_file = lock_path(path);
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_file)
        .with_context(|| format!("cannot open {}", lock_file.display()))?;
    // SAFETY: flock on a valid fd we own; the kernel drops it when `lock` is closed.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot lock {}", lock_file.display()));
    }
    if std::fs::metadata(path).is_ok_and(|m| m.len() >= MAX_BYTES) {
        std::fs::rename(path, rotated(path)).with_context(|| format!("cannot rotate {}", path.display()))?;
    }
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
            match parse_line(l) {
                Some(e) => events.push(e),
                None => bad += 1,
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
    let new = lines[*seen..].iter().filter_map(|l| parse_line(l)).collect();
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
                    detail: big.clone(),
                    ..Event::now("ban", "198.51.100.7", "")
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

    #[test]
    fn older_lines_read_with_their_reason_and_method_as_fields() {
        let old = r#"{"time":1700000000,"event":"ban","source":"203.0.113.7","detail":"reason=rate_register method=REGISTER duration=300s strike=1"}"#;
        let e = parse_line(old).unwrap();
        assert_eq!(e.origin, ORIGIN_SIPFILTER);
        assert_eq!(e.reason.as_deref(), Some("rate_register"));
        assert_eq!(e.method.as_deref(), Some("REGISTER"));
        assert_eq!(e.detail, "duration=300s strike=1");
        assert_eq!(e.words(), "reason=rate_register method=REGISTER duration=300s strike=1");
        // Written now, the fields are separate and read back the same.
        let cli = Event::now("lift", "203.0.113.7", "reason=removed").by(ORIGIN_CLI);
        let line = serde_json::to_string(&cli).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            (v["origin"].as_str(), v["reason"].as_str(), v["detail"].as_str()),
            (Some("cli"), Some("removed"), Some(""))
        );
        assert!(v["method"].is_null(), "{v}");
        assert_eq!(parse_line(&line).unwrap(), cli);
        assert!(parse_line("not json").is_none());
    }

    #[test]
    fn appends_from_two_writers_at_once_stay_whole_lines() {
        let dir = std::env::temp_dir().join(format!("sipfilter-events-two-{}", std::process::id()));
        let path = dir.join("events.jsonl");
        let long = "y".repeat(8192);
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let (path, long) = (path.clone(), long.clone());
                std::thread::spawn(move || {
                    for i in 0..200 {
                        let e = Event::now("ban", format!("{w}-{i}"), long.clone());
                        append(&path, &[e]).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let (events, bad) = read(&path).unwrap();
        assert_eq!((events.len(), bad), (400, 0));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
