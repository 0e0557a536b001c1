//! The blocked-calls record (`sipfilter fraud list`): one JSON object per line in
//! `fraud.jsonl` beside the state file, kept across restarts and bounded (the oldest lines
//! go once it holds [`KEEP`] calls).

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use sipfilter_common::{
    calls::{call_verdict, CallEvent},
    dialed::Digits,
    scan::ext_str,
};

use crate::addr::display_source;

/// Calls kept.
pub const KEEP: usize = 1000;

/// A blocked call as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockedCall {
    /// Seconds since the Unix epoch (UTC).
    pub time: u64,
    pub source: String,
    /// The caller (From user), empty when it could not be read.
    pub extension: String,
    /// The dialed number, E.164 with a `+`.
    pub number: String,
    /// `destination`, `burst_number` or `burst_international`.
    pub rule: String,
    /// The source was known (registered).
    pub known: bool,
    /// What was done: `dropped`, `dropped_and_banned`, or `would_drop` (monitor mode).
    pub action: String,
}

impl BlockedCall {
    pub fn from_event(e: &CallEvent) -> BlockedCall {
        let digits = Digits {
            nibbles: e.number,
            len: e.number_len,
            _pad: 0,
        };
        let banned = e.known == 0 && e.verdict != call_verdict::DESTINATION;
        BlockedCall {
            time: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            source: display_source(&sipfilter_common::SourceKey::from_words(e.source), 128),
            extension: ext_str(&e.extension).to_string(),
            number: format!("+{}", digits.text().as_str()),
            rule: call_verdict::name(e.verdict).to_string(),
            known: e.known != 0,
            action: if e.monitor != 0 {
                "would_drop"
            } else if banned {
                "dropped_and_banned"
            } else {
                "dropped"
            }
            .to_string(),
        }
    }

    /// The agent's log line for it.
    pub fn log_line(&self) -> String {
        format!(
            "blocked call source={} extension={} number={} rule={} known={} action={}",
            self.source,
            if self.extension.is_empty() {
                "?"
            } else {
                &self.extension
            },
            self.number,
            self.rule,
            self.known,
            self.action
        )
    }
}

/// Where the record lives for a state file.
pub fn path_for(state_file: &Path) -> PathBuf {
    state_file.with_file_name("fraud.jsonl")
}

/// Appends calls, keeping the last [`KEEP`]; the file is root-only, like the state file.
pub fn append(path: &Path, calls: &[BlockedCall]) -> anyhow::Result<()> {
    if calls.is_empty() {
        return Ok(());
    }
    let mut lines: Vec<String> = match std::fs::read_to_string(path) {
        Ok(t) => t.lines().map(str::to_owned).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    for c in calls {
        lines.push(serde_json::to_string(c)?);
    }
    let start = lines.len().saturating_sub(KEEP);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("jsonl.tmp");
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        for l in &lines[start..] {
            writeln!(f, "{l}")?;
        }
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// The recorded calls, oldest first; lines that do not parse are skipped (and counted).
pub fn read(path: &Path) -> anyhow::Result<(Vec<BlockedCall>, usize)> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut bad = 0;
    let calls = text
        .lines()
        .filter_map(|l| match serde_json::from_str(l) {
            Ok(c) => Some(c),
            Err(_) => {
                bad += 1;
                None
            }
        })
        .collect();
    Ok((calls, bad))
}

/// A UTC time as `YYYY-MM-DD HH:MM:SS` (civil-from-days, no calendar crate).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_796_040_000), "2026-11-30 12:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
    }

    #[test]
    fn the_record_is_bounded_and_survives_bad_lines() {
        let dir = std::env::temp_dir().join(format!("sipfilter-fraud-{}", std::process::id()));
        let path = dir.join("fraud.jsonl");
        let call = |i: usize| BlockedCall {
            time: i as u64,
            source: "198.51.100.7".into(),
            extension: "201".into(),
            number: "+23276123456".into(),
            rule: "destination".into(),
            known: false,
            action: "dropped".into(),
        };
        let many: Vec<BlockedCall> = (0..KEEP + 5).map(call).collect();
        append(&path, &many).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| writeln!(f, "not json"))
            .unwrap();
        append(&path, &[call(9999)]).unwrap();
        let (calls, bad) = read(&path).unwrap();
        assert_eq!(calls.len(), KEEP - 1);
        assert_eq!(bad, 1);
        assert_eq!(calls.last().unwrap().time, 9999);
        assert_eq!(calls.first().unwrap().time, 7);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
