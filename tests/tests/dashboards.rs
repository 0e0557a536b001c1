//! The Grafana dashboard and the Prometheus alert rules in `contrib/`: the dashboard follows
//! Grafana's conventions (checked in its JSON), the rules pass promtool and their unit tests,
//! and, the proof, every panel of the dashboard shows data while the real agent cuts off a real
//! attack and a real Prometheus scrapes it; the panels over the attack are drawn to
//! `target/dashboard/attack.png`.
//!
//! The proof needs root (namespaces, XDP), Debian's prometheus (`/usr/bin/prometheus`,
//! `promtool`) and the binary `target/debug/sipfilter` (`cargo xtask test` builds it).

use std::{
    collections::{BTreeMap, HashSet},
    net::{SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use serde_json::Value;
use sipfilter_tests::{
    agent::AgentProcess,
    chart::{self, Panel, Series},
    harness::PrivateBpffs,
    netns::{veth_pair, Netns, ScratchDir},
    packet::sip_request,
    prometheus::{Prometheus, SCRAPE_INTERVAL},
};

const UID: &str = "sipfilter-overview";
/// What every panel and target must name as its data source: the `datasource` variable.
const DATASOURCE_UID: &str = "${datasource}";
const JOB_MATCHER: &str = r#"job=~"$job""#;
const INSTANCE_MATCHER: &str = r#"instance=~"$instance""#;

fn contrib(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib").join(path)
}

fn dashboard() -> anyhow::Result<Value> {
    let path = contrib("grafana/sipfilter.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// Every panel that shows data, in the dashboard's order: rows left out, the panels of
/// collapsed rows (kept inside the row) included.
fn data_panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().map(Vec::as_slice).unwrap_or_default() {
        if p["type"] == "row" {
            out.extend(p["panels"].as_array().map(Vec::as_slice).unwrap_or_default());
        } else {
            out.push(p);
        }
    }
    out
}

fn title(p: &Value) -> String {
    p["title"].as_str().unwrap_or("(untitled)").to_string()
}

/// `{"type": "prometheus", "uid": "${datasource}"}`
fn uses_the_datasource_variable(v: &Value) -> bool {
    v["type"] == "prometheus" && v["uid"] == DATASOURCE_UID
}

/// What is wrong with a panel's PromQL: every selector filters on the job and instance
/// variables, every metric has a selector, every range is `[$__rate_interval]`.
fn lint_expr(expr: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                // A string outside a selector: skip it (escapes included).
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'{' => {
                let Some(len) = expr[i..].find('}') else {
                    problems.push("unclosed {".to_string());
                    break;
                };
                let inside = &expr[i + 1..i + len];
                for m in [JOB_MATCHER, INSTANCE_MATCHER] {
                    if !inside.contains(m) {
                        problems.push(format!("selector {{{inside}}} lacks {m}"));
                    }
                }
                i += len + 1;
            }
            b'[' => {
                let Some(len) = expr[i..].find(']') else {
                    problems.push("unclosed [".to_string());
                    break;
                };
                let inside = &expr[i + 1..i + len];
                if inside != "$__rate_interval" {
                    problems.push(format!("range [{inside}] instead of [$__rate_interval]"));
                }
                i += len + 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                    i += 1;
                }
                let word = &expr[start..i];
                if (word.starts_with("sipfilter_") || word == "up") && !expr[i..].trim_start().starts_with('{') {
                    problems.push(format!("{word} without a label selector"));
                }
            }
            _ => i += 1,
        }
    }
    for f in ["rate(", "increase(", "_over_time("] {
        if expr.contains(f) && !expr.contains("[$__rate_interval]") {
            problems.push(format!("{f} without [$__rate_interval]"));
        }
    }
    problems
}

#[test]
fn the_lint_finds_what_it_should() {
    let ok = r#"sum by (job, instance) (rate(sipfilter_program_run_seconds_total{job=~"$job", instance=~"$instance"}[$__rate_interval])) / sum by (job, instance) (rate(sipfilter_program_runs_total{job=~"$job", instance=~"$instance"}[$__rate_interval]))"#;
    assert_eq!(lint_expr(ok), Vec::<String>::new());
    assert_eq!(
        lint_expr(r#"up{job=~"$job", instance=~"$instance"}"#),
        Vec::<String>::new()
    );
    assert_eq!(
        lint_expr(r#"rate(sipfilter_packets_total{job=~"$job", instance=~"$instance"}[5m])"#).len(),
        2
    );
    assert_eq!(lint_expr(r#"sum(sipfilter_active_bans{job=~"$job"})"#).len(), 1);
    assert_eq!(lint_expr("sum(sipfilter_active_bans)").len(), 1);
    assert_eq!(lint_expr("up").len(), 1);
}

#[test]
fn the_dashboard_follows_grafanas_conventions() -> anyhow::Result<()> {
    let d = dashboard()?;
    let mut problems: Vec<String> = Vec::new();
    let mut problem = |what: String| problems.push(what);

    if d["uid"] != UID {
        problem(format!("uid is {}, not the stable {UID:?}", d["uid"]));
    }
    for key in ["__inputs", "__requires"] {
        if d.get(key).is_some() {
            problem(format!("{key}: the export-for-sharing style breaks file provisioning"));
        }
    }
    if d["title"].as_str().is_none_or(str::is_empty) {
        problem("no title".into());
    }

    // Variables: one data source, job and instance (multi, All).
    let vars = d["templating"]["list"].as_array().cloned().unwrap_or_default();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).cloned();
    match var("datasource") {
        Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
        other => problem(format!(
            "no `datasource` variable of type datasource for prometheus: {other:?}"
        )),
    }
    let datasource_vars = vars.iter().filter(|v| v["type"] == "datasource").count();
    if datasource_vars != 1 {
        problem(format!("{datasource_vars} data source variables, not one"));
    }
    for name in ["job", "instance"] {
        match var(name) {
            Some(v) => {
                if v["type"] != "query" {
                    problem(format!("variable {name} is {}, not a query variable", v["type"]));
                }
                if v["multi"] != true || v["includeAll"] != true {
                    problem(format!("variable {name} must be multi and include All"));
                }
                if !uses_the_datasource_variable(&v["datasource"]) {
                    problem(format!(
                        "variable {name} does not query ${{datasource}}: {}",
                        v["datasource"]
                    ));
                }
            }
            None => problem(format!("no `{name}` variable")),
        }
    }

    // Panels.
    let panels = data_panels(&d);
    if panels.is_empty() {
        problem("no panels".into());
    }
    let mut ids = HashSet::new();
    for p in &panels {
        let t = title(p);
        if !ids.insert(p["id"].as_i64()) {
            problem(format!("{t}: id {} is not unique", p["id"]));
        }
        if !uses_the_datasource_variable(&p["datasource"]) {
            problem(format!("{t}: datasource is {}, not ${{datasource}}", p["datasource"]));
        }
        if p["description"].as_str().is_none_or(|s| s.trim().is_empty()) {
            problem(format!("{t}: no description"));
        }
        if p["fieldConfig"]["defaults"]["unit"].as_str().is_none_or(str::is_empty) {
            problem(format!("{t}: no unit (fieldConfig.defaults.unit)"));
        }
        if p["gridPos"]["w"].as_u64().is_none() || p["gridPos"]["h"].as_u64().is_none() {
            problem(format!("{t}: no gridPos"));
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problem(format!("{t}: no query"));
        }
        for target in &targets {
            let r = target["refId"].as_str().unwrap_or("?");
            if target.get("datasource").is_some() && !uses_the_datasource_variable(&target["datasource"]) {
                problem(format!("{t} ({r}): target datasource is {}", target["datasource"]));
            }
            match target["expr"].as_str() {
                Some(expr) if !expr.trim().is_empty() => {
                    for what in lint_expr(expr) {
                        problem(format!("{t} ({r}): {what}: {expr}"));
                    }
                }
                _ => problem(format!("{t} ({r}): no expr")),
            }
        }
    }
    // No data source other than the variable (and Grafana's own, for annotations).
    let text = serde_json::to_string(&d)?;
    for (i, _) in text.match_indices("\"uid\":") {
        let rest = &text[i + 6..];
        let value = rest.split('"').nth(1).unwrap_or("");
        if ![UID, DATASOURCE_UID, "-- Grafana --"].contains(&value) {
            problem(format!("a hard-coded uid: {value}"));
        }
    }
    assert!(
        problems.is_empty(),
        "the dashboard breaks Grafana's conventions:\n{}",
        problems.join("\n")
    );
    Ok(())
}

fn promtool(args: &[&str], file: &Path) -> anyhow::Result<String> {
    let out = Command::new("promtool")
        .args(args)
        .arg(file)
        .output()
        .context("cannot run promtool (Debian's prometheus package)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} {}:\n{text}", file.display());
    Ok(text)
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() -> anyhow::Result<()> {
    let rules = contrib("prometheus/sipfilter-rules.yml");
    let tests = contrib("prometheus/sipfilter-rules.test.yml");
    let checked = promtool(&["check", "rules"], &rules)?;
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules"], &tests)?;
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Each alert: a severity, a summary and a description, and a unit test that names it.
    let text = std::fs::read_to_string(&rules)?;
    let test_text = std::fs::read_to_string(&tests)?;
    let blocks: Vec<&str> = text.split("- alert: ").skip(1).collect();
    assert!(blocks.len() >= 6, "{} alerts", blocks.len());
    for block in blocks {
        let name = block.split_whitespace().next().unwrap_or("");
        for key in ["severity:", "summary:", "description:"] {
            assert!(block.contains(key), "alert {name} has no {key}");
        }
        assert!(
            test_text.contains(&format!("alertname: {name}")),
            "alert {name} has no unit test"
        );
    }
    for wanted in [
        "SipfilterAgentDown",
        "SipfilterExtensionCracked",
        "SipfilterBanTableFull",
        "SipfilterBanEventsLost",
        "SipfilterAttackInProgress",
        "SipfilterFraudCallsBlocked",
    ] {
        assert!(text.contains(&format!("- alert: {wanted}")), "no alert {wanted}");
    }
    Ok(())
}

// The proof: the dashboard during an attack.

/// The PBX's namespace (the agent, Prometheus) and the LAN's (three attackers), joined by a veth
/// pair whose PBX end the agent watches. Field order is drop order: namespaces, then the bpffs,
/// then the folder. The agent and Prometheus belong to the test and are declared after the
/// lab, so they stop first.
struct Lab {
    pbx: Netns,
    lan: Netns,
    pbx_if: String,
    net: String,
    bpffs: PrivateBpffs,
    dir: ScratchDir,
}

impl Lab {
    fn new(net: &str) -> anyhow::Result<Lab> {
        let pbx = Netns::new("pbx")?;
        let lan = Netns::new("lan")?;
        let (_lan_if, pbx_if) = veth_pair(
            &lan,
            &[&format!("{net}.2/24"), &format!("{net}.3/24"), &format!("{net}.4/24")],
            &pbx,
            &[&format!("{net}.1/24")],
        )?;
        Ok(Lab {
            pbx,
            lan,
            pbx_if,
            net: net.to_string(),
            bpffs: PrivateBpffs::new()?,
            dir: ScratchDir::new("dashboards")?,
        })
    }

    fn v4(&self, last: u8) -> String {
        format!("{}.{last}", self.net)
    }

    fn sip(&self, last: u8) -> SocketAddr {
        format!("{}:5060", self.v4(last))
            .parse()
            .expect("an IPv4 address and port")
    }

    /// `sipfilter run` on the PBX end with the default configuration (metrics on the
    /// namespace's 127.0.0.1:9460); returns once it is ready.
    fn agent(&self) -> anyhow::Result<AgentProcess> {
        let state = self.dir.path().join("state.json").display().to_string();
        AgentProcess::start(
            &self.pbx,
            &self.bpffs.pin_dir(),
            self.dir.path(),
            "agent",
            &["--iface", &self.pbx_if, "--state-file", &state, "--detach-on-exit"],
        )
    }

    /// A UDP socket on port 5060 of a LAN address.
    fn sender(&self, last: u8) -> anyhow::Result<UdpSocket> {
        let _inside = self.lan.enter()?;
        Ok(UdpSocket::bind(self.sip(last))?)
    }
}

/// A SIP request's text as the packet builder makes it, with another User-Agent.
fn with_user_agent(request: Vec<u8>, user_agent: &str) -> Vec<u8> {
    String::from_utf8(request)
        .expect("the packet builder writes text")
        .replace("Yealink SIP-T46S 66.86.0.15", user_agent)
        .into_bytes()
}

/// An INVITE from extension 201 to `number` (as in tests/tests/calls.rs).
fn invite(src: &str, number: &str) -> Vec<u8> {
    format!(
        "INVITE sip:{number}@pbx.example SIP/2.0\r\n\
         Via: SIP/2.0/UDP {src}:5060;branch=z9hG4bK-fraud-1\r\n\
         From: <sip:201@pbx.example>;tag=1\r\n\
         To: <sip:{number}@pbx.example>\r\n\
         Call-ID: fraud-1@{src}\r\n\
         CSeq: 1 INVITE\r\n\
         User-Agent: Yealink SIP-T46S 66.86.0.15\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Sends `n` copies, paced so the veth ring never overflows (as tests/tests/agent.rs does).
fn send(socket: &UdpSocket, to: SocketAddr, msg: &[u8], n: usize) -> anyhow::Result<()> {
    for i in 0..n {
        if i % 20 == 19 {
            std::thread::sleep(Duration::from_millis(1));
        }
        socket.send_to(msg, to)?;
    }
    Ok(())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64()
}

/// A panel's query, as Grafana would send it with every variable on "All".
struct PanelQuery {
    panel: String,
    ref_id: String,
    expr: String,
    legend: String,
}

/// Grafana's substitutions: `$job`/`$instance` on "All" (allValue `.*`), `$__rate_interval`
/// (max($__interval + scrape interval, 4 × scrape interval): 4 × here, for a short
/// `$__interval`), `$__interval` (the scrape interval at this zoom), `$__range` (an hour).
fn expand(expr: &str, rate_interval: &str) -> String {
    let interval = format!("{}s", SCRAPE_INTERVAL.as_secs());
    let interval = interval.as_str();
    let mut e = expr.to_string();
    for (from, to) in [
        ("${job}", ".*"),
        ("$job", ".*"),
        ("${instance}", ".*"),
        ("$instance", ".*"),
        ("${__rate_interval}", rate_interval),
        ("$__rate_interval", rate_interval),
        ("${__interval}", interval),
        ("$__interval", interval),
        ("${__range}", "1h"),
        ("$__range", "1h"),
    ] {
        e = e.replace(from, to);
    }
    assert!(!e.contains('$'), "a Grafana variable the test does not know in {expr}");
    e
}

fn panel_queries(d: &Value, rate_interval: &str) -> Vec<PanelQuery> {
    let mut out = Vec::new();
    for p in data_panels(d) {
        for t in p["targets"].as_array().map(Vec::as_slice).unwrap_or_default() {
            out.push(PanelQuery {
                panel: title(p),
                ref_id: t["refId"].as_str().unwrap_or("?").to_string(),
                expr: expand(t["expr"].as_str().unwrap_or(""), rate_interval),
                legend: t["legendFormat"].as_str().unwrap_or("").to_string(),
            });
        }
    }
    out
}

/// A series' name as Grafana's legend shows it: `{{label}}` replaced by the label's value
/// (no legend format: the labels).
fn legend(format: &str, labels: &BTreeMap<String, String>) -> String {
    if format.is_empty() || format == "__auto" {
        let all: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        return format!("{{{}}}", all.join(", "));
    }
    let mut out = format.to_string();
    for (k, v) in labels {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
        out = out.replace(&format!("{{{{ {k} }}}}"), v);
    }
    out
}

/// A Grafana unit id as a chart says it, and the factor that brings values to it (Grafana
/// scales seconds and fractions when it draws them; a chart's axis labels do not).
fn chart_unit(unit: &str) -> (String, f64) {
    let (label, factor) = match unit {
        "pps" => ("packets/s", 1.0),
        "reqps" => ("requests/s", 1.0),
        "ops" => ("per second", 1.0),
        "opm" => ("per minute", 1.0),
        "s" => ("ns", 1e9),
        "percentunit" => ("%", 100.0),
        "short" | "none" => ("", 1.0),
        other => (other, 1.0),
    };
    (label.to_string(), factor)
}

/// `target/` (the test executable lives in `target/<profile>/deps/`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("target folder")
        .to_path_buf()
}

#[test]
fn every_panel_shows_data_while_the_agent_cuts_off_an_attack() -> anyhow::Result<()> {
    let d = dashboard()?;
    let lab = Lab::new("10.219.0")?;
    let mut agent = lab.agent()?;
    let rules = contrib("prometheus/sipfilter-rules.yml");
    let prom = Prometheus::start(&lab.pbx, "127.0.0.1:9090", "127.0.0.1:9460", &[rules.as_path()])?;
    prom.wait_for(r#"up{job="sipfilter"} == 1"#, Duration::from_secs(15))?;
    let start = unix_now();
    // A few quiet scrapes first: the charts show the attack begin.
    std::thread::sleep(3 * SCRAPE_INTERVAL);

    let pbx = lab.sip(1);
    let (flooder, scanner, fraudster) = (lab.v4(2), lab.v4(3), lab.v4(4));
    // A REGISTER flood from one address over 3 s: the unknown burst passes, the rest is
    // throttled until the flood bucket empties and the address is banned.
    let attack = unix_now();
    let flood = lab.sender(2)?;
    let register = sip_request("REGISTER", "1000");
    for _ in 0..3 {
        send(&flood, pbx, &register, 100)?;
        std::thread::sleep(Duration::from_secs(1));
    }
    agent.wait_for_log(
        &format!("ban source={flooder} reason=rate_register"),
        Duration::from_secs(5),
    )?;
    // SIPVicious's probe: dropped unanswered, banned for its User-Agent.
    let probe = with_user_agent(sip_request("OPTIONS", "100"), "friendly-scanner");
    send(&lab.sender(3)?, pbx, &probe, 1)?;
    agent.wait_for_log(&format!("ban source={scanner} reason=scanner"), Duration::from_secs(5))?;
    // Toll fraud: a call to Sierra Leone, dropped by the shipped high-risk list (no ban).
    send(&lab.sender(4)?, pbx, &invite(&fraudster, "+23276123456"), 1)?;
    agent.wait_for_log(&format!("blocked call source={fraudster} "), Duration::from_secs(5))?;
    assert!(agent.log().contains("rule=destination"), "{}", agent.log());
    let attack_end = unix_now();

    // Prometheus has scraped the whole attack, and a few scrapes after it.
    for expr in [
        r#"sipfilter_bans_total{reason="rate_register"} > 0"#,
        r#"sipfilter_bans_total{reason="scanner"} > 0"#,
        r#"sipfilter_calls_blocked_total{rule="destination"} > 0"#,
    ] {
        prom.wait_for(expr, Duration::from_secs(10))?;
    }
    std::thread::sleep(2 * SCRAPE_INTERVAL);
    // The contrib rules, loaded by this Prometheus, see the blocked call.
    prom.wait_for(
        r#"ALERTS{alertname="SipfilterFraudCallsBlocked", alertstate="firing"}"#,
        Duration::from_secs(10),
    )?;

    // Every panel's every query, as Grafana sends it with "All" selected: at least one sample.
    let rate_interval = format!("{}s", 4 * SCRAPE_INTERVAL.as_secs());
    let queries = panel_queries(&d, &rate_interval);
    assert!(queries.len() >= 12, "only {} queries in the dashboard", queries.len());
    let mut no_data = Vec::new();
    for q in &queries {
        let samples = prom
            .query(&q.expr)
            .with_context(|| format!("panel {} ({}): {}", q.panel, q.ref_id, q.expr))?;
        let values: Vec<String> = samples
            .iter()
            .map(|s| format!("{}={}", legend(&q.legend, &s.labels), s.value))
            .collect();
        eprintln!("{} ({}): {}", q.panel, q.ref_id, values.join(" "));
        if samples.is_empty() {
            no_data.push(format!("{} ({}): {}", q.panel, q.ref_id, q.expr));
        }
    }
    assert!(
        no_data.is_empty(),
        "panels with \"No data\" during the attack:\n{}\nPrometheus log:\n{}",
        no_data.join("\n"),
        prom.log()
    );

    // The panels over the attack, as small charts.
    let end = unix_now();
    let mut charts: Vec<Panel> = Vec::new();
    for p in data_panels(&d) {
        let panel = title(p);
        let (unit, factor) = chart_unit(p["fieldConfig"]["defaults"]["unit"].as_str().unwrap_or(""));
        let mut series = Vec::new();
        for q in queries.iter().filter(|q| q.panel == panel) {
            let range = prom
                .query_range(&q.expr, start, end, SCRAPE_INTERVAL)
                .with_context(|| format!("panel {panel} ({}): {}", q.ref_id, q.expr))?;
            for s in range {
                series.push(Series {
                    label: legend(&q.legend, &s.labels),
                    points: s
                        .points
                        .iter()
                        .filter(|(_, v)| v.is_finite())
                        .map(|(t, v)| (t - start, v * factor))
                        .collect(),
                });
            }
        }
        // The series that moved (a legend of sixteen methods, most of them flat at zero, would
        // hide the chart); a flat line if none did.
        let moved = |s: &Series| s.points.iter().any(|(_, v)| *v != 0.0);
        if series.iter().any(moved) {
            series.retain(moved);
        } else {
            series.truncate(1);
        }
        charts.push(Panel {
            title: panel,
            unit,
            log_x: false,
            series,
        });
    }
    let out = target_dir().join("dashboard");
    std::fs::create_dir_all(&out)?;
    let png = out.join("attack.png");
    let title = format!(
        "sipfilter dashboard: REGISTER flood {:.0}-{:.0} s, scanner probe and call to +232 by {:.0} s",
        attack - start,
        attack - start + 3.0,
        attack_end - start
    );
    chart::small_multiples(&png, &title, &charts)?;
    eprintln!("dashboard over the attack: {}", png.display());
    drop(prom);
    agent.stop()?;
    Ok(())
}
