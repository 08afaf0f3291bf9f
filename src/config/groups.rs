//! `groups`: group expiry.

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, ConfigError, PromDuration};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGroups {
    expire_after: Option<PromDuration>,
    #[serde(default)]
    expire_overrides: Vec<RawExpireOverride>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExpireOverride {
    job: String,
    expire_after: PromDuration,
}

/// `groups`: group expiry, done by the replica that rebalances (see `crate::rebalance`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupsConfig {
    /// Groups whose last client push is older than this are deleted; `None`: groups never expire.
    pub expire_after: Option<Duration>,
    /// Per-job limits; the first whose regex matches the whole job name wins. `None`: never expires.
    pub expire_overrides: Vec<ExpireOverride>,
}

#[derive(Clone, Debug)]
pub struct ExpireOverride {
    /// Anchored: must match the whole job name, as Prometheus regexes do.
    pub job: regex::Regex,
    pub expire_after: Option<Duration>,
}

impl PartialEq for ExpireOverride {
    fn eq(&self, other: &Self) -> bool {
        self.job.as_str() == other.job.as_str() && self.expire_after == other.expire_after
    }
}

impl Eq for ExpireOverride {}

impl GroupsConfig {
    /// The expiry limit of groups of `job`.
    pub fn expire_after(&self, job: &str) -> Option<Duration> {
        self.expire_overrides
            .iter()
            .find(|o| o.job.is_match(job))
            .map_or(self.expire_after, |o| o.expire_after)
    }

    /// Whether any group can expire.
    pub fn expiry_enabled(&self) -> bool {
        self.expire_after.is_some()
            || self
                .expire_overrides
                .iter()
                .any(|o| o.expire_after.is_some())
    }
}

pub(super) fn validate_groups(raw: RawGroups) -> Result<GroupsConfig, ConfigError> {
    let nonzero = |d: PromDuration| Some(d.0).filter(|d| !d.is_zero());
    let mut expire_overrides = Vec::with_capacity(raw.expire_overrides.len());
    for (index, entry) in raw.expire_overrides.into_iter().enumerate() {
        let job = regex::Regex::new(&format!("^(?:{})$", entry.job)).map_err(|e| {
            invalid(format!(
                "groups.expire_overrides[{index}].job: {:?} is not a valid regular expression: {e}",
                entry.job
            ))
        })?;
        expire_overrides.push(ExpireOverride {
            job,
            expire_after: nonzero(entry.expire_after),
        });
    }
    Ok(GroupsConfig {
        expire_after: raw.expire_after.and_then(nonzero),
        expire_overrides,
    })
}
