//! Blocklist files for `sipfilter import` (and the fuzzer): plain lines of addresses or
//! CIDRs with `#` or `;` comments, or APIBAN's JSON (`{"ipaddress": [...], "ID": ...}`), told
//! apart by the first non-blank character.

use anyhow::Context as _;

use crate::Cidr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Plain,
    Apiban,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Plain => "plain",
            Format::Apiban => "apiban",
        }
    }
    /// What a location number means in this format.
    pub fn loc_name(self) -> &'static str {
        match self {
            Format::Plain => "line",
            Format::Apiban => "index",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Rejected {
    /// 1-based line number (plain) or 0-based array index (APIBAN).
    pub loc: usize,
    pub text: String,
    pub error: String,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub format: Format,
    pub entries: Vec<(usize, Cidr)>,
    pub rejected: Vec<Rejected>,
}

/// Parses a blocklist in either format. Only a broken JSON document is an error; bad
/// entries are collected.
pub fn parse(text: &str) -> anyhow::Result<Parsed> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_start().starts_with('{') {
        parse_apiban(text)
    } else {
        Ok(parse_plain(text))
    }
}

fn parse_plain(text: &str) -> Parsed {
    let mut parsed = Parsed {
        format: Format::Plain,
        entries: Vec::new(),
        rejected: Vec::new(),
    };
    for (i, line) in text.lines().enumerate() {
        let content = line.split(['#', ';']).next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        let loc = i + 1;
        let mut fields = content.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if fields.next().is_some() {
            parsed.rejected.push(Rejected {
                loc,
                text: content.into(),
                error: format!("'{content}' has more than one field"),
            });
            continue;
        }
        match first.parse::<Cidr>() {
            Ok(c) => parsed.entries.push((loc, c)),
            Err(e) => parsed.rejected.push(Rejected {
                loc,
                text: first.into(),
                error: e.to_string(),
            }),
        }
    }
    parsed
}

fn parse_apiban(text: &str) -> anyhow::Result<Parsed> {
    let doc: serde_json::Value =
        serde_json::from_str(text).context("the file starts with '{' but is not valid JSON")?;
    let list = doc
        .get("ipaddress")
        .context("the JSON has no \"ipaddress\" array (APIBAN format: {\"ipaddress\": [...], \"ID\": ...})")?
        .as_array()
        .context("\"ipaddress\" is not an array")?;
    let mut parsed = Parsed {
        format: Format::Apiban,
        entries: Vec::new(),
        rejected: Vec::new(),
    };
    for (i, v) in list.iter().enumerate() {
        match v.as_str() {
            // APIBAN's answer when there is nothing new since the given ID.
            Some("no new bans") => {}
            Some(s) => match s.parse::<Cidr>() {
                Ok(c) => parsed.entries.push((i, c)),
                Err(e) => parsed.rejected.push(Rejected {
                    loc: i,
                    text: s.into(),
                    error: e.to_string(),
                }),
            },
            None => parsed.rejected.push(Rejected {
                loc: i,
                text: v.to_string(),
                error: format!("{v} is not a string"),
            }),
        }
    }
    Ok(parsed)
}
