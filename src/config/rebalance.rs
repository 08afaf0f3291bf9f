//! `rebalance`: moving groups to their owner after the ring changed.

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError, PromDuration};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRebalance {
    enabled: Option<bool>,
    interval: Option<PromDuration>,
    concurrency: Option<usize>,
    max_age: Option<PromDuration>,
    retries: Option<u32>,
}

/// `rebalance`: moving groups to their owner after the ring changed (see `crate::rebalance`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebalanceConfig {
    /// Whether this replica rebalances. With static membership this is the switch that picks the one replica
    /// that does; with Consul, the replicas with it on elect one leader among themselves.
    pub enabled: bool,
    /// A pass also runs this often without a ring change, to catch drift (e.g. a push retried on another node).
    pub interval: Duration,
    /// Group copies and deletes in flight at once, over all nodes.
    pub concurrency: usize,
    /// Groups on a wrong node whose last push is older than this are deleted there instead of copied. `None`: off.
    pub max_age: Option<Duration>,
    /// Extra attempts for a copy or delete that failed with a network error or a 5xx.
    pub retries: u32,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig {
            enabled: true,
            interval: Duration::from_secs(60),
            concurrency: 8,
            max_age: None,
            retries: 3,
        }
    }
}

pub(super) fn validate_rebalance(raw: RawRebalance) -> Result<RebalanceConfig, ConfigError> {
    let defaults = RebalanceConfig::default();
    let rebalance = RebalanceConfig {
        enabled: raw.enabled.unwrap_or(defaults.enabled),
        interval: raw.interval.map_or(defaults.interval, |d| d.0),
        concurrency: raw.concurrency.unwrap_or(defaults.concurrency),
        max_age: raw.max_age.map(|d| d.0).filter(|d| !d.is_zero()),
        retries: raw.retries.unwrap_or(defaults.retries),
    };
    if rebalance.interval.is_zero() {
        return Err(invalid(
            "rebalance.interval: must be greater than 0, e.g. 1m",
        ));
    }
    if rebalance.concurrency == 0 {
        return Err(invalid("rebalance.concurrency: must be at least 1, e.g. 8"));
    }
    Ok(rebalance)
}
