//! The sipfilter XDP program: parse, classify, rate-limit, auto-ban, drop.
//!
//! Decision order for a SIP datagram (UDP to a configured SIP port):
//!   allowlist → pass; denylist → drop; active ban → drop; per-class token bucket → pass,
//!   or drop and ban the source.
//! All four answers come from the source's rate-state slot, which caches its ban and list
//! status (re-read whenever userspace bumps the config generation), so the common paths make
//! no map-helper call at all.
//!
//! Anything this program cannot parse is passed and counted: judging garbage risks banning
//! an innocent source, and the PBX copes with garbage anyway.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod program;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Host builds (e.g. `cargo check --workspace`) get this stub; the program itself is
    // built for bpfel-unknown-none by the sipfilter crate's build script.
}
