//! sipfilter's userspace: loading the XDP program, and every operation on its pinned maps.
//!
//! The `sipfilter` binary (agent and CLI) and the privileged tests are built on this library.

pub mod addr;
pub mod agent_lock;
pub mod agent_record;
pub mod blocklist;
pub mod bpffs;
pub mod clock;
pub mod config;
pub mod connections;
pub mod crowdsec;
pub mod devices;
pub mod dns;
pub mod duration;
pub mod event_log;
pub mod events;
pub mod filter_maps;
pub mod fraud_file;
pub mod loader;
pub mod program_tables;
pub mod releases;
pub mod request_rules;
pub mod state_file;
pub mod trust;

pub use addr::Cidr;
pub use filter_maps::FilterMaps;
pub use loader::Loaded;
pub use trust::TrustMaps;
