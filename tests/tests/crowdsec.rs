//! The fleet through a real CrowdSec (Debian's crowdsec 1.4.6: its Local API and cscli, run by
//! the test alone: no log agent, no Central API, sqlite in a temp folder, a port of its own;
//! `tests/src/crowdsec.rs`). The real agent pulls decisions as a bouncer and pushes its bans as
//! a machine. Each test has its own /24s, namespaces, bpffs and Local API.

use std::{
    net::{SocketAddr, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::Value;
use sipfilter_tests::{
    agent::{sipfilter, AgentProcess},
    crowdsec::LocalApi,
    harness::PrivateBpffs,
    lab::syn_flood_script,
    netns::{veth_pair, Netns, ScratchDir},
    packet::sip_request,
};

const KEY_A: &str = "0123456789abcdef0123456789abcdef";
const KEY_B: &str = "fedcba9876543210fedcba9876543210";
const PASSWORD: &str = "Machine-pw-for-the-test-0123456789";

/// An agent's config for a Local API at `url`, pulling every second.
fn config(dir: &Path, url: &str, key: &str, machine: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join(format!("{machine}.toml"));
    std::fs::write(
        &path,
        format!(
            "[crowdsec]\nurl = \"{url}\"\nbouncer_key = \"{key}\"\nmachine_id = \"{machine}\"\nmachine_password = \"{PASSWORD}\"\npull_interval = \"1s\"\n[agent]\nmetrics_listen = \"off\"\n"
        ),
    )?;
    Ok(path)
}

fn start_agent(
    ns: &Netns,
    bpffs: &PrivateBpffs,
    dir: &Path,
    name: &str,
    iface: &str,
    config: &Path,
) -> anyhow::Result<AgentProcess> {
    let state = dir.join(format!("{name}-state.json"));
    AgentProcess::start(
        ns,
        &bpffs.pin_dir(),
        dir,
        name,
        &[
            "--config",
            config.to_str().context("path")?,
            "--iface",
            iface,
            "--state-file",
            state.to_str().context("path")?,
            "--detach-on-exit",
        ],
    )
}

fn bans(pin: &Path) -> anyhow::Result<Vec<Value>> {
    let out = sipfilter(None, pin, &["ban", "list", "--json"])?;
    anyhow::ensure!(
        out.status.success(),
        "ban list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice::<Value>(&out.stdout)?
        .as_array()
        .context("array")?
        .clone())
}

fn ban_of(pin: &Path, source: &str) -> anyhow::Result<Option<Value>> {
    Ok(bans(pin)?.into_iter().find(|b| b["source"] == source))
}

/// Polls until `f` holds; how long it took.
fn within(timeout: Duration, what: &str, mut f: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if f()? {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(start.elapsed() < timeout, "not within {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends `n` REGISTERs from `from` (an address of the namespace the socket is made in).
fn flood(ns: &Netns, from: &str, to: &str, n: usize) -> anyhow::Result<()> {
    let (from, to): (SocketAddr, SocketAddr) = (format!("{from}:5060").parse()?, format!("{to}:5060").parse()?);
    ns.run(move || {
        let s = UdpSocket::bind(from)?;
        let msg = sip_request("REGISTER", "1000");
        for i in 0..n {
            if i % 20 == 19 {
                std::thread::sleep(Duration::from_millis(1));
            }
            s.send_to(&msg, to)?;
        }
        Ok(())
    })
}

/// The counters of the agent at `pin`.
fn stats(pin: &Path) -> anyhow::Result<Value> {
    let out = sipfilter(None, pin, &["stats", "--json"])?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[test]
fn decisions_come_in_our_bans_go_out_and_a_dead_local_api_loses_nothing() -> anyhow::Result<()> {
    let lan = Netns::new("cslan")?;
    let pbx = Netns::new("cspbx")?;
    let net = "10.214.0";
    let (_, pbx_if) = veth_pair(
        &lan,
        &[&format!("{net}.2/24"), &format!("{net}.3/24"), &format!("{net}.4/24")],
        &pbx,
        &[&format!("{net}.1/24")],
    )?;
    let bpffs = PrivateBpffs::new()?;
    let dir = ScratchDir::new("crowdsec")?;
    let mut lapi = LocalApi::loopback(Some(&pbx))?;
    lapi.add_bouncer_with_key("gw-a", KEY_A)?;
    lapi.add_machine("gw-a", PASSWORD)?;
    let cfg = config(dir.path(), &lapi.url(), KEY_A, "gw-a")?;
    let mut agent = start_agent(&pbx, &bpffs, dir.path(), "agent", &pbx_if, &cfg)?;
    let pin = bpffs.pin_dir();
    let pbx_ip = format!("{net}.1");

    // A decision added with cscli is in the kernel within two pull intervals.
    let x = format!("{net}.2");
    lapi.add_decision_ip(&x, Duration::from_secs(3600))?;
    let took = within(Duration::from_secs(2), "the cscli decision in the ban table", || {
        Ok(ban_of(&pin, &x)?.is_some_and(|b| b["reason"] == "crowdsec"))
    })?;
    eprintln!("cscli decisions add → kernel ban: {} ms", took.as_millis());
    let banned_before = stats(&pin)?["outcomes"]["banned"].as_u64().unwrap_or(0);
    flood(&lan, &x, &pbx_ip, 20)?;
    within(Duration::from_secs(2), "its packets dropped as banned", || {
        Ok(stats(&pin)?["outcomes"]["banned"].as_u64().unwrap_or(0) >= banned_before + 20)
    })?;
    // Deleted: lifted.
    lapi.delete_decision_ip(&x)?;
    within(Duration::from_secs(3), "the deleted decision lifted", || {
        Ok(ban_of(&pin, &x)?.is_none())
    })?;
    // A Range decision becomes a timed deny entry.
    lapi.add_decision_range("198.51.100.0/24", Duration::from_secs(3600))?;
    within(Duration::from_secs(3), "the range as a deny entry", || {
        let out = sipfilter(None, &pin, &["deny", "list", "--json"])?;
        Ok(String::from_utf8_lossy(&out.stdout).contains("198.51.100.0/24"))
    })?;

    // A kernel ban from a real flood goes to the Local API (origin sipfilter).
    let flooder = format!("{net}.3");
    flood(&lan, &flooder, &pbx_ip, 300)?;
    agent.wait_for_log(&format!("ban source={flooder}"), Duration::from_secs(5))?;
    let pushed = within(Duration::from_secs(5), "the flood's ban pushed to CrowdSec", || {
        Ok(lapi
            .decisions()?
            .iter()
            .any(|d| d.value == flooder && d.origin == "sipfilter"))
    })?;
    eprintln!(
        "kernel ban → visible in cscli decisions list: {} ms",
        pushed.as_millis()
    );
    let alerts = lapi.decisions_json()?;
    assert!(
        alerts.to_string().contains("sipfilter/rate_register"),
        "the scenario names the reason: {alerts}"
    );

    // The Local API dies: filtering goes on, nothing is lost; it comes back: caught up.
    let before: Vec<String> = bans(&pin)?
        .iter()
        .filter_map(|b| b["source"].as_str().map(str::to_owned))
        .collect();
    let answered = |agent: &AgentProcess| agent.log().matches("the Local API answers").count();
    let answered_before = answered(&agent);
    lapi.stop_process();
    agent.wait_for_log("does not answer", Duration::from_secs(5))?;
    let banned_before = stats(&pin)?["outcomes"]["banned"].as_u64().unwrap_or(0);
    flood(&lan, &flooder, &pbx_ip, 20)?;
    within(Duration::from_secs(2), "the flooder still dropped", || {
        Ok(stats(&pin)?["outcomes"]["banned"].as_u64().unwrap_or(0) >= banned_before + 20)
    })?;
    let during: Vec<String> = bans(&pin)?
        .iter()
        .filter_map(|b| b["source"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(before, during, "no ban lost while the Local API is down");
    lapi.restart()?;
    let back = within(Duration::from_secs(70), "the agent back on the Local API", || {
        Ok(answered(&agent) > answered_before)
    })?;
    eprintln!(
        "the Local API restarted → the agent pulling again: {} ms",
        back.as_millis()
    );
    let y = format!("{net}.4");
    lapi.add_decision_ip(&y, Duration::from_secs(3600))?;
    within(Duration::from_secs(70), "a decision made after the restart", || {
        Ok(ban_of(&pin, &y)?.is_some())
    })?;
    assert!(
        ban_of(&pin, &flooder)?.is_some(),
        "the kernel's own ban survived it all"
    );

    // 10,000 decisions at once (one alert, pushed as a machine): applied, time reported.
    let client = sipfilter::crowdsec::Lapi {
        host: lapi.connect_addr().ip().to_string(),
        port: lapi.connect_addr().port(),
        bouncer_key: KEY_A.into(),
        machine: Some(("gw-a".into(), PASSWORD.into())),
        scopes: vec![],
        origins: vec![],
    };
    let many: Vec<Value> = (0..10_000u32)
        .map(|i| {
            serde_json::json!({"origin": "cscli", "type": "ban", "scope": "Ip",
                "value": format!("10.{}.{}.{}", 100 + (i >> 16), (i >> 8) & 255, i & 255),
                "duration": "1h", "scenario": "bulk"})
        })
        .collect();
    let token = pbx.run({
        let c = client.clone();
        move || c.login()
    })?;
    let body = serde_json::json!([{
        "scenario": "bulk", "scenario_hash": "", "scenario_version": "", "message": "10,000 at once",
        "events_count": 1, "start_at": sipfilter::crowdsec::now_rfc3339(), "stop_at": sipfilter::crowdsec::now_rfc3339(),
        "capacity": 0, "leakspeed": "0", "simulated": false, "events": [],
        "source": {"scope": "Ip", "value": "10.100.0.0"}, "decisions": many,
    }]);
    let started = Instant::now();
    let addr = lapi.connect_addr();
    let status = pbx.run(move || {
        let mut s = std::net::TcpStream::connect(addr)?;
        let b = body.to_string();
        use std::io::{Read as _, Write as _};
        write!(
            s,
            "POST /v1/alerts HTTP/1.1\r\nHost: x\r\nUser-Agent: sipfilter-test/1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
            b.len()
        )?;
        let mut r = String::new();
        s.read_to_string(&mut r)?;
        Ok(r.lines().next().unwrap_or("").to_owned())
    })?;
    assert!(status.contains(" 201"), "bulk push: {status}");
    let stored = started.elapsed();
    let applied = within(Duration::from_secs(60), "10,000 decisions in the ban table", || {
        Ok(bans(&pin)?.len() >= 10_000)
    })?;
    let line = agent
        .log()
        .lines()
        .rev()
        .find(|l| l.contains("crowdsec: 10000 ban(s)") || l.contains("ban(s)") && l.contains("applied in"))
        .unwrap_or("")
        .to_owned();
    eprintln!(
        "10,000 decisions: stored by the Local API in {} ms, in the kernel {} ms later; the agent: {line}",
        stored.as_millis(),
        applied.as_millis()
    );
    drop(agent);
    Ok(())
}

/// Two gateways (two agents in two namespaces, each its own pins and bouncer key) and one
/// Local API: a robot that floods gateway A is dropped at gateway B without ever having been
/// rate-limited there. The robot has one address (on its loopback) and a link to each gateway.
#[test]
fn a_robot_banned_at_one_gateway_is_dropped_at_the_other() -> anyhow::Result<()> {
    let hub = Netns::new("cshub")?;
    let gw_a = Netns::new("csgwa")?;
    let gw_b = Netns::new("csgwb")?;
    let robot = Netns::new("csbot")?;
    veth_pair(&hub, &["10.215.1.1/24"], &gw_a, &["10.215.1.2/24"])?;
    veth_pair(&hub, &["10.215.2.1/24"], &gw_b, &["10.215.2.2/24"])?;
    let (rob_a, a_if) = veth_pair(&robot, &[], &gw_a, &["10.215.3.1/24"])?;
    let (rob_b, b_if) = veth_pair(&robot, &[], &gw_b, &["10.215.4.1/24"])?;
    let robot_ip = "10.215.9.9";
    robot.exec(&["ip", "addr", "add", &format!("{robot_ip}/32"), "dev", "lo"])?;
    robot.exec(&["ip", "route", "add", "10.215.3.0/24", "dev", &rob_a, "src", robot_ip])?;
    robot.exec(&["ip", "route", "add", "10.215.4.0/24", "dev", &rob_b, "src", robot_ip])?;
    for gw in [&gw_a, &gw_b] {
        // Back to the robot, for ARP and answers.
        let dev = if std::ptr::eq(gw, &gw_a) { &a_if } else { &b_if };
        gw.exec(&["ip", "route", "add", &format!("{robot_ip}/32"), "dev", dev])?;
    }

    let dir = ScratchDir::new("crowdsec-fleet")?;
    let port = sipfilter_tests::crowdsec::free_port(Some(&hub))?;
    let lapi = LocalApi::start(&dir.path().join("lapi"), format!("0.0.0.0:{port}").parse()?, Some(&hub))?;
    lapi.add_bouncer_with_key("gw-a", KEY_A)?;
    lapi.add_bouncer_with_key("gw-b", KEY_B)?;
    lapi.add_machine("gw-a", PASSWORD)?;
    lapi.add_machine("gw-b", PASSWORD)?;
    let (pins_a, pins_b) = (PrivateBpffs::new()?, PrivateBpffs::new()?);
    let cfg_a = config(dir.path(), &format!("http://10.215.1.1:{port}"), KEY_A, "gw-a")?;
    let cfg_b = config(dir.path(), &format!("http://10.215.2.1:{port}"), KEY_B, "gw-b")?;
    let _agent_a = start_agent(&gw_a, &pins_a, dir.path(), "agent-a", &a_if, &cfg_a)?;
    let agent_b = start_agent(&gw_b, &pins_b, dir.path(), "agent-b", &b_if, &cfg_b)?;

    flood(&robot, robot_ip, "10.215.3.1", 300)?;
    within(Duration::from_secs(5), "banned at A", || {
        Ok(ban_of(&pins_a.pin_dir(), robot_ip)?.is_some())
    })?;
    let at_b = within(Duration::from_secs(10), "the ban reaches B through CrowdSec", || {
        Ok(ban_of(&pins_b.pin_dir(), robot_ip)?.is_some())
    })?;
    eprintln!("banned at A → in B's kernel: {} ms", at_b.as_millis());
    let ban = ban_of(&pins_b.pin_dir(), robot_ip)?.context("ban at B")?;
    assert_eq!(ban["reason"], "crowdsec", "{ban}");
    flood(&robot, robot_ip, "10.215.4.1", 50)?;
    std::thread::sleep(Duration::from_millis(500));
    let s = stats(&pins_b.pin_dir())?;
    assert!(
        s["outcomes"]["banned"].as_u64().unwrap_or(0) >= 50,
        "B dropped the robot as banned: {s}"
    );
    for reason in ["rate_register", "throttled"] {
        assert_eq!(s["outcomes"][reason], 0, "B never rate-limited it ({reason}): {s}");
    }
    assert!(agent_b.log().contains("crowdsec: 1 ban(s)"), "{}", agent_b.log());
    Ok(())
}

/// A TLS SIP port (5061) carries nothing the gateway can read: what protects it are the
/// lists and bans, the connection budgets and the fleet. A TCP server on 5061 in the PBX's
/// namespace (it counts whom it accepted; the bytes are opaque to sipfilter either way):
/// a CrowdSec decision (as a PBX's security log would make one) drops the robot's SYNs in
/// XDP; a SYN flood from another address is banned `connection_flood` and pushed to the
/// Local API; a phone's TLS connections get through before and after.
#[test]
fn a_crowdsec_decision_and_a_syn_flood_close_the_tls_port_to_robots_only() -> anyhow::Result<()> {
    let lan = Netns::new("tlslan")?;
    let pbx = Netns::new("tlspbx")?;
    let net = "10.217.0";
    let (_, pbx_if) = veth_pair(
        &lan,
        &[&format!("{net}.2/24"), &format!("{net}.3/24"), &format!("{net}.4/24")],
        &pbx,
        &[&format!("{net}.1/24")],
    )?;
    let bpffs = PrivateBpffs::new()?;
    let dir = ScratchDir::new("crowdsec-tls")?;
    let lapi = LocalApi::loopback(Some(&pbx))?;
    lapi.add_bouncer_with_key("gw-tls", KEY_A)?;
    lapi.add_machine("gw-tls", PASSWORD)?;
    let cfg = config(dir.path(), &lapi.url(), KEY_A, "gw-tls")?;
    let _agent = start_agent(&pbx, &bpffs, dir.path(), "agent", &pbx_if, &cfg)?;
    let pin = bpffs.pin_dir();
    let pbx_ip = format!("{net}.1");
    let server = format!(
        "import socket\nsrv = socket.socket()\nsrv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         srv.bind(('{pbx_ip}', 5061))\nsrv.listen(4096)\nprint('listening', flush=True)\nkeep = []\n\
         while True:\n    c, a = srv.accept()\n    keep.append(c)\n    print('accepted', a[0], flush=True)\n"
    );
    let mut tls = pbx.spawn("tls-server", &["python3", "-c", &server], dir.path())?;
    tls.wait_for_output("listening", Duration::from_secs(10))?;
    // A client connection from `from`: "connected" or "refused" (no answer in 3 s).
    let connect = |name: &str, from: &str| -> anyhow::Result<bool> {
        let script = format!(
            "import socket\ns = socket.socket()\ns.bind(('{from}', 0))\ns.settimeout(3)\n\
             try:\n    s.connect(('{pbx_ip}', 5061))\n    s.send(b'\\x16\\x03\\x01\\x00\\x05hello')\n    print('connected')\n\
             except OSError as e:\n    print('refused', e)\n"
        );
        let mut p = lan.spawn(name, &["python3", "-c", &script], dir.path())?;
        p.wait(Duration::from_secs(10))?;
        Ok(p.output().contains("connected"))
    };
    let (robot, flooder, phone) = (format!("{net}.2"), format!("{net}.3"), format!("{net}.4"));
    assert!(connect("phone-before", &phone)?, "the phone connects over TLS");

    // The PBX's log made a decision about the robot; it reaches the kernel.
    lapi.add_decision_ip(&robot, Duration::from_secs(3600))?;
    within(Duration::from_secs(3), "the decision in the ban table", || {
        Ok(ban_of(&pin, &robot)?.is_some_and(|b| b["reason"] == "crowdsec"))
    })?;
    let banned_before = stats(&pin)?["outcomes"]["banned"].as_u64().unwrap_or(0);
    assert!(!connect("robot", &robot)?, "the banned robot got a TLS connection");
    let banned_after = stats(&pin)?["outcomes"]["banned"].as_u64().unwrap_or(0);
    assert!(banned_after > banned_before, "its SYNs dropped as banned");

    // A SYN flood on the TLS port.
    let flood = syn_flood_script(&flooder, &pbx_ip, 5061, 400);
    let mut f = lan.spawn("syn-flood", &["python3", "-c", &flood], dir.path())?;
    within(Duration::from_secs(10), "the SYN flood banned", || {
        Ok(ban_of(&pin, &flooder)?.is_some_and(|b| b["reason"] == "connection_flood"))
    })?;
    f.wait(Duration::from_secs(20))?;
    within(Duration::from_secs(5), "the flood's ban pushed to CrowdSec", || {
        Ok(lapi
            .decisions()?
            .iter()
            .any(|d| d.value == flooder && d.origin == "sipfilter"))
    })?;
    assert!(
        lapi.decisions_json()?
            .to_string()
            .contains("sipfilter/connection_flood"),
        "the scenario names the reason"
    );
    assert!(connect("phone-after", &phone)?, "the phone still connects over TLS");

    let accepted = tls.output();
    let from = |ip: &str| accepted.lines().filter(|l| *l == format!("accepted {ip}")).count();
    let s = stats(&pin)?;
    eprintln!(
        "TLS port: accepted from the robot {}, the flooder {}, the phone {}; transports {}; connections {} throttled {} flood {}",
        from(&robot),
        from(&flooder),
        from(&phone),
        s["transports"],
        s["outcomes"]["connection"],
        s["outcomes"]["connection_throttled"],
        s["outcomes"]["rate_connection"]
    );
    assert_eq!(from(&robot), 0);
    assert!(from(&flooder) <= 20, "an unknown source opens at most 20 connections");
    assert_eq!(from(&phone), 2);
    assert!(s["transports"]["tls"].as_u64().unwrap() > 0);
    Ok(())
}
