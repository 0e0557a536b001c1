//! `cargo xtask bench --peers`: what it costs to drop a banned source's packet with sipfilter,
//! and with the firewalls operators already have, on the same frames, the same number of
//! times, in one run.
//!
//! Frames are injected with BPF_PROG_TEST_RUN's live-frames mode (BPF_F_TEST_XDP_LIVE_FRAMES):
//! the kernel builds real frames from a page pool and runs the XDP program on them as on a
//! NIC's receive path of a veth interface in a namespace this program creates; frames the
//! program passes go up that interface's real stack (nftables netdev ingress, raw
//! PREROUTING, IP, UDP). So sipfilter drops before any socket buffer exists, and the peers
//! drop where they sit in the stack. Each path is measured in rounds, round-robin, and the
//! median ns/packet is reported with its ratio to sipfilter's drop.

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

use anyhow::{bail, Context as _};
use aya::programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp};
use sipfilter::addr::source_key;
use sipfilter_common::{counters::ban_reason, maps::FLOOR_PROGRAM, KernelConfig};
use sipfilter_tests::{
    bench::{args, median, Args},
    harness::TestFilter,
    netns::{sh, Netns},
    packet::{sip_request, PacketBuilder as P},
};

/// The `struct xdp_md` context of a live frame: its length (the kernel insists that
/// `data_end` is the frame's size) and the interface it arrives on.
fn xdp_md(len: usize, ifindex: u32) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

/// How a path drops (or passes) the frame: the XDP program that runs, and the firewall rules
/// loaded in the namespace while it is measured.
struct Path {
    name: &'static str,
    sipfilter: bool,
    /// nft ruleset text, or an `iptables …` command line.
    rules: &'static str,
}

const BANNED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 66);
const FLOODER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 77);

fn main() -> anyhow::Result<()> {
    let args = args(Args {
        repeat: 200_000,
        runs: 7,
        calls: 0,
        out: PathBuf::from("target/bench/peers.json"),
    })?;
    let ns = Netns::new("peers")?;
    // A veth pair inside the namespace: frames are injected as received on `dut`.
    sh(&[
        "ip", "-n", &ns.name, "link", "add", "dut", "type", "veth", "peer", "name", "peer",
    ])?;
    ns.ip(&["addr", "add", "10.99.0.1/24", "dev", "dut"])?;
    ns.ip(&["link", "set", "dut", "up"])?;
    ns.ip(&["link", "set", "peer", "up"])?;
    ns.ip(&["link", "set", "lo", "up"])?;
    let mac_text = ns.exec(&["cat", "/sys/class/net/dut/address"])?;
    let mac: Vec<u8> = mac_text
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .context("dut's MAC")?;

    let results = ns.run(move || measure(&args, &mac));
    drop(ns);
    results
}

fn frame(src: Ipv4Addr, mac: &[u8]) -> Vec<u8> {
    let mut f = P::udp4(
        src,
        Ipv4Addr::new(10, 99, 0, 1),
        5060,
        5060,
        &sip_request("REGISTER", "200"),
    )
    .build()
    .bytes;
    // Addressed to dut, so that what is passed is delivered, as on a real NIC.
    f[..6].copy_from_slice(mac);
    f
}

fn nft(rules: &str) -> anyhow::Result<()> {
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("nft (cargo xtask setup installs nftables)")?;
    std::io::Write::write_all(child.stdin.as_mut().context("stdin")?, rules.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("nft -f failed on:\n{rules}");
    }
    Ok(())
}

fn measure(args: &Args, mac: &[u8]) -> anyhow::Result<()> {
    let mut filter = TestFilter::with_config(&KernelConfig::default())?;
    filter
        .maps()
        .add_ban(&source_key(BANNED.into(), 128), None, ban_reason::MANUAL)?;
    filter.loaded.load_floor()?;
    // SAFETY: a NUL-terminated name; looked up in this thread's namespace.
    let ifindex = unsafe { libc::if_nametoindex(c"dut".as_ptr()) };
    if ifindex == 0 {
        bail!("no interface dut in the bench namespace");
    }
    let banned = frame(BANNED, mac);
    let flood = frame(FLOODER, mac);
    // Both frames have the same length.
    let ctx = xdp_md(banned.len(), ifindex);
    let paths = [
        Path {
            name: "banned source: sipfilter (XDP)",
            sipfilter: true,
            rules: "",
        },
        Path {
            name: "banned source: nftables netdev ingress set",
            sipfilter: false,
            rules: "table netdev sfpeers {\n set banned { type ipv4_addr; elements = { 198.51.100.66 }; }\n chain ingress {\n  type filter hook ingress device dut priority 0;\n  ip saddr @banned drop\n }\n}\n",
        },
        Path {
            name: "banned source: iptables raw PREROUTING",
            sipfilter: false,
            rules: "iptables -t raw -A PREROUTING -s 198.51.100.66 -j DROP",
        },
        Path {
            name: "no filter: delivered to a closed UDP port",
            sipfilter: false,
            rules: "",
        },
    ];
    let flood_paths = [
        Path {
            name: "REGISTER flood, one new source: sipfilter",
            sipfilter: true,
            rules: "",
        },
        Path {
            name: "REGISTER flood, one new source: nftables meter",
            sipfilter: false,
            rules: "table netdev sfpeers {\n set banned { type ipv4_addr; flags timeout; }\n chain ingress { type filter hook ingress device dut priority 0;\n  ip saddr @banned drop\n  udp dport 5060 meter flood size 65535 { ip saddr limit rate over 20/second burst 150 packets } add @banned { ip saddr timeout 300s } drop\n }\n}\n",
        },
    ];
    let run = |prog: &Xdp, data: &[u8]| -> anyhow::Result<f64> {
        let r = prog.test_run(TestRunOptions {
            data_in: Some(data),
            ctx_in: Some(&ctx),
            repeat: args.repeat,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..Default::default()
        })?;
        Ok(r.duration.as_nanos() as f64)
    };
    let mut samples: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for _ in 0..args.runs {
        for (set, frame) in [(&paths[..], &banned), (&flood_paths[..], &flood)] {
            for p in set {
                let _ = std::process::Command::new("nft")
                    .args(["delete", "table", "netdev", "sfpeers"])
                    .output();
                let _ = std::process::Command::new("iptables")
                    .args(["-t", "raw", "-F", "PREROUTING"])
                    .output();
                if let Some(cmd) = p.rules.strip_prefix("iptables ") {
                    let args: Vec<&str> = cmd.split_whitespace().collect();
                    let status = std::process::Command::new("iptables")
                        .args(&args)
                        .status()
                        .context("iptables (cargo xtask setup installs it)")?;
                    if !status.success() {
                        bail!("iptables {cmd} failed");
                    }
                } else if !p.rules.is_empty() {
                    nft(p.rules)?;
                }
                filter.maps().clear_rate_state()?;
                let floor: &Xdp = filter.loaded.ebpf.program(FLOOR_PROGRAM).context("floor")?.try_into()?;
                let prog = if p.sipfilter { filter.loaded.program()? } else { floor };
                let ns = run(prog, frame)?;
                samples.entry(p.name).or_default().push(ns);
            }
        }
        // The sipfilter flood path bans the flooder; lift it for the next round.
        filter.maps().remove_ban(&source_key(FLOODER.into(), 128))?;
    }
    let _ = std::process::Command::new("nft")
        .args(["delete", "table", "netdev", "sfpeers"])
        .output();
    let _ = std::process::Command::new("iptables")
        .args(["-t", "raw", "-F", "PREROUTING"])
        .output();

    let reference = median(samples[paths[0].name].clone());
    let flood_reference = median(samples[flood_paths[0].name].clone());
    println!(
        "ns/packet, live frames (BPF_F_TEST_XDP_LIVE_FRAMES) into a veth in a namespace; repeat {}, median of {} rounds",
        args.repeat, args.runs
    );
    println!("{:<46} {:>9} {:>14}", "path", "ns/pkt", "× sipfilter");
    let mut json = serde_json::Map::new();
    for (p, base) in paths
        .iter()
        .map(|p| (p, reference))
        .chain(flood_paths.iter().map(|p| (p, flood_reference)))
    {
        let ns = median(samples[p.name].clone());
        println!("{:<46} {:>9.1} {:>13.1}×", p.name, ns, ns / base);
        json.insert(
            p.name.to_string(),
            serde_json::json!({ "ns_per_packet": ns, "times_sipfilter": ns / base }),
        );
    }
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &args.out,
        serde_json::to_string_pretty(&serde_json::json!({ "repeat": args.repeat, "runs": args.runs, "paths": json }))?
            + "\n",
    )?;
    println!("wrote {}", args.out.display());
    Ok(())
}
