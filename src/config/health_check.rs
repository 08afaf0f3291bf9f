//! `health_check`: the gateway's own probes of Pushgateways.

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError, PromDuration};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    interval: Option<PromDuration>,
    timeout: Option<PromDuration>,
    unhealthy_threshold: Option<u32>,
    healthy_threshold: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: 2,
            healthy_threshold: 2,
        }
    }
}

pub(super) fn validate_health_check(
    raw_hc: RawHealthCheck,
) -> Result<HealthCheckConfig, ConfigError> {
    let defaults = HealthCheckConfig::default();
    let health_check = HealthCheckConfig {
        interval: raw_hc.interval.map_or(defaults.interval, |d| d.0),
        timeout: raw_hc.timeout.map_or(defaults.timeout, |d| d.0),
        unhealthy_threshold: raw_hc
            .unhealthy_threshold
            .unwrap_or(defaults.unhealthy_threshold),
        healthy_threshold: raw_hc
            .healthy_threshold
            .unwrap_or(defaults.healthy_threshold),
    };
    if health_check.interval.is_zero() {
        return Err(invalid(
            "health_check.interval: must be greater than 0, e.g. 2s",
        ));
    }
    if health_check.timeout.is_zero() || health_check.timeout > health_check.interval {
        return Err(invalid(format!(
            "health_check.timeout: must be greater than 0 and at most health_check.interval ({})",
            humantime::format_duration(health_check.interval)
        )));
    }
    if health_check.unhealthy_threshold == 0 || health_check.healthy_threshold == 0 {
        return Err(invalid(
            "health_check.unhealthy_threshold and healthy_threshold: must be at least 1",
        ));
    }
    Ok(health_check)
}
