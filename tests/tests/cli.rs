//! The operator's CLI, driven as a real binary against the real program loaded into a
//! private bpffs: what it writes must change what the kernel does with packets.
//!
//! The binary is `target/debug/sipfilter`; `cargo xtask test` builds it first (by hand:
//! `cargo build -p sipfilter`).

use std::{
    collections::BTreeSet,
    io::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use aya::programs::{links::FdLink, XdpMode};
use serde_json::Value;
use sipfilter::Loaded;
use sipfilter_common::{config::FLAG_MONITOR, KernelConfig};
use sipfilter_tests::{
    harness::{PrivateBpffs, TestFilter, XDP_DROP, XDP_PASS},
    netns::{veth_pair, Netns},
    packet::PacketBuilder as P,
};

// --- running the binary ---

use sipfilter_tests::agent::sipfilter_bin as binary;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

fn cli_at(pin_dir: &Path, args: &[&str]) -> Run {
    let pin = pin_dir.to_str().unwrap();
    Command::new(binary())
        .args(["--pin-dir", pin])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run sipfilter")
        .into()
}

fn cli(f: &TestFilter, args: &[&str]) -> Run {
    cli_at(&f.bpffs.pin_dir(), args)
}

/// Runs a command that must succeed and returns its standard output.
fn ok(f: &TestFilter, args: &[&str]) -> String {
    let r = cli(f, args);
    assert_eq!(r.code, 0, "sipfilter {args:?} failed:\n{}{}", r.stdout, r.stderr);
    r.stdout
}

/// `status` with no agent running on the pins (as in these tests): its output, after
/// checking it exits 3 ("inactive", for monitoring) and says what stops without an agent.
fn status(f: &TestFilter, args: &[&str]) -> String {
    let r = cli(f, args);
    assert_eq!(
        r.code, 3,
        "sipfilter {args:?}: no agent runs:\n{}{}",
        r.stdout, r.stderr
    );
    assert!(r.stderr.is_empty(), "{}", r.stderr);
    r.stdout
}

/// Runs a command that must fail with `code` and returns its standard error.
fn fails(f: &TestFilter, args: &[&str], code: i32) -> String {
    let r = cli(f, args);
    assert_eq!(
        r.code, code,
        "sipfilter {args:?}: expected exit {code}:\n{}{}",
        r.stdout, r.stderr
    );
    r.stderr
}

fn json(f: &TestFilter, args: &[&str]) -> Value {
    let out = ok(f, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("sipfilter {args:?}: not JSON ({e}):\n{out}"))
}

// --- packets ---

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn register(src: &str) -> Vec<u8> {
    P::sip4(v4(src), "REGISTER").build().bytes
}

fn register6(src: &str) -> Vec<u8> {
    P::sip6(src.parse::<Ipv6Addr>().unwrap(), "REGISTER").build().bytes
}

fn entry<'a>(list: &'a Value, field: &str, value: &str) -> &'a Value {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .find(|e| e[field] == value)
        .unwrap_or_else(|| panic!("no entry with {field} = {value} in {list:#}"))
}

// --- bans ---

#[test]
fn ban_add_drops_the_source_and_ban_del_restores_it() -> anyhow::Result<()> {
    let f = TestFilter::new()?;
    let frame = register("203.0.113.10");
    f.expect(&frame, XDP_PASS, "before the ban")?;

    let out = ok(
        &f,
        &[
            "ban",
            "add",
            "203.0.113.10",
            "--for",
            "10m",
            "--reason",
            "scanner from the logs",
        ],
    );
    assert!(out.contains("banned 203.0.113.10 for 10m"), "{out}");
    assert!(
        out.contains("scanner from the logs") && out.contains("recorded in the audit trail"),
        "{out}"
    );
    f.expect(&frame, XDP_DROP, "after `ban add`")?;
    f.expect(&register("203.0.113.11"), XDP_PASS, "a neighbour")?;

    let list = json(&f, &["ban", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list:#}");
    let ban = entry(&list, "source", "203.0.113.10");
    assert_eq!(ban["kind"], "source");
    assert_eq!(ban["reason"], "manual");
    assert_eq!(ban["permanent"], false);
    let left = ban["expires_in_secs"].as_u64().unwrap();
    assert!((595..=600).contains(&left), "{ban}");

    let human = ok(&f, &["ban", "list"]);
    let header = human.lines().next().unwrap();
    assert!(header.starts_with("SOURCE") && header.contains("EXPIRES"), "{human}");
    assert!(human.contains("203.0.113.10") && human.contains("in 9m"), "{human}");

    let out = ok(&f, &["ban", "del", "203.0.113.10"]);
    assert!(out.contains("lifted the ban on 203.0.113.10"), "{out}");
    f.expect(&frame, XDP_PASS, "after `ban del`")?;
    assert_eq!(json(&f, &["ban", "list", "--json"]), Value::Array(vec![]));
    assert!(ok(&f, &["ban", "list"]).contains("no bans in force"));

    // Deleting it again is a runtime failure that says why.
    let err = fails(&f, &["ban", "del", "203.0.113.10"], 1);
    assert!(err.contains("203.0.113.10 is not banned"), "{err}");
    Ok(())
}

#[test]
fn ban_defaults_to_one_hour_and_permanent_never_expires() -> anyhow::Result<()> {
    let f = TestFilter::new()?;
    ok(&f, &["ban", "add", "203.0.113.20"]);
    ok(&f, &["ban", "add", "203.0.113.21", "--permanent"]);
    let list = json(&f, &["ban", "list", "--json"]);
    let hour = entry(&list, "source", "203.0.113.20")["expires_in_secs"]
        .as_u64()
        .unwrap();
    assert!((3595..=3600).contains(&hour), "{list:#}");
    let perm = entry(&list, "source", "203.0.113.21");
    assert_eq!(perm["permanent"], true);
    assert_eq!(perm["expires_in_secs"], Value::Null);
    assert!(ok(&f, &["ban", "list"]).contains("permanent"));
    f.expect(&register("203.0.113.21"), XDP_DROP, "permanently banned")?;
    Ok(())
}

#[test]
fn an_ipv6_address_ban_covers_that_address_and_a_prefix_ban_its_prefix() -> anyhow::Result<()> {
    let f = TestFilter::new()?;
    let out = ok(&f, &["ban", "add", "2001:db8:1:2::5", "--for", "1h"]);
    assert!(out.contains("banned 2001:db8:1:2::5 "), "{out}");
    f.expect(&register6("2001:db8:1:2::5"), XDP_DROP, "the banned address")?;
    f.expect(&register6("2001:db8:1:2:ffff::1"), XDP_PASS, "its neighbour in the /64")?;
    entry(&json(&f, &["ban", "list", "--json"]), "source", "2001:db8:1:2::5");
    ok(&f, &["ban", "del", "2001:db8:1:2::5"]);
    f.expect(&register6("2001:db8:1:2::5"), XDP_PASS, "after ban del")?;
    // The whole prefix: a timed denylist entry.
    ok(&f, &["ban", "add", "2001:db8:1:2::/64", "--for", "1h"]);
    f.expect(&register6("2001:db8:1:2:ffff::1"), XDP_DROP, "inside the banned /64")?;
    f.expect(&register6("2001:db8:1:3::1"), XDP_PASS, "the next /64")?;
    Ok(())
}

#[test]
fn cidr_ban_is_a_timed_denylist_entry_that_drops_the_range() -> anyhow::Result<()> {
    let f = TestFilter::new()?;
    let out = ok(&f, &["ban", "add", "198.51.100.0/24", "--for", "30m"]);
    assert!(
        out.contains("banned 198.51.100.0/24 for 30m") && out.contains("timed denylist entry"),
        "{out}"
    );
    f.expect(&register("198.51.100.77"), XDP_DROP, "an address in the banned range")?;
    f.expect(&register("198.51.101.77"), XDP_PASS, "outside the range")?;

    let list = json(&f, &["ban", "list", "--json"]);
    let ban = entry(&list, "source", "198.51.100.0/24");
    assert_eq!(ban["kind"], "cidr");
    assert!(
        (1795..=1800).contains(&ban["expires_in_secs"].as_u64().unwrap()),
        "{ban}"
    );
    let human = ok(&f, &["ban", "list"]);
    assert!(
        human
            .lines()
            .any(|l| l.starts_with("198.51.100.0/24") && l.contains("cidr")),
        "{human}"
    );
    // The denylist shows it too, as a timed entry.
    let deny = json(&f, &["deny", "list", "--json"]);
    assert_eq!(entry(&deny, "cidr", "198.51.100.0/24")["permanent"], false);

    let out = ok(&f, &["ban", "del", "198.51.100.0/24"]);
    assert!(
        out.contains("removed the timed denylist entry 198.51.100.0/24"),
        "{out}"
    );
    f.expect(&register("198.51.100.77"), XDP_PASS, "after ban del of the range")?;
    Ok(())
}

#[test]
fn banning_an_allowlisted_source_is_refused_and_allowlisting_lifts_bans() -> anyhow::Result<()> {
    let f = TestFilter::new()?;
    ok(&f, &["allow", "add", "192.0.2.0/24"]);
    for target in ["192.0.2.7", "192.0.2.0/25"] {
        let err = fails(&f, &["ban", "add", target, "--for", "1h"], 1);
        assert!(err.contains(&format!("refusing to ban {target}")), "{err}");
        assert!(err.contains("allowlisted by 192.0.2.0/24"), "{err}");
    }
    assert_eq!(json(&f, &["ban", "list", "--json"]), Value::Array(vec![]));
    f.expect(&register("192.0.2.7"), XDP_PASS, "allowlisted source")?;

    // Allowlisting a banned source lifts its ban, and says so.
    ok(&f, &["ban", "add", "203.0.113.30", "--permanent"]);
    ok(&f, &["ban", "add", "203.0.113.31", "--for", "2h"]);
    f.expect(&register("203.0.113.30"), XDP_DROP, "banned")?;
    let out = ok(&f, &["allow", "add", "203.0.113.30"]);
    assert!(out.contains("lifted 1 ban(s) it covers: 203.0.113.30"), "{out}");
    f.expect(&register("203.0.113.30"), XDP_PASS, "allowlisted after its ban")?;
    let bans = json(&f, &["ban", "list", "--json"]);
    assert_eq!(bans.as_array().unwrap().len(), 1, "{bans:#}");
    entry(&bans, "source", "203.0.113.31");

    let allow = json(&f, &["allow", "list", "--json"]);
    assert_eq!(allow.as_array().unwrap().len(), 2, "{allow:#}");
    assert_eq!(entry(&allow, "cidr", "203.0.113.30")["permanent"], true);
    ok(&f, &["allow", "del", "203.0.113.30"]);
    let err = fails(&f, &["allow", "del", "203.0.113.30"], 1);
    assert!(err.contains("203.0.113.30 is not on the allowlist"), "{err}");
    Ok(())
}

#[test]
fn deny_add_list_and_del() -> anyhow::Result<()> {
    let f = TestFilter::new()?;
    f.expect(&register("203.0.113.40"), XDP_PASS, "before deny")?;
    assert!(ok(&f, &["deny", "add", "203.0.113.0/24"]).contains("added 203.0.113.0/24 on the denylist permanently"));
    ok(&f, &["deny", "add", "2001:db8:bad::/48", "--for", "7d"]);
    f.expect(&register("203.0.113.40"), XDP_DROP, "denylisted range")?;
    f.expect(&register6("2001:db8:bad:1::9"), XDP_DROP, "denylisted IPv6 range")?;

    let deny = json(&f, &["deny", "list", "--json"]);
    assert_eq!(deny.as_array().unwrap().len(), 2, "{deny:#}");
    assert_eq!(entry(&deny, "cidr", "203.0.113.0/24")["expires_in_secs"], Value::Null);
    let week = entry(&deny, "cidr", "2001:db8:bad::/48")["expires_in_secs"]
        .as_u64()
        .unwrap();
    assert!((7 * 86_400 - 5..=7 * 86_400).contains(&week), "{deny:#}");

    let human = ok(&f, &["deny", "list"]);
    let lines: Vec<&str> = human.lines().collect();
    assert!(lines[0].starts_with("CIDR"), "{human}");
    // Aligned: the EXPIRES column starts at the same position on every row.
    let col = lines[0].find("EXPIRES").unwrap();
    for l in &lines[1..3] {
        assert!(
            l[..col].ends_with("  ") && !l[col..].starts_with(' '),
            "columns not aligned:\n{human}"
        );
    }
    assert!(human.contains("2 entries on the denylist"), "{human}");

    ok(&f, &["deny", "del", "203.0.113.0/24"]);
    f.expect(&register("203.0.113.40"), XDP_PASS, "after deny del")?;
    let err = fails(&f, &["deny", "del", "203.0.113.0/24"], 1);
    assert!(err.contains("203.0.113.0/24 is not on the denylist"), "{err}");
    Ok(())
}

// --- import ---

fn nth_addr(i: usize) -> String {
    format!("10.{}.{}.{}", 20 + i / 65_536, i / 256 % 256, i % 256)
}

#[test]
fn import_of_a_10000_line_blocklist_reports_exact_counts_and_is_in_force() -> anyhow::Result<()> {
    let f = TestFilter::new()?;
    // 10,000 lines: comments, blank lines, trailing comments, CIDRs, repeats and bad lines.
    let mut lines = Vec::new();
    let mut unique = BTreeSet::new();
    let (mut repeats, mut rejected) = (0, Vec::new());
    let mut i = 0;
    while lines.len() < 10_000 {
        let n = lines.len() + 1; // the line number this line will have
        let line = match n {
            1 => "# generated blocklist".to_string(),
            _ if n % 1000 == 2 => String::new(),
            _ if n % 997 == 0 => {
                rejected.push(n);
                format!("bogus-{n}")
            }
            _ if n % 1499 == 0 => {
                rejected.push(n);
                "10.0.0.0/33".to_string()
            }
            _ if n % 500 == 250 => {
                repeats += 1;
                nth_addr(0)
            }
            _ if n % 2000 == 3 => {
                unique.insert(format!("172.{}.0.0/16", 16 + n / 2000));
                format!("172.{}.0.0/16   # a whole range", 16 + n / 2000)
            }
            _ => {
                let a = nth_addr(i);
                i += 1;
                unique.insert(a.clone());
                if n % 7 == 0 {
                    format!("{a} # seen hitting REGISTER")
                } else {
                    a
                }
            }
        };
        lines.push(line);
    }
    // Not on the bpffs: regular files cannot be created there.
    let file = std::env::temp_dir().join(format!("sipfilter-cli-import-{}.txt", std::process::id()));
    let _cleanup = RemoveOnDrop(file.clone());
    std::fs::write(&file, lines.join("\n") + "\n")?;

    // One entry is already on the denylist: a duplicate, not an addition.
    ok(&f, &["deny", "add", &nth_addr(5)]);
    let expect_added = unique.len() - 1;

    let started = Instant::now();
    let out = ok(&f, &["import", file.to_str().unwrap()]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "import took {took:?}");
    let fmt = |n: usize| {
        let s = n.to_string();
        if s.len() > 3 {
            format!("{},{}", &s[..s.len() - 3], &s[s.len() - 3..])
        } else {
            s
        }
    };
    let summary = format!(
        "{} added, {} duplicates ({} repeated in the file, 1 already listed), {} rejected",
        fmt(expect_added),
        repeats + 1,
        repeats,
        rejected.len()
    );
    assert!(out.contains(&summary), "expected «{summary}» in:\n{out}");
    for n in &rejected {
        assert!(
            out.contains(&format!("rejected line {n}:")),
            "line {n} not reported:\n{out}"
        );
    }
    assert!(out.contains("'bogus-997' is not an IPv4 or IPv6 address"), "{out}");

    // In force at once.
    f.expect(&register(&nth_addr(1234)), XDP_DROP, "an imported address")?;
    f.expect(&register("172.17.9.9"), XDP_DROP, "inside an imported range")?;
    f.expect(&register("10.99.0.1"), XDP_PASS, "an address not in the file")?;
    let deny = json(&f, &["deny", "list", "--json"]);
    assert_eq!(deny.as_array().unwrap().len(), unique.len());

    // Again, as JSON: everything is a duplicate now, and the rejected lines are all listed.
    let report = json(&f, &["import", file.to_str().unwrap(), "--json"]);
    assert_eq!(report["format"], "plain");
    assert_eq!(report["added"], 0);
    assert_eq!(report["already_listed"], unique.len());
    assert_eq!(report["repeated_in_file"], repeats);
    let lines_rejected: Vec<usize> = report["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["line"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(lines_rejected, rejected);
    Ok(())
}

/// An import without --for does not make timed entries permanent behind the operator's back:
/// they keep their end and the report names them; --permanent does it, and says so too.
#[test]
fn reimporting_without_a_duration_keeps_timed_entries_timed_and_names_them() -> anyhow::Result<()> {
    let f = TestFilter::new()?;
    let file = std::env::temp_dir().join(format!("sipfilter-reimport-{}.txt", std::process::id()));
    let _rm = RemoveOnDrop(file.clone());
    std::fs::write(&file, "198.51.100.0/24\n203.0.113.0/28\n192.0.2.9\n")?;
    let path = file.to_str().unwrap();
    // One entry timed by an import, one by a CIDR ban; the third is new later.
    ok(&f, &["deny", "add", "198.51.100.0/24", "--for", "2h"]);
    ok(&f, &["ban", "add", "203.0.113.0/28", "--for", "30m"]);
    let end = |deny: &Value, cidr: &str| entry(deny, "cidr", cidr)["expires_in_secs"].clone();

    let report = json(&f, &["import", path, "--json"]);
    assert_eq!(
        (report["added"].as_u64(), report["already_listed"].as_u64()),
        (Some(1), Some(2)),
        "{report:#}"
    );
    assert_eq!(
        report["kept_timed"],
        serde_json::json!(["198.51.100.0/24", "203.0.113.0/28"]),
        "{report:#}"
    );
    assert_eq!(report["made_permanent"], serde_json::json!([]));
    let deny = json(&f, &["deny", "list", "--json"]);
    assert!(
        end(&deny, "198.51.100.0/24")
            .as_u64()
            .is_some_and(|s| (7190..=7200).contains(&s)),
        "{deny:#}"
    );
    assert!(
        end(&deny, "203.0.113.0/28")
            .as_u64()
            .is_some_and(|s| (1790..=1800).contains(&s)),
        "{deny:#}"
    );
    assert_eq!(
        entry(&deny, "cidr", "192.0.2.9")["permanent"],
        true,
        "a new entry is permanent"
    );
    let human = ok(&f, &["import", path]);
    assert!(
        human.contains("2 already listed with an end keep it") && human.contains("198.51.100.0/24, 203.0.113.0/28"),
        "{human}"
    );

    // With --for, an earlier end moves later; a permanent entry stays permanent.
    let report = json(&f, &["import", path, "--for", "1d", "--json"]);
    assert_eq!(report["extended"], 2, "{report:#}");
    let deny = json(&f, &["deny", "list", "--json"]);
    assert!(
        end(&deny, "203.0.113.0/28").as_u64().is_some_and(|s| s > 86_000),
        "{deny:#}"
    );
    assert_eq!(entry(&deny, "cidr", "192.0.2.9")["permanent"], true);

    // --permanent: every entry of the file, named.
    let report = json(&f, &["import", path, "--permanent", "--json"]);
    assert_eq!(
        report["made_permanent"],
        serde_json::json!(["198.51.100.0/24", "203.0.113.0/28"]),
        "{report:#}"
    );
    let deny = json(&f, &["deny", "list", "--json"]);
    assert_eq!(
        deny.as_array().unwrap().len(),
        3,
        "nothing else added or lost: {deny:#}"
    );
    assert!(
        deny.as_array().unwrap().iter().all(|e| e["permanent"] == true),
        "{deny:#}"
    );
    Ok(())
}

struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn import_of_apiban_json() -> anyhow::Result<()> {
    let f = TestFilter::new()?;
    let file = std::env::temp_dir().join(format!("sipfilter-cli-apiban-{}.json", std::process::id()));
    let _cleanup = RemoveOnDrop(file.clone());
    std::fs::write(
        &file,
        r#"{"ipaddress":["198.51.100.1","198.51.100.2","nonsense","198.51.100.1","2001:db8:dead::/48"],"ID":"987654"}"#,
    )?;
    let out = ok(&f, &["import", file.to_str().unwrap(), "--for", "7d"]);
    assert!(out.contains("(apiban format)"), "{out}");
    assert!(
        out.contains("3 added, 1 duplicates (1 repeated in the file, 0 already listed), 1 rejected"),
        "{out}"
    );
    assert!(out.contains("rejected index 2: 'nonsense'"), "{out}");
    f.expect(&register("198.51.100.2"), XDP_DROP, "an address from APIBAN")?;
    f.expect(&register6("2001:db8:dead:1::1"), XDP_DROP, "a range from APIBAN")?;
    let deny = json(&f, &["deny", "list", "--json"]);
    assert_eq!(entry(&deny, "cidr", "198.51.100.1")["permanent"], false);

    // From standard input, as JSON.
    let mut child = Command::new(binary())
        .args([
            "--pin-dir",
            f.bpffs.pin_dir().to_str().unwrap(),
            "import",
            "-",
            "--json",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"ipaddress":["203.0.113.99", 5], "ID": "1"}"#)?;
    let r: Run = child.wait_with_output()?.into();
    assert_eq!(r.code, 0, "{}", r.stderr);
    let report: Value = serde_json::from_str(&r.stdout)?;
    assert_eq!(report["format"], "apiban");
    assert_eq!(report["added"], 1);
    assert_eq!(report["rejected"][0]["index"], 1);
    f.expect(&register("203.0.113.99"), XDP_DROP, "imported from standard input")?;
    Ok(())
}

// --- stats, top, status ---

#[test]
fn stats_count_the_packets_that_ran() -> anyhow::Result<()> {
    let f = TestFilter::new()?;
    for _ in 0..4 {
        f.expect(&register("203.0.113.50"), XDP_PASS, "REGISTER")?;
    }
    for _ in 0..2 {
        f.expect(&P::sip4(v4("203.0.113.50"), "INVITE").build().bytes, XDP_PASS, "INVITE")?;
    }
    f.expect(
        &P::sip4(v4("203.0.113.50"), "REGISTER").tcp().build().bytes,
        XDP_PASS,
        "TCP",
    )?;
    ok(&f, &["ban", "add", "203.0.113.51"]);
    for _ in 0..3 {
        f.expect(
            &P::sip4(v4("203.0.113.51"), "OPTIONS").build().bytes,
            XDP_DROP,
            "banned OPTIONS",
        )?;
    }

    let s = json(&f, &["stats", "--json"]);
    assert_eq!(s["packets"], 10, "{s:#}");
    assert_eq!(s["verdicts"]["pass"], 7);
    assert_eq!(s["verdicts"]["drop"], 3);
    assert_eq!(s["verdicts"]["would_drop"], 0);
    // The TCP segment starts a REGISTER: read and judged as the datagrams are.
    assert_eq!(s["outcomes"]["accepted"], 7);
    assert_eq!(s["outcomes"]["banned"], 3);
    assert_eq!(s["methods"]["REGISTER"], 5);
    assert_eq!(s["methods"]["INVITE"], 2);
    assert_eq!(s["methods"]["OPTIONS"], 3);
    assert_eq!(s["transports"]["udp"], 9);
    assert_eq!(s["transports"]["tcp"], 1);
    assert_eq!(s["bans"]["rate_register"], 0);
    assert_eq!(s["bans"]["cracked"], 0);
    assert_eq!(s["answers"]["challenge"], 0);
    assert_eq!(s["ban_table_full"], 0);
    // The JSON agrees with the library's sum over CPUs.
    assert_eq!(
        s["outcomes"]["banned"],
        f.counters()?.outcome(sipfilter_common::Outcome::Banned)
    );

    let human = ok(&f, &["stats"]);
    assert!(human.starts_with("10 packets seen"), "{human}");
    let banned = human.lines().find(|l| l.starts_with("banned ")).expect("a banned row");
    assert!(banned.split_whitespace().eq(["banned", "3", "30.0%"]), "{banned}");
    Ok(())
}

#[test]
fn top_lists_the_busiest_sources_with_their_bans() -> anyhow::Result<()> {
    let f = TestFilter::new()?;
    // A: most requests, no drops. D: over its REGISTER burst (150), so one drop and a ban.
    f.run_n(&P::sip4(v4("203.0.113.60"), "OPTIONS").build().bytes, 160)?;
    let (passed, dropped) = f.run_n(&register("203.0.113.61"), 151)?;
    assert_eq!((passed, dropped), (150, 1));
    f.run_n(&register("203.0.113.62"), 3)?;
    f.run_n(&register("203.0.113.63"), 2)?;
    ok(&f, &["ban", "add", "203.0.113.63", "--for", "5m"]);

    let top = json(&f, &["top", "--json"]);
    assert_eq!(top["tracked_sources"], 4, "{top:#}");
    let sources: Vec<&str> = top["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["source"].as_str().unwrap())
        .collect();
    assert_eq!(
        sources,
        ["203.0.113.60", "203.0.113.61", "203.0.113.62", "203.0.113.63"]
    );
    let first = &top["sources"][0];
    assert_eq!(
        (
            first["requests"].as_u64(),
            first["drops"].as_u64(),
            first["banned"].as_bool()
        ),
        (Some(160), Some(0), Some(false))
    );
    let d = &top["sources"][1];
    assert_eq!(
        (d["requests"].as_u64(), d["drops"].as_u64(), d["banned"].as_bool()),
        (Some(151), Some(1), Some(true))
    );
    assert_eq!(d["ban_reason"], "rate_register");
    assert_eq!(top["sources"][3]["banned"], true);
    assert_eq!(top["sources"][3]["ban_reason"], "manual");

    let by_drops = json(&f, &["top", "--json", "--sort", "drops", "-n", "2"]);
    let sources: Vec<&str> = by_drops["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["203.0.113.61", "203.0.113.60"]);

    let human = ok(&f, &["top", "--once"]);
    let lines: Vec<&str> = human.lines().collect();
    assert!(
        lines[0].starts_with("SOURCE") && lines[0].contains("REQUESTS"),
        "{human}"
    );
    assert!(
        lines[1].starts_with("203.0.113.60") && lines[1].contains("160"),
        "{human}"
    );
    assert!(lines[2].contains("in 4m") || lines[2].contains("in 5m"), "{human}");

    // Not a terminal and no --once: prints once and exits instead of refreshing forever.
    let mut child = Command::new(binary())
        .args(["--pin-dir", f.bpffs.pin_dir().to_str().unwrap(), "top"])
        .stdout(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            child.kill()?;
            panic!("`sipfilter top` with a pipe for stdout did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let r: Run = child.wait_with_output()?.into();
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("203.0.113.61"), "{}", r.stdout);
    Ok(())
}

#[test]
fn status_shows_attachment_program_and_counts() -> anyhow::Result<()> {
    let f = TestFilter::new()?;
    ok(&f, &["ban", "add", "203.0.113.70"]);
    ok(&f, &["ban", "add", "203.0.113.71", "--permanent"]);
    ok(&f, &["ban", "add", "198.51.100.0/24", "--for", "1h"]);
    ok(&f, &["deny", "add", "192.0.2.128/25"]);
    ok(&f, &["allow", "add", "192.0.2.10"]);

    // Attach the program in a namespace and pin its link where the agent pins links.
    let ns = Netns::new("clistat")?;
    let peer = Netns::new("clipeer")?;
    let (ifname, _) = veth_pair(&ns, &["10.77.0.1/24"], &peer, &["10.77.0.2/24"])?;
    let pin_dir = f.bpffs.pin_dir();
    let (dir, name) = (pin_dir.clone(), ifname.clone());
    let attached_id = ns.run(move || {
        let mut loaded = Loaded::load(&dir, &KernelConfig::default())?;
        let prog = loaded.program_mut()?;
        let link_id = prog.attach(&name, XdpMode::Skb)?;
        let link: FdLink = prog.take_link(link_id)?.try_into()?;
        std::fs::create_dir_all(dir.join("links"))?;
        link.pin(dir.join("links").join(&name))?;
        Ok(prog.info()?.id())
    })?;

    // The cost per packet needs the kernel's run-time statistics on (the agent keeps them on).
    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
    f.run_n(&register("203.0.113.72"), 20)?;
    let own_id = f.loaded.program()?.info()?.id();

    // Inside the namespace the attach mode can be read from the interface.
    let r: Run = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(binary())
        .args(["--pin-dir", pin_dir.to_str().unwrap(), "status", "--json"])
        .output()?
        .into();
    assert_eq!(r.code, 3, "no agent runs: {}{}", r.stdout, r.stderr);
    let s: Value = serde_json::from_str(&r.stdout)?;
    drop(stats);
    let iface = entry(&s["interfaces"], "interface", &ifname);
    assert_eq!(iface["program_id"], attached_id, "{s:#}");
    assert_eq!(iface["mode"], "skb", "{s:#}");
    assert_eq!(s["monitor"], false);
    assert_eq!(s["bans"]["sources"], 2);
    assert_eq!(s["bans"]["permanent"], 1);
    assert_eq!(s["bans"]["cidrs"], 1);
    assert_eq!(s["denylist_entries"], 2);
    assert_eq!(s["allowlist_entries"], 1);
    assert_eq!(s["sip_ports"], serde_json::json!([5060]));
    assert_eq!(s["ipv6_prefix_len"], 128, "each IPv6 address is its own source");
    let ids: Vec<u64> = s["programs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert!(
        ids.contains(&(attached_id as u64)) && ids.contains(&(own_id as u64)),
        "{s:#}"
    );
    let own = s["programs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == own_id)
        .unwrap();
    assert!(own["run_count"].as_u64().unwrap() >= 20, "{s:#}");
    assert!(s["ns_per_packet"].as_f64().unwrap() > 0.0, "{s:#}");

    // From outside the namespace: the attachment is still listed, the mode cannot be read.
    let human = status(&f, &["status"]);
    assert!(human.contains("mode") && human.contains("enforcing"), "{human}");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    assert!(human.contains(kernel.trim()), "status names the kernel: {human}");
    assert!(human.contains("egress attach"), "{human}");
    assert!(human.contains("2 sources (1 permanent), 1 CIDR"), "{human}");
    let row = human
        .lines()
        .find(|l| l.starts_with(&ifname))
        .unwrap_or_else(|| panic!("{human}"));
    assert!(row.contains(&attached_id.to_string()), "{row}");
    Ok(())
}

#[test]
fn status_reports_monitor_mode_and_missing_stats() -> anyhow::Result<()> {
    let mut config = KernelConfig::default();
    config.flags |= FLAG_MONITOR;
    let f = TestFilter::with_config(&config)?;
    let s: Value = serde_json::from_str(&status(&f, &["status", "--json"]))?;
    assert_eq!(s["agent"]["running"], false, "{s:#}");
    assert!(s["agent"]["without_agent"].as_array().unwrap().len() >= 5, "{s:#}");
    assert_eq!(s["monitor"], true);
    assert_eq!(s["interfaces"], Value::Array(vec![]));
    assert_eq!(s["programs"].as_array().unwrap().len(), 1, "{s:#}");
    let human = status(&f, &["status"]);
    assert!(human.contains("not running"), "{human}");
    assert!(human.contains("without an agent, these stop"), "{human}");
    assert!(human.contains("monitor (counts and bans, drops nothing)"), "{human}");
    assert!(human.contains("no interfaces attached"), "{human}");
    Ok(())
}

// --- errors ---

#[test]
fn bad_input_exits_2_naming_the_bad_value() -> anyhow::Result<()> {
    let f = TestFilter::new()?;
    for (args, bad) in [
        (&["ban", "add", "203.0.113.300"][..], "203.0.113.300"),
        (&["ban", "add", "203.0.113.7", "--for", "10parsecs"], "10parsecs"),
        (&["ban", "add", "203.0.113.7", "--for", "0s"], "0s"),
        (&["ban", "add", "203.0.113.7", "--frobnicate"], "--frobnicate"),
        (&["ban", "del", "2001:db8::/129"], "2001:db8::/129"),
        (&["deny", "add", "10.0.0.0/40"], "10.0.0.0/40"),
        (&["allow", "add", "pbx.example.com"], "pbx.example.com"),
        (&["allow", "add", "192.0.2.1", "--for", "soon"], "soon"),
        (&["import", "list.txt", "--for", "-1h"], "-1h"),
        (&["top", "--sort", "bananas"], "bananas"),
        (&["ban", "list", "--jsn"], "--jsn"),
        (&["stats", "--verbose"], "--verbose"),
        (&["unban", "203.0.113.7"], "unban"),
    ] {
        let err = fails(&f, args, 2);
        assert!(
            err.contains(bad),
            "sipfilter {args:?}: stderr does not name {bad}:\n{err}"
        );
    }
    // Nothing was written.
    assert_eq!(json(&f, &["ban", "list", "--json"]), Value::Array(vec![]));
    assert_eq!(json(&f, &["deny", "list", "--json"]), Value::Array(vec![]));

    // Runtime failures exit 1.
    let err = fails(&f, &["import", "/nonexistent/blocklist.txt"], 1);
    assert!(err.contains("cannot read /nonexistent/blocklist.txt"), "{err}");
    Ok(())
}

#[test]
fn with_nothing_loaded_it_says_so_and_names_the_command_that_loads_it() -> anyhow::Result<()> {
    let bpffs = PrivateBpffs::new()?;
    let plain_dir = std::env::temp_dir().join(format!("sipfilter-cli-empty-{}", std::process::id()));
    std::fs::create_dir_all(&plain_dir)?;
    let _cleanup = RemoveDirOnDrop(plain_dir.clone());
    for pin_dir in [bpffs.pin_dir(), plain_dir.clone()] {
        for args in [
            &["ban", "list"][..],
            &["ban", "add", "203.0.113.7"],
            &["stats", "--json"],
            &["status"],
            &["top", "--once"],
        ] {
            let r = cli_at(&pin_dir, args);
            assert_eq!(r.code, 1, "{args:?}: {}{}", r.stdout, r.stderr);
            assert_eq!(r.stdout, "");
            assert_eq!(r.stderr.lines().count(), 1, "one sentence: {}", r.stderr);
            assert!(r.stderr.contains("not loaded"), "{}", r.stderr);
            assert!(r.stderr.contains(&pin_dir.display().to_string()), "{}", r.stderr);
            assert!(r.stderr.contains("sipfilter run --iface"), "{}", r.stderr);
        }
    }
    Ok(())
}

struct RemoveDirOnDrop(PathBuf);
impl Drop for RemoveDirOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// --- completions and help ---

#[test]
fn completions_and_help_with_examples() {
    for shell in ["bash", "zsh", "fish"] {
        let r: Run = Command::new(binary())
            .args(["completions", shell])
            .output()
            .unwrap()
            .into();
        assert_eq!(r.code, 0, "{shell}: {}", r.stderr);
        assert!(r.stdout.len() > 1000, "{shell}: script too short");
        for word in ["ban", "allow", "deny", "import", "stats", "top", "status", "permanent"] {
            assert!(r.stdout.contains(word), "{shell} completions lack {word}");
        }
    }
    for args in [
        &["ban", "--help"][..],
        &["allow", "--help"],
        &["deny", "--help"],
        &["import", "--help"],
        &["stats", "--help"],
        &["top", "--help"],
        &["status", "--help"],
    ] {
        let r: Run = Command::new(binary()).args(args).output().unwrap().into();
        assert_eq!(r.code, 0, "{args:?}");
        assert!(
            r.stdout.contains("Examples:\n  sipfilter "),
            "{args:?} has no examples:\n{}",
            r.stdout
        );
    }
}

#[test]
fn an_ipv6_prefix_with_an_allowlisted_address_in_it_can_be_banned_and_the_address_still_passes() -> anyhow::Result<()> {
    let f = TestFilter::new()?;
    ok(&f, &["allow", "add", "2001:db8:aa:1::5"]);
    let out = ok(&f, &["ban", "add", "2001:db8:aa:1::/64", "--for", "1h"]);
    assert!(out.contains("banned 2001:db8:aa:1::/64"), "{out}");
    f.expect(
        &P::sip6("2001:db8:aa:1::6".parse()?, "REGISTER").build().bytes,
        XDP_DROP,
        "the banned /64",
    )?;
    f.expect(
        &P::sip6("2001:db8:aa:1::5".parse()?, "REGISTER").build().bytes,
        XDP_PASS,
        "the allowlisted /128 in it",
    )?;
    // An address inside a whole allowlisted /64 is still refused.
    ok(&f, &["allow", "add", "2001:db8:bb:1::/64"]);
    let err = fails(&f, &["ban", "add", "2001:db8:bb:1::9"], 1);
    assert!(err.contains("allowlisted by 2001:db8:bb:1::/64"), "{err}");
    Ok(())
}

/// A phone that registers cleanly, and a robot that cracks extension 202, through both
/// programs; then what `sources`, `known` and `cracked` show and remove.
#[test]
fn sources_known_and_cracked_show_what_the_answers_taught_and_can_be_removed() -> anyhow::Result<()> {
    use sipfilter_common::config::{FLAG_STEALTH, FLAG_TRUST, FLAG_WITHHOLD};
    use sipfilter_tests::packet::{sip_answer, sip_request_from};
    let mut c = KernelConfig::default();
    c.flags |= FLAG_TRUST | FLAG_STEALTH | FLAG_WITHHOLD;
    let f = TestFilter::with_config(&c)?;
    let exchange = |src: &str, status: &str, ext: &str, cseq: u32| -> anyhow::Result<()> {
        let ip = v4(src);
        f.run(
            &P::request4(ip, &sip_request_from("REGISTER", ext, ext, cseq))
                .build()
                .bytes,
        )?;
        f.run_answer(
            &P::answer4(ip, &sip_answer(status, "REGISTER", cseq, ext, ext))
                .build()
                .bytes,
        )?;
        Ok(())
    };
    // The phone: challenge, then 200 OK.
    exchange("198.51.100.20", "401 Unauthorized", "201", 1)?;
    exchange("198.51.100.20", "200 OK", "201", 2)?;
    // The robot: 200 not found, 201 wrong password, 202 right.
    exchange("198.51.100.68", "404 Not Found", "200", 1)?;
    exchange("198.51.100.68", "401 Unauthorized", "201", 2)?;
    exchange("198.51.100.68", "401 Unauthorized", "201", 3)?;
    exchange("198.51.100.68", "401 Unauthorized", "202", 4)?;
    exchange("198.51.100.68", "200 OK", "202", 5)?;

    let sources = json(&f, &["sources", "--json"]);
    let phone = entry(&sources, "source", "198.51.100.20");
    assert_eq!(phone["tier"], "known", "{phone:#}");
    assert_eq!(phone["successes"], 1);
    let robot = entry(&sources, "source", "198.51.100.68");
    assert_eq!(robot["tier"], "unknown", "{robot:#}");
    assert_eq!(robot["failures"], 1);
    assert_eq!(robot["not_found"], 1);
    assert_eq!(robot["extensions_failed"], "200,201");
    // The devices under each source: one port each here, what it registered and failed.
    let phone_devices = phone["devices"].as_array().expect("devices");
    assert_eq!(phone_devices.len(), 1, "{phone:#}");
    assert_eq!(phone_devices[0]["port"], 5060);
    assert_eq!(phone_devices[0]["registered"], serde_json::json!(["201"]));
    let robot_devices = robot["devices"].as_array().expect("devices");
    assert_eq!(
        (
            robot_devices[0]["last_failed"].as_str(),
            robot_devices[0]["failures"].as_u64()
        ),
        (Some("201"), Some(1)),
        "{robot:#}"
    );
    let table = ok(&f, &["sources"]);
    assert!(table.contains("TIER") && table.contains("known"), "{table}");
    assert!(table.contains("└ port 5060") && table.contains("lines 201"), "{table}");
    let top = json(&f, &["top", "--once", "--json"]);
    let phone_top = entry(&top["sources"], "source", "198.51.100.20");
    assert_eq!(phone_top["tier"], "known", "{phone_top:#}");
    let robot_top = entry(&top["sources"], "source", "198.51.100.68");
    assert_eq!(
        (robot_top["tier"].as_str(), robot_top["failures"].as_u64()),
        (Some("unknown"), Some(1))
    );
    assert_eq!(robot_top["extensions_failed"], "200,201");
    assert_eq!(phone_top["devices"], 1, "{phone_top:#}");

    let known = json(&f, &["known", "list", "--json"]);
    assert_eq!(entry(&known, "source", "198.51.100.20")["extension"], "201");
    let cracked = json(&f, &["cracked", "list", "--json"]);
    let c202 = entry(&cracked, "extension", "202");
    assert_eq!(c202["source"], "198.51.100.68");
    assert_eq!(
        entry(&json(&f, &["ban", "list", "--json"]), "source", "198.51.100.68")["reason"],
        "cracked"
    );
    let stats = json(&f, &["stats", "--json"]);
    assert_eq!(stats["bans"]["cracked"], 1, "{stats:#}");
    assert_eq!(stats["answers"]["challenge"], 4);
    assert_eq!(stats["answers"]["success"], 2);
    assert_eq!(stats["answers"]["not_found"], 1);
    assert_eq!(
        (stats["cracked"].as_u64(), stats["withheld"].as_u64()),
        (Some(1), Some(1))
    );

    // Removing: the phone is unknown again at once (its OPTIONS meet stealth), 202 is cleared.
    ok(&f, &["known", "del", "198.51.100.20"]);
    assert!(json(&f, &["known", "list", "--json"]).as_array().unwrap().is_empty());
    f.expect(
        &P::sip4(v4("198.51.100.20"), "OPTIONS").build().bytes,
        XDP_DROP,
        "unknown again",
    )?;
    let err = fails(&f, &["known", "del", "198.51.100.20"], 1);
    assert!(err.contains("not a known source"), "{err}");
    ok(&f, &["cracked", "clear", "202"]);
    assert!(json(&f, &["cracked", "list", "--json"]).as_array().unwrap().is_empty());
    let err = fails(&f, &["cracked", "clear", "202"], 1);
    assert!(err.contains("not on the cracked list"), "{err}");
    Ok(())
}

#[test]
fn check_validates_a_configuration_without_loading_anything() -> anyhow::Result<()> {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sipfilter.toml");
    let nothing = PrivateBpffs::new()?;
    let dir = std::env::temp_dir().join(format!("sipfilter-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // The example names eth0; `lo` is on every host.
    let text = std::fs::read_to_string(&example)?;
    assert!(text.contains("interfaces = [\"eth0\"]"));
    let here = dir.join("example.toml");
    std::fs::write(&here, text.replace("interfaces = [\"eth0\"]", "interfaces = [\"lo\"]"))?;
    let out = cli_at(&nothing.pin_dir(), &["check", "--config", here.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("valid ("), "{}", out.stdout);
    assert!(!nothing.pin_dir().exists(), "check loaded nothing");
    // An interface this host does not have: refused as `run` refuses it, naming file and line.
    let missing = dir.join("missing.toml");
    std::fs::write(
        &missing,
        "[agent]\nmetrics_listen = \"off\"\ninterfaces = [\"lo\", \"sipf-nope0\"]\n",
    )?;
    let out = cli_at(&nothing.pin_dir(), &["check", "--config", missing.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "{}:3: agent.interfaces: interface sipf-nope0 does not exist",
            missing.display()
        )),
        "{}",
        out.stderr
    );
    // A value of the wrong type names its field.
    let typed = dir.join("typed.toml");
    std::fs::write(&typed, "[limits.register]\nburst = \"ten\"\n")?;
    let out = cli_at(&nothing.pin_dir(), &["check", "--config", typed.to_str().unwrap()]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("typed.toml:2: limits.register.burst: invalid type"),
        "{}",
        out.stderr
    );
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[lists]\ndeny_files = [\"list.txt\"]\n")?;
    std::fs::write(dir.join("list.txt"), "203.0.113.0/24\n# a comment\n203.0.113.300\n")?;
    let out = cli_at(&nothing.pin_dir(), &["check", "--config", bad.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("list.txt:3") && out.stderr.contains("203.0.113.300"),
        "names the list file, line and value: {}",
        out.stderr
    );
    Ok(())
}
