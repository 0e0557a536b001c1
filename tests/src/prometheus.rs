//! A real Prometheus (Debian's `/usr/bin/prometheus`) for tests: its own configuration (one job,
//! `sipfilter`, scraping one target every second), its own TSDB folder and its own listen
//! address, inside a network namespace; stopped and its folder removed when dropped, also when
//! a test fails. Queries go through its HTTP API (`/api/v1/query`, `/api/v1/query_range`) with a
//! hand-written HTTP/1.0 GET from inside the namespace.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::netns::{Background, Netns, ScratchDir};

/// Debian's Prometheus (package `prometheus`; `cargo xtask setup` installs it).
pub const BINARY: &str = "/usr/bin/prometheus";
/// The scrape (and rule evaluation) interval. Grafana's `$__rate_interval` for this data is
/// 4 × this.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);
/// The job name the scrape configuration gives the target (what the contrib rules expect).
pub const JOB: &str = "sipfilter";

/// One element of an instant vector (or a scalar result, with no labels).
#[derive(Clone, Debug)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One series of a range query: (Unix time in seconds, value) points.
#[derive(Clone, Debug)]
pub struct RangeSeries {
    pub labels: BTreeMap<String, String>,
    pub points: Vec<(f64, f64)>,
}

/// A running Prometheus in a namespace. Field order is drop order: the process stops before
/// its folder (configuration, TSDB, log) is removed.
pub struct Prometheus<'a> {
    process: Background,
    ns: &'a Netns,
    listen: SocketAddr,
    dir: ScratchDir,
}

impl<'a> Prometheus<'a> {
    /// Starts Prometheus in `ns`, listening on `listen` (e.g. "127.0.0.1:9090", any free port of
    /// the namespace), scraping `target` (ADDR:PORT, `/metrics`) every [`SCRAPE_INTERVAL`] as
    /// job [`JOB`] and evaluating `rule_files` as often; returns once it answers `/-/ready`.
    pub fn start(ns: &'a Netns, listen: &str, target: &str, rule_files: &[&Path]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            Path::new(BINARY).exists(),
            "{BINARY} is not installed (Debian's prometheus package; cargo xtask setup installs it)"
        );
        let listen: SocketAddr = listen.parse().with_context(|| format!("{listen} is not ADDR:PORT"))?;
        let dir = ScratchDir::new("prometheus")?;
        let mut rules = Vec::new();
        for f in rule_files {
            let full = std::fs::canonicalize(f).with_context(|| format!("rule file {}", f.display()))?;
            rules.push(full.display().to_string());
        }
        let every = format!("{}s", SCRAPE_INTERVAL.as_secs());
        // JSON is YAML: no quoting to get wrong.
        let config = serde_json::json!({
            "global": {
                "scrape_interval": every,
                "scrape_timeout": every,
                "evaluation_interval": every,
            },
            "rule_files": rules,
            "scrape_configs": [{
                "job_name": JOB,
                "static_configs": [{ "targets": [target] }],
            }],
        });
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, serde_json::to_string_pretty(&config)?)
            .with_context(|| format!("cannot write {}", config_path.display()))?;
        let config_arg = format!("--config.file={}", config_path.display());
        let data_arg = format!("--storage.tsdb.path={}", dir.path().join("data").display());
        let listen_arg = format!("--web.listen-address={listen}");
        let mut process = ns.spawn(
            "prometheus",
            &[
                BINARY,
                &config_arg,
                &data_arg,
                &listen_arg,
                "--storage.tsdb.retention.time=1d",
            ],
            dir.path(),
        )?;
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = process.exited() {
                bail!(
                    "prometheus exited ({status}) before it was ready:\n{}",
                    process.output()
                );
            }
            if matches!(http_get(ns, listen, "/-/ready"), Ok((200, _))) {
                break;
            }
            if Instant::now() > end {
                bail!("prometheus was not ready within 30 s:\n{}", process.output());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Prometheus {
            process,
            ns,
            listen,
            dir,
        })
    }

    /// Where it listens (inside its namespace).
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// Its folder: `prometheus.yml`, `data/`, and its log `prometheus.out`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.process.output()
    }

    /// An instant query evaluated now.
    pub fn query(&self, expr: &str) -> anyhow::Result<Vec<Sample>> {
        let data = self.api("/api/v1/query", &[("query", expr.to_string())])?;
        parse_instant(&data).with_context(|| format!("the result of {expr}"))
    }

    /// An instant query evaluated at `time` (Unix seconds).
    pub fn query_at(&self, expr: &str, time: f64) -> anyhow::Result<Vec<Sample>> {
        let data = self.api(
            "/api/v1/query",
            &[("query", expr.to_string()), ("time", format!("{time:.3}"))],
        )?;
        parse_instant(&data).with_context(|| format!("the result of {expr}"))
    }

    /// A range query from `start` to `end` (Unix seconds) every `step`.
    pub fn query_range(&self, expr: &str, start: f64, end: f64, step: Duration) -> anyhow::Result<Vec<RangeSeries>> {
        let data = self.api(
            "/api/v1/query_range",
            &[
                ("query", expr.to_string()),
                ("start", format!("{start:.3}")),
                ("end", format!("{end:.3}")),
                ("step", format!("{}", step.as_secs_f64())),
            ],
        )?;
        anyhow::ensure!(
            data["resultType"].as_str() == Some("matrix"),
            "a range query of {expr} gave {}",
            data["resultType"]
        );
        let mut out = Vec::new();
        for s in data["result"].as_array().context("no result array")? {
            let mut points = Vec::new();
            for p in s["values"].as_array().context("no values array")? {
                points.push(point(p)?);
            }
            out.push(RangeSeries {
                labels: labels(&s["metric"]),
                points,
            });
        }
        Ok(out)
    }

    /// Polls an instant query until it returns at least one sample (write the condition into
    /// the query: `x > 0`), and returns those samples.
    pub fn wait_for(&self, expr: &str, timeout: Duration) -> anyhow::Result<Vec<Sample>> {
        let end = Instant::now() + timeout;
        loop {
            let samples = self.query(expr)?;
            if !samples.is_empty() {
                return Ok(samples);
            }
            if Instant::now() > end {
                bail!(
                    "Prometheus had no result for {expr} within {timeout:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `GET path?params` on the HTTP API; the `data` of a `"status": "success"` answer.
    fn api(&self, path: &str, params: &[(&str, String)]) -> anyhow::Result<Value> {
        let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", url_encode(v))).collect();
        let target = format!("{path}?{}", query.join("&"));
        let (status, body) = http_get(self.ns, self.listen, &target)?;
        let v: Value = serde_json::from_str(&body)
            .with_context(|| format!("Prometheus answered {status} to {target} with: {body}"))?;
        if v["status"].as_str() != Some("success") {
            bail!(
                "Prometheus refused {params:?} ({status}): {} {}",
                v["errorType"].as_str().unwrap_or(""),
                v["error"].as_str().unwrap_or("")
            );
        }
        Ok(v["data"].clone())
    }
}

/// An instant query's `data`: a vector, or a scalar (one sample without labels).
fn parse_instant(data: &Value) -> anyhow::Result<Vec<Sample>> {
    match data["resultType"].as_str() {
        Some("vector") => {
            let mut out = Vec::new();
            for s in data["result"].as_array().context("no result array")? {
                out.push(Sample {
                    labels: labels(&s["metric"]),
                    value: point(&s["value"])?.1,
                });
            }
            Ok(out)
        }
        Some("scalar") => Ok(vec![Sample {
            labels: BTreeMap::new(),
            value: point(&data["result"])?.1,
        }]),
        other => bail!("unexpected result type {other:?}"),
    }
}

fn labels(metric: &Value) -> BTreeMap<String, String> {
    metric
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// `[1712345678.9, "1.5"]` (values are strings: "NaN" and "+Inf" included).
fn point(p: &Value) -> anyhow::Result<(f64, f64)> {
    let t = p[0].as_f64().with_context(|| format!("no timestamp in {p}"))?;
    let v = p[1].as_str().with_context(|| format!("no value in {p}"))?;
    let v: f64 = v.parse().with_context(|| format!("bad value {v:?}"))?;
    Ok((t, v))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `GET target` with HTTP/1.0 (the server closes the connection after its answer: no chunking,
/// no keep-alive) from inside `ns`. Returns the status code and the body.
pub fn http_get(ns: &Netns, addr: SocketAddr, target: &str) -> anyhow::Result<(u16, String)> {
    let mut s = {
        let _inside = ns.enter()?;
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("cannot connect to {addr}"))?
    };
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {target} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let response = String::from_utf8_lossy(&raw);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP header end in the answer to {target}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line: {}", head.lines().next().unwrap_or("")))?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_encoding_keeps_promql_intact() {
        assert_eq!(
            url_encode(r#"sum by (a) (rate(x{job=~".*"}[4s]))"#),
            "sum%20by%20%28a%29%20%28rate%28x%7Bjob%3D~%22.%2A%22%7D%5B4s%5D%29%29"
        );
        assert_eq!(url_encode("a+b&c"), "a%2Bb%26c");
    }

    #[test]
    fn results_parse_with_nan_and_infinities() {
        let data: Value = serde_json::from_str(
            r#"{"resultType":"vector","result":[
                {"metric":{"job":"sipfilter"},"value":[1712345678.5,"NaN"]},
                {"metric":{},"value":[1712345678.5,"+Inf"]},
                {"metric":{"kind":"success"},"value":[1712345678.5,"2.5"]}]}"#,
        )
        .unwrap();
        let s = parse_instant(&data).unwrap();
        assert_eq!(s.len(), 3);
        assert!(s[0].value.is_nan());
        assert_eq!(s[0].labels["job"], "sipfilter");
        assert_eq!(s[1].value, f64::INFINITY);
        assert_eq!(s[2].value, 2.5);
        let scalar: Value = serde_json::from_str(r#"{"resultType":"scalar","result":[1.0,"4"]}"#).unwrap();
        assert_eq!(parse_instant(&scalar).unwrap()[0].value, 4.0);
    }
}
