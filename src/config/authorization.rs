//! `authorization`: per-user rules on top of the listener's authentication (the rules themselves are
//! `crate::authorization`, pure).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{invalid, ConfigError};
use crate::authorization::{Authorization, UserRules};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuthorization {
    #[serde(default)]
    users: BTreeMap<String, RawUserRules>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUserRules {
    push_jobs: Option<String>,
    #[serde(default)]
    admin: bool,
}

pub(super) fn validate_authorization(raw: RawAuthorization) -> Result<Authorization, ConfigError> {
    let mut users = Vec::with_capacity(raw.users.len());
    for (user, rules) in raw.users {
        let key = format!("authorization.users.{user}");
        if user.is_empty() || user.contains(':') {
            return Err(invalid(format!(
                "{key}: not a user name basic auth can carry (empty, or with ':')"
            )));
        }
        let checked = UserRules::new(rules.push_jobs.as_deref(), rules.admin).map_err(|e| {
            invalid(format!(
                "{key}.push_jobs: {:?} is not a valid regular expression: {e}",
                rules.push_jobs.as_deref().unwrap_or_default()
            ))
        })?;
        users.push((user, checked));
    }
    Ok(Authorization::new(users))
}
