//! The benchmark behind `cargo xtask bench`: ns/packet of each path through the real XDP
//! program, measured by the kernel with BPF_PROG_TEST_RUN, as a ratio to an empty XDP
//! program measured in the same run on the same CPU with the same frame size.
//!
//! Paths: the floor (empty program), non-SIP UDP, a SIP REGISTER from a known source (the
//! full path: ban, allowlist, denylist, tier, bucket), from an unknown source (plus the
//! header inspection, by tail call), a phone's full REGISTER from an unknown source (the
//! scanner User-Agent search over 13 headers), a known phone's INVITE abroad (its number
//! checked against 500 destination prefixes), a banned source, an allowlisted source, an IPv6
//! REGISTER. The maps hold a realistic load: 16 allowlisted trunk networks and a
//! 10,000-entry denylist (an imported blocklist). Rate state is cleared before every
//! measurement and the buckets are sized so a measurement never empties one, so every
//! repeat takes the path being measured.
//!
//! The answers (TC egress) program against an empty TC program: non-SIP egress, a 100
//! Trying (counted, not read), and a 401 to a REGISTER (read, identified and judged: three
//! tail calls), all to a source the ingress program knows.

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf};

use anyhow::{bail, Context as _};
use aya::programs::{TestRun as _, TestRunOptions};
use sipfilter::{addr::source_key, filter_maps::ListKind, Cidr};
use sipfilter_common::{counters::ban_reason, maps::PERMANENT, KnownSource};
use sipfilter_tests::{
    bench::{self, args, median, pin_to_cpu, Args},
    harness::{TestFilter, XDP_DROP, XDP_PASS},
    packet::{sip_answer, sip_request, sip_request_from, PacketBuilder as P},
};

/// A phone's REGISTER as it comes: 13 headers, the User-Agent last (the scanner search reads
/// them all, in two rounds).
const PHONE_REGISTER: &[u8] = b"REGISTER sip:pbx.example SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.21:5060;branch=z9hG4bK-5f2a8c1d;rport\r\n\
Max-Forwards: 70\r\n\
From: \"Reception\" <sip:200@pbx.example>;tag=9c1e4f2a\r\n\
To: \"Reception\" <sip:200@pbx.example>\r\n\
Call-ID: 0_2794519417@198.51.100.21\r\n\
CSeq: 1 REGISTER\r\n\
Contact: <sip:200@198.51.100.21:5060>;reg-id=1;+sip.instance=\"<urn:uuid:00000000-0000-1000-8000-805ec0a1b2c3>\"\r\n\
Allow: INVITE, INFO, PRACK, ACK, BYE, CANCEL, OPTIONS, NOTIFY, REGISTER, SUBSCRIBE, REFER, PUBLISH, UPDATE, MESSAGE\r\n\
Supported: replaces, timer, path, gruu\r\n\
Expires: 3600\r\n\
Allow-Events: talk, hold, conference, refer, check-sync\r\n\
Content-Length: 0\r\n\
User-Agent: Yealink SIP-T46S 66.86.0.15\r\n\r\n";

/// A phone's INVITE to a number in the UK (allowed), through the destination rules.
const PHONE_INVITE: &[u8] = b"INVITE sip:00442079460000@pbx.example SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.20:5060;branch=z9hG4bK-77c1\r\n\
Max-Forwards: 70\r\n\
From: \"Reception\" <sip:200@pbx.example>;tag=3d9b\r\n\
To: <sip:00442079460000@pbx.example>\r\n\
Call-ID: 0_3310945@198.51.100.20\r\n\
CSeq: 2 INVITE\r\n\
Contact: <sip:200@198.51.100.20:5060>\r\n\
Content-Type: application/sdp\r\n\
User-Agent: Yealink SIP-T46S 66.86.0.15\r\n\
Content-Length: 0\r\n\r\n";

struct Path {
    name: &'static str,
    frame: Vec<u8>,
    expect: u32,
    floor: bool,
}

fn main() -> anyhow::Result<()> {
    let args = args(Args {
        repeat: 1_000_000,
        runs: 15,
        calls: 0,
        out: PathBuf::from("target/bench/xdp.json"),
    })?;
    pin_to_cpu(0);

    // Buckets big enough that a measurement of `repeat` packets never empties one; the
    // request rules of the default configuration (scanner User-Agents, the shipped high-risk
    // destinations) and enough more destination rules for 500.
    let (config, settings) = bench::with_request_rules(500)?;
    let mut filter = TestFilter::with_config(&config)?;
    filter.loaded.request_rules.write(&settings)?;
    if filter.loaded.request_rules.destinations().len() < 500 {
        bail!("the prefix list has fewer than 500 entries");
    }

    let clean = Ipv4Addr::new(198, 51, 100, 20);
    let stranger = Ipv4Addr::new(198, 51, 100, 21);
    // The clean source is a known one (a phone that registered), as most traffic is.
    let now = sipfilter::clock::boot_ns();
    filter.loaded.trust.insert_known(
        &source_key(clean.into(), 128),
        &KnownSource {
            until_ns: now + 3600 * 1_000_000_000,
            last_success_ns: now,
            extension: sipfilter_common::scan::ext_from("200"),
        },
    )?;
    let banned = Ipv4Addr::new(198, 51, 100, 66);
    let trunk = Ipv4Addr::new(192, 0, 2, 10);
    for i in 0..16u8 {
        filter
            .maps()
            .list_add(ListKind::Allow, &format!("192.0.{}.0/24", 2 + i).parse()?, PERMANENT)?;
    }
    for i in 0..10_000u32 {
        let a = Ipv4Addr::from(0x0a00_0000 + i * 256); // 10.0.0.0/24, 10.0.1.0/24, ...
        filter.maps().list_add(
            ListKind::Deny,
            &Cidr {
                addr: a.into(),
                prefix_len: 24,
            },
            PERMANENT,
        )?;
    }
    filter
        .maps()
        .add_ban(&source_key(banned.into(), 128), None, ban_reason::MANUAL)?;

    let register = |src| {
        P::udp4(
            src,
            Ipv4Addr::new(192, 0, 2, 1),
            5060,
            5060,
            &sip_request("REGISTER", "200"),
        )
        .build()
        .bytes
    };
    let sip_frame = register(clean);
    let paths = vec![
        Path {
            name: "floor (empty XDP program)",
            frame: sip_frame.clone(),
            expect: XDP_PASS,
            floor: true,
        },
        Path {
            name: "non-SIP UDP",
            frame: P::udp4(
                clean,
                Ipv4Addr::new(192, 0, 2, 1),
                40000,
                53,
                &sip_request("REGISTER", "200"),
            )
            .build()
            .bytes,
            expect: XDP_PASS,
            floor: false,
        },
        Path {
            name: "SIP REGISTER, known source",
            frame: sip_frame.clone(),
            expect: XDP_PASS,
            floor: false,
        },
        Path {
            name: "SIP REGISTER, unknown source",
            frame: register(stranger),
            expect: XDP_PASS,
            floor: false,
        },
        Path {
            name: "REGISTER, unknown, 13 headers",
            frame: P::udp4(stranger, Ipv4Addr::new(192, 0, 2, 1), 5060, 5060, PHONE_REGISTER)
                .build()
                .bytes,
            expect: XDP_PASS,
            floor: false,
        },
        Path {
            name: "INVITE +44…, 500 prefixes",
            frame: P::udp4(clean, Ipv4Addr::new(192, 0, 2, 1), 5060, 5060, PHONE_INVITE)
                .build()
                .bytes,
            expect: XDP_PASS,
            floor: false,
        },
        Path {
            name: "banned source",
            frame: register(banned),
            expect: XDP_DROP,
            floor: false,
        },
        Path {
            name: "banned source's SYN (TCP)",
            frame: P::udp4(banned, Ipv4Addr::new(192, 0, 2, 1), 40000, 5060, b"")
                .syn()
                .build()
                .bytes,
            expect: XDP_DROP,
            floor: false,
        },
        Path {
            name: "REGISTER over TCP, known",
            frame: P::udp4(
                clean,
                Ipv4Addr::new(192, 0, 2, 1),
                40000,
                5060,
                &sip_request("REGISTER", "200"),
            )
            .tcp()
            .build()
            .bytes,
            expect: XDP_PASS,
            floor: false,
        },
        Path {
            name: "allowlisted source",
            frame: register(trunk),
            expect: XDP_PASS,
            floor: false,
        },
        Path {
            name: "IPv6 REGISTER, clean source",
            frame: P::sip6("2001:db8:20::20".parse()?, "REGISTER").build().bytes,
            expect: XDP_PASS,
            floor: false,
        },
    ];

    filter.loaded.load_floor()?;
    let mut samples: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for _ in 0..args.runs {
        // Round-robin over the paths so drift in machine load spreads over all of them.
        for p in &paths {
            filter.maps().clear_rate_state()?;
            let prog = if p.floor {
                filter
                    .loaded
                    .ebpf
                    .program(sipfilter_common::maps::FLOOR_PROGRAM)
                    .context("floor")?
                    .try_into()?
            } else {
                filter.loaded.program()?
            };
            let r = prog.test_run(TestRunOptions {
                data_in: Some(&p.frame),
                repeat: args.repeat,
                ..Default::default()
            })?;
            if r.return_value != p.expect {
                bail!(
                    "{} returned {} instead of {}: the path changed mid-run",
                    p.name,
                    r.return_value,
                    p.expect
                );
            }
            samples.entry(p.name).or_default().push(r.duration.as_nanos() as f64);
        }
    }

    // Ratios are taken within each round (path and floor measured seconds apart), then the
    // median over rounds: a burst of load from elsewhere moves both and cancels out.
    let floor_samples = samples[paths[0].name].clone();
    let ratio_of = |name: &str| median(samples[name].iter().zip(&floor_samples).map(|(p, f)| p / f).collect());
    let floor = median(floor_samples.clone());
    let targets: BTreeMap<&str, f64> = [
        ("non-SIP UDP", 1.1),
        ("SIP REGISTER, known source", 2.0),
        ("SIP REGISTER, unknown source", 2.0),
        ("REGISTER, unknown, 13 headers", 2.0),
        ("INVITE +44…, 500 prefixes", 2.3),
        ("banned source", 1.3),
        ("banned source's SYN (TCP)", 1.3),
        ("REGISTER over TCP, known", 2.0),
    ]
    .into();
    println!(
        "XDP ns/packet (BPF_PROG_TEST_RUN, repeat {}, median of {} rounds; ratio = median of per-round ratios; frame {} bytes)",
        args.repeat,
        args.runs,
        sip_frame.len()
    );
    println!("{:<30} {:>8} {:>9} {:>8}  target", "path", "ns/pkt", "× floor", "added");
    let mut json_paths = serde_json::Map::new();
    for p in &paths {
        let ns = median(samples[p.name].clone());
        let ratio = ratio_of(p.name);
        let target = targets.get(p.name).map_or(String::new(), |t| {
            format!("≤ {t:.1}× {}", if ratio <= *t { "met" } else { "MISSED" })
        });
        println!(
            "{:<30} {:>8.1} {:>8.2}× {:>+8.1}  {}",
            p.name,
            ns,
            ratio,
            ns - floor,
            target
        );
        if !p.floor {
            json_paths.insert(
                p.name.to_string(),
                serde_json::json!({ "ns_per_packet": ns, "ratio_to_floor": ratio, "added_ns": ns - floor }),
            );
        }
    }
    let egress = bench_egress(&mut filter, &args, clean)?;
    let json = serde_json::json!({ "floor_ns": floor, "repeat": args.repeat, "runs": args.runs, "paths": json_paths, "egress": egress });
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&json)? + "\n")?;
    println!("wrote {}", args.out.display());
    Ok(())
}

/// The answers program against an empty TC program, in rounds like the XDP paths.
fn bench_egress(filter: &mut TestFilter, args: &Args, peer: Ipv4Addr) -> anyhow::Result<serde_json::Value> {
    let pbx = Ipv4Addr::new(192, 0, 2, 1);
    let answer = |status: &str| {
        P::udp4(pbx, peer, 5060, 5060, &sip_answer(status, "REGISTER", 7, "200", "200"))
            .build()
            .bytes
    };
    let paths: Vec<(&str, Vec<u8>)> = vec![
        ("floor (empty TC program)", answer("401 Unauthorized")),
        (
            "non-SIP egress",
            P::udp4(
                pbx,
                peer,
                40000,
                53,
                &sip_answer("401 Unauthorized", "REGISTER", 7, "200", "200"),
            )
            .build()
            .bytes,
        ),
        ("SIP answer 100 Trying", answer("100 Trying")),
        ("SIP answer 401 to REGISTER", answer("401 Unauthorized")),
        (
            "401 to REGISTER over TCP",
            P::udp4(
                pbx,
                peer,
                5060,
                40000,
                &sip_answer("401 Unauthorized", "REGISTER", 7, "200", "200"),
            )
            .tcp()
            .build()
            .bytes,
        ),
    ];
    filter.loaded.load_tc_floor()?;
    let mut samples: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for _ in 0..args.runs {
        for (name, frame) in &paths {
            // The peer has state (its REGISTER came in), so the 401 is judged: the same
            // request's answer again each repeat, a retransmission, which changes nothing.
            filter.maps().clear_rate_state()?;
            let request = sip_request_from("REGISTER", "200", "200", 7);
            let request = match name.contains("TCP") {
                // Over TCP the device is the connection: the REGISTER came in on it.
                true => P::udp4(peer, pbx, 40000, 5060, &request).tcp(),
                false => P::udp4(peer, pbx, 5060, 5060, &request),
            };
            filter.run(&request.build().bytes)?;
            let prog: &aya::programs::SchedClassifier = if name.starts_with("floor") {
                filter
                    .loaded
                    .ebpf
                    .program(sipfilter_common::maps::TC_FLOOR_PROGRAM)
                    .context("tc floor")?
                    .try_into()?
            } else {
                filter.loaded.answers_program()?
            };
            let r = prog.test_run(TestRunOptions {
                data_in: Some(frame),
                repeat: args.repeat,
                ..Default::default()
            })?;
            if r.return_value != 0 {
                bail!("{name} returned {} instead of TC_ACT_OK", r.return_value);
            }
            samples.entry(name).or_default().push(r.duration.as_nanos() as f64);
        }
    }
    if filter
        .loaded
        .maps
        .bans()?
        .iter()
        .any(|(k, _)| *k == source_key(peer.into(), 128))
    {
        bail!("the benchmark's answers banned their peer: the path changed mid-run");
    }
    let floor_samples = samples[paths[0].0].clone();
    let tc_floor = median(floor_samples.clone());
    let targets: BTreeMap<&str, f64> = [
        ("non-SIP egress", 1.2),
        ("SIP answer 401 to REGISTER", 2.0),
        ("401 to REGISTER over TCP", 2.0),
    ]
    .into();
    println!("\nTC egress ns/packet (answers program; ratio to an empty TC program, same rounds)");
    println!("{:<30} {:>8} {:>9} {:>8}  target", "path", "ns/pkt", "× floor", "added");
    let mut out = serde_json::Map::new();
    for (name, _) in &paths {
        let ns = median(samples[name].clone());
        let ratio = median(samples[name].iter().zip(&floor_samples).map(|(p, f)| p / f).collect());
        let target = targets.get(name).map_or(String::new(), |t| {
            format!("≤ {t:.1}× {}", if ratio <= *t { "met" } else { "MISSED" })
        });
        println!(
            "{:<30} {:>8.1} {:>8.2}× {:>+8.1}  {}",
            name,
            ns,
            ratio,
            ns - tc_floor,
            target
        );
        out.insert(
            name.to_string(),
            serde_json::json!({ "ns_per_packet": ns, "ratio_to_floor": ratio, "added_ns": ns - tc_floor }),
        );
    }
    Ok(serde_json::Value::Object(out))
}
