//! Criterion benchmarks for the per-push authorization decision (`authorization:` in the config), side by side
//! with the path a push takes without the section. Run briefly with
//! `cargo bench --bench authorization -- --warm-up-time 1 --measurement-time 3`; numbers in bench/RESULTS.md.
//!
//! Each case is the decision `gateway::forbidden` asks for on every push when the section is there:
//! `Authorization::check` with the verified user and the push's job (without the section the gateway does not ask
//! at all). The config is parsed from YAML as the gateway parses its file.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use dynamic_sharding::authorization::{Action, Authorization};
use dynamic_sharding::config::Config;

/// Teams per config; the user a push comes from is the last one (users are kept sorted by name).
const TEAMS: usize = 50;

/// `TEAMS` users `team-00` .. `team-49`, each allowed its own jobs by a regex with alternatives, and one admin.
fn config_yaml(teams: usize) -> String {
    let mut yaml =
        String::from("pushgateway:\n  servers: ['127.0.0.1:9091']\nauthorization:\n  users:\n");
    for team in 0..teams {
        yaml.push_str(&format!(
            "    team-{team:02}: {{push_jobs: \"team_{team:02}_(backup|etl|report)_[a-z0-9_]+\"}}\n"
        ));
    }
    yaml.push_str("    ops: {push_jobs: \".*\", admin: true}\n");
    yaml
}

fn authorization(teams: usize) -> Authorization {
    match Config::parse(&config_yaml(teams)).map(|config| config.authorization) {
        Ok(Some(authorization)) => authorization,
        other => panic!("the benchmark config must parse with an authorization section: {other:?}"),
    }
}

/// The decision for a push of `job` by `user`.
fn allowed(authorization: &Authorization, user: &str, job: &str) -> bool {
    authorization
        .check(Some(user), Action::Push { job })
        .is_ok()
}

fn push_decision(c: &mut Criterion) {
    let many = authorization(TEAMS);
    let one = authorization(1);
    let last = format!("team-{:02}", TEAMS - 1);
    let own_job = format!("team_{:02}_backup_nightly_db", TEAMS - 1);
    let other_job = "team_00_backup_nightly_db";
    assert!(allowed(&many, &last, &own_job));
    assert!(!allowed(&many, &last, other_job));
    assert!(!allowed(&many, "prometheus", &own_job));
    assert!(allowed(&one, "team-00", other_job));

    let mut group = c.benchmark_group("authorization_push");
    let cases: [(&str, &Authorization, &str, &str); 4] = [
        ("1_user/allowed", &one, "team-00", other_job),
        ("50_users/last_user_allowed", &many, &last, &own_job),
        // A refusal also formats the 403's message (the gateway then counts it and logs at most every 10 s).
        ("50_users/last_user_refused", &many, &last, other_job),
        (
            "50_users/unlisted_user_refused",
            &many,
            "prometheus",
            &own_job,
        ),
    ];
    for (name, authorization, user, job) in cases {
        group.bench_function(name, |b| {
            b.iter(|| allowed(black_box(authorization), black_box(user), black_box(job)))
        });
    }
    group.finish();
}

criterion_group!(benches, push_decision);
criterion_main!(benches);
