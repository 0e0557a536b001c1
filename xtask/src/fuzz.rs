//! `cargo xtask fuzz [--secs N]`: every cargo-fuzz target (fuzz/fuzz_targets: the shared SIP
//! scanners, the configuration, list files, the state file and the agent's own records,
//! blocklist imports, the network clients' decoders) for N seconds each. A crash fails the
//! task and names the input libFuzzer saved (fuzz/artifacts/TARGET/); make it a regression test.

use std::process::Command;

use anyhow::bail;

use crate::setup;

pub const TARGETS: &[&str] = &["headers", "config", "lists", "state_file", "blocklist", "decoders"];

pub fn run(secs: u64) -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf();
    let mut failed = Vec::new();
    for target in TARGETS {
        let corpus = root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let seeds = root.join("fuzz/seeds").join(target);
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&root)
            .args([&format!("+{}", setup::EBPF_TOOLCHAIN), "fuzz", "run", target])
            .arg(&corpus);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        cmd.args([
            "--",
            &format!("-max_total_time={secs}"),
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
        ])
        // The parsers only: the embedded BPF object is not built (see sipfilter/build.rs).
        .env("AYA_BUILD_SKIP", "1")
        .env_remove("RUSTFLAGS");
        println!("fuzzing {target} for {secs} s");
        let status = cmd.status()?;
        if !status.success() {
            failed.push(*target);
        }
    }
    if !failed.is_empty() {
        bail!("fuzz targets failed: {} (inputs in fuzz/artifacts/)", failed.join(", "));
    }
    println!("fuzzed {} targets for {secs} s each: no crash", TARGETS.len());
    Ok(())
}
