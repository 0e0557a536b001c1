//! The sipfilter kernel programs.
//!
//! - `sipfilter` (XDP, ingress): parse, classify, then for a SIP datagram or segment (UDP,
//!   TCP, TLS or WebSocket to a configured SIP port; a TCP segment that starts a SIP message
//!   is read like a datagram, a SYN meets the connection budgets): allowlist → pass; denylist → drop; active ban → drop; stealth and
//!   quarantine for sources that are neither known nor allowlisted; the token bucket of the
//!   source's trust tier → pass, or drop and ban ([`ingress`]).
//! - `sipfilter_answers` (TC, egress): reads the PBX's answers leaving from the SIP ports and
//!   judges the source they go to: failure budgets, promotion to known, cracked extensions
//!   ([`egress`]).
//!
//! Both share the maps ([`maps`]) and each source's slot ([`source_state`]); bans are made
//! in one place ([`bans`]). Anything the programs cannot parse is passed and counted:
//! judging garbage risks banning an innocent source, and the PBX copes with garbage anyway.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod bans;
#[cfg(target_arch = "bpf")]
mod clock;
#[cfg(target_arch = "bpf")]
mod connections;
#[cfg(target_arch = "bpf")]
mod egress;
#[cfg(target_arch = "bpf")]
mod ingress;
#[cfg(target_arch = "bpf")]
mod lists;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod request;
#[cfg(target_arch = "bpf")]
mod source_state;
mod verdict;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Host builds (e.g. `cargo check --workspace`) get this stub; the programs themselves are
    // built for bpfel-unknown-none by the sipfilter crate's build script.
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
