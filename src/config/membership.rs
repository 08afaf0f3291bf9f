//! Where the ring's nodes come from: exactly one source per config.

use super::consul::{validate_consul, RawConsulServer};
use super::{invalid, ConfigError, ConsulConfig};

/// The one membership source of a config (see `crate::membership`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipConfig {
    /// `pushgateway.servers`, probed by the gateway.
    Static,
    /// `consul_server`: Consul's passing instances (and `pushgateway.servers` registered there).
    Consul(Box<ConsulConfig>),
}

impl MembershipConfig {
    /// The source's name in `/-/ring`, `/-/sd` labels and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            MembershipConfig::Static => "static",
            MembershipConfig::Consul(_) => "consul",
        }
    }
}

/// The sections that name a membership source, as written.
pub(super) struct RawSources {
    pub servers_given: bool,
    pub consul_server: Option<RawConsulServer>,
}

pub(super) fn validate_membership(raw: RawSources) -> Result<MembershipConfig, ConfigError> {
    if let Some(consul) = raw.consul_server {
        return Ok(MembershipConfig::Consul(Box::new(validate_consul(consul)?)));
    }
    if !raw.servers_given {
        return Err(invalid(
            "pushgateway.servers: empty; list the Pushgateways to shard over (e.g. [\"10.0.0.1\", \"10.0.0.2:9091\"]) \
             or configure consul_server",
        ));
    }
    Ok(MembershipConfig::Static)
}
