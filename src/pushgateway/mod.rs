//! Every conversation with a Pushgateway: one room for the wire between the gateway and its nodes.
//!
//! - [`address`]: [`NodeAddress`], a node's `host:port` parsed once (config entries, Consul registrations, the
//!   push path's connections and URIs).
//! - [`client`]: the pooled keep-alive [`HttpClient`] (probes, reads, the rebalancer, repairs) and the
//!   [`Transport`] every request to a node uses (`pushgateway.scheme`, `tls_config`, `basic_auth`).
//! - [`pool`]: the push path's per-node connection pools, driven by the request handler.
//! - [`forward`]: sending a client's request on to a node (the push path).
//! - [`api`]: the Pushgateway API calls the rest of the gateway makes (health, groups, metrics, status, wipe),
//!   each answer checked here.
//! - [`error`]: [`NodeError`], why a node did not give what was asked.
//!
//! Which node to ask, and what to do when it fails, is the callers' business.

pub mod address;
pub mod api;
pub mod client;
pub mod error;
pub mod forward;
pub mod pool;

pub use address::NodeAddress;
pub use client::{ClientConfigError, HttpClient, Transport};
pub use error::{NodeError, RequestError};
