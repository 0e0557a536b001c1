//! `cargo xtask bench`: runs the benchmark binary in release mode.

use crate::setup;

pub fn run(repeat: u32, runs: u32) -> anyhow::Result<()> {
    // Absolute, so the result lands in the workspace whatever folder cargo xtask ran from.
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench/xdp.json");
    setup::cargo(&[
        "run",
        "--release",
        "--package",
        "sipfilter-tests",
        "--bin",
        "xdp-bench",
        "--",
        "--repeat",
        &repeat.to_string(),
        "--runs",
        &runs.to_string(),
        "--out",
        out.to_str().unwrap_or("target/bench/xdp.json"),
    ])
}

/// `cargo xtask bench --peers|--scale`: another benchmark binary, release mode, writing
/// `target/bench/<json>`.
pub fn extra(bin: &str, json: &str) -> anyhow::Result<()> {
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/bench")
        .join(json);
    let out = out.to_str().unwrap_or(json).to_owned();
    setup::cargo(&[
        "run",
        "--release",
        "--package",
        "sipfilter-tests",
        "--bin",
        bin,
        "--",
        "--out",
        &out,
    ])
}
