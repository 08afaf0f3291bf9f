//! Command line: flags -> load plan -> run -> table on stdout and optional JSON file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http::{HeaderValue, Method, StatusCode};

use ds_loadgen::body::{exposition_body, BodySpec, TEXT_CONTENT_TYPE};
use ds_loadgen::cpu::process_cpu_time;
use ds_loadgen::load::{group_paths, run, Limit, LoadPlan, Walk};
use ds_loadgen::stats::{Report, RunDescription};
use ds_loadgen::target::LoopbackEndpoint;
use ds_loadgen::tls::TlsClient;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PushMethod {
    Put,
    Post,
}

/// Push exposition bodies to a loopback Pushgateway-compatible endpoint and report throughput and latency.
#[derive(Debug, Parser)]
#[command(name = "ds-loadgen", version)]
struct Args {
    /// Base URL to push to, http:// or https://; must be loopback (127.0.0.0/8, localhost or [::1]).
    #[arg(long)]
    target: String,
    /// PEM CA certificate(s) that sign the server's certificate; required for https:// (nothing else is trusted,
    /// and verification cannot be switched off).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Basic-auth user name sent with every push (with --basic-auth-password-file).
    #[arg(long, requires = "basic_auth_password_file")]
    basic_auth_user: Option<String>,
    /// File holding the basic-auth password (a trailing newline is ignored); kept off the command line.
    #[arg(long, requires = "basic_auth_user")]
    basic_auth_password_file: Option<PathBuf>,
    /// Concurrent keep-alive connections (one worker each).
    #[arg(short = 'c', long, default_value_t = 16)]
    concurrency: usize,
    /// Run for this many seconds (default 10 when neither --requests nor --fill-groups is given). With
    /// --fill-groups, a bound: groups not pushed by then stay unpushed.
    #[arg(short = 'd', long)]
    duration: Option<f64>,
    /// Stop after this many requests in total.
    #[arg(short = 'n', long)]
    requests: Option<u64>,
    /// Number of distinct groups (grouping keys) pushed to, round-robin.
    #[arg(short = 'k', long, default_value_t = 1000)]
    groups: usize,
    /// Fill mode: push each of N groups exactly once, shared out over all connections, then stop; reports how
    /// many the target acknowledged and exits non-zero unless it acknowledged all of them.
    #[arg(long, value_name = "N", conflicts_with_all = ["requests", "groups"])]
    fill_groups: Option<usize>,
    /// Every N-th group gets an extra `zone` label (0: never).
    #[arg(long, default_value_t = 4)]
    extra_label_every: usize,
    /// Job name in the grouping key.
    #[arg(long, default_value = "bench")]
    job: String,
    #[arg(long, value_enum, default_value_t = PushMethod::Put)]
    method: PushMethod,
    /// Follow 307/308 redirects by re-sending the body to the Location (loopback only).
    #[arg(long)]
    follow_redirects: bool,
    /// Redirects followed at most per push.
    #[arg(long, default_value_t = 3)]
    max_redirects: u32,
    /// Count only this status as success (e.g. 307 to measure a redirector without following); default any 2xx.
    #[arg(long)]
    expect_status: Option<u16>,
    /// Per-push timeout in milliseconds, redirects included.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Gauge and counter samples per body.
    #[arg(long, default_value_t = 20)]
    samples: usize,
    /// Leave the histogram out of the body.
    #[arg(long)]
    no_histogram: bool,
    /// Runtime worker threads; 1 uses a single-threaded runtime (the lightest client).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Name of this run in the report.
    #[arg(long, default_value = "run")]
    label: String,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    // One line naming the problem, not a backtrace, whatever RUST_BACKTRACE says.
    match run_from_args(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("ds-loadgen: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_from_args(args: Args) -> anyhow::Result<()> {
    let target = LoopbackEndpoint::parse(&args.target)?;
    let (walk, groups) = match args.fill_groups {
        Some(groups) => (Walk::EachGroupOnce, groups),
        None => (Walk::RoundRobin, args.groups),
    };
    if args.concurrency == 0 || groups == 0 || args.threads == 0 {
        bail!("--concurrency, --groups (or --fill-groups) and --threads must each be at least 1");
    }
    let duration = match (args.duration, args.requests) {
        (None, None) if walk == Walk::EachGroupOnce => None,
        (None, None) => Some(Duration::from_secs(10)),
        (Some(seconds), _) => Some(
            Duration::try_from_secs_f64(seconds)
                .ok()
                .filter(|d| !d.is_zero())
                .with_context(|| {
                    format!("--duration {seconds} must be a positive number of seconds")
                })?,
        ),
        (None, Some(_)) => None,
    };
    let expected_status = args
        .expect_status
        .map(StatusCode::from_u16)
        .transpose()
        .with_context(|| {
            format!(
                "--expect-status {:?} is not an HTTP status code",
                args.expect_status
            )
        })?;
    let tls = match (&args.ca_file, target.tls) {
        (Some(ca_file), _) => Some(TlsClient::trusting(ca_file)?),
        (None, true) => bail!(
            "--target {} is https: give --ca-file with the CA that signed the server's certificate",
            args.target
        ),
        (None, false) => None,
    };
    let authorization = match (&args.basic_auth_user, &args.basic_auth_password_file) {
        (Some(user), Some(file)) => {
            let password = std::fs::read_to_string(file).with_context(|| {
                format!(
                    "--basic-auth-password-file {}: cannot read it",
                    file.display()
                )
            })?;
            Some(basic_authorization(
                user,
                password.trim_end_matches(['\r', '\n']),
            )?)
        }
        _ => None,
    };
    let body = exposition_body(BodySpec {
        samples: args.samples,
        histogram: !args.no_histogram,
    });
    let body_bytes = body.len();
    let method = match args.method {
        PushMethod::Put => Method::PUT,
        PushMethod::Post => Method::POST,
    };
    let plan = Arc::new(LoadPlan {
        paths: group_paths(
            &target.path_prefix,
            &args.job,
            groups,
            args.extra_label_every,
        ),
        target,
        method: method.clone(),
        body: Bytes::from(body),
        content_type: HeaderValue::from_static(TEXT_CONTENT_TYPE),
        concurrency: args.concurrency,
        limit: Limit {
            duration,
            requests: args.requests,
        },
        walk,
        follow_redirects: args.follow_redirects,
        max_redirects: args.max_redirects,
        request_timeout: Duration::from_millis(args.timeout_ms.max(1)),
        expected_status,
        tls,
        authorization,
    });

    let runtime = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .context("could not start the async runtime")?;
    let cpu_before = process_cpu_time();
    let (stats, elapsed) = runtime.block_on(run(Arc::clone(&plan)));
    let cpu_used = process_cpu_time()
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before).as_secs_f64());

    let mut report = Report::new(
        RunDescription {
            label: args.label,
            target: args.target,
            method: method.to_string(),
            concurrency: args.concurrency,
            groups,
            body_bytes,
            follow_redirects: args.follow_redirects,
            fill: walk == Walk::EachGroupOnce,
        },
        &stats,
        elapsed,
    );
    report.client_cpu_s = cpu_used;
    report.tls = plan.tls.as_ref().and_then(TlsClient::negotiated);
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("could not write the JSON report to {}", path.display()))?;
    }
    if report.ok == 0 {
        bail!("no push succeeded; check that the target is up and that --expect-status matches");
    }
    if let Some(fill) = report
        .fill
        .as_ref()
        .filter(|fill| fill.acknowledged < fill.groups)
    {
        bail!(
            "--fill-groups {}: {} groups were not acknowledged ({} failed, {} not pushed before --duration ran out)",
            fill.groups,
            fill.groups - fill.acknowledged,
            fill.failed,
            fill.not_pushed
        );
    }
    Ok(())
}

/// `Basic base64(user:password)`, marked sensitive so that it never shows in Debug output.
fn basic_authorization(user: &str, password: &str) -> anyhow::Result<HeaderValue> {
    use base64::Engine;
    if user.contains(':') {
        bail!("--basic-auth-user cannot contain ':'");
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
        .context("the basic-auth credentials do not make a valid header")?;
    value.set_sensitive(true);
    Ok(value)
}
