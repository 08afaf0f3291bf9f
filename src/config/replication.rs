//! `replication`: how many nodes hold each group.

use serde::Deserialize;

use super::{invalid, ConfigError, Mode};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReplication {
    factor: Option<i64>,
}

/// `replication.factor`: at least 1 (1, the default: only its owner holds a group); above 1 only in proxy mode (a
/// redirected client writes to one node) and, with a static server list (`static_servers`: its length; `None`
/// for discovered members, whose count is not known in advance), at most its length (a factor no ring can reach
/// would leave every group under-replicated for good).
pub(super) fn validate_replication(
    raw: RawReplication,
    mode: Mode,
    static_servers: Option<usize>,
) -> Result<usize, ConfigError> {
    let Some(factor) = raw.factor else {
        return Ok(1);
    };
    let factor = usize::try_from(factor)
        .ok()
        .filter(|&factor| factor >= 1)
        .ok_or_else(|| {
            invalid(format!(
                "replication.factor: {factor} is not a number of nodes; use 1 (no replication) or more, e.g. 2"
            ))
        })?;
    if factor > 1 && mode == Mode::Redirect {
        return Err(invalid(format!(
            "replication.factor: {factor} needs mode: proxy (a redirected client writes to one node only); \
             set mode: proxy or replication.factor: 1"
        )));
    }
    if let Some(server_count) = static_servers.filter(|&count| factor > count) {
        return Err(invalid(format!(
            "replication.factor: {factor} is more than the {server_count} pushgateway.servers; list more servers \
             or lower the factor"
        )));
    }
    Ok(factor)
}
