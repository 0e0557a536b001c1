//! Types and pure logic shared by the sipfilter XDP program and its userspace.
//!
//! Everything the kernel and userspace must agree on is defined here once: map names, map
//! key/value layouts, the runtime configuration record, counter slots and the ban event. The
//! decisions that do not need the kernel (SIP method classification, token-bucket arithmetic,
//! ban escalation) live here as plain functions so they can be unit-tested and fuzzed on the
//! host and are compiled, inlined, into the XDP program unchanged.
#![no_std]

pub mod answers;
pub mod bucket;
pub mod calls;
pub mod config;
pub mod counters;
pub mod devices;
pub mod dialed;
pub mod maps;
pub mod scan;
pub mod sip;
pub mod user_agent;

pub use answers::{Answer, AnswerState, Judgement};
pub use bucket::TokenBucket;
pub use config::{Budget, ClassLimit, KernelConfig, TierPolicy, TrustConfig};
pub use counters::{Counters, Outcome, Verdict};
pub use maps::{
    Ban, BanEvent, ClockSample, CrackedExtension, KnownSource, ListEntry, OffenseHistory, RateState, SourceKey,
};
pub use sip::{classify, Method, RateClass};

/// Nanoseconds per second, the unit of every time in the maps (CLOCK_BOOTTIME).
pub const NS_PER_SEC: u64 = 1_000_000_000;

#[cfg(feature = "user")]
mod pod {
    //! The map types are plain old data: aya may copy them in and out of maps byte for byte.
    use super::*;
    unsafe impl aya::Pod for SourceKey {}
    unsafe impl aya::Pod for Ban {}
    unsafe impl aya::Pod for OffenseHistory {}
    unsafe impl aya::Pod for RateState {}
    unsafe impl aya::Pod for KernelConfig {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for BanEvent {}
    unsafe impl aya::Pod for ListEntry {}
    unsafe impl aya::Pod for ClockSample {}
    unsafe impl aya::Pod for KnownSource {}
    unsafe impl aya::Pod for crate::maps::ConnectionKey {}
    unsafe impl aya::Pod for crate::maps::Connection {}
    unsafe impl aya::Pod for AnswerState {}
    unsafe impl aya::Pod for CrackedExtension {}
    unsafe impl aya::Pod for crate::devices::DeviceKey {}
    unsafe impl aya::Pod for crate::devices::DeviceState {}
    unsafe impl aya::Pod for crate::user_agent::ScannerUserAgents {}
    unsafe impl aya::Pod for crate::calls::DestinationRule {}
    unsafe impl aya::Pod for crate::calls::CallEvent {}
}
