//! `ds-loadgen`: a lean load generator for benchmarking `dynamic-sharding` against other proxies.
//!
//! # Layout
//! - [`target`]: which URLs may be targeted (loopback only) and how redirect locations resolve.
//! - [`body`]: the push body, text exposition format 0.0.4, generated once per run.
//! - [`load`]: the worker loop, one keep-alive connection per worker, bounded by time or request count.
//! - [`tls`]: the rustls client for `https://` targets, trusting only a given CA file.
//! - [`cpu`]: the generator's own CPU time (getrusage).
//! - [`stats`]: per-worker histograms and error counts, merged into the printed and JSON [`stats::Report`].

pub mod body;
pub mod cpu;
pub mod load;
pub mod stats;
pub mod target;
pub mod tls;
