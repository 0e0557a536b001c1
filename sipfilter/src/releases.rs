//! The releases of sipfilter and the layouts of the maps each pins (name, key bytes, value
//! bytes, entries): what an upgrade may find under the pins. A version that changes a pinned
//! layout is a new release: add it here (never edit a released one), bump the workspace
//! version, tag the commit `v<version>` and record the commit in docs/releases.md. The test
//! below fails when this version's layouts are not those of its release.

/// A release and its pinned layouts.
pub struct Release {
    pub version: &'static str,
    /// The commit it was cut from (tags do not travel with every clone; this does).
    pub commit: &'static str,
    pub layouts: &'static [(&'static str, usize, usize, u32)],
}

/// Every release, oldest first.
pub const RELEASES: &[Release] = &[
    Release {
        version: "0.1.0",
        commit: "41fdbef",
        layouts: &[
            ("config", 4, 352, 1),
            ("counters", 4, 720, 1),
            ("ban_table", 16, 24, 131072),
            ("offense_history", 16, 16, 131072),
            ("rate_state", 4, 416, 65536),
            ("rate_overflow", 16, 416, 65536),
            ("allowlist", 20, 16, 262144),
            ("denylist", 20, 16, 262144),
            ("ban_events", 0, 0, 262144),
            ("known_sources", 16, 32, 65536),
            ("cracked_extensions", 16, 32, 4096),
            ("scanner_user_agents", 4, 928, 1),
            ("destinations", 12, 16, 16384),
            ("recent_calls", 24, 4, 65536),
            ("calls_to_number", 24, 136, 16384),
            ("international_calls", 16, 136, 16384),
            ("call_events", 0, 0, 65536),
        ],
    },
    Release {
        version: "0.2.0",
        commit: "0ac7b20",
        layouts: &[
            ("config", 4, 352, 1),
            ("counters", 4, 736, 1),
            ("ban_table", 16, 24, 131072),
            ("offense_history", 16, 16, 131072),
            ("rate_state", 4, 432, 65536),
            ("rate_overflow", 16, 432, 65536),
            ("allowlist", 20, 16, 262144),
            ("denylist", 20, 16, 262144),
            ("ban_events", 0, 0, 262144),
            ("known_sources", 16, 32, 65536),
            ("cracked_extensions", 16, 32, 4096),
            ("scanner_user_agents", 4, 928, 1),
            ("destinations", 12, 16, 16384),
            ("recent_calls", 24, 4, 65536),
            ("calls_to_number", 24, 136, 16384),
            ("international_calls", 16, 136, 16384),
            ("call_events", 0, 0, 65536),
            ("devices", 20, 256, 32768),
        ],
    },
    Release {
        version: "0.3.0",
        commit: "0ce1180",
        layouts: LAYOUTS_0_3,
    },
    // Requests framed in TCP segments, the audit trail of the CLI: no layout changed.
    Release {
        version: "0.4.0",
        commit: "e0ffe01",
        layouts: LAYOUTS_0_3,
    },
];

const LAYOUTS_0_3: &[(&str, usize, usize, u32)] = &[
    ("config", 4, 408, 1),
    ("counters", 4, 832, 1),
    ("ban_table", 16, 24, 131072),
    ("offense_history", 16, 16, 131072),
    ("rate_state", 4, 464, 65536),
    ("rate_overflow", 16, 464, 65536),
    ("allowlist", 20, 16, 262144),
    ("denylist", 20, 16, 262144),
    ("ban_events", 0, 0, 262144),
    ("known_sources", 16, 32, 65536),
    ("cracked_extensions", 16, 32, 4096),
    ("scanner_user_agents", 4, 928, 1),
    ("destinations", 12, 16, 16384),
    ("recent_calls", 24, 4, 65536),
    ("calls_to_number", 24, 136, 16384),
    ("international_calls", 16, 136, 16384),
    ("call_events", 0, 0, 65536),
    ("devices", 20, 256, 32768),
    ("connections", 20, 16, 65536),
    ("connection_limited", 16, 8, 16384),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_version_pins_the_layouts_of_its_release() {
        let version = env!("CARGO_PKG_VERSION");
        let release = RELEASES
            .iter()
            .find(|r| r.version == version)
            .unwrap_or_else(|| panic!("version {version} is not in RELEASES: add it (see the module's comment)"));
        let current: Vec<_> = crate::loader::expected_layouts().to_vec();
        assert_eq!(
            current,
            release.layouts.to_vec(),
            "a pinned layout changed: that is a new release (see the module's comment)"
        );
        assert_eq!(
            RELEASES.last().map(|r| r.version),
            Some(version),
            "the newest release is this version"
        );
    }

    #[test]
    fn versions_grow() {
        let parse = |v: &str| v.split('.').map(|n| n.parse::<u32>().unwrap()).collect::<Vec<_>>();
        for w in RELEASES.windows(2) {
            assert!(
                parse(w[0].version) < parse(w[1].version),
                "{} then {}",
                w[0].version,
                w[1].version
            );
        }
    }
}
