//! `dynamic-sharding`: a consistent-hash sharding gateway in front of N Prometheus Pushgateways.
//!
//! # Layout
//! - [`config`]: the YAML file (the Go original's keys plus ours) and its validation.
//! - [`grouping`]: Pushgateway grouping-key parsing and canonical form. Pure, no I/O.
//! - [`ring`]: consistent-hash algorithms (rendezvous table, Go-compatible ring). Pure, no I/O.
//! - [`exposition`]: Prometheus text format: parse, merge across nodes, rebuild from Pushgateway JSON. Pure.
//! - [`membership`]: where the node set comes from (static probes or Consul); publishes snapshots on a watch channel.
//! - [`consul`]: Consul HTTP API client (registration, blocking health queries, sessions/KV) and leader election.
//! - [`routing`]: turns membership snapshots into immutable ring snapshots, read lock-free by handlers.
//! - [`gateway`]: HTTP routing and handlers (proxy, redirect, admin endpoints under `/-/`, HTTP SD, and the read
//!   API fanned out to every node).
//! - [`body_budget`]: the memory budget for request bodies shared by all connections.
//! - [`pushgateway`]: every conversation with a Pushgateway: node addresses, the HTTP client and its transport
//!   (scheme, TLS, credentials), the push path's per-node pools and forwarding, the API calls, one error type.
//! - [`outlier`]: passive failure detection: nodes whose pushes keep failing are ejected from the ring for a while.
//! - [`ambiguous`]: pushes whose outcome on a node is unknown; the acknowledged value is written again once the
//!   node could no longer apply a late write.
//! - [`rebalance`]: moves groups to their owner after ring changes, so every group is on exactly one node.
//! - [`move_guard`]: pushes vs. the rebalancer's moves, in process: a move never overwrites a newer push.
//! - [`secret`]: `Secret`, a credential whose every rendering is redacted.
//! - [`server`]: binding, the accept loop, TLS and authentication, per-connection HTTP serving, connection limits,
//!   graceful serving.
//! - [`authorization`]: per-job authorization rules (who may push which jobs, who may use admin endpoints). Pure.
//! - [`telemetry`]: the gateway's own metrics and logging set-up.
//! - [`tls_files`]: reading PEM certificates and keys (the listener's and the nodes' TLS settings).
//! - [`app`]: wiring, reload and graceful shutdown.
pub mod ambiguous;
pub mod app;
pub mod authorization;
pub mod body_budget;
pub mod config;
pub mod consul;
pub mod exposition;
pub mod gateway;
pub mod grouping;
pub mod membership;
pub mod move_guard;
pub mod node_route;
pub mod outlier;
pub mod pushgateway;
pub mod rebalance;
pub mod ring;
pub mod routing;
pub mod secret;
pub mod server;
pub mod shutdown;
pub mod telemetry;
pub mod tls_files;
