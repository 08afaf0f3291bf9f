//! `ambiguous_writes`: pushes whose outcome on a node is unknown.

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ByteSize, ConfigError, PromDuration};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAmbiguousWrites {
    settle_time: Option<PromDuration>,
    linger: Option<PromDuration>,
    max_groups: Option<usize>,
    max_bytes: Option<ByteSize>,
}

/// `ambiguous_writes`: pushes whose outcome on a node is unknown (see `crate::ambiguous`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmbiguousWritesConfig {
    /// After a node that may still apply an ambiguous push answers again, wait this long before repairing
    /// (only for pushes whose exchange ended without the node's answer).
    pub settle_time: Duration,
    /// How long a timed-out push's connection is kept open to see when the node answers it.
    pub linger: Duration,
    /// Groups remembered at most; the oldest is forgotten (and counted) beyond it.
    pub max_groups: usize,
    /// Bytes of acknowledged bodies remembered at most, over all groups.
    pub max_bytes: u64,
}

impl Default for AmbiguousWritesConfig {
    fn default() -> Self {
        AmbiguousWritesConfig {
            settle_time: Duration::from_secs(2),
            linger: Duration::from_secs(300),
            max_groups: 10_000,
            max_bytes: 64 << 20,
        }
    }
}

pub(super) fn validate_ambiguous_writes(
    raw: RawAmbiguousWrites,
) -> Result<AmbiguousWritesConfig, ConfigError> {
    let defaults = AmbiguousWritesConfig::default();
    let config = AmbiguousWritesConfig {
        settle_time: raw.settle_time.map_or(defaults.settle_time, |d| d.0),
        linger: raw.linger.map_or(defaults.linger, |d| d.0),
        max_groups: raw.max_groups.unwrap_or(defaults.max_groups),
        max_bytes: raw.max_bytes.map_or(defaults.max_bytes, |s| s.0),
    };
    if config.max_groups == 0 || config.max_bytes == 0 {
        return Err(invalid(
            "ambiguous_writes.max_groups and max_bytes: must be greater than 0 (e.g. 10000 and 64MiB)",
        ));
    }
    Ok(config)
}
