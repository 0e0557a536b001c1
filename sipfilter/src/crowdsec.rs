//! A client of CrowdSec's Local API (LAPI, v1 as crowdsec 1.4.6 serves it): pull decisions as
//! a bouncer (`/v1/decisions/stream`), push our bans as alerts as a machine
//! (`/v1/watchers/login`, `/v1/alerts`). Plain HTTP/1.1 over a TcpStream (the Local API listens
//! on loopback or a private address; no TLS, no HTTP crate), JSON with serde_json.
//!
//! What real servers send, and this reads: durations as Go duration strings with fractions
//! and signs (`3h59m58.86s`, `-96.38ms`), empty lists as `null`, a removal repeated on the
//! pulls of the next two seconds and on every startup pull.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, ToSocketAddrs as _},
    time::Duration,
};

use anyhow::{bail, Context as _};
use serde_json::Value;

/// Where the Local API is and who we are to it.
#[derive(Clone, PartialEq, Eq)]
pub struct Lapi {
    /// host:port of `http://host:port`.
    pub host: String,
    pub port: u16,
    pub bouncer_key: String,
    /// Machine credentials, for pushing alerts (None: pull only).
    pub machine: Option<(String, String)>,
    /// `scopes=` of the stream (ip, range).
    pub scopes: Vec<String>,
    /// `origins=` of the stream (empty: all).
    pub origins: Vec<String>,
}

impl std::fmt::Debug for Lapi {
    // The bouncer key and the machine password never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lapi(http://{}:{})", self.host, self.port)
    }
}

/// One decision as the stream lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub id: i64,
    pub origin: String,
    /// "ban", "captcha", …
    pub kind: String,
    /// "Ip" or "Range".
    pub scope: String,
    pub value: String,
    /// Seconds left (negative in `deleted`).
    pub duration_secs: f64,
    pub scenario: String,
}

/// One pull's answer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stream {
    pub new: Vec<Decision>,
    pub deleted: Vec<Decision>,
}

/// An alert carrying one ban decision (what a kernel ban becomes for the fleet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BanAlert {
    /// The address (or IPv6 prefix as a CIDR: scope Range).
    pub value: String,
    pub range: bool,
    /// The reason's name (`rate_register`, `scanner`, …): scenario `sipfilter/<reason>`.
    pub reason: String,
    pub duration_secs: u64,
}

/// Seconds of a Go duration string: `1h2m3.5s`, `-96.385391ms`, `300s`, `1m29.66s`, `0s`.
pub fn parse_go_duration(s: &str) -> Option<f64> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(0.0);
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    Some(if neg { -total } else { total })
}

fn decisions(v: &Value) -> anyhow::Result<Vec<Decision>> {
    let Some(list) = v.as_array() else {
        // `null`: none.
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(list.len());
    for d in list {
        let text = |k: &str| d[k].as_str().unwrap_or_default().to_string();
        let duration = d["duration"].as_str().context("a decision without a duration")?;
        out.push(Decision {
            id: d["id"].as_i64().unwrap_or(0),
            origin: text("origin"),
            kind: text("type"),
            scope: text("scope"),
            value: text("value"),
            duration_secs: parse_go_duration(duration).with_context(|| format!("bad duration {duration:?}"))?,
            scenario: text("scenario"),
        });
    }
    Ok(out)
}

/// Parses a stream answer.
pub fn parse_stream(body: &str) -> anyhow::Result<Stream> {
    let v: Value = serde_json::from_str(body).context("the stream's answer is not JSON")?;
    Ok(Stream {
        new: decisions(&v["new"])?,
        deleted: decisions(&v["deleted"])?,
    })
}

/// The alerts body for some bans (every field 1.4.6 requires, or it answers 500).
pub fn alerts_body(bans: &[BanAlert], now_rfc3339: &str) -> Value {
    let alerts: Vec<Value> = bans
        .iter()
        .map(|b| {
            let scenario = format!("sipfilter/{}", b.reason);
            let scope = if b.range { "Range" } else { "Ip" };
            serde_json::json!({
                "scenario": scenario,
                "scenario_hash": "",
                "scenario_version": "",
                "message": format!("sipfilter: {} banned for {}s ({})", b.value, b.duration_secs, b.reason),
                "events_count": 1,
                "start_at": now_rfc3339,
                "stop_at": now_rfc3339,
                "capacity": 0,
                "leakspeed": "0",
                "simulated": false,
                "events": [],
                "source": {"scope": scope, "value": b.value},
                "decisions": [{
                    "origin": "sipfilter",
                    "type": "ban",
                    "scope": scope,
                    "value": b.value,
                    "duration": format!("{}s", b.duration_secs),
                    "scenario": scenario,
                }],
            })
        })
        .collect();
    Value::Array(alerts)
}

/// The current UTC time as RFC 3339 (`2026-11-30T14:05:11Z`).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    crate::fraud_file::utc(secs).replacen(' ', "T", 1) + "Z"
}

impl Lapi {
    /// Parses `http://host:port` (a path, https or no port is refused).
    pub fn parse_url(url: &str) -> Result<(String, u16), String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("'{url}' is not an http:// URL (the Local API on a private address)"))?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("'{url}' has no port (e.g. http://127.0.0.1:8080)"))?;
        let port: u16 = port.parse().map_err(|_| format!("'{url}': bad port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() || host.contains('/') {
            return Err(format!("'{url}': bad host"));
        }
        Ok((host, port))
    }

    fn addr(&self) -> anyhow::Result<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .with_context(|| format!("{} does not resolve", self.host))
    }

    /// One HTTP/1.1 request (Connection: close); (status, body).
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        let addr = self.addr()?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .with_context(|| format!("cannot reach the Local API at {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: sipfilter/{}\r\nConnection: close\r\n",
            self.host,
            self.port,
            env!("CARGO_PKG_VERSION")
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        if let Some(b) = body {
            req.push_str(b);
        }
        s.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).context("reading the Local API's answer")?;
        let text = String::from_utf8_lossy(&raw);
        let (head, rest) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no HTTP status")?;
        let chunked = head.lines().any(|l| {
            l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked")
        });
        let body = if chunked { dechunk(rest)? } else { rest.to_string() };
        Ok((status, body))
    }

    /// A bouncer pull (`startup`: everything active, not only what changed).
    pub fn pull(&self, startup: bool) -> anyhow::Result<Stream> {
        let mut path = format!("/v1/decisions/stream?startup={startup}");
        if !self.scopes.is_empty() {
            path.push_str(&format!("&scopes={}", self.scopes.join(",")));
        }
        if !self.origins.is_empty() {
            path.push_str(&format!("&origins={}", self.origins.join(",")));
        }
        let (status, body) = self.request("GET", &path, &[("X-Api-Key", &self.bouncer_key)], None)?;
        if status != 200 {
            bail!("the Local API answered {status} to the bouncer: {}", body.trim());
        }
        parse_stream(&body)
    }

    /// A machine login: the token (valid an hour).
    pub fn login(&self) -> anyhow::Result<String> {
        let (id, password) = self.machine.as_ref().context("no machine credentials")?;
        let body = serde_json::json!({"machine_id": id, "password": password, "scenarios": []}).to_string();
        let (status, answer) = self.request("POST", "/v1/watchers/login", &[], Some(&body))?;
        if status != 200 {
            bail!("the Local API refused the machine login ({status}): {}", answer.trim());
        }
        let v: Value = serde_json::from_str(&answer)?;
        Ok(v["token"].as_str().context("no token in the login answer")?.to_string())
    }

    /// Pushes alerts with `token`; Ok(false) when the token was refused (log in again).
    pub fn push(&self, token: &str, bans: &[BanAlert]) -> anyhow::Result<bool> {
        let body = alerts_body(bans, &now_rfc3339()).to_string();
        let auth = format!("Bearer {token}");
        let (status, answer) = self.request("POST", "/v1/alerts", &[("Authorization", &auth)], Some(&body))?;
        match status {
            200 | 201 => Ok(true),
            401 => Ok(false),
            _ => bail!("the Local API refused the alerts ({status}): {}", answer.trim()),
        }
    }
}

/// The body of a chunked answer.
fn dechunk(mut s: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").context("a bad chunk")?;
        let size =
            usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).context("a bad chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).context("a short chunk")?);
        s = rest.get(size + 2..).unwrap_or("");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_as_crowdsec_sends_them() {
        assert_eq!(parse_go_duration("3h59m58.5s"), Some(3.0 * 3600.0 + 59.0 * 60.0 + 58.5));
        assert!((parse_go_duration("-96.385391ms").unwrap() + 0.096385391).abs() < 1e-12);
        assert_eq!(parse_go_duration("1m29.666195832s").map(|s| s.round()), Some(90.0));
        assert_eq!(parse_go_duration("300s"), Some(300.0));
        assert_eq!(parse_go_duration("0s"), Some(0.0));
        assert_eq!(parse_go_duration("0"), Some(0.0));
        assert_eq!(parse_go_duration("1.5µs"), Some(1.5e-6));
        assert_eq!(parse_go_duration("300"), None);
        assert_eq!(parse_go_duration("5x"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn streams_with_nulls_deletions_and_other_types() {
        let s = parse_stream(r#"{"deleted":null,"new":null}"#).unwrap();
        assert_eq!(s, Stream::default());
        let s = parse_stream(r#"{"deleted":[{"duration":"-96.385391ms","id":1,"origin":"cscli","scenario":"test","scope":"Ip","type":"ban","value":"203.0.113.7"}],"new":[{"duration":"1m29.666195832s","id":3,"origin":"cscli","scenario":"again","scope":"Range","type":"captcha","value":"192.0.2.0/24"}]}"#).unwrap();
        assert_eq!(s.deleted[0].value, "203.0.113.7");
        assert!(s.deleted[0].duration_secs < 0.0);
        assert_eq!((s.new[0].scope.as_str(), s.new[0].kind.as_str()), ("Range", "captcha"));
        assert!(parse_stream("not json").is_err());
        assert!(
            parse_stream(r#"{"new":[{"id":1}]}"#).is_err(),
            "a decision without a duration"
        );
    }

    #[test]
    fn urls_alerts_and_chunks() {
        assert_eq!(
            Lapi::parse_url("http://127.0.0.1:8080/"),
            Ok(("127.0.0.1".into(), 8080))
        );
        assert!(Lapi::parse_url("https://x:1").is_err());
        assert!(Lapi::parse_url("http://x").is_err());
        let body = alerts_body(
            &[BanAlert {
                value: "203.0.113.9".into(),
                range: false,
                reason: "rate_register".into(),
                duration_secs: 300,
            }],
            "2026-11-30T14:05:11Z",
        );
        let a = &body[0];
        assert_eq!(a["leakspeed"], "0");
        assert_eq!(a["events"], serde_json::json!([]));
        assert_eq!(a["decisions"][0]["scope"], "Ip");
        assert_eq!(a["decisions"][0]["duration"], "300s");
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").unwrap(),
            "hello world"
        );
        assert!(now_rfc3339().ends_with('Z') && now_rfc3339().contains('T'));
    }
}
