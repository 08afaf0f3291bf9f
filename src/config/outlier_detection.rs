//! `outlier_detection`: passive failure detection on the push path.

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError, PromDuration};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutlierDetection {
    consecutive_failures: Option<u32>,
    base_ejection_time: Option<PromDuration>,
    max_ejection_time: Option<PromDuration>,
    max_ejected_percent: Option<u32>,
}

/// `outlier_detection`: passive failure detection on the push path (see `crate::outlier`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutlierDetectionConfig {
    /// Pushes in a row that time out or cannot connect before a node is ejected from the ring; 0 turns
    /// ejection off.
    pub consecutive_failures: u32,
    /// The first ejection lasts this long; the n-th one in a row n times as long.
    pub base_ejection_time: Duration,
    /// No ejection lasts longer.
    pub max_ejection_time: Duration,
    /// At most this share of the healthy nodes is ejected at once (at least one node may always be ejected,
    /// and the last node of the ring never is).
    pub max_ejected_percent: u32,
}

impl Default for OutlierDetectionConfig {
    fn default() -> Self {
        OutlierDetectionConfig {
            consecutive_failures: 3,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

pub(super) fn validate_outlier_detection(
    raw: RawOutlierDetection,
) -> Result<OutlierDetectionConfig, ConfigError> {
    let defaults = OutlierDetectionConfig::default();
    let config = OutlierDetectionConfig {
        consecutive_failures: raw
            .consecutive_failures
            .unwrap_or(defaults.consecutive_failures),
        base_ejection_time: raw
            .base_ejection_time
            .map_or(defaults.base_ejection_time, |d| d.0),
        max_ejection_time: raw
            .max_ejection_time
            .map_or(defaults.max_ejection_time, |d| d.0),
        max_ejected_percent: raw
            .max_ejected_percent
            .unwrap_or(defaults.max_ejected_percent),
    };
    if config.base_ejection_time.is_zero() {
        return Err(invalid(
            "outlier_detection.base_ejection_time: must be greater than 0, e.g. 30s",
        ));
    }
    if config.max_ejection_time < config.base_ejection_time {
        return Err(invalid(format!(
            "outlier_detection.max_ejection_time: must be at least outlier_detection.base_ejection_time ({})",
            humantime::format_duration(config.base_ejection_time)
        )));
    }
    if config.max_ejected_percent > 100 {
        return Err(invalid(
            "outlier_detection.max_ejected_percent: must be between 0 and 100",
        ));
    }
    Ok(config)
}
