//! `read`: the read side fanned out to every healthy node.

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError, PromDuration};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRead {
    timeout: Option<PromDuration>,
}

/// The read side (`GET /metrics`, `/api/v1/...`), fanned out to every healthy node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadConfig {
    /// How long one node may take to answer a fanned-out read; a slower node is left out of the answer.
    pub timeout: Duration,
}

impl Default for ReadConfig {
    fn default() -> Self {
        ReadConfig {
            timeout: Duration::from_secs(5),
        }
    }
}

pub(super) fn validate_read(raw: RawRead) -> Result<ReadConfig, ConfigError> {
    let read = ReadConfig {
        timeout: raw.timeout.map_or(ReadConfig::default().timeout, |d| d.0),
    };
    if read.timeout.is_zero() {
        return Err(invalid("read.timeout: must be greater than 0, e.g. 5s"));
    }
    Ok(read)
}
