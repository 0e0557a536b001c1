//! What sipfilter's privileged tests and its benchmark share: a packet builder, a harness
//! that loads the real program into a private bpffs and runs packets through it with
//! BPF_PROG_TEST_RUN, and network-namespace helpers for end-to-end tests.

pub mod agent;
pub mod bench;
pub mod chart;
pub mod crowdsec;
pub mod dns;
pub mod harness;
pub mod kamailio;
pub mod lab;
pub mod model;
pub mod netns;
pub mod packet;
pub mod peer;
pub mod prometheus;
pub mod sipp;
