//! `cargo xtask bench [--peers|--scale]`: runs a benchmark binary in release mode.

use crate::setup;

pub fn run(repeat: u32, runs: u32) -> anyhow::Result<()> {
    bench_bin(
        "xdp-bench",
        "xdp.json",
        &["--repeat", &repeat.to_string(), "--runs", &runs.to_string()],
    )
}

/// `cargo xtask bench --peers|--scale`: another benchmark binary, release mode, writing
/// `target/bench/<json>`.
pub fn extra(bin: &str, json: &str) -> anyhow::Result<()> {
    bench_bin(bin, json, &[])
}

/// Runs a benchmark binary of the tests crate in release mode with `args`, writing its JSON
/// to `target/bench/<json>` (absolute, so it lands in the workspace whatever folder cargo
/// xtask ran from).
fn bench_bin(bin: &str, json: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/bench")
        .join(json);
    let out = out.to_str().unwrap_or(json).to_owned();
    let mut full = vec!["run", "--release", "--package", "sipfilter-tests", "--bin", bin, "--"];
    full.extend_from_slice(args);
    full.extend(["--out", &out]);
    setup::cargo(&full)
}
