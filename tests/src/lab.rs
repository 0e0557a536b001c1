//! The end-to-end lab of the registrar tests: a PBX namespace with a real registrar
//! (kamailio, `kamailio.rs`) and the agent on its veth end (XDP on ingress, the answers
//! program on egress), a LAN namespace with two client addresses, a private bpffs and a
//! folder; and what the tests read back (kamailio's log, SIPp's screens, the CLI's JSON).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    agent::{sipfilter, AgentProcess},
    harness::PrivateBpffs,
    kamailio::{Registrar, UnknownUsers},
    netns::{veth_pair, Background, Netns, ScratchDir},
    sipp::sipp_args,
};

/// A strong password: what the office's accounts are built from.
pub const STRONG: &str = "Xk4-q9Lm-Tz27";

/// A PBX namespace (`NET.1`) and a LAN namespace (`NET.2`, `NET.3`: two client addresses)
/// joined by a veth pair whose PBX end the agent watches, the agent's private bpffs and a
/// folder. Field order is drop order; processes are owned by the test, declared after the
/// lab, so they stop first.
pub struct Lab {
    pub pbx: Netns,
    pub lan: Netns,
    pub lan_if: String,
    pub pbx_if: String,
    pub net: String,
    pub bpffs: PrivateBpffs,
    pub dir: ScratchDir,
}

impl Lab {
    pub fn new(net: &str) -> anyhow::Result<Lab> {
        let pbx = Netns::new("pbx")?;
        let lan = Netns::new("lan")?;
        let (a, b, p) = (format!("{net}.2/24"), format!("{net}.3/24"), format!("{net}.1/24"));
        let (lan_if, pbx_if) = veth_pair(&lan, &[&a, &b], &pbx, &[&p])?;
        Ok(Lab {
            pbx,
            lan,
            lan_if,
            pbx_if,
            net: net.to_owned(),
            bpffs: PrivateBpffs::new()?,
            dir: ScratchDir::new("registrar")?,
        })
    }

    /// `NET.last`
    pub fn ip(&self, last: u8) -> String {
        format!("{}.{last}", self.net)
    }

    /// Gives the LAN namespace one more client address, `NET.last`.
    pub fn add_lan_address(&self, last: u8) -> anyhow::Result<String> {
        let ip = self.ip(last);
        self.lan
            .ip(&["addr", "add", &format!("{ip}/24"), "dev", &self.lan_if])?;
        Ok(ip)
    }

    pub fn subdir(&self, name: &str) -> PathBuf {
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(&d).expect("scratch subfolder");
        d
    }

    /// `sipfilter run` on the PBX's veth end, with the default configuration but for the
    /// scanner User-Agents: SIPVicious announces itself ("friendly-scanner", which the
    /// defaults ban on its first packet), and these tests are about robots that do not, as
    /// real ones learn to: the PBX's answers alone must stop them.
    pub fn agent(&self) -> anyhow::Result<AgentProcess> {
        self.agent_with("[scanners]\nuser_agents = []\n")
    }

    /// `sipfilter run` with this configuration text (defaults for what it leaves out).
    pub fn agent_with(&self, config: &str) -> anyhow::Result<AgentProcess> {
        self.agent_named("agent", config, true)
    }

    /// `sipfilter run` as `name` (its log `name.out`), with this configuration text; with
    /// `detach_on_exit` false it leaves the filter attached when it stops, as in production
    /// (the lab's namespaces and bpffs go with the test all the same).
    pub fn agent_named(&self, name: &str, config: &str, detach_on_exit: bool) -> anyhow::Result<AgentProcess> {
        let dir = self.subdir("agent");
        let state = dir.join("state.json");
        let config_file = dir.join("sipfilter.toml");
        std::fs::write(&config_file, config)?;
        let mut args = vec![
            "--config",
            config_file.to_str().unwrap(),
            "--iface",
            &self.pbx_if,
            "--state-file",
            state.to_str().unwrap(),
            "--metrics-listen",
            "off",
        ];
        if detach_on_exit {
            args.push("--detach-on-exit");
        }
        AgentProcess::start(&self.pbx, &self.bpffs.pin_dir(), &dir, name, &args)
    }

    pub fn registrar(&self, unknown: UnknownUsers, users: &[(&str, &str)]) -> anyhow::Result<Registrar> {
        Registrar::start(&self.pbx, &self.ip(1), &self.subdir("kamailio"), unknown, users)
    }

    /// A SIPp client of `tests/scenarios/<scenario>` from `local_ip` towards the registrar,
    /// in its own folder, with `csv` as its injection file (SEQUENTIAL).
    pub fn sipp(
        &self,
        name: &str,
        scenario: &str,
        local_ip: &str,
        csv: &[String],
        extra: &[&str],
    ) -> anyhow::Result<Background> {
        let dir = self.subdir(name);
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios").join(scenario);
        std::fs::copy(src, dir.join(scenario))?;
        std::fs::write(dir.join("accounts.csv"), format!("SEQUENTIAL\n{}\n", csv.join("\n")))?;
        let target = format!("{}:5060", self.ip(1));
        let mut more = vec!["-inf", "accounts.csv"];
        more.extend_from_slice(extra);
        let args = sipp_args(scenario, Some(&target), local_ip, &more);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.lan.spawn(name, &args, &dir)
    }

    /// `args` run in the LAN namespace, in a folder of its own.
    pub fn run_in_lan(&self, name: &str, args: &[&str]) -> anyhow::Result<Background> {
        self.lan.spawn(name, args, &self.subdir(name))
    }

    /// A SIPVicious tool (`svcrack`, `svwar`) in the LAN namespace, bound to `local_ip`,
    /// against the registrar.
    /// A SIPVicious tool (`sipvicious_svwar` …), run as its module with `python3` (what
    /// `cargo xtask setup` installed it for), so the test does not depend on where pip put the
    /// scripts.
    pub fn sipvicious(&self, name: &str, tool: &str, local_ip: &str, args: &[&str]) -> anyhow::Result<Background> {
        let dir = self.subdir(name);
        let target = self.ip(1);
        let module = tool.trim_start_matches("sipvicious_");
        let launcher =
            format!("import sys; from sipvicious.{module} import main; sys.argv[0] = '{tool}'; sys.exit(main())");
        let mut full = vec!["python3", "-c", &launcher, "-b", local_ip];
        full.extend_from_slice(args);
        full.push(&target);
        self.lan.spawn(name, &full, &dir)
    }

    pub fn cli_json(&self, args: &[&str]) -> Value {
        let out = sipfilter(None, &self.bpffs.pin_dir(), args).expect("sipfilter CLI");
        assert!(
            out.status.success(),
            "sipfilter {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    /// The ban of `ip` in `ban list --json`, if any.
    pub fn ban_of(&self, ip: &str) -> Option<Value> {
        let bans = self.cli_json(&["ban", "list", "--json"]);
        bans.as_array()?.iter().find(|b| b["source"] == ip).cloned()
    }

    /// Polls `ban list` until `ip` is banned; the ban, or None after `timeout`.
    pub fn wait_for_ban(&self, ip: &str, timeout: Duration) -> Option<Value> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(b) = self.ban_of(ip) {
                return Some(b);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the filter knows, for the test's output: the agent's log, `sources`, `stats`.
    pub fn dump(&self, agent: &AgentProcess) {
        eprintln!(
            "agent log:\n{}\nsources: {}\nstats: {}",
            agent.log(),
            self.cli_json(&["sources", "--json"]),
            self.cli_json(&["stats", "--json"])
        );
    }

    /// The devices of the source `ip` as `sources --json` lists them, without the field that
    /// changes by itself (`last_answer_ago_seconds`): comparable before and after.
    pub fn devices_of(&self, ip: &str) -> Vec<Value> {
        let sources = self.cli_json(&["sources", "--json"]);
        sources
            .as_array()
            .expect("sources --json is an array")
            .iter()
            .filter(|x| x["source"] == ip)
            .flat_map(|x| x["devices"].as_array().cloned().unwrap_or_default())
            .map(|mut d| {
                if let Some(o) = d.as_object_mut() {
                    o.remove("last_answer_ago_seconds");
                }
                d
            })
            .collect()
    }

    pub fn is_known(&self, ip: &str) -> bool {
        let known = self.cli_json(&["known", "list", "--json"]);
        known.as_array().unwrap().iter().any(|k| k["source"] == ip)
    }
}

/// REGISTERs kamailio received from `ip` (for `to`, if given), and how many carried credentials.
pub fn registers(reg: &Registrar, ip: &str, to: Option<&str>) -> (usize, usize) {
    let r: Vec<_> = reg
        .requests()
        .into_iter()
        .filter(|r| r.method == "REGISTER" && r.source == ip && to.is_none_or(|t| r.to_user == t))
        .collect();
    (r.len(), r.iter().filter(|r| r.credentials).count())
}

/// How the credentialed REGISTERs from `ip` were numbered: their distinct CSeq numbers and
/// how many Call-IDs they used (svcrack sends every guess as CSeq 2 of one Call-ID).
pub fn numbering(reg: &Registrar, ip: &str) -> String {
    let creds: Vec<_> = reg
        .requests()
        .into_iter()
        .filter(|r| r.method == "REGISTER" && r.source == ip && r.credentials)
        .collect();
    let mut cseqs: Vec<u32> = creds.iter().map(|r| r.cseq).collect();
    cseqs.sort_unstable();
    cseqs.dedup();
    let mut ids: Vec<&str> = creds.iter().map(|r| r.call_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    format!("CSeq numbers {cseqs:?} on {} Call-ID(s)", ids.len())
}

/// kamailio's replies to `ip` with `code`.
pub fn replies(reg: &Registrar, ip: &str, code: u16) -> Vec<String> {
    reg.replies()
        .into_iter()
        .filter(|r| r.destination == ip && r.code == code)
        .map(|r| r.to_user)
        .collect()
}

/// A SIPp counter's cumulative value ("Successful call", "Failed call") from its final
/// screen (`-trace_screen`, written when it exits).
pub fn sipp_stat(p: &Background, label: &str) -> u64 {
    let dir = p.log.parent().unwrap();
    let screen = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_str().is_some_and(|n| n.ends_with("_screen.log")))
        .unwrap_or_else(|| panic!("no SIPp screen log for {}: {}", p.name, p.output()));
    let text = std::fs::read_to_string(screen).unwrap();
    text.lines()
        .find(|l| l.trim_start().starts_with(label))
        .and_then(|l| l.split('|').nth(2))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in SIPp's screen:\n{text}\nSIPp's output:\n{}", p.output()))
}

/// Users 200..=219 with strong passwords, but for `weak` (its password is its number).
pub fn office_users(weak: Option<&str>) -> Vec<(String, String)> {
    (200..220)
        .map(|e| {
            let e = e.to_string();
            let pw = if Some(e.as_str()) == weak {
                e.clone()
            } else {
                format!("Pw-{e}-{STRONG}")
            };
            (e, pw)
        })
        .collect()
}

pub fn as_refs(users: &[(String, String)]) -> Vec<(&str, &str)> {
    users.iter().map(|(u, p)| (u.as_str(), p.as_str())).collect()
}

/// SIPp's arguments for the threaded extension enumerator (`register_probe.xml` over 100
/// extensions): 5 calls at once, 50 a second, a socket of its own per call over `transport`
/// (`un`: UDP, `tn`: TCP, a connection per request), 1.5 s for each answer.
pub fn enumerator_args(transport: &'static str) -> Vec<&'static str> {
    vec![
        "-t",
        transport,
        "-max_socket",
        "1000",
        "-l",
        "5",
        "-r",
        "50",
        "-rp",
        "1000",
        "-m",
        "100",
        "-recv_timeout",
        "1500",
    ]
}

/// SIPp's arguments for a dictionary brute force (`register_auth.xml` over [`guesses`]): one
/// socket over `transport` (`u1`: UDP, `t1`: one TCP connection), 20 guesses a second, all
/// 40, 1.5 s for each answer, `timeout` seconds in all.
pub fn dictionary_args(transport: &'static str, timeout: &'static str) -> Vec<&'static str> {
    vec![
        "-t",
        transport,
        "-r",
        "20",
        "-m",
        "40",
        "-recv_timeout",
        "1500",
        "-timeout",
        timeout,
    ]
}

/// 40 guesses at `ext` as SIPp injection lines (`ext;password`), `right` the `at`th
/// (1-based), the rest wrong.
pub fn guesses(ext: &str, right: &str, at: usize) -> Vec<String> {
    (1..=40)
        .map(|i| match i == at {
            true => format!("{ext};{right}"),
            false => format!("{ext};guess{i:03}"),
        })
        .collect()
}

/// A python script that opens `n` TCP connections at once from `from` to `to`:`port`
/// (non-blocking connects: `n` SYNs back to back), holds them 2 s and exits.
pub fn syn_flood_script(from: &str, to: &str, port: u16, n: usize) -> String {
    format!(
        "import socket, time\nsocks = []\nfor i in range({n}):\n    s = socket.socket()\n    s.setblocking(False)\n\
         \x20   s.bind(('{from}', 0))\n    try:\n        s.connect(('{to}', {port}))\n    except BlockingIOError:\n        pass\n\
         \x20   socks.append(s)\ntime.sleep(2)\nprint('sent', len(socks))\n"
    )
}
