//! Builds the XDP program (sipfilter-ebpf) for bpfel-unknown-none and leaves the object in
//! OUT_DIR, where `src/ebpf.rs` embeds it. `cargo xtask setup` installs what this needs.

use anyhow::Context as _;

/// The nightly whose LLVM (22) matches the libLLVM bpf-linker links. A newer nightly's
/// bitcode is refused by bpf-linker ("Invalid record"). Keep in step with xtask/src/setup.rs.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .context("sipfilter crate has no parent directory")?;
    let ebpf_dir = root.join("sipfilter-ebpf");
    let common_dir = root.join("sipfilter-common");
    // aya-build watches the eBPF crate; the shared types change the program too.
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 path")?;
    // The fuzzer builds this crate for its parsers only, with sanitizer flags no BPF target
    // takes: with AYA_BUILD_SKIP=1 the embedded object is empty (loading it would fail).
    if std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        let out = std::env::var("OUT_DIR").context("OUT_DIR")?;
        std::fs::write(std::path::Path::new(&out).join("sipfilter-xdp"), b"")?;
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "sipfilter-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .context("building the XDP program failed; run `cargo xtask setup` to install its toolchain")
}
