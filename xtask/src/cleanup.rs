//! Removes what an interrupted test run may leave: the tests name everything they create
//! with recognisable prefixes, and remove it themselves when they end normally or fail.

use std::process::{Command, Stdio};

/// Namespace names the tests and the demo create (`sft-…` tests, `sfdemo-…` demo).
const NETNS_PREFIXES: &[&str] = &["sft-", "sfdemo-"];
/// Private bpffs mounts the tests create under the temp dir.
const BPFFS_PREFIX: &str = "sipfilter-test-bpffs-";

pub fn run() {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if NETNS_PREFIXES.iter().any(|p| name.starts_with(p)) {
                eprintln!("xtask cleanup: removing network namespace {name}");
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }
    let tmp = std::env::temp_dir();
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for line in mounts.lines() {
        let point = line.split_whitespace().nth(1).unwrap_or("");
        let is_ours = std::path::Path::new(point)
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(BPFFS_PREFIX));
        if is_ours && point.starts_with(tmp.to_str().unwrap_or("/tmp")) {
            eprintln!("xtask cleanup: unmounting {point}");
            let _ = Command::new("umount")
                .args(["-l", point])
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_dir(point);
        }
    }
}
