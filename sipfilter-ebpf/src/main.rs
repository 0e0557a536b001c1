//! The sipfilter XDP program: parse, classify, rate-limit, auto-ban, drop.
//!
//! Decision order for a SIP datagram (UDP to a configured SIP port):
//!   active ban → drop; allowlist → pass; denylist → drop; per-class token bucket → pass,
//!   or drop and ban the source.
//! The ban table is consulted before the allowlist because a banned source is the hot path
//! under attack; that is only equivalent to "allowlist first" because the ban table never
//! holds an allowlisted source: this program checks the allowlist before it bans, and
//! userspace refuses to ban allowlisted sources and lifts bans an allowlist entry covers.
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
