use std::time::Duration;

use super::*;

/// Each config text must be rejected with an error that mentions the expected words.
fn assert_each_error_mentions(cases: &[(&str, &str)]) {
    for (text, expected) in cases {
        let err = Config::parse(text).unwrap_err().to_string();
        assert!(
            err.contains(expected),
            "config {text:?}: error {err:?} should mention {expected:?}"
        );
    }
}

#[test]
fn authorization_rules_parse_and_bad_ones_name_their_key() {
    use crate::authorization::Action;
    let base = "pushgateway: {servers: [a]}\n";
    assert_eq!(Config::parse(base).unwrap().authorization, None);
    let nobody_writes = Config::parse(&format!("{base}authorization: {{users: {{}}}}\n")).unwrap();
    assert!(nobody_writes
        .authorization
        .unwrap()
        .check(Some("anyone"), Action::Push { job: "j" })
        .is_err());
    let config = Config::parse(&format!(
        "{base}authorization:\n  users:\n    team-a: {{push_jobs: 'team_a_.*'}}\n    ops: {{push_jobs: '.*', admin: true}}\n    reader: {{}}\n"
    ))
    .unwrap();
    let authz = config.authorization.unwrap();
    assert_eq!(
        authz.users().collect::<Vec<_>>(),
        ["ops", "reader", "team-a"]
    );
    assert!(authz
        .check(Some("team-a"), Action::Push { job: "team_a_1" })
        .is_ok());
    assert!(authz
        .check(Some("reader"), Action::Push { job: "x" })
        .is_err());
    assert!(authz
        .check(
            Some("ops"),
            Action::Admin {
                endpoint: "/-/reload"
            }
        )
        .is_ok());
    assert_each_error_mentions(&[
        (
            "pushgateway: {servers: [a]}\nauthorization: {users: {team-a: {push_jobs: 'team_(a'}}}",
            "authorization.users.team-a.push_jobs: \"team_(a\" is not a valid regular expression",
        ),
        (
            "pushgateway: {servers: [a]}\nauthorization: {users: {team-a: {push_job: 'a'}}}",
            "unknown field `push_job`",
        ),
        (
            "pushgateway: {servers: [a]}\nauthorization: {roles: {}}",
            "unknown field `roles`",
        ),
        (
            "pushgateway: {servers: [a]}\nauthorization:\n",
            "authorization: is empty",
        ),
        (
            "pushgateway: {servers: [a]}\nauthorization: {users: {'a:b': {}}}",
            "authorization.users.a:b",
        ),
    ]);
}

#[test]
fn the_commented_example_parses_with_its_authorization_section_on() {
    let example = include_str!("../../examples/dynamic-sharding.yml");
    Config::parse(example).unwrap();
    let start = example.find("# authorization:").unwrap();
    let uncommented: String = example[start..]
        .lines()
        .map(|line| line.strip_prefix("# ").unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n");
    let config = Config::parse(&format!("{}{uncommented}\n", &example[..start])).unwrap();
    let authz = config.authorization.unwrap();
    assert_eq!(authz.users().collect::<Vec<_>>(), ["ops", "team-a"]);
}

#[test]
fn the_consul_credentials_do_not_show_in_the_configs_debug_output() {
    let text = "consul_server:\n  addr: localhost:8500\n  username: ds-user-3f9a\n  password: ds-pass-c41e\n  \
                token: ds-token-77b2\npushgateway:\n  servers: [1.1.1.1:9091]\n";
    let config = Config::parse(text).unwrap();
    let consul = config.consul().unwrap();
    assert_eq!(
        consul.username.as_ref().map(Secret::expose),
        Some("ds-user-3f9a")
    );
    let shown = format!("{config:?}");
    for credential in ["ds-user-3f9a", "ds-pass-c41e", "ds-token-77b2"] {
        assert!(!shown.contains(credential), "{credential} in {shown}");
    }
}

#[test]
fn accepts_the_go_originals_file_unchanged() {
    let text = "consul_server:\n  addr: localhost:8500\n  username:\n  password:\n  register_service_name: pushgateway\n\
                http_listen_addr: :9292\npushgateway:\n  port: 9091\n  servers:\n    - 1.1.1.1\n    - 1.1.1.2\n";
    let config = Config::parse(text).unwrap();
    assert_eq!(config.servers, vec!["1.1.1.1:9091", "1.1.1.2:9091"]);
    assert_eq!(config.listen_addr, ":9292");
    let consul = config.consul().unwrap().clone();
    assert_eq!(consul.addr, "localhost:8500");
    assert_eq!(consul.username, None);
    assert_eq!(consul.service_name, "pushgateway");
    assert_eq!(config.mode, Mode::Proxy);
}

#[test]
fn consul_defaults_and_new_keys() {
    let config = Config::parse("consul_server: {addr: 'localhost:8500'}").unwrap();
    let consul = config.consul().unwrap().clone();
    assert!(
        config.servers.is_empty(),
        "servers may be empty with Consul"
    );
    assert_eq!(consul.scheme, ConsulScheme::Http);
    assert!(consul.register);
    assert_eq!(consul.check_interval, Duration::from_secs(5));
    assert_eq!(consul.check_timeout, Duration::from_secs(2));
    assert_eq!(consul.deregister_critical_after, None);

    let config = Config::parse(
        "consul_server:\n  addr: https://consul.example:8501\n  username: u\n  password: p\n  register: false\n  \
         check_interval: 1s\n  check_timeout: 500ms\n  deregister_critical_after: 10m\n  datacenter: dc2\n  \
         tag: shard\n  token: secret\n  tls: {ca_file: /ca.pem, cert_file: /c.pem, key_file: /k.pem, \
         insecure_skip_verify: true}\n",
    )
    .unwrap();
    let consul = config.consul().unwrap().clone();
    assert_eq!(consul.addr, "consul.example:8501");
    assert_eq!(consul.scheme, ConsulScheme::Https);
    assert_eq!(consul.username.as_ref().map(Secret::expose), Some("u"));
    assert!(!consul.register);
    assert_eq!(consul.check_timeout, Duration::from_millis(500));
    assert_eq!(
        consul.deregister_critical_after,
        Some(Duration::from_secs(600))
    );
    assert_eq!(consul.datacenter.as_deref(), Some("dc2"));
    assert_eq!(consul.tag.as_deref(), Some("shard"));
    assert_eq!(consul.token.as_ref().map(Secret::expose), Some("secret"));
    assert_eq!(consul.tls.ca_file.as_deref(), Some("/ca.pem"));
    assert!(consul.tls.insecure_skip_verify);
}

#[test]
fn invalid_consul_settings_say_what_to_fix() {
    let cases = [
        (
            "consul_server: {addr: a:1, check_interval: 500ms}",
            "consul_server.check_interval",
        ),
        (
            "consul_server: {addr: a:1, check_interval: 2s, check_timeout: 3s}",
            "consul_server.check_timeout",
        ),
        (
            "consul_server: {addr: a:1, deregister_critical_after: 5s}",
            "consul_server.deregister_critical_after",
        ),
        ("consul_server: {addr: a:1, scheme: ftp}", "scheme"),
        (
            "consul_server: {addr: 'https://a:1', scheme: http}",
            "consul_server.scheme",
        ),
        (
            "consul_server: {addr: a:1, tls: {ca_file: /ca.pem}}",
            "scheme: https",
        ),
        (
            "consul_server: {addr: a:1, scheme: https, tls: {cert_file: /c.pem}}",
            "key_file",
        ),
        ("consul_server: {addr: a:1, tsl: {}}", "tsl"),
    ];
    assert_each_error_mentions(&cases);
}

#[test]
fn the_per_node_pool_is_the_default_and_can_be_turned_off() {
    let servers = "pushgateway: {servers: ['a:1']}\n";
    assert!(Config::parse(servers).unwrap().proxy.per_node_pool);
    let off = Config::parse(&format!("{servers}proxy: {{per_node_pool: false}}\n")).unwrap();
    assert!(!off.proxy.per_node_pool);
}

#[test]
fn server_entries_with_a_port_keep_it() {
    let config =
        Config::parse("pushgateway: {port: 9191, servers: [a, 'b:9300', '[::1]:9400', '::2']}")
            .unwrap();
    assert_eq!(
        config.servers,
        vec!["a:9191", "b:9300", "[::1]:9400", "[::2]:9191"]
    );
}

#[test]
fn duplicate_servers_are_listed_once() {
    let config = Config::parse("pushgateway: {servers: [a, 'a:9091', b]}").unwrap();
    assert_eq!(config.servers, vec!["a:9091", "b:9091"]);
}

#[test]
fn unknown_key_is_an_error_naming_it() {
    let err =
        Config::parse("pushgateway: {servers: [a]}\nhealth_chek: {interval: 1s}").unwrap_err();
    assert!(err.to_string().contains("health_chek"), "{err}");
    let err = Config::parse("pushgateway: {servers: [a], prot: 1}").unwrap_err();
    assert!(err.to_string().contains("prot"), "{err}");
}

#[test]
fn fault_handling_keys_have_defaults_and_checked_values() {
    let config = Config::parse(
        "pushgateway: {servers: [a]}\noutlier_detection: {consecutive_failures: 5, base_ejection_time: 10s}\n\
         ambiguous_writes: {settle_time: 500ms, max_bytes: 1MiB}\nproxy: {max_in_flight_per_node: 7}",
    )
    .unwrap();
    assert_eq!(config.outlier_detection.consecutive_failures, 5);
    assert_eq!(
        config.outlier_detection.base_ejection_time,
        Duration::from_secs(10)
    );
    assert_eq!(
        config.outlier_detection.max_ejection_time,
        OutlierDetectionConfig::default().max_ejection_time
    );
    assert_eq!(
        config.ambiguous_writes.settle_time,
        Duration::from_millis(500)
    );
    assert_eq!(config.ambiguous_writes.max_bytes, 1 << 20);
    assert_eq!(config.proxy.max_in_flight_per_node, 7);
    for (yaml, key) in [
        (
            "outlier_detection: {base_ejection_time: 0s}",
            "outlier_detection.base_ejection_time",
        ),
        (
            "outlier_detection: {base_ejection_time: 1m, max_ejection_time: 30s}",
            "outlier_detection.max_ejection_time",
        ),
        (
            "outlier_detection: {max_ejected_percent: 101}",
            "outlier_detection.max_ejected_percent",
        ),
        (
            "ambiguous_writes: {max_groups: 0}",
            "ambiguous_writes.max_groups",
        ),
        (
            "proxy: {max_in_flight_per_node: 0}",
            "proxy.max_in_flight_per_node",
        ),
    ] {
        let err = Config::parse(&format!("pushgateway: {{servers: [a]}}\n{yaml}")).unwrap_err();
        assert!(err.to_string().contains(key), "{yaml}: {err}");
    }
}

#[test]
fn no_servers_and_no_consul_is_an_error() {
    let err = Config::parse("mode: proxy").unwrap_err();
    assert!(err.to_string().contains("pushgateway.servers"), "{err}");
}

#[test]
fn replication_factor_defaults_to_one_and_is_validated() {
    let servers = "pushgateway: {servers: [a, b, c]}\n";
    assert_eq!(Config::parse(servers).unwrap().replication_factor, 1);
    let config = Config::parse(&format!("{servers}replication: {{factor: 3}}\n")).unwrap();
    assert_eq!(config.replication_factor, 3);
    for (yaml, expected) in [
        (
            "replication: {factor: 0}",
            "replication.factor: 0 is not a number of nodes",
        ),
        (
            "replication: {factor: -2}",
            "replication.factor: -2 is not a number of nodes",
        ),
        (
            "replication: {factor: 4}",
            "replication.factor: 4 is more than the 3 pushgateway.servers",
        ),
        (
            "replication: {factor: 2}\nmode: redirect",
            "replication.factor: 2 needs mode: proxy",
        ),
        ("replication: {factr: 2}", "unknown field `factr`"),
    ] {
        let err = Config::parse(&format!("{servers}{yaml}\n")).unwrap_err();
        assert!(err.to_string().contains(expected), "{yaml}: {err}");
    }
    // With Consul the node count is not known in advance.
    let consul = "consul_server: {addr: '127.0.0.1:8500'}\nreplication: {factor: 5}\n";
    assert_eq!(Config::parse(consul).unwrap().replication_factor, 5);
}

#[test]
fn invalid_values_say_what_to_fix() {
    let cases = [
        ("pushgateway: {servers: [a]}\nmode: bounce", "mode"),
        (
            "pushgateway: {servers: ['a:99999']}",
            "pushgateway.servers[0]",
        ),
        (
            "pushgateway: {servers: [a]}\nhealth_check: {interval: 2x}",
            "invalid duration \"2x\"",
        ),
        (
            "pushgateway: {servers: [a]}\nhealth_check: {interval: 1s, timeout: 2s}",
            "health_check.timeout",
        ),
        (
            "pushgateway: {servers: [a]}\nhealth_check: {unhealthy_threshold: 0}",
            "unhealthy_threshold",
        ),
        (
            "pushgateway: {servers: [a]}\nhttp_listen_addr: nonsense",
            "http_listen_addr",
        ),
        (
            "pushgateway: {servers: [a]}\nring: {algorithm: maglev}",
            "algorithm",
        ),
        (
            "pushgateway: {servers: [a]}\nproxy: {max_body_size: 12 parsecs}",
            "invalid size",
        ),
        ("consul_server: {username: x}", "consul_server.addr"),
        (
            "pushgateway: {servers: [a]}\nproxy: {max_body_size: 2MiB, max_body_memory: 1MiB}",
            "proxy.max_body_memory",
        ),
        (
            "pushgateway: {servers: [a]}\nweb: {max_connections: 0}",
            "web.max_connections",
        ),
        (
            "pushgateway: {servers: [a]}\nweb: {header_read_timeout: 0s}",
            "web.header_read_timeout",
        ),
        (
            "pushgateway: {servers: [a]}\nweb: {header_read_timeout: 10s, idle_timeout: 1m}",
            "web.idle_timeout",
        ),
        (
            "pushgateway: {servers: [a]}\nweb: {max_conections: 5}",
            "max_conections",
        ),
    ];
    assert_each_error_mentions(&cases);
}

#[test]
fn user_info_in_addresses_is_rejected_without_showing_the_password() {
    for (text, key) in [
        (
            "consul_server: {addr: 'http://admin:s3cr3t@consul.example:8500'}",
            "consul_server.addr",
        ),
        (
            "consul_server: {addr: 'admin:s3cr3t@consul.example:8500/'}",
            "consul_server.addr",
        ),
        (
            "pushgateway: {servers: ['http://admin:s3cr3t@10.0.0.1:9091']}",
            "pushgateway.servers[0]",
        ),
    ] {
        let err = Config::parse(text).unwrap_err().to_string();
        assert!(err.contains(key), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");
    }
    let err = Config::parse("consul_server: {addr: 'admin:s3cr3t@consul.example:8500'}")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("consul_server.username") && err.contains("consul_server.password"),
        "{err}"
    );
}

#[test]
fn a_debug_rendering_of_the_config_shows_no_credential() {
    let config = Config::parse(
        "consul_server: {addr: 'consul.example:8500', username: u, password: pa55, token: t0ken}",
    )
    .unwrap();
    let shown = format!("{config:?}");
    assert!(
        !shown.contains("pa55") && !shown.contains("t0ken"),
        "{shown}"
    );
}

#[test]
fn web_section_parses_and_defaults() {
    let config = Config::parse("pushgateway: {servers: [a]}").unwrap();
    assert_eq!(config.web, WebConfig::default());
    let config = Config::parse(
        "pushgateway: {servers: [a]}\nweb: {max_connections: 3, header_read_timeout: 5s, idle_timeout: 2s}\n\
         proxy: {max_body_memory: 64MiB}",
    )
    .unwrap();
    assert_eq!(config.web.max_connections, 3);
    assert_eq!(config.web.header_read_timeout, Duration::from_secs(5));
    assert_eq!(config.web.idle_timeout, Duration::from_secs(2));
    assert_eq!(config.proxy.max_body_memory, 64 << 20);
}

#[test]
fn optional_sections_parse() {
    let config = Config::parse(
        "mode: redirect\npushgateway: {servers: [a]}\nhealth_check: {interval: 500ms, timeout: 200ms, \
         unhealthy_threshold: 3, healthy_threshold: 1}\nring: {algorithm: go-compatible}\n\
         proxy: {max_body_size: 1MiB, upstream_timeout: 1m30s, retry: false}",
    )
    .unwrap();
    assert_eq!(config.mode, Mode::Redirect);
    assert_eq!(config.health_check.interval, Duration::from_millis(500));
    assert_eq!(config.health_check.unhealthy_threshold, 3);
    assert_eq!(config.ring_algorithm, Algorithm::GoCompatible);
    assert_eq!(config.proxy.max_body_size, 1 << 20);
    assert_eq!(config.proxy.upstream_timeout, Duration::from_secs(90));
    assert!(!config.proxy.retry);
}

#[test]
fn read_timeout_defaults_to_5s_and_must_be_positive() {
    let config = Config::parse("pushgateway: {servers: [a]}").unwrap();
    assert_eq!(config.read.timeout, Duration::from_secs(5));
    let config = Config::parse("pushgateway: {servers: [a]}\nread: {timeout: 750ms}").unwrap();
    assert_eq!(config.read.timeout, Duration::from_millis(750));
    let err = Config::parse("pushgateway: {servers: [a]}\nread: {timeout: 0s}").unwrap_err();
    assert!(err.to_string().contains("read.timeout"), "{err}");
}

#[test]
fn rebalance_section_defaults_and_overrides() {
    let config = Config::parse("pushgateway: {servers: [a]}").unwrap();
    assert_eq!(config.rebalance, RebalanceConfig::default());
    assert!(config.rebalance.enabled);
    let config = Config::parse(
        "pushgateway: {servers: [a]}\nrebalance: {enabled: false, interval: 5s, concurrency: 2, \
         max_age: 1h, retries: 0}",
    )
    .unwrap();
    assert!(!config.rebalance.enabled);
    assert_eq!(config.rebalance.interval, Duration::from_secs(5));
    assert_eq!(config.rebalance.concurrency, 2);
    assert_eq!(config.rebalance.max_age, Some(Duration::from_secs(3600)));
    assert_eq!(config.rebalance.retries, 0);
    for (text, expected) in [
        ("rebalance: {interval: 0s}", "rebalance.interval"),
        ("rebalance: {concurrency: 0}", "rebalance.concurrency"),
        ("rebalance: {max_agee: 1h}", "max_agee"),
    ] {
        let err = Config::parse(&format!("pushgateway: {{servers: [a]}}\n{text}"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{text}: {err}");
    }
}

#[test]
fn prometheus_durations() {
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
    for bad in ["", "5", "s", "1.5s", "-1s", "1 s", "1sec"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
    }
}

#[test]
fn listen_addresses() {
    assert_eq!(normalize_listen_addr(":9292").unwrap(), "0.0.0.0:9292");
    assert_eq!(normalize_listen_addr("127.0.0.1:1").unwrap(), "127.0.0.1:1");
    assert_eq!(normalize_listen_addr("[::1]:1").unwrap(), "[::1]:1");
    assert!(normalize_listen_addr("9292").is_err());
}

#[test]
fn pushgateway_scheme_tls_and_basic_auth() {
    let config = Config::parse(
        "pushgateway:\n  servers: ['a:1']\n  scheme: https\n  tls_config: {ca_file: ca.crt, cert_file: c.crt, \
         key_file: c.key, server_name: pgw.example, insecure_skip_verify: true}\n  \
         basic_auth: {username: pusher, password: 's3cr3t'}\n",
    )
    .unwrap();
    let upstream = &config.upstream;
    assert_eq!(upstream.scheme, NodeScheme::Https);
    assert_eq!(upstream.tls.ca_file.as_deref(), Some("ca.crt"));
    assert_eq!(upstream.tls.server_name.as_deref(), Some("pgw.example"));
    assert!(upstream.tls.insecure_skip_verify);
    let auth = upstream.basic_auth.as_ref().unwrap();
    assert_eq!(auth.username, "pusher");
    assert_eq!(auth.password.expose(), "s3cr3t");
    // base64("pusher:s3cr3t")
    assert_eq!(auth.header_value().expose(), "Basic cHVzaGVyOnMzY3IzdA==");
    let defaults = Config::parse("pushgateway: {servers: ['a:1']}").unwrap();
    assert_eq!(defaults.upstream, UpstreamConfig::default());
    assert_eq!(defaults.upstream.scheme, NodeScheme::Http);
}

#[test]
fn the_password_is_in_no_debug_output() {
    let config = Config::parse(
        "pushgateway: {servers: ['a:1'], basic_auth: {username: u, password: 'hunter2-secret'}}",
    )
    .unwrap();
    let auth = config.upstream.basic_auth.as_ref().unwrap();
    for text in [
        format!("{config:?}"),
        format!("{auth:?}"),
        format!("{}", auth.password),
        format!("{:?}", auth.header_value()),
    ] {
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("dTpodW50ZXIy"), "{text}");
    }
    let raw: RawConfig = serde_yaml_ng::from_str(
        "pushgateway: {basic_auth: {username: u, password: 'hunter2-secret'}}",
    )
    .unwrap();
    assert!(!format!("{raw:?}").contains("hunter2"));
}

#[test]
fn password_file_is_read_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("password");
    std::fs::write(&path, "from-file\n").unwrap();
    let text = format!(
        "pushgateway: {{servers: ['a:1'], basic_auth: {{username: u, password_file: '{}'}}}}",
        path.display()
    );
    let config = Config::parse(&text).unwrap();
    assert_eq!(
        config.upstream.basic_auth.unwrap().password.expose(),
        "from-file"
    );
    std::fs::write(&path, "\n").unwrap();
    let err = Config::parse(&text).unwrap_err().to_string();
    assert!(
        err.contains("pushgateway.basic_auth.password_file") && err.contains("empty"),
        "{err}"
    );
}

#[test]
fn invalid_upstream_settings_say_what_to_fix() {
    let servers = "pushgateway:\n  servers: ['a:1']\n";
    let cases = [
        (format!("{servers}  scheme: ftp\n"), "scheme"),
        (
            format!("{servers}  tls_config: {{ca_file: ca.crt}}\n"),
            "pushgateway.tls_config: set but pushgateway.scheme is http",
        ),
        (
            format!("{servers}  scheme: https\n  tls_config: {{cert_file: c.crt}}\n"),
            "cert_file and key_file go together",
        ),
        (
            format!("{servers}  scheme: https\n  tls_config: {{ca: x}}\n"),
            "unknown field `ca`",
        ),
        (
            format!("{servers}  basic_auth: {{password: p}}\n"),
            "pushgateway.basic_auth.username: missing",
        ),
        (
            format!("{servers}  basic_auth: {{username: 'a:b', password: p}}\n"),
            "must not contain ':'",
        ),
        (
            format!("{servers}  basic_auth: {{username: u}}\n"),
            "set password or password_file (exactly one)",
        ),
        (
            format!("{servers}  basic_auth: {{username: u, password: p, password_file: f}}\n"),
            "keep exactly one",
        ),
        (
            format!("{servers}  basic_auth: {{username: u, password_file: /nonexistent/pw}}\n"),
            "pushgateway.basic_auth.password_file: cannot read \"/nonexistent/pw\"",
        ),
        (
            format!("{servers}  basic_auth: {{username: u, pasword: p}}\n"),
            "unknown field `pasword`",
        ),
    ];
    for (text, expected) in &cases {
        let err = Config::parse(text).unwrap_err().to_string();
        assert!(
            err.contains(expected),
            "config {text:?}: error {err:?} should mention {expected:?}"
        );
    }
}

#[test]
fn dns_sd_has_prometheus_keys_and_defaults() {
    let config =
        Config::parse("dns_sd:\n  names: [_pushgateway._tcp.pg.monitoring.svc]\n").unwrap();
    let MembershipConfig::DnsSd(dns) = &config.membership else {
        panic!("dns_sd expected, got {:?}", config.membership)
    };
    assert_eq!(
        dns.record_type,
        DnsRecordType::Srv,
        "SRV is the default, as in Prometheus"
    );
    assert_eq!(dns.port, None);
    assert_eq!(dns.refresh_interval, Duration::from_secs(30));
    assert!(dns.nameservers.is_empty());
    assert_eq!(config.membership.name(), "dns_sd");

    let config = Config::parse(
        "dns_sd:\n  names: [pg.test]\n  type: a\n  port: 9091\n  refresh_interval: 2s\n  nameservers: ['127.0.0.1:5353', '::1', '10.0.0.10']\n",
    )
    .unwrap();
    let MembershipConfig::DnsSd(dns) = &config.membership else {
        panic!("dns_sd expected")
    };
    assert_eq!(dns.record_type, DnsRecordType::A);
    assert_eq!(dns.port, Some(9091));
    assert_eq!(dns.refresh_interval, Duration::from_secs(2));
    assert_eq!(
        dns.nameservers,
        vec![
            "127.0.0.1:5353".parse().unwrap(),
            "[::1]:53".parse().unwrap(),
            "10.0.0.10:53".parse().unwrap()
        ]
    );
}

#[test]
fn file_sd_has_prometheus_keys_and_defaults() {
    let config = Config::parse("file_sd:\n  files: ['/etc/ds/*.json', targets.yml]\n").unwrap();
    let MembershipConfig::FileSd(file) = &config.membership else {
        panic!("file_sd expected")
    };
    assert_eq!(file.files, vec!["/etc/ds/*.json", "targets.yml"]);
    assert_eq!(file.refresh_interval, Duration::from_secs(300));
}

#[test]
fn invalid_discovery_settings_say_what_to_fix() {
    assert_each_error_mentions(&[
        ("dns_sd: {names: []}", "dns_sd.names: empty"),
        ("dns_sd: {names: ['a b']}", "dns_sd.names[0]"),
        (
            "dns_sd: {names: [pg.test], type: MX, port: 1}",
            "dns_sd.type",
        ),
        ("dns_sd: {names: [pg.test], type: A}", "dns_sd.port"),
        (
            "dns_sd: {names: [pg.test], port: 9091}",
            "SRV records carry their own ports",
        ),
        (
            "dns_sd: {names: [pg.test], refresh_interval: 0s}",
            "dns_sd.refresh_interval",
        ),
        (
            "dns_sd: {names: [pg.test], nameservers: [kube-dns]}",
            "dns_sd.nameservers[0]",
        ),
        ("dns_sd: {names: [pg.test], nameserver: []}", "nameserver"),
        ("file_sd: {files: []}", "file_sd.files: empty"),
        ("file_sd: {files: [targets.txt]}", ".json, .yml or .yaml"),
        ("file_sd: {files: ['/etc/*/t.json']}", "only the file name"),
        (
            "file_sd: {files: [t.json], refresh_interval: 0s}",
            "file_sd.refresh_interval",
        ),
    ]);
}

#[test]
fn mixing_membership_sources_is_an_error_naming_the_keys() {
    assert_each_error_mentions(&[
        (
            "consul_server: {addr: 'localhost:8500'}\ndns_sd: {names: [pg.test]}",
            "consul_server and dns_sd: more than one membership source",
        ),
        (
            "dns_sd: {names: [pg.test]}\nfile_sd: {files: [t.json]}",
            "dns_sd and file_sd: more than one membership source",
        ),
        (
            "pushgateway: {servers: [a]}\ndns_sd: {names: [pg.test]}",
            "pushgateway.servers and dns_sd",
        ),
        (
            "pushgateway: {servers: [a]}\nfile_sd: {files: [t.json]}",
            "pushgateway.servers and file_sd",
        ),
        ("mode: proxy", "consul_server, dns_sd or file_sd"),
    ]);
    // Consul registers the configured servers: that is one source, as in the Go original.
    let config =
        Config::parse("consul_server: {addr: 'localhost:8500'}\npushgateway: {servers: [a]}")
            .unwrap();
    assert_eq!(config.membership.name(), "consul");
    // pushgateway.port and the scheme still apply to discovered nodes.
    assert!(Config::parse("pushgateway: {scheme: https}\ndns_sd: {names: [pg.test]}").is_ok());
}
