//! The agent's upkeep of earned trust: known sources expire, the quarantine switch follows the
//! cracked list, and both survive restarts and reboots through the state file.

use sipfilter::{config::Config, state_file, Loaded};
use sipfilter_common::config::{FLAG_QUARANTINE, FLAG_TRUST};

use super::log;

/// Puts the state file's known sources and cracked extensions back on fresh maps.
pub fn restore(loaded: &mut Loaded, config: &Config, state: &state_file::StateFile) -> anyhow::Result<()> {
    if state.known.is_empty() && state.cracked.is_empty() {
        return Ok(());
    }
    // Keyed as the program keys sources (the full IPv6 address), not by the ban prefix.
    let key_prefix = loaded.maps.read_config()?.ipv6_prefix_len();
    let (known, cracked) = state_file::restore_trust(&mut loaded.trust, key_prefix, &state.known, &state.cracked)?;
    log(format!(
        "restored {known} known source(s) and {cracked} cracked extension(s) from {}",
        config.state_file.display()
    ));
    Ok(())
}

/// Every second: forget known sources whose time is up, and switch quarantine on while (and
/// only while) some extension is on the cracked list, so REGISTERs and INVITEs are read only
/// then.
pub fn upkeep(loaded: &mut Loaded, config: &Config) -> anyhow::Result<()> {
    let expired = loaded.trust.sweep_known()?;
    let mut k = loaded.maps.read_config()?;
    let want = k.flags & FLAG_TRUST != 0 && config.trust.quarantine && !loaded.trust.cracked()?.is_empty();
    let has = k.flags & FLAG_QUARANTINE != 0;
    if want != has || expired > 0 {
        // Writing the config bumps the generation: every slot re-reads its known status.
        if want {
            k.flags |= FLAG_QUARANTINE;
        } else {
            k.flags &= !FLAG_QUARANTINE;
        }
        loaded.maps.write_config(&k)?;
        if want != has {
            log(if want {
                "quarantine on: REGISTER and INVITE for cracked extensions are dropped from unknown sources"
            } else {
                "quarantine off: no extension is on the cracked list"
            });
        }
    }
    Ok(())
}

/// The quarantine bit a fresh config record must carry over (the agent owns it, not the file).
pub fn carry_quarantine(
    loaded: &Loaded,
    mut k: sipfilter_common::KernelConfig,
) -> anyhow::Result<sipfilter_common::KernelConfig> {
    let current = loaded.maps.read_config()?;
    if k.flags & FLAG_TRUST != 0 {
        k.flags |= current.flags & FLAG_QUARANTINE;
    }
    Ok(k)
}
