//! `dynamic-sharding`: flags -> logging -> run the gateway until a signal. Nothing else.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use dynamic_sharding::app::{self, Options};
use dynamic_sharding::telemetry::{self, LogFormat, LogLevel};
use mimalloc::MiMalloc;

/// Every request allocates a few small buffers (headers, bodies, URIs); mimalloc's thread-local free lists
/// serve them for less CPU than glibc's malloc (measured in bench/RESULTS.md).
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// Consistent-hash sharding gateway in front of N Prometheus Pushgateways.
#[derive(Parser, Debug)]
#[command(name = "dynamic-sharding", version, about)]
struct Flags {
    /// Configuration file path.
    #[arg(
        long = "config.file",
        value_name = "FILE",
        default_value = "dynamic-sharding.yml"
    )]
    config_file: PathBuf,
    /// Check the configuration (--config.file and --web.config.file) and exit: 0 when it is valid, 1 with the
    /// error otherwise.
    #[arg(long = "config.check")]
    config_check: bool,
    /// Address to listen on; overrides http_listen_addr from the config file (e.g. ":9292").
    #[arg(long = "web.listen-address", value_name = "ADDR")]
    web_listen_address: Option<String>,
    /// Enable POST /-/reload.
    #[arg(long = "web.enable-lifecycle")]
    web_enable_lifecycle: bool,
    /// Enable PUT /api/v1/admin/wipe (forwarded to every node), as the Pushgateway's own flag does.
    #[arg(long = "web.enable-admin-api")]
    web_enable_admin_api: bool,
    /// Maximum number of simultaneous connections; further ones wait until one closes. Overrides
    /// web.max_connections from the config file (default 512).
    #[arg(long = "web.max-connections", value_name = "N")]
    web_max_connections: Option<usize>,
    /// Path to a web configuration file (exporter-toolkit format) that enables TLS, client certificates, basic
    /// authentication and extra response headers on the listener; re-read on reload.
    #[arg(long = "web.config.file", value_name = "FILE")]
    web_config_file: Option<PathBuf>,
    /// Only log messages with the given severity or above.
    #[arg(long = "log.level", value_enum, default_value = "info")]
    log_level: LogLevel,
    /// Output format of log messages.
    #[arg(long = "log.format", value_enum, default_value = "logfmt")]
    log_format: LogFormat,
    /// Threads serving requests: 0 = one per CPU the process may run on; 1 = a single-threaded runtime, which
    /// costs less CPU per request when the gateway is confined to one core (see bench/RESULTS.md).
    #[arg(long = "runtime.worker-threads", value_name = "N", default_value_t = 0)]
    runtime_worker_threads: usize,
}

fn build_runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        threads => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(threads);
            builder
        }
    };
    builder.enable_all().build()
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    telemetry::init_logging(flags.log_level, flags.log_format);
    let options = Options {
        config_file: flags.config_file,
        listen_address: flags.web_listen_address,
        enable_lifecycle: flags.web_enable_lifecycle,
        enable_admin_api: flags.web_enable_admin_api,
        max_connections: flags.web_max_connections,
        web_config_file: flags.web_config_file,
    };
    if flags.config_check {
        return match app::check_config(&options) {
            Ok(config) => {
                println!(
                    "{}: valid (membership source: {})",
                    options.config_file.display(),
                    config.membership.name()
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{}: {error}", options.config_file.display());
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match build_runtime(flags.runtime_worker_threads) {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %anyhow::Error::from(error), "dynamic-sharding failed");
            ExitCode::FAILURE
        }
    }
}
