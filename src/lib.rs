//! `dynamic-sharding`: a consistent-hash sharding gateway in front of N Prometheus Pushgateways.
//!
//! # Layout
//! - [`grouping`]: Pushgateway grouping-key parsing and canonical form. Pure, no I/O.
//! - [`ring`]: consistent-hash algorithms (rendezvous table, Go-compatible ring). Pure, no I/O.
pub mod exposition;
pub mod grouping;
pub mod ring;
